"""A job's event log and its Server-Sent Events stream (`GET /jobs/{id}/events`).

Every change of a job — accepted (`queued`), a new `stage`, `progress` within a stage (layer i/N, tokens),
`cancel_requested`, and the `terminal` state — is appended as a `job_event` row in the same transaction as
the change itself, by whoever makes it (the API, the worker, the sweep). The stream is read from that table,
not from process memory, so any API process serves any job, and a client that reconnects with
`Last-Event-ID` gets exactly what it missed. The stream ends after the terminal event.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.db import session_factory
from app.models import Job, JobEvent

KINDS = ("queued", "stage", "progress", "cancel_requested", "terminal")
POLL_S = 0.5  # how often an open stream looks for new rows
KEEPALIVE_S = 15.0  # a comment line this often, so proxies keep an idle stream open
BATCH = 500


def append(session: Session, job_id: uuid.UUID | str, kind: str) -> None:
    """Record the job's current state as a `kind` event, in the caller's transaction (after its UPDATE)."""
    if kind not in KINDS:
        raise ValueError(f"unknown job event kind {kind!r}")
    session.flush()
    job = session.get(Job, uuid.UUID(str(job_id)), populate_existing=True)
    if job is not None:
        session.add(JobEvent(job_id=job.id, kind=kind, data=snapshot(job, kind)))


def snapshot(job: Job, kind: str) -> dict[str, Any]:
    data: dict[str, Any] = {"status": job.status.value, "stage": job.stage, "progress": job.progress}
    if kind == "terminal":
        data["error"] = {"code": job.error_code, "message": job.error_message or ""} if job.error_code else None
        data["result"] = job.result
    return data


def _frame(event_id: int | None, kind: str, data: dict[str, Any]) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _read(factory: Callable[[], Session], job_id: uuid.UUID, after: int) -> tuple[list[JobEvent], Job | None]:
    with factory() as session:
        rows = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after).order_by(JobEvent.id).limit(BATCH)
        ).all()
        job = session.get(Job, job_id)
        session.expunge_all()
        return list(rows), job


async def stream(
    factory: Callable[[], Session], job_id: uuid.UUID, after: int, disconnected: Callable[[], Any]
) -> AsyncIterator[str]:
    """SSE frames of the job's events after id `after`, until the terminal one (or the client leaves).

    A finished job without a terminal event (one older than the event log) still ends its stream: its
    terminal state is sent from the row, without an id. No database connection is held between polls.
    """
    idle = 0.0
    yield "retry: 2000\n\n"
    while True:
        rows, job = await run_in_threadpool(_read, factory, job_id, after)
        for row in rows:
            yield _frame(row.id, row.kind, row.data)
            after = row.id
            if row.kind == "terminal":
                return
        if job is None:
            return
        if not rows and job.status.finished:
            # The terminal row commits with the status, but may have landed between the two reads above.
            if (await run_in_threadpool(_read, factory, job_id, after))[0]:
                continue
            yield _frame(None, "terminal", snapshot(job, "terminal"))  # a job older than the event log
            return
        if len(rows) == BATCH:
            continue
        if await disconnected():
            return
        await asyncio.sleep(POLL_S)
        idle = 0.0 if rows else idle + POLL_S
        if idle >= KEEPALIVE_S:
            idle = 0.0
            yield ": keep-alive\n\n"


def streaming_response(job_id: uuid.UUID, after: int, request: Request) -> StreamingResponse:
    """The `text/event-stream` answer for a job the caller may see (the API's and the dashboard's route)."""
    frames = stream(session_factory(), job_id, after, request.is_disconnected)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of the stream
    return StreamingResponse(frames, media_type="text/event-stream", headers=headers)
