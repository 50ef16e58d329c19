"""Watch rules as a resource: create, read, list, change, delete, and the events a rule recorded.

Every function is scoped to the owner, exactly like jobs: another owner's rule does not exist for you.
Templates are stored as validated and defaults-resolved job bodies (what will run), the callback secret as a
subscription (`app.callbacks`), shown once.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import callbacks
from app.auth import Caller
from app.models import CallbackSubscription, Watch, WatchEvent
from app.watch_schemas import WatchCreate, WatchPatch

MAX_EVENTS = 500


def create(session: Session, caller: Caller, body: WatchCreate) -> tuple[Watch, CallbackSubscription | None]:
    subscription = None
    if body.callback is not None:
        subscription = callbacks.subscribe(
            session, caller.owner, body.callback.url, body.callback.secret, body.callback.stage_events
        )
        session.flush()
    fields = body.model_dump(mode="json", exclude={"callback"})
    watch = Watch(
        id=uuid.uuid4(),
        owner=caller.owner,
        token_id=caller.token_id,
        callback_id=subscription.id if subscription else None,
        **fields,
    )
    session.add(watch)
    session.commit()
    return watch, subscription


def get(session: Session, owner: str, watch_id: uuid.UUID) -> Watch | None:
    watch = session.get(Watch, watch_id)
    return watch if watch is not None and watch.owner == owner else None


def callback_of(session: Session, watch: Watch) -> CallbackSubscription | None:
    return session.get(CallbackSubscription, watch.callback_id) if watch.callback_id else None


def list_for(session: Session, owner: str) -> list[Watch]:
    return list(session.scalars(select(Watch).where(Watch.owner == owner).order_by(Watch.created_at.desc())))


def update(session: Session, watch: Watch, patch: WatchPatch) -> Watch:
    """Apply the fields the patch sets; the size range is checked on the result."""
    changes = patch.model_dump(mode="json", exclude_unset=True)
    if patch.templates is not None:  # whole templates, defaults resolved (exclude_unset would drop them)
        changes["templates"] = [template.model_dump(mode="json") for template in patch.templates]
    low = changes.get("min_params", watch.min_params)
    high = changes.get("max_params", watch.max_params)
    if low is not None and high is not None and low > high:
        raise ValueError("min_params must not exceed max_params")
    for key, value in changes.items():
        if value is None and key in ("name", "authors", "name_pattern", "templates", "new_commits", "paused"):
            raise ValueError(f"{key} cannot be null")
        setattr(watch, key, value)
    session.commit()
    session.refresh(watch)
    return watch


def delete(session: Session, watch: Watch) -> None:
    """The rule, its events and release records go; the jobs it created stay (they are the owner's jobs)."""
    session.delete(watch)
    session.commit()


def events(session: Session, watch: Watch, limit: int = 100) -> list[WatchEvent]:
    query = (
        select(WatchEvent)
        .where(WatchEvent.watch_id == watch.id)
        .order_by(WatchEvent.created_at.desc(), WatchEvent.id)
        .limit(min(limit, MAX_EVENTS))
    )
    return list(session.scalars(query))
