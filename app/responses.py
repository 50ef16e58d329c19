"""Response bodies of the job API: a job as clients see it, pages of jobs, and the shapes of refusals."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class JobError(BaseModel):
    code: str = Field(description="machine-readable: model_not_found, out_of_memory, hub_push_failed, … (README)")
    message: str = Field(description="what happened and which lever to pull; never contains server paths")


class Progress(BaseModel):
    stage: str | None = Field(None, description="the stage running: download, calibrate, compress, recover, push, …")
    layer: int | None = Field(None, description="layers done within the stage")
    layers: int | None = Field(None, description="layers the stage goes through")
    fraction: float | None = Field(None, description="how far the stage is, 0 to 1")
    tokens: int | None = Field(None, description="recovery: training tokens done")
    tokens_total: int | None = Field(None, description="recovery: the token budget")
    loss: float | None = Field(None, description="recovery: the last step's distillation loss")


class JobOut(BaseModel):
    id: uuid.UUID = Field(description="the job's id")
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"] = Field(
        description="queued → running → succeeded / failed / cancelled"
    )
    stage: str | None = Field(description="the current (or, when finished, the final) stage")
    progress: Progress | None = Field(description="where the running stage is")
    model: str = Field(description="the source model's Hub id")
    revision: str = Field(description="the revision asked for")
    revision_sha: str | None = Field(description="the commit it resolved to (what is compressed)")
    method: str = Field(description="the compression method")
    request: dict[str, Any] = Field(description="the request as it will run: defaults resolved, output repo named")
    cancel_requested: bool = Field(description="a cancel was asked for (a running job stops at the next boundary)")
    error: JobError | None = Field(description="why a failed job failed")
    result: dict[str, Any] | None = Field(
        description="a succeeded job's outcome: repo id, commit and URL, params and perplexity before/after, "
        "achieved ratio, KV cache per token, recovery, speed-up, time per stage"
    )
    stage_timings: dict[str, Any] | None = Field(description="wall seconds per finished stage")
    created_at: datetime = Field(description="when it was submitted")
    updated_at: datetime = Field(description="its last change")
    started_at: datetime | None = Field(description="when a worker claimed it (the last attempt)")
    finished_at: datetime | None = Field(description="when it reached its final state")
    callback_secret: str | None = Field(
        None,
        description="the generated signing secret of `callback`: only in the response that created the job",
    )
    watch_id: uuid.UUID | None = Field(None, description="the watch rule that created this job (null: made by hand)")
    watch_event_id: uuid.UUID | None = Field(None, description="the rule's event of the release this job compresses")

    @classmethod
    def of(cls, job: Any, callback_secret: str | None = None) -> JobOut:
        return cls(
            callback_secret=callback_secret,
            id=job.id,
            status=job.status.value,
            stage=job.stage,
            progress=Progress(**job.progress) if job.progress else None,
            model=job.model,
            revision=job.revision,
            revision_sha=job.revision_sha,
            method=job.method,
            request=job.request,
            cancel_requested=job.cancel_requested_at is not None,
            error=JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None,
            result=job.result,
            stage_timings=job.stage_timings,
            created_at=utc(job.created_at),
            updated_at=utc(job.updated_at),
            started_at=utc(job.started_at),
            finished_at=utc(job.finished_at),
            watch_id=job.watch_id,
            watch_event_id=job.watch_event_id,
        )


class JobPage(BaseModel):
    data: list[JobOut] = Field(description="jobs, newest first")
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page; null at the end")


def utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything is stored in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="where the problem is, e.g. ['body', 'output', 'repo_id']")
    msg: str = Field(description="what is wrong with it")
    type: str = Field(description="machine-readable error type, e.g. missing, value_error, output_forbidden")


class FieldErrors(BaseModel):
    """A refusal that names the field responsible (the shape of FastAPI's 422 validation errors)."""

    detail: list[FieldError] = Field(description="one entry per refused field")


class Message(BaseModel):
    """An error with a human-readable message."""

    detail: str = Field(description="the message")


# Answers every authenticated route can give, documented once for the OpenAPI page.
AUTH_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": Message, "description": "missing, invalid or revoked API token"},
    503: {"model": Message, "description": "the database is unavailable; retry after `Retry-After`"},
}
BODY_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": Message, "description": "the body could not be read as JSON"},
    413: {"model": Message, "description": "request body too large"},
}
