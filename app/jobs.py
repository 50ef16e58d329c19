"""Job operations behind the routes: submit (idempotent), read, list (cursor), cancel.

Submission resolves the revision to a commit sha on the Hub, so a job always compresses exactly what was
there when it was asked for. When the Hub says the model or revision does not exist (or is gated), the
job is still recorded, already failed with that code, so that automation sees one uniform outcome; when
the Hub cannot be reached, the worker resolves the revision instead.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import callbacks, job_events, outputs
from app.auth import Caller
from app.db import insert_ignoring_conflicts
from app.models import CalibrationText, CallbackSubscription, Job, JobStatus, utcnow
from app.responses import utc
from app.schemas import JobCreate
from app.settings import get_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobOrigin:
    """Where a job came from when a watch rule created it: the rule, the release's event, the rule's callback."""

    watch_id: uuid.UUID
    watch_event_id: uuid.UUID | None
    callback_id: uuid.UUID | None


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


TRANSIENT_FAILURES = frozenset({"hub_unavailable", "hub_push_failed", "internal_error", "timing_unstable"})


def replays(job: Job) -> bool:
    """Whether an Idempotency-Key replay returns `job`; False when it ended in a way worth trying again
    (cancelled, or failed for a transient reason), so the same key submits a fresh job."""
    if job.status == JobStatus.cancelled:
        return False
    return not (job.status == JobStatus.failed and job.error_code in TRANSIENT_FAILURES)


def submit(
    session: Session, caller: Caller, body: JobCreate, key: str | None, origin: JobOrigin | None = None
) -> tuple[Job, bool]:
    """(job, created). With an Idempotency-Key already used by this owner: the original job, or a conflict.

    No database connection is held while the Hub is asked anything: the read-only lookups end their
    transaction first, and the job is written in a short transaction of its own afterwards.
    """
    fingerprint = body.fingerprint()
    superseded: Job | None = None
    if key is not None:
        existing = session.scalar(select(Job).where(Job.owner == caller.owner, Job.idempotency_key == key))
        if existing is not None:
            if existing.request_hash != fingerprint:
                raise IdempotencyConflict(key)
            if replays(existing):
                session.commit()
                return existing, False
            superseded = existing
    output = body.output
    explicit = output.repo_id
    candidates: list[str] = []
    taken: dict[str, bool] = {}
    if output.push and explicit:
        outputs.check_allowed(explicit, caller.owner, caller.output_patterns, body.model)
    elif output.push:  # the default name, or its next free version (a new recipe never needs `overwrite`)
        label = outputs.target_label(body.target.model_dump())
        candidates = [
            outputs.default_repo_id(body.model, body.method, label, caller.owner, version)
            for version in range(1, outputs.DEFAULT_VERSIONS + 1)
        ]
        outputs.check_allowed(candidates[0], caller.owner, caller.output_patterns, body.model)
        taken = outputs.taken_for(session, candidates, caller.owner)
    session.commit()  # ends the read transaction: its connection goes back to the pool before the Hub calls

    sha, failure = resolve_revision(body.model, body.revision)
    repo_id, on_hub = explicit, None
    if output.push and failure is None:
        if explicit:
            on_hub = outputs.repo_exists_on_hub(explicit)
        else:
            repo_id, on_hub = outputs.first_free(candidates, taken)
    elif output.push:
        repo_id = explicit or candidates[0]
    request = body.model_dump(mode="json")
    text = request["calibration"].pop("text", None)
    if text is not None:
        request["calibration"]["text_sha256"] = store_calibration_text(session, text)
        request["calibration"]["text_chars"] = len(text)
    if repo_id is not None:
        request["output"]["repo_id"] = repo_id  # stored requests say what will run
    if request.get("callback"):
        request["callback"].pop("secret", None)  # a signing secret is never part of a stored request
    job = Job(
        id=uuid.uuid4(),
        owner=caller.owner,
        token_id=caller.token_id,
        model=body.model,
        revision=body.revision,
        revision_sha=sha,
        method=body.method,
        request=request,
        request_hash=fingerprint,
        idempotency_key=key,
    )
    if origin is not None:
        job.watch_id, job.watch_event_id, job.callback_id = origin.watch_id, origin.watch_event_id, origin.callback_id
    try:
        if superseded is not None:  # the failed job keeps its row and history, and gives up its key
            moved = session.execute(
                update(Job).where(Job.id == superseded.id, Job.idempotency_key == key).values(idempotency_key=None)
            )
            if moved.rowcount != 1:  # a concurrent resubmission got there first
                session.rollback()
                return submit(session, caller, body, key, origin)
        if body.callback is not None:
            subscription = callbacks.subscribe(
                session, caller.owner, body.callback.url, body.callback.secret, body.callback.stage_events
            )
            session.flush()  # the job row refers to it
            job.callback_id = subscription.id
        if failure is not None:
            job.status, job.stage = JobStatus.failed, "resolve"
            job.error_code, job.error_message = failure
            job.finished_at = utcnow()
        elif repo_id is not None:
            outputs.reserve(session, repo_id, caller.owner, job.id, output.overwrite, on_hub)
        session.add(job)
        job_events.append(session, job.id, "terminal" if failure is not None else "queued")
        if failure is not None:
            callbacks.enqueue_job_event(session, job.id)
        session.commit()
    except IntegrityError:  # a concurrent request with the same key (or reserving the same repo) won the race
        session.rollback()
        if key is None and repo_id is None:
            raise
        return submit(session, caller, body, key, origin)
    except BaseException:
        session.rollback()
        raise
    return job, True


def callback_secret(session: Session, job: Job) -> str | None:
    """The signing secret of the job's callback (shown once, in the response that created the job)."""
    subscription = session.get(CallbackSubscription, job.callback_id) if job.callback_id else None
    return subscription.secret if subscription else None


def store_calibration_text(session: Session, text: str) -> str:
    """Store inline calibration text once (keyed by its SHA-256, no-op when already there); its hash."""
    digest = hashlib.sha256(text.encode()).hexdigest()
    values = {"sha256": digest, "text": text, "chars": len(text), "created_at": utcnow()}
    insert_ignoring_conflicts(session, CalibrationText, values)
    return digest


def get_job(session: Session, owner: str, job_id: uuid.UUID) -> Job | None:
    return session.scalar(select(Job).where(Job.id == job_id, Job.owner == owner))


def encode_cursor(job: Job) -> str:
    raw = f"{utc(job.created_at).isoformat()}|{job.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    created, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
    return datetime.fromisoformat(created), uuid.UUID(job_id)


def list_jobs(
    session: Session,
    owner: str,
    status: JobStatus | None,
    model: str | None,
    limit: int,
    cursor: str | None,
    method: str | None = None,
) -> tuple[list[Job], str | None]:
    """Newest first; the cursor is the (created_at, id) of the last row returned, so pages never drift."""
    query = select(Job).where(Job.owner == owner)
    if status is not None:
        query = query.where(Job.status == status)
    if model is not None:
        query = query.where(Job.model == model)
    if method is not None:
        query = query.where(Job.method == method)
    if cursor is not None:
        created, last_id = decode_cursor(cursor)
        if session.get_bind().dialect.name == "sqlite":
            created = created.replace(tzinfo=None)
        query = query.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < last_id)))
    rows = list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1]) if more and rows else None


class CancelRefused(Exception):
    """The job is past the point where a cancel can be honoured."""


def cancel(session: Session, job: Job) -> Job:
    """Queued: cancelled at once (the worker's claim will skip it). Running: flagged for the worker.

    A running job that already entered `push` cannot be stopped any more (the upload is one commit):
    such a cancel is refused instead of accepted and ignored. The worker enters `push` with a conditional
    UPDATE that requires no cancel request, so the two never both win.
    """
    now = utcnow()
    queued = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == JobStatus.queued)
        .values(status=JobStatus.cancelled, stage="cancelled", finished_at=now, cancel_requested_at=now)
    )
    if queued.rowcount == 1:
        job_events.append(session, job.id, "terminal")
        callbacks.enqueue_job_event(session, job.id)
    if queued.rowcount == 0:  # already claimed (or finished): ask the worker to stop at the next boundary
        flagged = session.execute(
            update(Job)
            .where(
                Job.id == job.id,
                Job.status == JobStatus.running,
                Job.cancel_requested_at.is_(None),
                or_(Job.stage.is_(None), Job.stage != "push"),
            )
            .values(cancel_requested_at=now)
        )
        if flagged.rowcount == 1:
            job_events.append(session, job.id, "cancel_requested")
    session.commit()
    session.refresh(job)
    if job.status == JobStatus.running and job.stage == "push" and job.cancel_requested_at is None:
        raise CancelRefused("the job is pushing its result to the Hub and can no longer be cancelled")
    return job
