"""Database tables: API tokens, jobs, inline calibration texts, the output repos we own, callbacks, and the
watch rules that compress new releases (with what they saw and the releases they turned into jobs).

Postgres is the source of truth for every job.

Portable across Postgres and SQLite (the embedded default): `Uuid`, `JSON`, non-native enums stored as
VARCHAR, timezone-aware timestamps written in UTC, and named constraints (a naming convention) so that
Alembic's batch mode on SQLite can recreate tables.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class ApiToken(Base):
    """A bearer token of one owner. Only a peppered SHA-256 of the token is stored."""

    __tablename__ = "api_token"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner: Mapped[str] = mapped_column(String(100), index=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Where this token's jobs may push (glob patterns of repo ids, e.g. ["acme/*"]); None: the deployment's
    # default (see app.outputs.allowed_patterns).
    output_patterns: Mapped[list[str] | None] = mapped_column(JSON)


class Job(Base):
    """One compression request and everything that happened to it."""

    __tablename__ = "job"
    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_job_owner_idempotency_key"),
        Index("ix_job_owner_created", "owner", "created_at", "id"),
        Index("ix_job_status", "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner: Mapped[str] = mapped_column(String(100))
    token_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("api_token.id", ondelete="SET NULL"))
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, native_enum=False, length=20, validate_strings=True), default=JobStatus.queued
    )
    # The request, as validated (JSON of app.schemas.JobCreate) and its canonical hash.
    model: Mapped[str] = mapped_column(String(200))
    revision: Mapped[str] = mapped_column(String(200), default="main")
    revision_sha: Mapped[str | None] = mapped_column(String(64))  # resolved commit
    method: Mapped[str] = mapped_column(String(50))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    request_hash: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    # Progress and outcome.
    stage: Mapped[str | None] = mapped_column(String(30))
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    stage_timings: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error_code: Mapped[str | None] = mapped_column(String(50))
    error_message: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Execution bookkeeping: which worker holds the job, until when, how many times it was claimed.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Transactional outbox: the queued row is the message. NULL means "not published yet" (or published
    # again after a re-queue); the dispatcher publishes such rows and stamps the time it did.
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Python-side defaults keep microseconds (SQLite's CURRENT_TIMESTAMP has whole seconds): list order.
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now(), onupdate=utcnow
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Where this job's events are POSTed (None: nowhere); see CallbackSubscription.
    callback_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("callback_subscription.id", ondelete="SET NULL"))
    # A job a watch rule created: the rule and the event of the release it compresses (None: made by hand).
    watch_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("watch.id", ondelete="SET NULL"))
    watch_event_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("watch_event.id", ondelete="SET NULL"))


class CalibrationText(Base):
    """Inline calibration text of a job, stored once by its SHA-256 (the job's request keeps only the hash)."""

    __tablename__ = "calibration_text"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    chars: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, server_default=func.now())


class OutputRepo(Base):
    """A Hub repo the service writes for one owner: reserved at submit, marked when the service creates it on
    the Hub and when an output was pushed into it.

    A repo id is reserved for one owner only (primary key: case-folded repo id, as the Hub compares names),
    so no other owner's job can ever push into it, and a job may only write over a repo that the service
    itself created for the same owner — and then only when it asks to (`output.overwrite`).
    """

    __tablename__ = "output_repo"

    repo_key: Mapped[str] = mapped_column(String(200), primary_key=True)  # lower-cased repo id
    repo_id: Mapped[str] = mapped_column(String(200))
    owner: Mapped[str] = mapped_column(String(100), index=True)
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("job.id", ondelete="SET NULL"))  # last writer
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, server_default=func.now())
    # Set just before the service creates the repo on the Hub (so a worker killed right after creating it
    # still knows the repo is ours), cleared again if the Hub says someone else has it.
    hub_created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    pushed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # first successful upload


class CallbackSubscription(Base):
    """A URL that receives signed events, with its signing secret (Standard Webhooks `whsec_…`).

    The secret has to be kept to sign: it is shown to the owner once, when the subscription is created,
    and never appears in a response, a job's stored request or a log afterwards.
    """

    __tablename__ = "callback_subscription"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner: Mapped[str] = mapped_column(String(100), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    secret: Mapped[str] = mapped_column(String(200))
    stage_events: Mapped[bool] = mapped_column(default=False)  # also POST on every stage change
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, server_default=func.now())


class CallbackDelivery(Base):
    """The callback outbox: one row per event, written in the transaction that made the event happen.

    So a crash between a job finishing and its callback being sent never loses the callback: whichever
    worker runs the dispatcher next sends it. `id` is the event's `webhook-id`, the same on every retry, so
    receivers can drop duplicates. One terminal event per job and subscription (unique `dedupe_key`).
    """

    __tablename__ = "callback_delivery"
    __table_args__ = (
        UniqueConstraint("subscription_id", "dedupe_key", name="uq_callback_delivery_subscription_dedupe"),
        Index("ix_callback_delivery_due", "delivered_at", "abandoned_at", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # "msg_<32 hex>"
    subscription_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("callback_subscription.id", ondelete="CASCADE"))
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(50))  # job.succeeded, job.failed, job.cancelled, job.stage
    dedupe_key: Mapped[str] = mapped_column(String(200))  # e.g. "<job id>:terminal"
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)  # the exact body, fixed at creation
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    abandoned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # retries exhausted
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, server_default=func.now())


class Watch(Base):
    """A rule: which new Hub releases to compress (authors, a name glob, architectures, a size range) and how
    (job templates: a job body without `model`/`revision`). Jobs it creates belong to its owner."""

    __tablename__ = "watch"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner: Mapped[str] = mapped_column(String(100), index=True)
    token_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("api_token.id", ondelete="SET NULL"))
    name: Mapped[str] = mapped_column(String(100), default="")
    authors: Mapped[list[str]] = mapped_column(JSON)  # Hub users or organisations
    name_pattern: Mapped[str] = mapped_column(String(200), default="*")  # glob on the repo name
    architectures: Mapped[list[str] | None] = mapped_column(JSON)  # config model_type values; None: any
    min_params: Mapped[int | None] = mapped_column(BigInteger)
    max_params: Mapped[int | None] = mapped_column(BigInteger)
    templates: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # validated app.watch_schemas.WatchTemplate
    new_commits: Mapped[bool] = mapped_column(default=False)  # a new commit of a seen repo is a new release
    quiet_period_s: Mapped[int] = mapped_column(Integer, default=600)  # no commit for this long: upload done
    paused: Mapped[bool] = mapped_column(default=False)
    callback_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("callback_subscription.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now(), onupdate=utcnow
    )


class WatchEvent(Base):
    """What a rule saw and did: a release detected, skipped (with the reason), or turned into jobs."""

    __tablename__ = "watch_event"
    __table_args__ = (Index("ix_watch_event_watch_created", "watch_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    watch_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("watch.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))  # detected / skipped / jobs_created
    repo_id: Mapped[str] = mapped_column(String(200))
    revision_sha: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(20))  # webhook / poller
    reason: Mapped[str | None] = mapped_column(Text)  # why skipped
    job_ids: Mapped[list[str] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, server_default=func.now())


class WatchRelease(Base):
    """Exactly once: a (rule, repo, commit, template) creates at most one job, ever — the primary key is the
    guarantee, whatever fires together (a webhook and the poller, two pollers, a retried task)."""

    __tablename__ = "watch_release"

    watch_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("watch.id", ondelete="CASCADE"), primary_key=True)
    repo_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    revision_sha: Mapped[str] = mapped_column(String(64), primary_key=True)
    template_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("job.id", ondelete="SET NULL"))
    event_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("watch_event.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, server_default=func.now())


class WatchSighting(Base):
    """Where one rule stands with one release (a repo at a commit): waiting (still uploading), skipped (with
    the reason) or taken. Events are written only when this row changes, so re-checking a release every poll
    period does not flood the rule's history, and two processes checking at once write each event once."""

    __tablename__ = "watch_sighting"

    watch_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("watch.id", ondelete="CASCADE"), primary_key=True)
    repo_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    revision_sha: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(20))  # detected / waiting / skipped / taken
    reason: Mapped[str | None] = mapped_column(Text)
    detected_event_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("watch_event.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now(), onupdate=utcnow
    )


class HubNotification(Base):
    """A Hub webhook payload, recorded when it arrives (the answer does not wait for any work) and processed by
    the watcher task; a release still uploading keeps its notification pending until `due_at`."""

    __tablename__ = "hub_notification"
    __table_args__ = (Index("ix_hub_notification_pending", "processed_at", "due_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    repo_id: Mapped[str] = mapped_column(String(200))
    head_sha: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(20))
    scope: Mapped[str] = mapped_column(String(50))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, server_default=func.now())
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, server_default=func.now())
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class JobEvent(Base):
    """One change of a job, in order: queued, stage, progress, cancel_requested, terminal. What `GET
    /jobs/{id}/events` streams (Server-Sent Events, the row id is the event id); written in the transaction of
    the change it reports, so every API process streams the same history and a resumed stream misses nothing."""

    __tablename__ = "job_event"
    __table_args__ = (Index("ix_job_event_job_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, server_default=func.now())
