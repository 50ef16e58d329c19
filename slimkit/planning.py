"""How a request becomes per-layer targets, and what a speed-up target measures before and after.

Four ways, by what the request gives:
- `layer_targets`: used as given;
- a ratio with `uniform` allocation: every layer the ratio;
- a ratio with `global` / `global_pca`: the Fisher estimator (one gradient pass) spreads it;
- a speed-up: the layer latency profile of this device (cached) and a timing of the dense model predict
  the speed-up of any allocation (`slimkit.latency.target`). The dense model is timed twice, alternately:
  as slimkit runs it (what the profile's savings are subtracted from: the output runs on the same
  modeling code) and as stock transformers loads it (what the speed-up is finally measured against; the
  two differ by several per cent on CPU). An unreachable target fails here, *before*
  calibration; later the allocation is searched (with the estimator's importances unless `uniform`), and
  after saving, the dense and the compressed checkpoints are loaded as a user would load them and timed
  side by side: the record reports the measured speed-up next to the target and the prediction.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoModelForCausalLM

from slimkit.calibration import CalibrationBatch
from slimkit.estimator import estimate_layer_targets, measure_importances
from slimkit.estimator.placement import compute_dtype, frozen_on
from slimkit.export import load_compressed
from slimkit.latency.profile import measure_profile
from slimkit.latency.target import SpeedModel, check_reachable, plan_speedup
from slimkit.latency.workload import side_by_side
from slimkit.layerwise import LayerTarget
from slimkit.modeling.modeling_slim import SlimForCausalLM

if TYPE_CHECKING:
    from slimkit.api import CompressionRequest

Notify = Callable[[str, int, int], None]
DENSE_REPEATS = 5


def load_reference(source_path: Path, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """The dense source as a user loads it: stock transformers, safetensors, no remote code."""
    return AutoModelForCausalLM.from_pretrained(source_path, dtype=dtype, use_safetensors=True).eval().to(device)


def prepare_speed(
    request: CompressionRequest, model: SlimForCausalLM, source_path: Path, device: torch.device, notify: Notify
) -> SpeedModel | None:
    """For a speed-up target: profile the layer (or read the cache), time the dense model, check reach."""
    if request.speedup is None:
        return None
    dtype = compute_dtype(model, device)
    cache = Path(request.latency_cache) if request.latency_cache else None
    notify("profile", 0, 1)
    profile = measure_profile(
        model.config, request.workload, device, dtype, cache, progress=lambda i, n: notify("profile", i, n)
    )
    reference = load_reference(source_path, dtype, device)
    try:
        with frozen_on(model, device, dtype):
            timing = side_by_side({"stock": reference, "slim": model}, request.workload, device, repeats=DENSE_REPEATS)
    finally:
        del reference
        if device.type == "cuda":
            torch.cuda.empty_cache()
    speed = SpeedModel(profile, model.config, timing["slim"]["median_s"], timing["stock"]["median_s"])
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
        return plan.targets, record, _speed_record(speed, plan)
    ratio = request.target_ratio()
    if allocation == "uniform":
        return [LayerTarget(ratio, ratio)] * n_layers, None, None
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


def _speed_record(speed: SpeedModel, plan: Any) -> dict[str, Any]:
    profile = speed.profile
    return {
        **plan.record(),
        "device": profile.device,
        "dtype": profile.dtype,
        "workload": profile.workload,
        "dense_s_at_planning": speed.dense_s,
        "stock_dense_s_at_planning": speed.base_s,
        "profile": {
            "key": profile.key,
            "cached": profile.measure_s == 0.0,
            "measure_s": profile.measure_s,
            "scale": speed.scale,
            "attention_s": profile.attention,
            "attention_shapes": profile.attention_shapes,
            "mlp_s": profile.mlp,
        },
    }


def measure_achieved(
    request: CompressionRequest, source_path: Path, out_dir: Path, store_dtype: torch.dtype, device: torch.device
) -> dict[str, Any]:
    """Dense source and saved output loaded as a user would, timed alternately on the workload."""
    dtype = torch.float32 if device.type == "cpu" else store_dtype
    dense = load_reference(source_path, dtype, device)
    compressed = load_compressed(out_dir, dtype=dtype).to(device)
    try:
        timing = side_by_side({"dense": dense, "compressed": compressed}, request.workload, device)
    finally:
        del dense, compressed
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {
        "target": request.speedup,
        "measured": timing["speedup"],
        "met": timing["speedup"] >= request.speedup if request.speedup is not None else None,
        "dense_s": timing["dense"]["median_s"],
        "compressed_s": timing["compressed"]["median_s"],
        "repeats": timing["repeats"],
        "times_s": {"dense": timing["dense"]["times_s"], "compressed": timing["compressed"]["times_s"]},
    }
