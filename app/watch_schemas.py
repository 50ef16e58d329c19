"""Request and response bodies of the watch-rule API (`/watches`): what to compress when a release appears."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from app.responses import utc
from app.schemas import Callback, JobTemplate, Strict

HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")  # a Hub user or organisation


def hub_names(value: list[str] | None) -> list[str] | None:
    """Sorted, without duplicates; refuses what cannot be a Hub user or organisation name."""
    if value is None:
        return None
    bad = [a for a in value if not HUB_NAME.fullmatch(a)]
    if bad:
        raise ValueError(f"not Hub user or organisation names: {', '.join(bad[:5])}")
    return sorted(set(value))


class WatchTemplate(JobTemplate):
    """A job body without `model` and `revision`, validated exactly like one. Outputs are named from the
    source (`<owner>/<source name>-<method>-<target>`), so a template cannot fix `output.repo_id`; the
    rule's own `callback` covers its jobs."""

    @model_validator(mode="after")
    def _per_release_fields(self) -> WatchTemplate:
        if self.output.repo_id is not None:
            raise ValueError("output.repo_id cannot be fixed in a template: outputs are named after each release")
        if self.callback is not None:
            raise ValueError("callback belongs to the rule (one for all its jobs), not to a template")
        return self


class WatchCreate(Strict):
    name: str = Field("", max_length=100, description="a label for people")
    authors: list[str] = Field(min_length=1, max_length=50, description="Hub users or organisations to watch")
    name_pattern: str = Field("*", min_length=1, max_length=200, description="glob on the repo name, e.g. Llama-*")
    architectures: list[str] | None = Field(
        None, description="config model_type values to take (e.g. llama, qwen2); default: any the engine supports"
    )
    min_params: int | None = Field(None, ge=0, description="skip releases with fewer parameters")
    max_params: int | None = Field(None, ge=0, description="skip releases with more parameters")
    templates: list[WatchTemplate] = Field(
        min_length=1, max_length=10, description="what to run for each release (one job per template)"
    )
    new_commits: bool = Field(False, description="a new commit of an already compressed repo is a new release")
    quiet_period_s: int = Field(
        600, ge=0, le=7 * 86400, description="a release is taken once it has had no new commit for this long"
    )
    paused: bool = False
    callback: Callback | None = Field(None, description="POST signed events about the rule's jobs to a URL")

    @field_validator("authors")
    @classmethod
    def _valid_authors(cls, value: list[str]) -> list[str] | None:
        return hub_names(value)

    @model_validator(mode="after")
    def _size_range(self) -> WatchCreate:
        if self.min_params is not None and self.max_params is not None and self.min_params > self.max_params:
            raise ValueError("min_params must not exceed max_params")
        return self


class WatchPatch(Strict):
    """Fields to change; the others stay. The callback cannot be changed (create a new rule)."""

    name: str | None = Field(None, max_length=100)
    authors: list[str] | None = Field(None, min_length=1, max_length=50)
    name_pattern: str | None = Field(None, min_length=1, max_length=200)
    architectures: list[str] | None = None
    min_params: int | None = Field(None, ge=0)
    max_params: int | None = Field(None, ge=0)
    templates: list[WatchTemplate] | None = Field(None, min_length=1, max_length=10)
    new_commits: bool | None = None
    quiet_period_s: int | None = Field(None, ge=0, le=7 * 86400)
    paused: bool | None = None

    @field_validator("authors")
    @classmethod
    def _valid_authors(cls, value: list[str] | None) -> list[str] | None:
        return hub_names(value)


class WatchOut(BaseModel):
    id: uuid.UUID = Field(description="the rule's id")
    name: str = Field(description="its label")
    authors: list[str] = Field(description="watched Hub users or organisations")
    name_pattern: str = Field(description="glob on the repo name")
    architectures: list[str] | None = Field(description="model_type values taken (null: any supported)")
    min_params: int | None = Field(description="releases with fewer parameters are skipped")
    max_params: int | None = Field(description="releases with more parameters are skipped")
    templates: list[dict[str, Any]] = Field(description="the job bodies run for each release, defaults resolved")
    new_commits: bool = Field(description="whether a new commit of a taken repo is a new release")
    quiet_period_s: int = Field(description="seconds without a commit before a release is taken")
    paused: bool = Field(description="a paused rule records and creates nothing")
    callback: dict[str, Any] | None = Field(description="url and stage_events of the rule's callback")
    callback_secret: str | None = Field(
        None, description="the generated signing secret of `callback`: only in the response that created the rule"
    )
    created_at: datetime = Field(description="when the rule was created (it takes releases from then on)")
    updated_at: datetime = Field(description="its last change")

    @classmethod
    def of(cls, watch: Any, callback: Any = None, callback_secret: str | None = None) -> WatchOut:
        return cls(
            id=watch.id,
            name=watch.name,
            authors=watch.authors,
            name_pattern=watch.name_pattern,
            architectures=watch.architectures,
            min_params=watch.min_params,
            max_params=watch.max_params,
            templates=watch.templates,
            new_commits=watch.new_commits,
            quiet_period_s=watch.quiet_period_s,
            paused=watch.paused,
            callback={"url": callback.url, "stage_events": callback.stage_events} if callback else None,
            callback_secret=callback_secret,
            created_at=utc(watch.created_at),
            updated_at=utc(watch.updated_at),
        )


class WatchEventOut(BaseModel):
    id: uuid.UUID = Field(description="the event's id")
    kind: Literal["detected", "skipped", "jobs_created"] = Field(description="what happened")
    repo_id: str = Field(description="the release's repo")
    revision_sha: str | None = Field(description="the release's commit")
    source: Literal["webhook", "poller"] = Field(description="which path saw it")
    reason: str | None = Field(description="why a release was skipped")
    job_ids: list[str] | None = Field(description="the jobs created (jobs_created)")
    created_at: datetime = Field(description="when it was recorded")

    @classmethod
    def of(cls, event: Any) -> WatchEventOut:
        return cls(
            id=event.id,
            kind=event.kind,
            repo_id=event.repo_id,
            revision_sha=event.revision_sha,
            source=event.source,
            reason=event.reason,
            job_ids=event.job_ids,
            created_at=utc(event.created_at),
        )
