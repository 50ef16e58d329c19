"""What every route needs: the server's state and the auth / visibility rules, in one place.

Kept apart from the routes so the API module and the LFS module share one definition of "who may see this
repo" instead of two that drift.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import Request

from localhub.faults import Faults
from localhub.storage import DEFAULT_LFS_THRESHOLD, Repo, RepoNotFound, Storage

USER = "tester"  # the account every token belongs to (whoami, and the namespace of un-namespaced repo ids)
KINDS = {"models": "model", "datasets": "dataset"}  # URL segment of /api/{kind}/... → repo type
URL_PREFIX = {"model": "", "dataset": "datasets/"}  # prefix of web/git URLs per repo type


@dataclass
class HubState:
    """One server's configuration and state; `app.state.hub`. Fields may be changed while it runs."""

    storage: Storage
    token: str | None = None  # if set, every request (but signed LFS transfers) needs `Bearer <token>`
    lfs_threshold: int = DEFAULT_LFS_THRESHOLD
    faults: Faults = field(default_factory=Faults)
    multipart_chunk_size: int | None = None  # LFS objects larger than this are offered as multipart uploads
    tree_page_size: int = 1000  # tree listings are paginated with a `Link: rel="next"` header beyond this
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(16), repr=False)
    requests: deque[str] = field(default_factory=lambda: deque(maxlen=10_000))  # "METHOD path status", newest last
    webhooks: list[dict[str, Any]] = field(default_factory=list)  # registrations (`localhub.webhooks`)
    webhook_log: list[dict[str, Any]] = field(default_factory=list)  # deliveries: url, status, payload

    def authorized(self, request: Request) -> bool:
        """True if the request carries a token this server accepts (any token when none is configured)."""
        token = bearer(request)
        return token is not None and (self.token is None or hmac.compare_digest(token, self.token))

    def sign(self, *parts: str) -> str:
        """Signature of an LFS transfer URL: the client sends those PUTs without its token, like S3 URLs."""
        return hmac.new(self.secret, ":".join(parts).encode(), hashlib.sha256).hexdigest()[:32]


def hub_of(request: Request) -> HubState:
    return request.app.state.hub


def bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() != "bearer ":
        return None
    return auth[7:].strip() or None


def base_url(request: Request) -> str:
    """The endpoint as the client sees it, for URLs in replies (commitUrl, LFS hrefs)."""
    return str(request.base_url).rstrip("/")


def find_repo(request: Request, repo_type: str | None, ns: str, name: str) -> Repo:
    """The repo, or RepoNotFound, also for a private repo the caller may not see (as the Hub hides those)."""
    hub = hub_of(request)
    repo = hub.storage.find(repo_type, f"{ns}/{name}") if repo_type else None
    if repo is None or (repo.private and not hub.authorized(request)):
        raise RepoNotFound(f"Repository not found: {repo_type or 'unknown type'} {ns}/{name}")
    return repo


def iso(timestamp: float) -> str:
    """The Hub's timestamp format (milliseconds, UTC)."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
