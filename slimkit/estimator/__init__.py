"""Global pruning-ratio estimator (IntraSlice §3.5): where to prune, per layer, for one global ratio.

    from slimkit.estimator import estimate_layer_targets
    result = estimate_layer_targets(source.model, tokenizer, 0.3, variant="global_pca")
    compress(CompressionRequest(model=..., layer_targets=result.targets), out_dir)

Variants:
- `uniform`: every layer the global ratio (no gradient pass; the engine's default allocation);
- `global`: Fisher importances of raw head blocks and MLP channels, one ranking across all layers;
- `global_pca`: the same with each head's gradient rotated into its KV group's PCA basis (the paper's).
The per-layer ratios are snapped to the engine's MLP grid so the global parameter reduction the engine
will achieve matches the request (see `slimkit.estimator.snap`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from slimkit.calibration import CalibrationBatch, CalibrationSpec, build_calibration
from slimkit.devices import resolve_device
from slimkit.errors import InvalidArgument
from slimkit.estimator.allocate import allocate, layer_budgets, uniform_targets
from slimkit.estimator.fisher import GROUP_SIZE, Importances, blocks_per_head, fisher_importances
from slimkit.estimator.snap import predicted_ratio, snap_targets
from slimkit.layerwise import LayerTarget
from slimkit.modeling.modeling_slim import SlimConfig, SlimForCausalLM

VARIANTS = ("uniform", "global", "global_pca")
MAX_CAP = 0.9  # the engine refuses per-layer ratios above 0.9


@dataclass
class EstimatorResult:
    targets: list[LayerTarget]  # what `CompressionRequest(layer_targets=...)` consumes
    variant: str
    ratio: float  # requested global reduction of decoder attention + MLP parameters
    predicted_ratio: float  # the reduction the engine will achieve (MLP exact, attention by ratio)
    layers: list[dict[str, Any]]  # per-layer ratios and importance summary
    timings_s: dict[str, float] = field(default_factory=dict)
    importances: Importances | None = None  # None for `uniform`


def estimate_layer_targets(
    model: SlimForCausalLM,
    tokenizer: PreTrainedTokenizerBase | None,
    ratio: float,
    variant: str = "global_pca",
    calibration: CalibrationSpec | CalibrationBatch | None = None,
    bias: float = 1.0,
    cap: float = 0.8,
    device: str | torch.device = "auto",
    progress: Callable[[int, int], None] | None = None,
    *,
    frac: int | None = None,
    group_size: int = GROUP_SIZE,
    tokens_per_step: int = 8192,
) -> EstimatorResult:
    """Per-layer attention/MLP ratios for a global `ratio` of a dense model (see the module doc).

    `calibration` is a spec (tokenized with `tokenizer`; default `CalibrationSpec()`) or an already built
    batch. `progress(done, total)` counts calibration windows through the gradient pass. The model is
    returned unchanged (device, dtype, weights, requires_grad).
    """
    if variant not in VARIANTS:
        raise InvalidArgument(f"unknown allocation {variant!r}; choose one of {', '.join(VARIANTS)}")
    if not 0 < cap <= MAX_CAP:
        raise InvalidArgument(f"cap must be in (0, {MAX_CAP}], got {cap}")
    if not 0 < ratio <= cap:
        raise InvalidArgument(f"ratio must be in (0, cap={cap}], got {ratio}")
    if bias < 0:
        raise InvalidArgument(f"bias must be >= 0, got {bias}")
    frac = blocks_per_head(model, frac)
    if group_size < 1:
        raise InvalidArgument("group_size must be >= 1")
    config = model.config
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    if variant == "uniform":
        targets = uniform_targets(config, ratio, bias, cap)
        return EstimatorResult(targets, variant, ratio, predicted_ratio(targets, config), _summary(targets, None))
    if isinstance(calibration, CalibrationBatch):
        batch = calibration
    else:
        if tokenizer is None:
            raise InvalidArgument("a tokenizer is needed to build the calibration windows")
        batch = build_calibration(tokenizer, calibration or CalibrationSpec())
    timings["calibrate"] = round(time.perf_counter() - clock, 3)
    clock = time.perf_counter()
    importances = measure_importances(model, batch, variant, device, progress, frac, group_size, tokens_per_step)
    timings["gradients"] = round(time.perf_counter() - clock, 3)
    clock = time.perf_counter()
    targets = targets_from_importances(importances, config, ratio, bias, cap)
    timings["allocate"] = round(time.perf_counter() - clock, 3)
    return EstimatorResult(
        targets, variant, ratio, predicted_ratio(targets, config), _summary(targets, importances), timings, importances
    )


def measure_importances(
    model: SlimForCausalLM,
    batch: CalibrationBatch,
    variant: str,
    device: str | torch.device = "auto",
    progress: Callable[[int, int], None] | None = None,
    frac: int | None = None,
    group_size: int = GROUP_SIZE,
    tokens_per_step: int = 8192,
) -> Importances:
    """The gradient pass of `global` / `global_pca` (rotated head gradients for the latter)."""
    if variant not in VARIANTS[1:]:
        raise InvalidArgument(f"importances are measured for the global variants, not {variant!r}")
    return fisher_importances(
        model,
        batch.input_ids,
        batch.attention_mask,
        rotate=variant == "global_pca",
        device=resolve_device(device),
        frac=frac,
        group_size=group_size,
        tokens_per_step=tokens_per_step,
        progress=progress,
    )


def targets_from_importances(
    importances: Importances, config: SlimConfig, ratio: float, bias: float = 1.0, cap: float = 0.8
) -> list[LayerTarget]:
    """One global ranking per module type, capped, then snapped to the engine's MLP grid."""
    raw = allocate(importances.attention, importances.mlp, config, ratio, bias, cap, importances.frac)
    return snap_targets(raw, config, ratio, cap)


def _summary(targets: list[LayerTarget], importances: Importances | None) -> list[dict[str, Any]]:
    """Per layer: the ratios and, when measured, each module's share of the model's total importance."""
    rows = [{"layer": i, "attention": t.attention, "mlp": t.mlp} for i, t in enumerate(targets)]
    if importances is not None:
        attn_total = sum(float(a.sum()) for a in importances.attention) or 1.0
        mlp_total = sum(float(m.sum()) for m in importances.mlp) or 1.0
        for row, a, m in zip(rows, importances.attention, importances.mlp, strict=True):
            row["attention_importance_share"] = float(a.sum()) / attn_total
            row["mlp_importance_share"] = float(m.sum()) / mlp_total
    return rows


__all__ = [
    "VARIANTS",
    "EstimatorResult",
    "Importances",
    "estimate_layer_targets",
    "layer_budgets",
    "measure_importances",
    "targets_from_importances",
]
