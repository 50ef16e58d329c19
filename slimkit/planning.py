"""How a request becomes per-layer targets, and what a speed-up target measures before and after.

Four ways, by what the request gives:
- `layer_targets`: used as given;
- a ratio with `uniform` allocation: every layer the ratio of its own parameters, split between attention
  and MLP by λ_b (`CompressionRequest.resolved_bias`: the method's own split unless given);
- a ratio with `global` / `global_pca`: the Fisher estimator (one gradient pass) spreads it;
- a speed-up: the layer latency profile of this device (cached) and a timing of the dense model predict
  the speed-up of any allocation (`slimkit.latency.target`). The dense model is timed twice, alternately:
  as slimkit runs it (what the profile's savings are subtracted from: the output runs on the same
  modeling code) and as stock transformers loads it (what the speed-up is finally measured against; the
  two differ by several per cent on CPU). An unreachable target fails here, *before*
  calibration; later the allocation is searched (with the estimator's importances unless `uniform`), and
  after saving, the dense and the compressed checkpoints are loaded as a user would load them and timed
  side by side: the record reports the measured speed-up next to the target and the prediction.
  Every one of these timings is repeated until its noise is within the request's `TimingPolicy`
  (`timing_unstable` otherwise), and a measurement the prediction contradicts beyond the noise is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoModelForCausalLM

from slimkit.calibration import CalibrationBatch
from slimkit.estimator import estimate_layer_targets, measure_importances
from slimkit.estimator.allocate import uniform_targets
from slimkit.estimator.placement import compute_dtype, frozen_on
from slimkit.export import load_compressed
from slimkit.latency.noise import TimingPolicy
from slimkit.latency.profile import device_name, measure_profile
from slimkit.latency.target import SpeedModel, SpeedupPlan, check_reachable, judge_measurement, plan_speedup
from slimkit.latency.workload import WorkloadTimer, side_by_side, workload_seconds
from slimkit.layerwise import LayerTarget
from slimkit.modeling.modeling_slim import SlimForCausalLM

if TYPE_CHECKING:
    from slimkit.request import CompressionRequest

Notify = Callable[[str, int, int], None]


def load_reference(source_path: Path, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """The dense source as a user loads it: stock transformers, safetensors, no remote code."""
    return AutoModelForCausalLM.from_pretrained(source_path, dtype=dtype, use_safetensors=True).eval().to(device)


def timing_policy(request: CompressionRequest) -> TimingPolicy:
    """The request's timing policy, or the defaults (overridable by SLIMKIT_TIMING_* on a worker)."""
    return request.timing if request.timing is not None else TimingPolicy.from_env()


def prepare_speed(
    request: CompressionRequest,
    model: SlimForCausalLM,
    source_path: Path,
    device: torch.device,
    notify: Notify,
    timer: WorkloadTimer = workload_seconds,
) -> SpeedModel | None:
    """For a speed-up target: time the dense model, profile the layer (or read the cache), check reach.

    The dense timing comes first: on a machine too busy to time it, `TimingUnstable` says so before the
    profile spends its minutes. `timer` times one workload run (the real clock unless a test injects one).
    """
    if request.speedup is None:
        return None
    policy = timing_policy(request)
    dtype = compute_dtype(model, device)
    cache = Path(request.latency_cache) if request.latency_cache else None
    notify("profile", 0, 1)
    reference = load_reference(source_path, dtype, device)
    try:
        with frozen_on(model, device, dtype):
            timing = side_by_side(
                {"stock": reference, "slim": model},
                request.workload,
                device,
                policy,
                timer=timer,
                where=device_name(device),
            )
    finally:
        del reference
        if device.type == "cuda":
            torch.cuda.empty_cache()
    profile = measure_profile(
        model.config, request.workload, device, dtype, cache, policy, progress=lambda i, n: notify("profile", i, n)
    )
    speed = SpeedModel(
        profile,
        model.config,
        timing["slim"]["median_s"],
        timing["stock"]["median_s"],
        dense_noise=timing["slim"]["noise"],
        reference_noise=timing["stock"]["noise"],
        timing=timing,
    )
    where = f"{request.source_name or request.model} on {profile.device} ({request.workload.describe()})"
    check_reachable(speed, request.speedup, request.cap, where)
    return speed


def choose_targets(
    request: CompressionRequest,
    model: SlimForCausalLM,
    calib: CalibrationBatch,
    device: torch.device,
    speed: SpeedModel | None,
    notify: Notify,
) -> tuple[list[LayerTarget], dict[str, Any] | None, dict[str, Any] | None]:
    """(targets, the estimator's record or None, the speed-up plan's record or None)."""
    n_layers = model.config.num_hidden_layers
    if request.layer_targets is not None:
        return request.layer_targets, None, None
    allocation = request.resolved_allocation()

    def gradient_progress(done: int, total: int) -> None:
        notify("estimate", done, total)

    if speed is not None:
        importances = None
        if allocation != "uniform":
            notify("estimate", 0, calib.input_ids.shape[0])
            importances = measure_importances(model, calib, allocation, device, gradient_progress, frac=request.frac)
        plan = plan_speedup(speed, request.speedup, request.cap, importances, request.bias)
        record = {"variant": allocation, "layers": _layers(plan.targets)}
        if importances is not None:
            record["blocks_per_head"] = importances.frac
        return plan.targets, record, _speed_record(speed, plan, timing_policy(request))
    ratio = request.target_ratio()
    if allocation == "uniform":
        bias = request.resolved_bias()
        if bias == 1.0:
            return [LayerTarget(ratio, ratio)] * n_layers, None, None
        return uniform_targets(model.config, ratio, bias, max(request.cap, ratio)), None, None
    notify("estimate", 0, calib.input_ids.shape[0])
    estimate = estimate_layer_targets(
        model,
        None,
        ratio,
        variant=allocation,
        calibration=calib,
        bias=1.0 if request.bias is None else request.bias,
        cap=request.cap,
        device=device,
        progress=gradient_progress,
        frac=request.frac,
    )
    record = {
        "variant": estimate.variant,
        "predicted_ratio": estimate.predicted_ratio,
        "blocks_per_head": estimate.importances.frac if estimate.importances is not None else None,
        "layers": estimate.layers,
        "timings_s": estimate.timings_s,
    }
    return estimate.targets, record, None


def _layers(targets: list[LayerTarget]) -> list[dict[str, Any]]:
    return [{"layer": i, "attention": t.attention, "mlp": t.mlp} for i, t in enumerate(targets)]


def _speed_record(speed: SpeedModel, plan: SpeedupPlan, policy: TimingPolicy) -> dict[str, Any]:
    profile = speed.profile
    timing = speed.timing
    return {
        **plan.record(),
        "device": profile.device,
        "dtype": profile.dtype,
        "workload": profile.workload,
        "dense_s_at_planning": speed.dense_s,
        "stock_dense_s_at_planning": speed.base_s,
        "repeats_at_planning": timing.get("repeats"),
        "timing": policy.to_dict(),
        "noise": {
            "stock_dense": speed.reference_noise,
            "slim_dense": speed.dense_noise,
            "stock_over_slim": timing.get("speedup_noise"),
            "profile": profile.noise,
            "predicted": plan.predicted_noise,
        },
        "profile": {
            "key": profile.key,
            "cached": profile.measure_s == 0.0,
            "measure_s": profile.measure_s,
            "noise": profile.noise,
            "repeats": profile.repeats,
            "scale": speed.scale,
            "attention_s": profile.attention,
            "attention_shapes": profile.attention_shapes,
            "mlp_s": profile.mlp,
        },
    }


def measure_achieved(
    request: CompressionRequest,
    source_path: Path,
    out_dir: Path,
    store_dtype: torch.dtype,
    device: torch.device,
    planned: dict[str, Any] | None = None,
    timer: WorkloadTimer = workload_seconds,
) -> dict[str, Any]:
    """Dense source and saved output loaded as a user would, timed alternately on the workload.

    `met` is the measured speed-up against the target, nothing else. With the plan's record (`planned`), a
    measurement that contradicts the prediction by more than the noise is refused (`TimingUnstable`).
    """
    policy = timing_policy(request)
    where = device_name(device)
    dtype = torch.float32 if device.type == "cpu" else store_dtype
    dense = load_reference(source_path, dtype, device)
    compressed = load_compressed(out_dir, dtype=dtype).to(device)
    try:
        timing = side_by_side(
            {"dense": dense, "compressed": compressed}, request.workload, device, policy, timer=timer, where=where
        )
    finally:
        del dense, compressed
        if device.type == "cuda":
            torch.cuda.empty_cache()
    measured, noise = timing["speedup"], timing["speedup_noise"]
    target = request.speedup
    verdict: dict[str, Any] = {"met": measured >= target if target is not None else None}
    if planned is not None and target is not None:
        verdict = judge_measurement(
            target, planned["predicted_speedup"], planned.get("predicted_noise", 0.0), measured, noise, policy, where
        )
    return {
        "target": target,
        "measured": measured,
        "measured_low": timing["speedup_low"],
        "measured_high": timing["speedup_high"],
        "measured_noise": noise,
        **verdict,
        "dense_s": timing["dense"]["median_s"],
        "compressed_s": timing["compressed"]["median_s"],
        "dense_noise": timing["dense"]["noise"],
        "compressed_noise": timing["compressed"]["noise"],
        "repeats": timing["repeats"],
        "times_s": {"dense": timing["dense"]["times_s"], "compressed": timing["compressed"]["times_s"]},
    }
