"""The transactional outbox: a queued job row is the message; publishing it to the broker is a side effect.

The API commits a job row (`enqueued_at` NULL) and answers; only then is the message sent — by the API
right after the response (`publish_one`), and otherwise by the dispatcher that every worker's main process
runs every `dispatch_interval_s` (`publish_pending`). A row is stamped *before* it is sent (a conditional
UPDATE, so two dispatchers never both send it) and un-stamped if the send fails, so a broker outage delays
jobs but never loses them (a send that timed out after the broker had stored the message is sent again; the
duplicate is a no-op claim). A message that is lost after it was sent (a broker restart
without persistence, a crash between stamp and send) is found by `republish_lost`, which looks for the
job's message in the broker itself — the queue and the unacknowledged set — and re-sends only the ones
that are really gone, so a job waiting behind a long one is never sent twice.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from app.db import session_factory
from app.models import Job, JobStatus
from app.settings import get_settings
from worker.celery_app import PROCESS_HUB_NOTIFICATIONS, RUN_JOB, celery_app
from worker.claim import db_now

log = logging.getLogger(__name__)
_breaker = threading.Lock()
_broker_down_until = 0.0  # monotonic time until which this process does not try the broker again


class BrokerUnavailable(Exception):
    """The broker failed recently; the message is left to the dispatcher instead of waiting on it again."""


def send(job_id: str) -> None:
    """Publish the job's message (task id = job id); see `publish_bounded`."""
    publish_bounded(RUN_JOB, args=[job_id], task_id=job_id, queue=get_settings().gpu_queue)


def send_watch_nudge() -> None:
    """Ask a watcher to process pending Hub notifications now (their rows are already committed; if this
    fails, the next beat period does the same work)."""
    publish_bounded(PROCESS_HUB_NOTIFICATIONS, queue=get_settings().control_queue, expires=600)


def publish_bounded(task: str, **options: Any) -> None:
    """Send one task message with every broker wait bounded by `broker_timeout_s`.

    No retries here: the caller's row stays as it was and a periodic task tries again. After a failure this
    process leaves the broker alone for a few seconds, so a hung broker cannot pile up waiting threads in the API.
    """
    global _broker_down_until
    settings = get_settings()
    if time.monotonic() < _broker_down_until:
        raise BrokerUnavailable("the broker failed moments ago")
    try:
        with celery_app.connection_for_write(url=settings.broker_url) as conn:  # a fresh one, not the app's pool
            if not settings.broker_url.startswith("filesystem://"):
                conn.transport_options.update(
                    socket_timeout=settings.broker_timeout_s, socket_connect_timeout=settings.broker_timeout_s
                )
            celery_app.send_task(task, connection=conn, retry=False, **options)
    except Exception:
        with _breaker:
            _broker_down_until = time.monotonic() + max(5.0, settings.dispatch_interval_s)
        raise


def publish_one(job_id: uuid.UUID | str) -> bool:
    """Send the message of one unpublished queued job; False when it was not ours to send (or not queued)."""
    job_id = uuid.UUID(str(job_id))
    with session_factory()() as session:
        stamped = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.queued, Job.enqueued_at.is_(None))
            .values(enqueued_at=db_now(session))
        )
        session.commit()
        if stamped.rowcount != 1:
            return False
        try:
            send(str(job_id))
        except BaseException:
            session.execute(
                update(Job).where(Job.id == job_id, Job.status == JobStatus.queued).values(enqueued_at=None)
            )
            session.commit()
            raise
    return True


def publish_pending(limit: int = 100) -> list[str]:
    """Publish every queued job that has no message yet (oldest first); stops at the first broker error."""
    with session_factory()() as session:
        ids = session.scalars(
            select(Job.id)
            .where(Job.status == JobStatus.queued, Job.enqueued_at.is_(None))
            .order_by(Job.created_at)
            .limit(limit)
        ).all()
    sent = []
    for job_id in ids:
        try:
            if publish_one(job_id):
                sent.append(str(job_id))
        except Exception as err:  # broker down: every row stays unpublished; the next period tries again
            log.warning("dispatcher could not publish job %s (%s); retrying next period", job_id, type(err).__name__)
            break
    if sent:
        log.info("dispatcher published %d job(s)", len(sent))
    return sent


def messages_in_broker() -> set[str] | None:
    """Ids of the jobs whose message is in the broker (waiting, or delivered and not yet acknowledged).

    None when the broker cannot be inspected (then nothing is assumed lost). Redis: kombu keeps a queue as a
    list (one per priority step) and unacknowledged deliveries in the `unacked` hash. The folder broker
    keeps each message as a file in its queue folder.
    """
    settings = get_settings()
    try:
        if settings.broker_url.startswith("filesystem://"):
            folder = settings.broker_data_dir / "queue"
            return {i for i in (_task_id(p.read_bytes()) for p in folder.glob("*.msg")) if i is not None}
        import redis

        client = redis.Redis.from_url(
            settings.broker_url,
            socket_timeout=settings.broker_timeout_s,
            socket_connect_timeout=settings.broker_timeout_s,
        )
        try:
            queue = settings.gpu_queue
            keys = [queue] + [f"{queue}\x06\x16{step}" for step in range(1, 10)]
            waiting = [_task_id(m) for key in keys for m in client.lrange(key, 0, -1)]
            delivered = [_task_id(v, delivered=True) for v in client.hvals("unacked")]
        finally:
            client.close()
        return {i for i in waiting + delivered if i is not None}
    except Exception as err:
        log.warning("could not inspect the broker (%s); no message is presumed lost", type(err).__name__)
        return None


def _task_id(raw: bytes, delivered: bool = False) -> str | None:
    """The task id of a raw kombu message; `delivered`: an `unacked` entry, [message, exchange, routing key]."""
    try:
        message = json.loads(raw)
        return (message[0] if delivered else message)["headers"]["id"]
    except (ValueError, KeyError, TypeError):
        return None


def republish_lost() -> list[str]:
    """Un-stamp queued jobs published more than `stale_queued_s` ago whose message the broker no longer has.

    They are then sent again by `publish_pending`. A job whose message is still waiting (behind a long job)
    is left alone, however old.
    """
    settings = get_settings()
    with session_factory()() as session:
        old = db_now(session) - timedelta(seconds=settings.stale_queued_s)
        candidates = session.scalars(
            select(Job.id).where(Job.status == JobStatus.queued, Job.enqueued_at.is_not(None), Job.enqueued_at < old)
        ).all()
        if not candidates:
            return []
        present = messages_in_broker()
        if present is None:
            return []
        lost = [job_id for job_id in candidates if str(job_id) not in present]
        for job_id in lost:
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.queued, Job.enqueued_at < old)
                .values(enqueued_at=None)
            )
        session.commit()
    if lost:
        log.warning("%d queued job(s) had no message in the broker; publishing them again", len(lost))
    return [str(j) for j in lost]
