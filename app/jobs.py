"""Job operations behind the routes: submit (idempotent), read, list (cursor), cancel.

Submission resolves the revision to a commit sha on the Hub, so a job always compresses exactly what was
there when it was asked for. When the Hub says the model or revision does not exist (or is gated), the
job is still recorded, already failed with that code, so that automation sees one uniform outcome; when
the Hub cannot be reached, the worker resolves the revision instead.
"""

from __future__ import annotations

import base64
import logging
import uuid
from datetime import datetime

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.models import Job, JobStatus, utcnow
from app.schemas import JobCreate, utc
from app.settings import get_settings

log = logging.getLogger(__name__)


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body."""


def resolve_revision(model: str, revision: str) -> tuple[str | None, tuple[str, str] | None]:
    """(commit sha, None) or (None, (error code, message)); (None, None) when the Hub is unreachable."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi(token=get_settings().hub_write_token()).model_info(model, revision=revision, timeout=10)
    except GatedRepoError:
        return None, ("gated_or_unauthorized", f"{model} is gated or needs credentials this deployment lacks")
    except RevisionNotFoundError:
        return None, ("revision_not_found", f"{model} has no revision {revision!r}")
    except RepositoryNotFoundError:
        return None, ("model_not_found", f"no model {model!r} on the Hub (or it is private to another account)")
    except HfHubHTTPError as err:
        if err.response is not None and err.response.status_code in (401, 403):
            return None, ("gated_or_unauthorized", f"the Hub refused access to {model}")
        log.warning("revision of %s not resolved at submit (%s); the worker will retry", model, err)
        return None, None
    except Exception as err:  # connection refused, DNS, timeouts (the HTTP client's own error types)
        log.warning("Hub unreachable at submit (%s); the worker will resolve %s", err, model)
        return None, None
    return info.sha, None


def submit(session: Session, owner: str, token_id: object, body: JobCreate, key: str | None) -> tuple[Job, bool]:
    """(job, created). With an Idempotency-Key already used by this owner: the original job, or a conflict."""
    fingerprint = body.fingerprint()
    if key is not None:
        existing = session.scalar(select(Job).where(Job.owner == owner, Job.idempotency_key == key))
        if existing is not None:
            if existing.request_hash != fingerprint:
                raise IdempotencyConflict(key)
            return existing, False
    sha, failure = resolve_revision(body.model, body.revision)
    job = Job(
        owner=owner,
        token_id=token_id,
        model=body.model,
        revision=body.revision,
        revision_sha=sha,
        method=body.method,
        request=body.model_dump(mode="json"),
        request_hash=fingerprint,
        idempotency_key=key,
    )
    if failure is not None:
        job.status, job.stage = JobStatus.failed, "resolve"
        job.error_code, job.error_message = failure
        job.finished_at = utcnow()
    session.add(job)
    try:
        session.commit()
    except IntegrityError:  # a concurrent request with the same key won the race
        session.rollback()
        if key is None:
            raise
        return submit(session, owner, token_id, body, key)
    return job, True


def get_job(session: Session, owner: str, job_id: uuid.UUID) -> Job | None:
    return session.scalar(select(Job).where(Job.id == job_id, Job.owner == owner))


def encode_cursor(job: Job) -> str:
    raw = f"{utc(job.created_at).isoformat()}|{job.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    created, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
    return datetime.fromisoformat(created), uuid.UUID(job_id)


def list_jobs(
    session: Session, owner: str, status: JobStatus | None, model: str | None, limit: int, cursor: str | None
) -> tuple[list[Job], str | None]:
    """Newest first; the cursor is the (created_at, id) of the last row returned, so pages never drift."""
    query = select(Job).where(Job.owner == owner)
    if status is not None:
        query = query.where(Job.status == status)
    if model is not None:
        query = query.where(Job.model == model)
    if cursor is not None:
        created, last_id = decode_cursor(cursor)
        if session.get_bind().dialect.name == "sqlite":
            created = created.replace(tzinfo=None)
        query = query.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < last_id)))
    rows = list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1]) if more and rows else None


def cancel(session: Session, job: Job) -> Job:
    """Queued: cancelled at once (the worker's claim will skip it). Running: flagged for the worker."""
    now = utcnow()
    queued = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == JobStatus.queued)
        .values(status=JobStatus.cancelled, stage="cancelled", finished_at=now, cancel_requested_at=now)
    )
    if queued.rowcount == 0:  # already claimed (or finished): ask the worker to stop at the next boundary
        session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == JobStatus.running, Job.cancel_requested_at.is_(None))
            .values(cancel_requested_at=now)
        )
    session.commit()
    session.refresh(job)
    return job
