"""Bearer API tokens: created by an operator command, stored only as a peppered SHA-256 hash.

A job belongs to the owner of the token that created it; every job route filters by that owner, so
another owner's job is indistinguishable from a missing one (404).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import SessionDep
from app.models import ApiToken, utcnow
from app.settings import get_settings

TOKEN_PREFIX = "slk_"
OWNER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # owners name default output repos on the Hub
bearer = HTTPBearer(auto_error=False, description="API token created with `python -m app.cli create-token`")


def hash_token(token: str) -> str:
    pepper = get_settings().token_pepper.get_secret_value()
    return hashlib.sha256((pepper + token).encode()).hexdigest()


def create_token(session: Session, owner: str, name: str = "", output_patterns: list[str] | None = None) -> str:
    """A new token for `owner`; the plain value is returned once and never stored.

    output_patterns: glob patterns of the Hub repos this token's jobs may push to (`{owner}` allowed);
    None keeps the deployment's default (see app.outputs).
    """
    if not OWNER.fullmatch(owner):
        raise ValueError(f"owner {owner!r}: use 1-64 letters, digits, '-', '_' or '.' (it names Hub repos)")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(owner=owner, name=name, token_hash=hash_token(token), output_patterns=output_patterns))
    session.commit()
    return token


def active_token(session: Session, token: str) -> ApiToken | None:
    """The row of a valid, unrevoked API token (looked up by its peppered hash); None otherwise."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    return row if row is not None and row.revoked_at is None else None


@dataclass(frozen=True)
class Caller:
    owner: str
    token_id: object
    output_patterns: list[str] | None = None


def current_caller(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Caller:
    unauthorized = HTTPException(
        status.HTTP_401_UNAUTHORIZED, "missing or invalid API token", headers={"WWW-Authenticate": "Bearer"}
    )
    row = active_token(session, credentials.credentials) if credentials is not None else None
    if row is None:
        raise unauthorized
    return Caller(row.owner, row.id, row.output_patterns)


CallerDep = Annotated[Caller, Depends(current_caller)]


def list_tokens(session: Session, owner: str | None = None) -> list[ApiToken]:
    """Tokens (never their values: only hashes are stored), newest first; optionally one owner's."""
    query = select(ApiToken).order_by(ApiToken.created_at.desc())
    if owner is not None:
        query = query.where(ApiToken.owner == owner)
    return list(session.scalars(query))


def revoke_token(session: Session, token_id: str) -> ApiToken | None:
    """Revoke a token by its id (at once: the next request with it is a 401); None when there is no such id.
    Its jobs and watch rules stay; a rule whose token is revoked records its releases as skipped."""
    row = session.get(ApiToken, uuid.UUID(token_id))
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
        session.commit()
    return row
