"""Dashboard sign-in: an API token exchanged for a session cookie, and CSRF tokens for state changes.

The cookie holds `<token id>.<expiry>.<nonce>.<HMAC>`, signed with a key derived from the deployment's token
pepper; it never holds the API token. Every request re-checks the token row, so revoking the API token ends
its dashboard sessions at once. The cookie is HttpOnly (no script reads it), SameSite=Strict (no other site
sends it) and Secure outside development. Forms that change state carry a CSRF token derived from the
session (HMAC), checked on POST: a request another site forges has neither the cookie nor the token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid

from fastapi import Request, Response
from sqlalchemy.orm import Session

from app.auth import Caller, active_token
from app.models import ApiToken
from app.settings import get_settings

COOKIE = "slimkit_session"
LIFETIME_S = 12 * 3600


def _key() -> bytes:
    pepper = get_settings().token_pepper.get_secret_value() or "development-only"  # production requires a pepper
    return hashlib.sha256(b"slimkit-dashboard-session\0" + pepper.encode()).digest()


def _sign(payload: str) -> str:
    return hmac.new(_key(), payload.encode(), hashlib.sha256).hexdigest()


def sign_in(session: Session, token: str) -> str | None:
    """The cookie value for a valid, unrevoked API token; None otherwise."""
    row = active_token(session, token)
    if row is None:
        return None
    payload = f"{row.id}.{int(time.time()) + LIFETIME_S}.{secrets.token_hex(8)}"
    return f"{payload}.{_sign(payload)}"


def caller(session: Session, request: Request) -> Caller | None:
    """The signed-in caller, or None (no cookie, a forged or expired one, a revoked token)."""
    value = request.cookies.get(COOKIE, "")
    payload, _, signature = value.rpartition(".")
    if not payload or not hmac.compare_digest(signature, _sign(payload)):
        return None
    token_id, expiry, _nonce = payload.split(".")
    if int(expiry) < time.time():
        return None
    row = session.get(ApiToken, uuid.UUID(token_id))
    if row is None or row.revoked_at is not None:
        return None
    return Caller(row.owner, row.id, row.output_patterns)


def set_cookie(response: Response, value: str) -> None:
    secure = get_settings().environment != "development"
    response.set_cookie(COOKIE, value, max_age=LIFETIME_S, httponly=True, samesite="strict", secure=secure, path="/")


def clear_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/")


def csrf_token(request: Request) -> str:
    return _sign("csrf:" + request.cookies.get(COOKIE, ""))


def csrf_ok(request: Request, given: str | None) -> bool:
    return bool(given) and bool(request.cookies.get(COOKIE)) and hmac.compare_digest(given, csrf_token(request))
