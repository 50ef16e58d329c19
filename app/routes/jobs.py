"""Job routes: submit, read, list, cancel. Every route is scoped to the caller's own jobs."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Response, status

from app import jobs
from app.auth import CallerDep
from app.db import SessionDep
from app.models import JobStatus
from app.schemas import JobCreate, JobOut, JobPage
from app.settings import get_settings

log = logging.getLogger(__name__)
router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
def submit_job(
    body: JobCreate,
    session: SessionDep,
    caller: CallerDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobOut:
    """Submit a compression job. Poll the URL in `Location`; replays with the same Idempotency-Key are free."""
    try:
        job, created = jobs.submit(session, caller.owner, caller.token_id, body, idempotency_key)
    except jobs.IdempotencyConflict as err:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [
                {
                    "loc": ["header", "Idempotency-Key"],
                    "msg": "key already used with a different request body",
                    "type": "idempotency_conflict",
                }
            ],
        ) from err
    if created and job.status == JobStatus.queued:
        from worker.celery_app import enqueue  # the message is only a wake-up call: the row is the job

        try:
            enqueue(str(job.id))
        except Exception:  # broker down: the row is queued anyway, and the workers' sweep picks it up
            log.exception("could not enqueue job %s; it stays queued for the sweep", job.id)
    response.headers["Location"] = f"/jobs/{job.id}"
    response.headers["Retry-After"] = str(get_settings().retry_after_s)
    return JobOut.of(job)


@router.get("/{job_id}", response_model=JobOut)
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


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: uuid.UUID, session: SessionDep, caller: CallerDep) -> JobOut:
    """Cancel: a queued job never starts; a running one stops at the next layer or stage. Idempotent."""
    job = jobs.get_job(session, caller.owner, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "job not found")
    return JobOut.of(jobs.cancel(session, job))
