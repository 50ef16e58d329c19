"""Release detection tasks (the `control` queue): Hub notifications, and the reconciling poller on Celery beat.

- `process_notifications`: the webhook path. Notifications recorded by `POST /hooks/hub` that are due are
  claimed (a conditional UPDATE pushes `due_at` one claim period ahead, so a second watcher skips them and
  a watcher that dies mid-way leaves them to be retried), then each repo is considered once
  (`worker.watcher.consider`). A release still uploading keeps its notification pending until the quiet
  period can have passed, so webhook-only deployments need no poller to take it later.
- `reconcile` (beat, every `watch_poll_s`): the same, then lists each watched author's newest models
  (`list_models(author=…, sort="last_modified")`), because webhooks can be missed, capped or not set up.
  Listing stops at the first model older than every rule of that author: rules never take older releases.

Both are idempotent and safe to run concurrently (exactly-once lives in the database, `worker.watcher`);
a Hub outage leaves the work to the next period.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from huggingface_hub import HfApi
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db import session_factory
from app.models import HubNotification, Watch
from app.responses import utc
from app.settings import get_settings
from worker import watcher
from worker.celery_app import PROCESS_HUB_NOTIFICATIONS, RECONCILE_WATCHES, celery_app

log = logging.getLogger(__name__)
CLAIM_S = 300  # a claimed notification is retried after this long if its watcher died
MAX_ATTEMPTS = 50  # a notification that keeps failing (or waiting) this often is dropped; the poller remains
BATCH = 100


def hub_api() -> HfApi:
    return HfApi(token=get_settings().hub_write_token())


@celery_app.task(name=PROCESS_HUB_NOTIFICATIONS, ignore_result=True, acks_late=False)
def process_notifications() -> int:
    """Consider every repo with a due notification; returns how many repos were looked at."""
    with session_factory()() as session:
        return process_due(session, hub_api())


@celery_app.task(name=RECONCILE_WATCHES, ignore_result=True, acks_late=False)
def reconcile() -> int:
    """Due notifications, then the poll of every watched author; returns how many repos were looked at."""
    with session_factory()() as session:
        api = hub_api()
        return process_due(session, api) + poll(session, api)


def process_due(session: Session, api: HfApi, now: datetime | None = None) -> int:
    now = now or datetime.now(UTC)
    due = session.scalars(
        select(HubNotification)
        .where(HubNotification.processed_at.is_(None), HubNotification.due_at <= now)
        .order_by(HubNotification.received_at)
        .limit(BATCH)
    ).all()
    session.commit()
    claimed: dict[str, list[HubNotification]] = {}
    for note in due:
        taken = session.execute(
            update(HubNotification)
            .where(HubNotification.id == note.id, HubNotification.due_at == note.due_at)
            .where(HubNotification.processed_at.is_(None))
            .values(due_at=now + timedelta(seconds=CLAIM_S), attempts=HubNotification.attempts + 1)
        )
        session.commit()
        if taken.rowcount == 1:
            claimed.setdefault(note.repo_id, []).append(note)
    for repo_id, notes in claimed.items():
        try:
            recheck = watcher.consider(session, api, repo_id, "webhook", now)
        except Exception as err:  # Hub or database unavailable: the claim expires and a later run retries
            session.rollback()
            log.warning("notification for %s not processed (%s: %s); retried later", repo_id, type(err).__name__, err)
            continue
        _settle(session, notes, recheck, now)
    return len(claimed)


def _settle(session: Session, notes: list[HubNotification], recheck: float | None, now: datetime) -> None:
    """Done, or (a rule still waits for the upload) due again when looking can change the answer."""
    waiting = recheck is not None and all(n.attempts < MAX_ATTEMPTS for n in notes)
    delay = min(recheck if recheck is not None else 0.0, get_settings().watch_poll_s) + 1.0
    repo = notes[0].repo_id
    if waiting:
        ids = [note.id for note in notes]
        session.execute(
            update(HubNotification).where(HubNotification.id.in_(ids)).values(due_at=now + timedelta(seconds=delay))
        )
    else:  # the repo was judged at its head: every earlier notification about it is answered too
        session.execute(
            update(HubNotification)
            .where(HubNotification.repo_id == repo, HubNotification.processed_at.is_(None))
            .where(HubNotification.received_at <= now)
            .values(processed_at=now)
        )
    session.commit()
    log.info("%s: %s", repo, f"still uploading, looked at again in {delay:.0f} s" if waiting else "notification done")


def poll(session: Session, api: HfApi) -> int:
    """List each watched author's newest models and consider those some rule could take."""
    since: dict[str, datetime] = {}
    rules = session.scalars(select(Watch).where(~Watch.paused)).all()
    session.commit()
    for rule in rules:
        created = utc(rule.created_at)
        for author in rule.authors:
            since[author] = min(since.get(author, created), created)
    seen = 0
    limit = get_settings().watch_poll_limit
    for author, oldest_rule in sorted(since.items()):
        try:
            listing = list(
                api.list_models(author=author, sort="last_modified", limit=limit, expand=["lastModified", "sha"])
            )
        except Exception as err:
            log.warning("could not list the models of %s (%s); next period", author, type(err).__name__)
            continue
        for info in listing:
            changed = utc(info.last_modified) if info.last_modified else None
            if changed is not None and changed < oldest_rule:
                break  # sorted newest first: nothing older can be new to a rule
            if not any(watcher.watches_repo(rule, info.id) for rule in rules):
                continue
            try:
                watcher.consider(session, api, info.id, "poller")
            except Exception as err:
                session.rollback()
                log.warning("release %s not considered (%s: %s); next period", info.id, type(err).__name__, err)
                continue
            seen += 1
    return seen
