"""Response bodies of the job API: a job as clients see it, pages of jobs, and the shapes of refusals."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class JobError(BaseModel):
    code: str
    message: str


class Progress(BaseModel):
    stage: str | None = None
    layer: int | None = None
    layers: int | None = None
    fraction: float | None = None
    tokens: int | None = Field(None, description="recovery: training tokens done")
    tokens_total: int | None = Field(None, description="recovery: the token budget")
    loss: float | None = Field(None, description="recovery: the last step's distillation loss")


class JobOut(BaseModel):
    id: uuid.UUID
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    stage: str | None
    progress: Progress | None
    model: str
    revision: str
    revision_sha: str | None
    method: str
    request: dict[str, Any]
    cancel_requested: bool
    error: JobError | None
    result: dict[str, Any] | None
    stage_timings: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
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
    data: list[JobOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page; null at the end")


def utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything is stored in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="where the problem is, e.g. ['body', 'output', 'repo_id']")
    msg: str
    type: str


class FieldErrors(BaseModel):
    """A refusal that names the field responsible (the shape of FastAPI's 422 validation errors)."""

    detail: list[FieldError]


class Message(BaseModel):
    """An error with a human-readable message."""

    detail: str


# Answers every authenticated route can give, documented once for the OpenAPI page.
AUTH_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": Message, "description": "missing, invalid or revoked API token"},
    503: {"model": Message, "description": "the database is unavailable; retry after `Retry-After`"},
}
BODY_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": Message, "description": "the body could not be read as JSON"},
    413: {"model": Message, "description": "request body too large"},
}
