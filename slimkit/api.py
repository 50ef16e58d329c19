"""The engine's Python API: one call from a model name to a saved, verified, smaller model.

    from slimkit import CompressionRequest, compress
    result = compress(CompressionRequest(model="HuggingFaceTB/SmolLM2-135M", ratio=0.3), "out/smol-30")

Stages: validate → load (safetensors only) → calibrate → evaluate dense → compress layer by layer →
evaluate compressed → [recover: distil from the dense model, kept only if held-out perplexity improves] →
save → reload from disk and compare logits. Everything the result reports is
also written to `compression.json` next to the weights.

The output folder is checked before any work (`slimkit.outdir`: never the current directory or the source,
never a non-empty folder unless it is an earlier output and `overwrite` is set). Saving, the speed-up
measurement, the reload check and `compression.json` all happen in a hidden sibling, which is renamed into
place only once all of them passed: a failure or a Ctrl-C leaves nothing at `out_dir`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as hf_logging

from slimkit import __version__, card
from slimkit.calibration import build_calibration
from slimkit.depth import compress_depth
from slimkit.depth.similarity import removed_layers
from slimkit.devices import resolve_device
from slimkit.errors import InvalidArgument, ReloadMismatch
from slimkit.evaluate import eval_windows, perplexity
from slimkit.export import load_compressed, stock_heads_valid, write_compressed
from slimkit.latency.workload import WorkloadTimer, workload_seconds
from slimkit.layerwise import compress_model
from slimkit.loading import load_source
from slimkit.methods import is_depth_method, is_model_method, method_for
from slimkit.outdir import check_out_dir, publish, staging
from slimkit.planning import choose_targets, measure_achieved, prepare_speed
from slimkit.recovery import RecoverySpec, layer_boundaries, recovery_stage, training_windows
from slimkit.request import CompressionRequest
from slimkit.shapes import get_shapes, kv_cache_bytes_per_token, param_counts
from slimkit.tokenizer_files import load_tokenizer
from slimkit.transact import compress_transact

Progress = Callable[[str, int, int], None]


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
    overwrite: bool = False,
    timer: WorkloadTimer = workload_seconds,
    metric: Callable[[str, float], None] | None = None,
) -> CompressionResult:
    """Run the whole pipeline; `progress(stage, done, total)` is called as stages and layers advance.

    metric: called with ("loss", value) after every recovery step (tokens done go through `progress`).
    overwrite: replace an earlier slimkit output at `out_dir` (anything else there is refused, never deleted).
    timer: times one workload run for a speed-up target (the real clock; tests plug in a cost model).
    """
    with transformers_progress_bars(show_progress):
        request.validate()
        local = Path(request.model).expanduser()
        check_out_dir(out_dir, overwrite, protected=[local] if local.is_dir() else [])  # before hours of work
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
        source_dtype = getattr(torch, request.dtype) if request.dtype else None
        source = load_source(request.model, request.revision, source_dtype, token=token)
        check_out_dir(out_dir, overwrite, protected=[source.path])
        tokenizer = load_tokenizer(source.path, source.config)  # stock classes only, never the source's code
        model = source.model
        window = model.config.sliding_window
        if window is not None and request.calibration.seq_len > window:
            raise InvalidArgument(
                f"calibration seq_len {request.calibration.seq_len} exceeds the model's "
                f"sliding window ({window}); use seq_len <= {window}"
            )
        if is_depth_method(request.method):
            removed_layers(request.target_ratio(), model.config.num_hidden_layers)  # a whole layer at least
        lap("load")
        speed = prepare_speed(
            request, model, source.path, device, notify, timer=timer
        )  # fails here if a speed-up is out of reach
        if speed is not None:
            lap("profile")
        notify("calibrate", 0, 1)
        calib = build_calibration(tokenizer, request.calibration, token=token)  # private Hub datasets
        lap("calibrate")
        windows = eval_windows(tokenizer, request.evaluation) if request.evaluation else None
        metrics: dict[str, Any] = {}
        if windows is not None and request.evaluation.dense:
            notify("evaluate_dense", 0, 1)
            metrics["perplexity_before"] = perplexity(model, windows, device, request.evaluation.batch_size)
            lap("evaluate_dense")
        before = param_counts(model)
        kv_before = kv_cache_bytes_per_token(model.config)
        depth = transact = None
        if is_depth_method(request.method):
            notify("similarity", 0, model.config.num_hidden_layers)
            depth = compress_depth(
                model,
                calib.input_ids,
                calib.attention_mask,
                method_for(request.method),
                request.target_ratio(),
                device,
                request.batch_size,
                progress=notify,
                should_cancel=should_cancel,
                show_progress=show_progress,
            )
            layers, allocation, speedup = depth.pop("layers"), None, None
        elif is_model_method(request.method):
            shot_recovery = request.recovery or RecoverySpec()
            transact = compress_transact(
                model,
                (calib.input_ids, calib.attention_mask),
                request.target_ratio(),
                request.cap,
                request.resolved_transact(),
                device,
                request.batch_size,
                recovery=shot_recovery,
                training_windows=lambda spec: training_windows(tokenizer, spec, request.calibration.text, token),
                load_teacher=lambda: load_source(request.model, request.revision, source_dtype, token=token).model,
                allowed=lambda shape: stock_heads_valid(source, shape.heads, shape.kv_heads, model.config.head_dim),
                progress=notify,
                metric=metric,
                should_cancel=should_cancel,
                show_progress=show_progress,
            )
            layers, allocation, speedup = [], None, None
        else:
            targets, allocation, speedup = choose_targets(request, model, calib, device, speed, notify)
            if allocation is not None:
                lap("plan" if speed is not None else "estimate")
            if len(targets) != model.config.num_hidden_layers:
                raise InvalidArgument(f"{len(targets)} layer targets for {model.config.num_hidden_layers} layers")
            notify("compress", 0, model.config.num_hidden_layers)
            layers = compress_model(
                model,
                calib.input_ids,
                calib.attention_mask,
                method_for(request.method, request.resolved_head_step()),
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
        recovery = None
        if request.recovery is not None:
            spec, notify_loss = request.recovery, metric or (lambda name, value: None)
            notify("recover", 0, spec.windows * spec.seq_len)
            train = training_windows(tokenizer, spec, request.calibration.text, token=token)
            boundaries = layer_boundaries(model.config.num_hidden_layers, depth["groups"] if depth else None)
            recovery = recovery_stage(
                model,
                lambda: load_source(request.model, request.revision, source_dtype, token=token).model,
                train,
                windows,
                spec,
                device,
                request.evaluation.batch_size,
                metrics["perplexity_after"],
                boundaries,
                progress=lambda done, total, loss: (notify_loss("loss", loss), notify("recover", done, total)),
                should_cancel=should_cancel,
                show_progress=show_progress,
            )
            request = replace(request, recovery=replace(spec, mode=recovery["mode"]))  # the recipe says what ran
            metrics["perplexity_compressed"] = metrics["perplexity_after"]  # before recovery
            metrics["perplexity_after"] = min(recovery["perplexity_after"], recovery["perplexity_before"])
            lap("recover")
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
            "speedup": speedup,
            "depth": depth,
            "transact": transact,
            "recovery": recovery,
            "layers": layers,
            "metrics": metrics,
            "device": str(device),
        }
        notify("save", 0, 1)
        record["timings_s"] = timings
        sources = [group[0] for group in depth["groups"]] if depth else None
        with staging(out_dir) as folder:  # removed on any failure or Ctrl-C; renamed to out_dir once all passed
            fmt = write_compressed(model, source, folder, record, layer_sources=sources)
            lap("save")
            if speedup is not None:
                notify("measure_speed", 0, 1)
                store_dtype = model.model.embed_tokens.weight.dtype
                speedup |= measure_achieved(
                    request, source.path, folder, store_dtype, device, planned=speedup, timer=timer
                )
                lap("measure_speed")
            if request.verify:
                notify("verify", 0, 1)
                record["reload_max_abs_diff"] = verify_reload(model, folder, calib.input_ids[:2, :64])
                lap("verify")
            record["timings_s"] = timings
            final = {**record, "format": fmt}
            # The model card; `slimkit push` (or the service) renders it again with the repo it goes to.
            source_info = record["source"]
            (folder / "README.md").write_text(
                card.render(final, source_info["model"], source_info["revision"], Path(out_dir).name)
            )
            (folder / "compression.json").write_text(json.dumps(final, indent=2) + "\n")
            publish(folder, out_dir, overwrite)
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
