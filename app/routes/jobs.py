"""Job routes: submit, read, list, cancel. Every route is scoped to the caller's own jobs."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Header, HTTPException, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app import job_events, jobs
from app.auth import CallerDep
from app.db import SessionDep
from app.models import JobStatus
from app.outputs import OutputRefused
from app.responses import AUTH_ERRORS, BODY_ERRORS, FieldErrors, JobOut, JobPage, Message
from app.schemas import JobCreate
from app.settings import get_settings

log = logging.getLogger(__name__)
router = APIRouter(
    prefix="/jobs",
    tags=["jobs"],
    responses=AUTH_ERRORS,
)
NOT_FOUND = {404: {"model": Message, "description": "no such job (or it belongs to another owner)"}}


def field_error(status_code: int, loc: list[str], msg: str, kind: str) -> HTTPException:
    """An error in the same shape as a 422 validation error, so clients read every refusal one way."""
    return HTTPException(status_code, [{"loc": loc, "msg": msg, "type": kind}])


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses={
        403: {"model": FieldErrors, "description": "the token may not push to `output.repo_id`"},
        409: {"model": FieldErrors, "description": "another of your jobs is still writing `output.repo_id`"},
    }
    | BODY_ERRORS,
)
def submit_job(
    body: JobCreate,
    session: SessionDep,
    caller: CallerDep,
    response: Response,
    background: BackgroundTasks,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> JobOut:
    """Submit a compression job. Poll the URL in `Location`; replays with the same Idempotency-Key are free.

    The job row is the message (a transactional outbox): it is committed first, then published to the
    broker after the response is sent; if that fails, the workers' dispatcher publishes it. So the answer
    never waits on the broker, and an accepted job is never lost.
    """
    try:
        job, created = jobs.submit(session, caller, body, idempotency_key)
    except jobs.IdempotencyConflict as err:
        raise field_error(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            ["header", "Idempotency-Key"],
            "key already used with a different request body",
            "idempotency_conflict",
        ) from err
    except OutputRefused as err:
        kind = {403: "output_forbidden", 409: "output_busy"}.get(err.status, "output_not_allowed")
        raise field_error(err.status, ["body", "output", "repo_id"], err.message, kind) from err
    if created and job.status == JobStatus.queued:
        background.add_task(publish_now, job.id)
    response.headers["Location"] = f"/jobs/{job.id}"
    response.headers["Retry-After"] = str(get_settings().retry_after_s)
    generated = created and body.callback is not None and body.callback.secret is None
    return JobOut.of(job, callback_secret=jobs.callback_secret(session, job) if generated else None)


def publish_now(job_id: uuid.UUID) -> None:
    """Best effort, after the response: publish the job's message (bounded by the broker timeouts)."""
    from worker.outbox import publish_one  # the API image has Celery but not the engine: no torch here

    try:
        publish_one(job_id)
    except Exception as err:  # broker down or slow: the row stays unpublished and a dispatcher sends it
        log.warning("job %s not published now (%s); the dispatcher will", job_id, type(err).__name__)


@router.get("/{job_id}", response_model=JobOut, responses=NOT_FOUND)
def read_job(job_id: uuid.UUID, session: SessionDep, caller: CallerDep, response: Response) -> JobOut:
    """Status, stage, progress, error and result of one job."""
    job = jobs.get_job(session, caller.owner, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "job not found")
    if not job.status.finished:
        response.headers["Retry-After"] = str(get_settings().retry_after_s)
    return JobOut.of(job)


@router.get("", response_model=JobPage)
def list_jobs(
    session: SessionDep,
    caller: CallerDep,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    model: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> JobPage:
    """The caller's jobs, newest first, optionally filtered by status and model."""
    try:
        rows, next_cursor = jobs.list_jobs(session, caller.owner, status_, model, limit, cursor)
    except ValueError as err:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "value_error"}],
        ) from err
    return JobPage(data=[JobOut.of(j) for j in rows], next_cursor=next_cursor)


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    responses={409: {"model": Message, "description": "the job is pushing its result; it can no longer be cancelled"}}
    | NOT_FOUND,
)
def cancel_job(job_id: uuid.UUID, session: SessionDep, caller: CallerDep) -> JobOut:
    """Cancel: a queued job never starts; a running one stops at the next layer or stage. Idempotent.

    Once a job has started pushing its result, a cancel is refused with 409 (it would not be honoured).
    """
    job = jobs.get_job(session, caller.owner, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "job not found")
    try:
        return JobOut.of(jobs.cancel(session, job))
    except jobs.CancelRefused as err:
        raise HTTPException(status.HTTP_409_CONFLICT, str(err)) from err


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "Server-Sent Events: `queued`, `stage`, `progress`, `cancel_requested`, `terminal` (the "
            "stream ends after it); each `data` is JSON {status, stage, progress} (+ error, result when terminal)",
        }
    }
    | NOT_FOUND,
)
async def job_event_stream(
    job_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    caller: CallerDep,
    last_event_id: Annotated[int | None, Header(ge=0, description="resume after this event id")] = None,
    after: Annotated[int | None, Query(ge=0, description="like Last-Event-ID, for clients that cannot set it")] = None,
) -> StreamingResponse:
    """Follow a job live: its whole history first (or what came after `Last-Event-ID`), then each change."""
    job = await run_in_threadpool(jobs.get_job, session, caller.owner, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "job not found")
    await run_in_threadpool(session.close)  # the stream opens its own short sessions
    start = last_event_id if last_event_id is not None else after or 0
    return job_events.streaming_response(job_id, start, request)
