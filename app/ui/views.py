"""What the dashboard pages show, computed from job rows and their events (no HTML here)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Job, JobEvent, JobStatus
from app.responses import utc


def _ago(when: datetime | None, now: datetime) -> str:
    if when is None:
        return ""
    return duration((now - utc(when)).total_seconds()) + " ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0, round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def target_text(request: dict[str, Any]) -> str:
    target = request.get("target", {})
    if target.get("speedup"):
        return f"{target['speedup']}× speed-up"
    return f"ratio {target.get('ratio')}" if target.get("ratio") is not None else ""


@dataclass
class JobView:
    id: str
    short_id: str
    model: str
    method: str
    status: str
    stage: str | None
    finished: bool
    fraction: float
    target: str
    error: dict[str, str] | None
    age: str = ""
    duration: str = ""
    position: str = ""
    cancellable: bool = False
    timeline: list[dict[str, str]] = field(default_factory=list)
    metrics: list[tuple[str, str]] = field(default_factory=list)
    repo_id: str | None = None
    repo_url: str | None = None
    request_json: str = ""


def job_view(job: Job, now: datetime | None = None) -> JobView:
    now = now or datetime.now(UTC)
    progress = job.progress or {}
    end = utc(job.finished_at) or now
    view = JobView(
        id=str(job.id),
        short_id=str(job.id)[:8],
        model=job.model,
        method=job.method,
        status=job.status.value,
        stage=None if job.stage == job.status.value else job.stage,  # a finished job's stage repeats its status
        finished=job.status.finished,
        fraction=1.0 if job.status == JobStatus.succeeded else float(progress.get("fraction") or 0.0),
        target=target_text(job.request),
        error={"code": job.error_code, "message": job.error_message or ""} if job.error_code else None,
        age=_ago(job.created_at, now),
        duration=duration((end - utc(job.started_at)).total_seconds()) if job.started_at else "",
        cancellable=not job.status.finished and job.stage != "push",
    )
    if progress.get("tokens_total"):
        view.position = f"{progress.get('tokens', 0)} / {progress['tokens_total']} tokens"
    elif progress.get("layers"):
        view.position = f"layer {progress.get('layer')} / {progress['layers']}"
    return view


def job_detail(session: Session, job: Job) -> JobView:
    view = job_view(job)
    stages = session.execute(
        select(JobEvent.data, JobEvent.created_at)
        .where(JobEvent.job_id == job.id, JobEvent.kind.in_(("stage", "terminal")))
        .order_by(JobEvent.id)
    ).all()
    session.commit()
    for i, (data, at) in enumerate(stages):
        if data.get("stage") in ("succeeded", "failed", "cancelled"):
            continue
        following = stages[i + 1][1] if i + 1 < len(stages) else None
        seconds = (utc(following) - utc(at)).total_seconds() if following is not None else None
        view.timeline.append(
            {
                "stage": data.get("stage") or "",
                "started": utc(at).strftime("%H:%M:%S"),
                "duration": duration(seconds) if seconds is not None else "running",
            }
        )
    result = job.result or {}
    view.metrics = metrics(result)
    view.repo_id, view.repo_url = result.get("repo_id"), result.get("url")
    view.request_json = json.dumps(job.request, indent=2, sort_keys=True)
    return view


def metrics(result: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    before, after = result.get("params_before") or {}, result.get("params_after") or {}
    if before.get("total") and after.get("total"):
        rows.append(("Parameters", f"{before['total'] / 1e6:,.1f} M → {after['total'] / 1e6:,.1f} M"))
    ratio = result.get("ratio_achieved") or {}
    if ratio.get("attention_mlp") is not None:
        rows.append(("Removed (attention + MLP)", f"{ratio['attention_mlp']:.1%}"))
    if result.get("perplexity_before") is not None and result.get("perplexity_after") is not None:
        rows.append(("Perplexity", f"{result['perplexity_before']:.2f} → {result['perplexity_after']:.2f}"))
    speed = result.get("speedup") or {}
    if speed.get("measured") is not None:
        rows.append(("Speed-up", f"{speed['measured']:.2f}× measured (target {speed.get('target')}×)"))
    kv = result.get("kv_cache_bytes_per_token_fp16") or {}
    if kv.get("before"):
        rows.append(("KV cache per token (fp16)", f"{kv['before']:,} → {kv['after']:,} bytes"))
    recovery = result.get("recovery") or {}
    if recovery.get("tokens"):
        rows.append(("Recovery", f"{recovery['tokens']:,} tokens, kept: {recovery.get('kept')}"))
    return rows
