"""Hub webhooks in: authenticate the payload, keep what a watch rule could care about, record it.

The Hub sends the webhook's secret verbatim in `X-Webhook-Secret` (no HMAC); it is compared in constant
time. The route answers as soon as the notification is committed: the Hub gives a receiver a few seconds,
and everything slow (reading the repo, the readiness gate, creating jobs) happens in the watcher task
(`worker.watcher`), which also re-checks a release that is still uploading. A notification is only a hint:
what the watcher acts on is what the Hub says about the repo when it looks, so a forged or stale payload
(with a valid secret) can at most make it look early.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import HubNotification, Watch
from app.settings import get_settings

SCOPES = frozenset({"repo", "repo.content", "repo.config"})  # created, pushed to, made public / settings changed
ACTIONS = frozenset({"create", "update", "move"})


@dataclass(frozen=True)
class RepoChange:
    repo_id: str
    head_sha: str | None
    action: str
    scope: str


def secret_matches(given: str | None) -> bool:
    """Whether the payload carries the configured secret (False when none is configured)."""
    secret = get_settings().hub_webhook_secret
    if secret is None or given is None:
        return False
    return hmac.compare_digest(given.encode(), secret.get_secret_value().encode())


def repo_change(payload: Any) -> RepoChange | None:
    """The model repo a payload is about, or None for what rules never act on (datasets, discussions, deletes)."""
    if not isinstance(payload, dict):
        return None
    event, repo = payload.get("event"), payload.get("repo")
    if not isinstance(event, dict) or not isinstance(repo, dict):
        return None
    action, scope, name = event.get("action"), event.get("scope"), repo.get("name")
    if repo.get("type") != "model" or action not in ACTIONS or scope not in SCOPES:
        return None
    if not isinstance(name, str) or name.count("/") != 1 or len(name) > 200:
        return None
    head = repo.get("headSha")
    return RepoChange(name, head if isinstance(head, str) and len(head) <= 64 else None, action, scope)


def watched(session: Session, repo_id: str) -> bool:
    """Whether some active rule watches the repo's author (the name pattern is the watcher's business)."""
    author = repo_id.split("/")[0]
    return any(author in rule_authors for rule_authors in session.scalars(select(Watch.authors).where(~Watch.paused)))


def record(session: Session, change: RepoChange) -> HubNotification:
    note = HubNotification(repo_id=change.repo_id, head_sha=change.head_sha, action=change.action, scope=change.scope)
    session.add(note)
    session.commit()
    return note
