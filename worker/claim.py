"""Job state transitions in the database, each one conditional UPDATE (atomic on Postgres and SQLite).

The row is the job; a broker message is only a wake-up call. So every transition says which state it
starts from, and the writes of a running job also say which worker holds it (`worker` doubles as a fencing
token): a worker that lost its lease — the sweep re-queued the job and another worker claimed it — can
neither extend that lease nor overwrite the other worker's progress or outcome. Redelivered or duplicated
messages are therefore harmless: the second `claim` of a job finds it no longer queued and does nothing.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from app import job_events, outputs
from app.callbacks import enqueue_job_event
from app.db import database_unavailable, session_factory
from app.models import CalibrationText, Job, JobStatus, utcnow
from app.settings import get_settings

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


def ride_out(fn: Callable[P, R]) -> Callable[P, R]:
    """Retry `fn` while the database is unavailable, for up to `Settings.db_retry_s` (then re-raise).

    Every wrapped write is a conditional UPDATE, so running it again after a commit whose answer was lost
    does no harm. A running job therefore pauses through a database outage instead of failing or restarting.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        deadline = time.monotonic() + get_settings().db_retry_s
        delay = 0.5
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as err:
                if not database_unavailable(err) or time.monotonic() + delay > deadline:
                    raise
                log.warning(
                    "database unavailable in %s (%s); retrying in %.1f s", fn.__name__, type(err).__name__, delay
                )
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    return wrapper


def _session() -> Session:
    return session_factory()()


def _id(job_id: str | uuid.UUID) -> uuid.UUID:
    return job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))


def db_now(session: Session) -> datetime:
    """Now in UTC; naive on SQLite, which stores timestamps without an offset (comparisons are textual)."""
    now = utcnow()
    return now.replace(tzinfo=None) if session.get_bind().dialect.name == "sqlite" else now


def _held(job_id: str | uuid.UUID, worker: str) -> tuple[Any, ...]:
    """WHERE clause of every write by the worker that holds a running job."""
    return (Job.id == _id(job_id), Job.status == JobStatus.running, Job.worker == worker)


@ride_out
def claim(job_id: str | uuid.UUID, worker: str) -> bool:
    """queued → running for `worker`; False (and nothing changes) when the job is not queued any more."""
    lease = timedelta(seconds=get_settings().lease_s)
    with _session() as session:
        now = db_now(session)
        done = session.execute(
            update(Job)
            .where(Job.id == _id(job_id), Job.status == JobStatus.queued)
            .values(
                status=JobStatus.running,
                stage="starting",
                progress={"stage": "starting", "layer": None, "layers": None, "fraction": 0.0},
                started_at=now,
                worker=worker,
                lease_until=now + lease,
                attempts=Job.attempts + 1,
                stage_timings=None,  # timings of an earlier, abandoned attempt are not this attempt's
                updated_at=now,
            )
        )
        if done.rowcount == 1:
            job_events.append(session, job_id, "stage")
        session.commit()
        if done.rowcount == 1:
            return True
        # Retried after a commit whose answer was lost? Then the job is already running for this worker.
        holder = session.scalar(select(Job.worker).where(*_held(job_id, worker)))
        return holder == worker


@ride_out
def load(job_id: str | uuid.UUID) -> Job | None:
    """The job row, detached (its attributes stay readable after the session closes)."""
    with _session() as session:
        return session.get(Job, _id(job_id))


def heartbeat(job_id: str | uuid.UUID, worker: str) -> bool:
    """Extend the lease; False when this worker no longer holds the job (it should stop)."""
    lease = timedelta(seconds=get_settings().lease_s)
    with _session() as session:
        now = db_now(session)
        done = session.execute(update(Job).where(*_held(job_id, worker)).values(lease_until=now + lease))
        session.commit()
        return done.rowcount == 1


@ride_out
def set_progress(
    job_id: str | uuid.UUID,
    worker: str,
    stage: str,
    layer: int | None = None,
    layers: int | None = None,
    fraction: float | None = None,
    extra: dict[str, Any] | None = None,
) -> bool:
    """Current stage and position within it; also extends the lease (progress is proof of life)."""
    lease = timedelta(seconds=get_settings().lease_s)
    progress = {"stage": stage, "layer": layer, "layers": layers, "fraction": fraction} | (extra or {})
    with _session() as session:
        now = db_now(session)
        before = session.execute(select(Job.stage, Job.progress).where(Job.id == _id(job_id))).one_or_none()
        previous, previous_progress = before if before is not None else (None, None)
        done = session.execute(
            update(Job)
            .where(*_held(job_id, worker))
            .values(stage=stage, progress=progress, lease_until=now + lease, updated_at=now)
        )
        if done.rowcount == 1 and previous != stage:
            job_events.append(session, job_id, "stage")
        elif done.rowcount == 1 and progress != previous_progress:  # a lease-renewing rewrite is not an event
            job_events.append(session, job_id, "progress")
        if done.rowcount == 1 and previous != stage:
            enqueue_job_event(session, job_id, stage=stage)  # for subscriptions that asked for stage changes
        session.commit()
        return done.rowcount == 1


@ride_out
def set_revision(job_id: str | uuid.UUID, worker: str, sha: str) -> bool:
    """The commit the worker actually downloaded (submit could not resolve it when the Hub was down)."""
    with _session() as session:
        done = session.execute(update(Job).where(*_held(job_id, worker)).values(revision_sha=sha))
        session.commit()
        return done.rowcount == 1


@ride_out
def record_stage_time(job_id: str | uuid.UUID, worker: str, stage: str, seconds: float) -> bool:
    """Add one stage's wall time to `stage_timings`.

    A read-modify-write of a JSON column, safe because only the lease holder writes it (the fenced UPDATE
    drops the write of a worker that lost the job).
    """
    with _session() as session:
        timings = session.scalar(select(Job.stage_timings).where(Job.id == _id(job_id))) or {}
        timings = {**timings, stage: round(seconds, 3)}
        done = session.execute(update(Job).where(*_held(job_id, worker)).values(stage_timings=timings))
        session.commit()
        return done.rowcount == 1


@ride_out
def enter_push(job_id: str | uuid.UUID, worker: str) -> bool:
    """Move a held job into `push` unless a cancel was requested (atomic with the API's cancel, which refuses
    jobs already in `push`); False when a cancel came first or the job is no longer this worker's."""
    with _session() as session:
        now = db_now(session)
        done = session.execute(
            update(Job)
            .where(*_held(job_id, worker), Job.cancel_requested_at.is_(None))
            .values(
                stage="push", progress={"stage": "push", "layer": None, "layers": None, "fraction": 0.0}, updated_at=now
            )
        )
        if done.rowcount == 1:
            job_events.append(session, job_id, "stage")
        session.commit()
        return done.rowcount == 1


@ride_out
def cancel_requested(job_id: str | uuid.UUID) -> bool:
    """Whether the owner asked to cancel (the API sets `cancel_requested_at`; the worker stops cooperatively)."""
    with _session() as session:
        return session.scalar(select(Job.cancel_requested_at).where(Job.id == _id(job_id))) is not None


@ride_out
def finish(
    job_id: str | uuid.UUID,
    worker: str,
    status: JobStatus,
    error_code: str | None = None,
    message: str | None = None,
    result: dict[str, Any] | None = None,
) -> bool:
    """running → succeeded | failed | cancelled; False when this worker no longer held the job."""
    if not status.finished:
        raise ValueError(f"finish() needs a final status, not {status}")
    with _session() as session:
        now = db_now(session)
        done = session.execute(
            update(Job)
            .where(*_held(job_id, worker))
            .values(
                status=status,
                stage=status.value,
                error_code=error_code,
                error_message=message,
                result=result,
                finished_at=now,
                lease_until=None,
                updated_at=now,
            )
        )
        if done.rowcount == 1:
            job_events.append(session, job_id, "terminal")
            enqueue_job_event(session, job_id)  # the callback, committed with the state it reports
        session.commit()
        if done.rowcount == 1:
            return True
        # Retried after a commit whose answer was lost? Then the row already says what we wrote.
        row = session.execute(select(Job.status, Job.worker).where(Job.id == _id(job_id))).one_or_none()
        return row is not None and row.status == status and row.worker == worker


def requeue_stale() -> dict[str, list[str]]:
    """Recover jobs whose worker died; returns what it did.

    - running, lease expired, cancel requested → cancelled (the owner wanted it stopped anyway);
    - running, lease expired, `max_attempts` claims used → failed `internal_error` (a job that kills its
      worker every time — e.g. the kernel's OOM killer — must not loop forever);
    - running, lease expired otherwise → queued again (attempts kept) with its message un-sent, so the
      outbox dispatcher (`worker.outbox`) publishes it once.
    Several workers may sweep at once: every change is conditional, and a duplicate message is a no-op claim.
    """
    settings = get_settings()
    done: dict[str, list[str]] = {"cancelled": [], "failed": [], "requeued": []}
    with _session() as session:
        now = db_now(session)
        if database_restarted_within(session, settings.lease_s):
            # Workers could not renew their leases while the database was down: give them one lease
            # period to do so before treating anybody as dead.
            log.info("sweep: the database restarted less than one lease ago; no lease is expired yet")
            return done
        expired = (Job.status == JobStatus.running, Job.lease_until < now)
        stale = session.execute(select(Job.id, Job.attempts, Job.cancel_requested_at).where(*expired)).all()
        for job_id, attempts, cancel_at in stale:
            if cancel_at is not None:
                values: dict[str, Any] = {"status": JobStatus.cancelled, "stage": "cancelled", "finished_at": now}
                key = "cancelled"
            elif attempts >= settings.max_attempts:
                values = {
                    "status": JobStatus.failed,
                    "stage": "failed",
                    "finished_at": now,
                    "error_code": "internal_error",
                    "error_message": f"the worker running this job stopped responding {attempts} times "
                    "(killed, e.g. by the host's out-of-memory killer, or lost); not retried again",
                }
                key = "failed"
            else:
                values = {"status": JobStatus.queued, "stage": "queued", "progress": None, "enqueued_at": None}
                key = "requeued"
            changed = session.execute(
                update(Job)
                .where(Job.id == job_id, *expired)
                .values(**values, worker=None, lease_until=None, updated_at=now)
            )
            if changed.rowcount == 1:
                done[key].append(str(job_id))
                job_events.append(session, job_id, "queued" if key == "requeued" else "terminal")
                if key != "requeued":
                    enqueue_job_event(session, job_id)
        session.commit()
    if any(done.values()):
        log.info("sweep: %s", {k: len(v) for k, v in done.items()})
    return done


def database_restarted_within(session: Session, seconds: float) -> bool:
    """Whether the database server started less than `seconds` ago (Postgres; False elsewhere)."""
    if session.get_bind().dialect.name != "postgresql":
        return False
    age = session.scalar(text("SELECT EXTRACT(EPOCH FROM now() - pg_postmaster_start_time())"))
    return age is not None and float(age) < seconds


@ride_out
def calibration_text(sha256: str) -> str:
    """Inline calibration text of a job, stored once by its hash at submit."""
    with _session() as session:
        text = session.scalar(select(CalibrationText.text).where(CalibrationText.sha256 == sha256))
    if text is None:
        raise LookupError(f"calibration text {sha256[:12]}… is missing from the database")
    return text


@ride_out
def output_created(repo_id: str, owner: str) -> bool:
    """Whether the service (already) created `repo_id` on the Hub for `owner`, so it may write it again."""
    with _session() as session:
        row = outputs.reservation(session, repo_id)
        return row is not None and row.owner == owner and row.hub_created_at is not None


@ride_out
def mark_output(repo_id: str, owner: str, created: bool | None = None, pushed: bool | None = None) -> None:
    """Record that the service is creating (True) or did not create (False) the repo, or pushed into it."""
    values: dict[str, Any] = {}
    if created is not None:
        values["hub_created_at"] = utcnow() if created else None
    if pushed:
        values["pushed_at"] = utcnow()
    with _session() as session:
        outputs.mark(session, repo_id, owner, **values)
