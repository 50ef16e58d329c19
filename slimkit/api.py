"""The engine's Python API: one call from a model name to a saved, verified, smaller model.

    from slimkit import CompressionRequest, compress
    result = compress(CompressionRequest(model="HuggingFaceTB/SmolLM2-135M", ratio=0.3), "out/smol-30")

Stages: validate → load (safetensors only) → calibrate → evaluate dense → compress layer by layer →
evaluate compressed → save → reload from disk and compare logits. Everything the result reports is
also written to `compression.json` next to the weights.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer
from transformers.utils import logging as hf_logging

from slimkit import __version__
from slimkit.calibration import CalibrationSpec, build_calibration
from slimkit.devices import resolve_device
from slimkit.errors import InvalidArgument, ReloadMismatch
from slimkit.estimator import VARIANTS, estimate_layer_targets
from slimkit.evaluate import EvalSpec, eval_windows, perplexity
from slimkit.export import load_compressed, save_compressed
from slimkit.layerwise import LayerTarget, compress_model
from slimkit.loading import load_source
from slimkit.methods import method_for
from slimkit.shapes import get_shapes, kv_cache_bytes_per_token, param_counts

MAX_RATIO = 0.9
Progress = Callable[[str, int, int], None]


@dataclass
class CompressionRequest:
    model: str  # local folder or Hub id
    method: str = "intraslice"
    ratio: float = 0.3  # fraction of decoder attention + MLP parameters to remove
    layer_targets: list[LayerTarget] | None = None  # per-layer ratios; overrides `ratio` and `allocation`
    allocation: str = "uniform"  # how `ratio` is spread over layers: uniform, global, global_pca (estimator)
    revision: str | None = None
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    evaluation: EvalSpec | None = field(default_factory=EvalSpec)
    device: str = "auto"
    dtype: str | None = None  # e.g. "bfloat16"; default: the checkpoint's dtype
    batch_size: int = 8
    verify: bool = True  # reload the saved folder and compare logits
    source_name: str | None = None  # how records name the source (e.g. the Hub id of a downloaded folder)
    source_revision: str | None = None  # the commit the folder was downloaded at

    def validate(self) -> None:
        method_for(self.method)
        if self.allocation not in VARIANTS:
            raise InvalidArgument(f"unknown allocation {self.allocation!r}; choose one of {', '.join(VARIANTS)}")
        if not 0 < self.ratio <= MAX_RATIO:
            raise InvalidArgument(f"ratio must be in (0, {MAX_RATIO}], got {self.ratio}")
        for t in self.layer_targets or []:
            if not (0 <= t.attention <= MAX_RATIO and 0 <= t.mlp <= MAX_RATIO):
                raise InvalidArgument(f"per-layer ratios must be in [0, {MAX_RATIO}], got {t}")
        if self.batch_size < 1:
            raise InvalidArgument("batch_size must be >= 1")
        if self.dtype is not None and not isinstance(getattr(torch, self.dtype, None), torch.dtype):
            raise InvalidArgument(f"unknown dtype {self.dtype!r}")
        self.calibration.validate()
        resolve_device(self.device)

    def recipe(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "ratio": self.ratio,
            "allocation": self.allocation if not self.layer_targets else None,
            "layer_targets": [asdict(t) for t in self.layer_targets] if self.layer_targets else None,
            "calibration": calibration_recipe(self.calibration),
            "dtype": self.dtype,
        }


def calibration_recipe(spec: CalibrationSpec) -> dict[str, Any]:
    """The calibration part of the recipe: the label stands in for the text when one is given."""
    recipe = asdict(spec)
    label = recipe.pop("label")
    if label is not None:
        recipe["text"] = label
    return recipe


@dataclass
class CompressionResult:
    out_dir: Path
    format: str  # "stock" or "slim"
    record: dict[str, Any]  # the contents of compression.json
    model: torch.nn.Module  # the compressed model, in memory (on CPU)


def compress(
    request: CompressionRequest,
    out_dir: str | Path,
    progress: Progress | None = None,
    should_cancel: Callable[[], bool] | None = None,
    token: str | None = None,
    show_progress: bool = True,
) -> CompressionResult:
    """Run the whole pipeline; `progress(stage, done, total)` is called as stages and layers advance."""
    with transformers_progress_bars(show_progress):
        request.validate()
        device = resolve_device(request.device)
        notify = progress or (lambda stage, done, total: None)
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = round(now - clock, 3)
            clock = now

        notify("load", 0, 1)
        source = load_source(
            request.model, request.revision, getattr(torch, request.dtype) if request.dtype else None, token=token
        )
        tokenizer = AutoTokenizer.from_pretrained(source.path)
        model = source.model
        window = model.config.sliding_window
        if window is not None and request.calibration.seq_len > window:
            raise InvalidArgument(
                f"calibration seq_len {request.calibration.seq_len} exceeds the model's "
                f"sliding window ({window}); use seq_len <= {window}"
            )
        lap("load")
        notify("calibrate", 0, 1)
        calib = build_calibration(tokenizer, request.calibration)
        lap("calibrate")
        windows = eval_windows(tokenizer, request.evaluation) if request.evaluation else None
        metrics: dict[str, Any] = {}
        if windows is not None and request.evaluation.dense:
            notify("evaluate_dense", 0, 1)
            metrics["perplexity_before"] = perplexity(model, windows, device, request.evaluation.batch_size)
            lap("evaluate_dense")
        before = param_counts(model)
        kv_before = kv_cache_bytes_per_token(model.config)
        targets = request.layer_targets or [LayerTarget(request.ratio, request.ratio)] * model.config.num_hidden_layers
        allocation = None
        if request.layer_targets is None and request.allocation != "uniform":
            notify("estimate", 0, calib.input_ids.shape[0])
            estimate = estimate_layer_targets(
                model,
                tokenizer,
                request.ratio,
                variant=request.allocation,
                calibration=calib,
                device=device,
                progress=lambda i, n: notify("estimate", i, n),
            )
            targets = estimate.targets
            allocation = {
                "variant": estimate.variant,
                "predicted_ratio": estimate.predicted_ratio,
                "layers": estimate.layers,
                "timings_s": estimate.timings_s,
            }
            lap("estimate")
        if len(targets) != model.config.num_hidden_layers:
            raise InvalidArgument(f"{len(targets)} layer targets for {model.config.num_hidden_layers} layers")
        notify("compress", 0, model.config.num_hidden_layers)
        layers = compress_model(
            model,
            calib.input_ids,
            calib.attention_mask,
            method_for(request.method),
            targets,
            device,
            request.batch_size,
            progress=lambda i, n: notify("compress", i, n),
            should_cancel=should_cancel,
            show_progress=show_progress,
        )
        lap("compress")
        after = param_counts(model)
        if windows is not None:
            notify("evaluate", 0, 1)
            metrics["perplexity_after"] = perplexity(model, windows, device, request.evaluation.batch_size)
            metrics["evaluation"] = asdict(request.evaluation) | {"tokens": int(windows.numel())}
            lap("evaluate")
        recipe = request.recipe()
        record = {
            "slimkit_version": __version__,
            "source": {
                "model": request.source_name or request.model,
                "revision": source.revision or request.source_revision or request.revision,
                "model_type": source.config.model_type,
            },
            "recipe": recipe,
            "recipe_sha256": hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest(),
            "calibration": calib.provenance,
            "params_before": before,
            "params_after": after,
            "ratio_achieved": {
                "attention_mlp": 1 - after["attention_mlp"] / before["attention_mlp"],
                "without_embeddings": 1 - after["without_embeddings"] / before["without_embeddings"],
                "total": 1 - after["total"] / before["total"],
            },
            "kv_cache_bytes_per_token_fp16": {"before": kv_before, "after": kv_cache_bytes_per_token(model.config)},
            "layer_shapes": get_shapes(model.config),
            "allocation": allocation,
            "layers": layers,
            "metrics": metrics,
            "device": str(device),
        }
        notify("save", 0, 1)
        record["timings_s"] = timings
        fmt = save_compressed(model, source, Path(out_dir), record)
        lap("save")
        if request.verify:
            notify("verify", 0, 1)
            record["reload_max_abs_diff"] = verify_reload(model, Path(out_dir), calib.input_ids[:2, :64])
            lap("verify")
        record["timings_s"] = timings
        (Path(out_dir) / "compression.json").write_text(json.dumps({**record, "format": fmt}, indent=2) + "\n")
        return CompressionResult(Path(out_dir), fmt, {**record, "format": fmt}, model)


@contextmanager
def transformers_progress_bars(enabled: bool) -> Iterator[None]:
    """Silence transformers' own bars (writing shards, loading weights) when the caller wants quiet."""
    was = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


@torch.no_grad()
def verify_reload(model: torch.nn.Module, out_dir: Path, ids: torch.Tensor, tol: float = 1e-3) -> float:
    """Reload the saved folder through `AutoModelForCausalLM` and compare logits with the in-memory model."""
    reloaded = load_compressed(out_dir, dtype=model.dtype)
    expected = model(input_ids=ids, use_cache=False).logits.float()
    got = reloaded(input_ids=ids, use_cache=False).logits.float()
    diff = float((expected - got).abs().max())
    scale = float(expected.abs().max()) or 1.0
    if not diff <= tol * max(scale, 1.0):
        raise ReloadMismatch(f"reloaded model differs from the compressed one: max |Δlogit| = {diff:.3g}")
    return diff
