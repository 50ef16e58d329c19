"""One job, stage by stage: download → compress (calibrate, evaluate, save) → reload check → push.

Every stage boundary (and every layer, through the engine's callbacks) checks the database for a cancel
request, so a cancelled job stops within one layer; progress is written to the job row as stages and
layers advance (throttled), which also renews the worker's lease. All files live in
`work_dir/<job id>/`, removed whatever the outcome — nothing of a cancelled or failed job stays behind,
and nothing is pushed unless every earlier stage succeeded.

`execute` turns any outcome into (status, error code, message, result): engine errors keep their codes,
Hub errors were mapped by `worker.hub`, an out-of-memory error names the levers to pull, and anything
else is an `internal_error` carrying the exception type.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from app import outputs
from app.models import Job, JobStatus
from app.settings import get_settings
from slimkit import CalibrationSpec, CompressionRequest, EvalSpec, RecoverySpec, TransActSpec, card, compress
from slimkit.calibration import DEFAULT_CALIBRATION_TEXT
from slimkit.errors import Cancelled, SlimError
from slimkit.latency.workload import Workload
from worker import claim, hub, reload_check

log = logging.getLogger(__name__)

OOM_LEVERS = (
    "out of memory: use fewer calibration samples (calibration.samples), a shorter calibration.seq_len "
    "or evaluation.seq_len, a smaller batch size, or a worker with a bigger GPU"
)


class LeaseLost(Exception):
    """The job is no longer this worker's (the sweep re-queued it, another worker holds it): stop quietly."""


@dataclass
class Outcome:
    status: JobStatus
    error_code: str | None = None
    message: str | None = None
    result: dict[str, Any] | None = None


@dataclass
class Tracker:
    """Progress, stage timings and the cancel check of one job, written through `worker.claim`."""

    job_id: str
    worker: str
    min_interval_s: float = 1.0
    timings: dict[str, float] = field(default_factory=dict)
    _stage: str | None = field(default=None, init=False)
    _written_at: float = field(default=0.0, init=False)
    _loss: float | None = field(default=None, init=False)

    def check_cancel(self) -> None:
        if claim.cancel_requested(self.job_id):
            raise Cancelled(f"cancelled by the owner during {self._stage or 'start-up'}")

    def progress(
        self,
        stage: str,
        layer: int | None = None,
        layers: int | None = None,
        fraction: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Write progress when the stage changes, when it is complete (last layer or step), or at most once
        per `min_interval_s`.

        `fraction` of the stage done defaults to layer / layers (0 for stages without steps); `extra` adds
        stage-specific fields (recovery: tokens, tokens_total, loss).
        """
        now = time.monotonic()
        changed = stage != self._stage
        if fraction is None:
            fraction = layer / layers if layer is not None and layers else 0.0
        complete = (layer is not None and layer == layers) or fraction >= 1.0
        if changed or complete or now - self._written_at >= self.min_interval_s:
            if not claim.set_progress(self.job_id, self.worker, stage, layer, layers, round(fraction, 4), extra):
                raise LeaseLost(self.job_id)
            self._written_at = now
        self._stage = stage

    def engine_progress(self, stage: str, done: int, total: int) -> None:
        """The engine's callback: its own stages (load, calibrate, evaluate_dense, compress, …) and layers."""
        if stage != self._stage:
            self.check_cancel()
        if stage == "compress":  # layer i of N
            self.progress(stage, done, total)
        elif stage == "recover":  # training tokens of the budget, with the last step's loss
            extra = {"tokens": done, "tokens_total": total, "loss": self._loss}
            self.progress(stage, fraction=done / total if total else 0.0, extra=extra)
        else:  # e.g. the gradient pass (`estimate`: windows done) or the latency profile (widths timed)
            self.progress(stage, fraction=done / total if total else 0.0)

    def engine_metric(self, name: str, value: float) -> None:
        """The engine's per-step numbers; recovery reports its loss just before the step's progress."""
        if name == "loss":
            self._loss = round(value, 6)

    def enter_push(self) -> None:
        """Start pushing, atomically with the API's cancel: after this, a cancel is refused (409), not ignored."""
        self.check_cancel()
        if not claim.enter_push(self.job_id, self.worker):
            self.check_cancel()  # a cancel won the race: stop here, before anything is uploaded
            raise LeaseLost(self.job_id)
        self._stage = "push"

    def add_time(self, stage: str, seconds: float) -> None:
        self.timings[stage] = round(seconds, 3)
        claim.record_stage_time(self.job_id, self.worker, stage, seconds)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.check_cancel()
        self.progress(name)
        start = time.perf_counter()
        yield
        self.add_time(name, time.perf_counter() - start)


def build_request(job: Job, source: Path, sha: str, job_dir: Path) -> tuple[CompressionRequest, str | None]:
    """The engine request for a job's stored API request; also a card label for inline calibration text.

    The engine is told the Hub id and commit of the downloaded folder, and a name for inline text
    (`inline:sha256:<digest>`), so `compression.json` and the recipe hash never contain worker paths.
    """
    body = job.request
    cal, ev, target = body.get("calibration", {}), body.get("evaluation", {}), body["target"]
    label = record_name = None
    text = claim.calibration_text(cal["text_sha256"]) if cal.get("text_sha256") else cal.get("text")
    if text:
        text_file = job_dir / "calibration.txt"
        text_file.write_text(text, encoding="utf-8")
        digest = hashlib.sha256(text.encode()).hexdigest()
        calib_source, label = str(text_file), f"inline text supplied with the job (sha256 `{digest}`)"
        record_name = f"inline:sha256:{digest}"
    else:
        calib_source = cal.get("dataset") or DEFAULT_CALIBRATION_TEXT
    calibration = CalibrationSpec(
        calib_source, cal.get("samples", 64), cal.get("seq_len", 512), cal.get("seed", 0), label=record_name
    )
    evaluation = (
        EvalSpec(seq_len=ev.get("seq_len", 512), max_tokens=ev.get("max_tokens", 65536))
        if ev.get("perplexity", True)
        else None
    )
    request = CompressionRequest(
        model=str(source),
        method=job.method,
        ratio=target.get("ratio"),
        speedup=target.get("speedup"),
        workload=Workload(**target["workload"]) if target.get("workload") else Workload(),
        allocation=target.get("allocation"),
        head_step=target.get("head_step"),
        latency_cache=str(get_settings().work_dir / "latency-cache"),
        calibration=calibration,
        evaluation=evaluation,
        recovery=recovery_spec(body.get("recovery")),
        transact=TransActSpec(**body["transact"]) if body.get("transact") else None,
        verify=False,  # the fresh-process check below replaces the engine's in-process one
        source_name=job.model,
        source_revision=sha,
    )
    return request, label


def recovery_spec(body: dict[str, Any] | None) -> RecoverySpec | None:
    """The engine's recovery spec for the API's `recovery` object (its `dataset` is the engine's `text`)."""
    if body is None:
        return None
    fields = dict(body)
    return RecoverySpec(text=fields.pop("dataset", None), **fields)


def run_pipeline(job: Job, worker: str, tracker: Tracker | None = None) -> dict[str, Any]:
    """Run every stage of `job` in `work_dir/<job id>/` (removed at the end); the job's result JSON."""
    settings = get_settings()
    tracker = tracker or Tracker(str(job.id), worker)
    job_dir = Path(settings.work_dir) / str(job.id)
    shutil.rmtree(job_dir, ignore_errors=True)  # leftovers of an earlier attempt of this job
    job_dir.mkdir(parents=True)
    try:
        return _stages(job, worker, tracker, job_dir)
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)


def _stages(job: Job, worker: str, tracker: Tracker, job_dir: Path) -> dict[str, Any]:
    settings = get_settings()
    output = job.request.get("output", {})
    with tracker.stage("download"):
        snapshot = hub.fetch_source(job.model, job.revision_sha or job.revision, job_dir / "source")
        claim.set_revision(job.id, worker, snapshot.sha)

    request, label = build_request(job, snapshot.path, snapshot.sha, job_dir)
    out_dir = job_dir / "out"
    tracker.check_cancel()
    result = compress(
        request,
        out_dir,
        progress=tracker.engine_progress,
        metric=tracker.engine_metric,
        should_cancel=claim_cancel(tracker),
        token=settings.hub_write_token(),  # a private or gated hf://datasets/... calibration file
        show_progress=False,
    )
    for stage, seconds in result.record.get("timings_s", {}).items():
        tracker.add_time(stage, seconds)
    record = result.record

    with tracker.stage("verify"):
        device = reload_check.check_device(result.model)
        reference = job_dir / "reference.safetensors"
        reload_check.save_reference(result.model, out_dir, reference, device)
        del result  # the fresh process loads its own copy: do not hold two
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        tracker.check_cancel()
        verified = reload_check.check_in_fresh_process(out_dir, reference, settings.reload_check_timeout_s, device)
        reference.unlink()

    pushed = None
    if output.get("push", True):
        target_name = outputs.target_label(job.request["target"])
        repo_id = output.get("repo_id") or outputs.default_repo_id(job.model, job.method, target_name, job.owner)
        tracker.enter_push()
        start = time.perf_counter()
        (out_dir / "README.md").write_text(card.render(record, job.model, snapshot.sha, repo_id, label, hub.endpoint()))
        pushed = hub.push_folder(
            out_dir,
            repo_id,
            private=output.get("private", True),
            commit_message=f"{job.method} {target_name} of {job.model}@{snapshot.sha[:12]} (slimkit job {job.id})",
            ours=claim.output_created(repo_id, job.owner),
            before_create=lambda: claim.mark_output(repo_id, job.owner, created=True),
            on_conflict=lambda: claim.mark_output(repo_id, job.owner, created=False),
        )
        claim.mark_output(repo_id, job.owner, pushed=True)
        tracker.add_time("push", time.perf_counter() - start)
    metrics = record.get("metrics", {})
    return {
        "repo_id": pushed.repo_id if pushed else None,
        "revision": pushed.commit if pushed else None,
        "url": pushed.url if pushed else None,
        "format": record.get("format"),
        "source": {"model": job.model, "revision": snapshot.sha},
        "params_before": record["params_before"],
        "params_after": record["params_after"],
        "ratio_achieved": record["ratio_achieved"],
        "speedup": speedup_summary(record.get("speedup")),
        "perplexity_before": metrics.get("perplexity_before"),
        "perplexity_after": metrics.get("perplexity_after"),
        "evaluation": metrics.get("evaluation"),
        "recovery": record.get("recovery"),  # tokens, wall_s, losses, perplexity before/after, kept
        "kv_cache_bytes_per_token_fp16": record.get("kv_cache_bytes_per_token_fp16"),
        "transact": {k: record["transact"][k] for k in ("plan", "shots")} if record.get("transact") else None,
        "recipe_sha256": record["recipe_sha256"],
        "reload_check": verified,
        "stage_timings_s": dict(tracker.timings),
        "slimkit_version": record.get("slimkit_version"),
    }


def speedup_summary(speed: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a job result says about a speed-up target (the full search is in compression.json)."""
    if speed is None:
        return None
    keys = ("target", "measured", "met", "predicted_speedup", "best_achievable", "ratio", "bias", "device")
    return {k: speed.get(k) for k in keys} | {"workload": speed.get("workload")}


def claim_cancel(tracker: Tracker) -> Callable[[], bool]:
    """The engine's per-layer `should_cancel`."""
    return lambda: claim.cancel_requested(tracker.job_id)


def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def classify(err: BaseException) -> Outcome:
    """The job outcome an exception stands for; its message never carries a server path (worker.scrub)."""
    from worker.scrub import scrub_paths

    if isinstance(err, Cancelled):
        return Outcome(JobStatus.cancelled, None, scrub_paths(str(err)))
    if is_out_of_memory(err):
        message = f"{OOM_LEVERS} ({type(err).__name__}: {err})"
        return Outcome(JobStatus.failed, "out_of_memory", scrub_paths(message)[:2000])
    if isinstance(err, SlimError):
        return Outcome(JobStatus.failed, err.code, scrub_paths(err.message)[:2000])
    return Outcome(JobStatus.failed, "internal_error", scrub_paths(f"{type(err).__name__}: {err}")[:2000])


def execute(job_id: str, worker: str) -> Outcome | None:
    """Run a claimed job to its outcome; None when the job stopped being this worker's (nothing to record)."""
    job = claim.load(job_id)
    if job is None:
        return None
    start = time.perf_counter()
    try:
        result = run_pipeline(job, worker)
    except LeaseLost:
        log.warning("job %s: lease lost (re-queued or taken over); stopping without recording", job_id)
        return None
    except Exception as err:
        outcome = classify(err)
        if outcome.error_code == "internal_error":
            log.exception("job %s failed unexpectedly", job_id)
        else:
            log.info("job %s: %s (%s)", job_id, outcome.status.value, outcome.error_code or outcome.message)
        return outcome
    finally:
        release_memory()
    result["wall_time_s"] = round(time.perf_counter() - start, 3)
    return Outcome(JobStatus.succeeded, result=result)


def release_memory() -> None:
    """Give back what a finished (or failed: an OOM leaves tensors behind) job held, before the next one."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
