"""Inference speed of a compressed SmolLM2-135M against the dense one, measured side by side in one run.

The dense folder (`app.smollm2`) loads with stock `AutoModelForCausalLM.from_pretrained`, the compressed
one with `slimkit.export.load_compressed` (remote code only for the slim format), both in `--dtype`
(float32) on `--device` (cpu). Prefill throughput = tokens / time of one forward pass with use_cache=False
over batch × tokens random token ids; by default only the last position's logits are computed
(`logits_to_keep=1`, as `generate` does for its prefill; `--all-logits` computes every position, as a
perplexity evaluation does). After warm-up, dense and compressed runs alternate (A B A B ...) `--repeats`
times; the medians are reported with the speed-up = median dense time / median compressed time.
KV-cache bytes per token come from the configs. Without `--compressed`, the script first compresses the
dense model (`--method` intraslice, `--ratio` 0.3, 64 × 512 calibration, no evaluation) into a temp dir.
`--slim-dense` instead writes the *uncompressed* model in the slim format: the speed-up is then the slim
modeling file's overhead against stock Llama at identical shapes (1.00× = parity).

    python -m bench.speed                          # -> bench/results/speed.{json,md}
    python -m bench.speed --compressed out/smol-30 --device cuda --dtype bfloat16 --out-prefix speed_cuda
    python -m bench.speed --slim-dense --out-prefix slim_dense_parity_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedConfig

from app.smollm2 import ensure_smollm2
from bench.common import command_line, environment, header_lines, write_results
from slimkit import CalibrationSpec, CompressionRequest, compress
from slimkit.export import RECIPE_FILE, load_compressed, save_compressed
from slimkit.loading import load_source
from slimkit.modeling.modeling_slim import SlimConfig
from slimkit.shapes import kv_cache_bytes_per_token


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__.splitlines()[0])
    p.add_argument("--compressed", type=Path, help="a compressed output folder (default: compress one first)")
    p.add_argument("--slim-dense", action="store_true", help="compare with the dense model in the slim format")
    p.add_argument("--method", default="intraslice", help="method when compressing here")
    p.add_argument("--ratio", type=float, default=0.3, help="ratio when compressing here")
    p.add_argument("--samples", type=int, default=64, help="calibration windows when compressing here")
    p.add_argument("--seq-len", type=int, default=512, help="calibration window length when compressing here")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated prefill batch sizes")
    p.add_argument("--tokens", type=int, default=512, help="prefill length")
    p.add_argument("--all-logits", action="store_true", help="compute logits at every position")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1, help="untimed forwards per model and shape")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out-prefix", default="speed", help="writes bench/results/<prefix>.{json,md}")
    return p.parse_args(argv)


def kv_bytes_per_token(config: PreTrainedConfig, dtype: torch.dtype) -> int:
    """K+V cache bytes one token costs across all layers (per-layer shapes for the slim format)."""
    if getattr(config, "model_type", None) == SlimConfig.model_type:
        return kv_cache_bytes_per_token(config, dtype)  # type: ignore[arg-type]
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * config.num_hidden_layers * kv_heads * head_dim * itemsize


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() skips the tied duplicate


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def forward_time(model: torch.nn.Module, ids: torch.Tensor, logits_to_keep: int) -> float:
    sync(ids.device)
    start = time.perf_counter()
    model(input_ids=ids, use_cache=False, logits_to_keep=logits_to_keep)
    sync(ids.device)
    return time.perf_counter() - start


def measure(
    models: dict[str, torch.nn.Module], ids: torch.Tensor, args: argparse.Namespace, logits_to_keep: int
) -> dict[str, Any]:
    """Warm up each model, then alternate timed forwards; medians, throughput and speed-up."""
    for model in models.values():
        for _ in range(args.warmup):
            forward_time(model, ids, logits_to_keep)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            times[name].append(forward_time(model, ids, logits_to_keep))
    tokens = ids.numel()
    result: dict[str, Any] = {"batch": ids.shape[0], "tokens": ids.shape[1]}
    for name, values in times.items():
        med = statistics.median(values)
        result[name] = {"median_s": med, "tokens_per_s": tokens / med, "times_s": [round(t, 5) for t in values]}
    result["speedup"] = result["dense"]["median_s"] / result["compressed"]["median_s"]
    return result


def make_compressed(dense: Path, args: argparse.Namespace, out: Path) -> Path:
    request = CompressionRequest(
        model=str(dense),
        method=args.method,
        ratio=args.ratio,
        calibration=CalibrationSpec("wikitext2_valid", args.samples, args.seq_len, 0),
        evaluation=None,
        device=args.device,
    )
    return compress(request, out, show_progress=False).out_dir


def markdown(data: dict[str, Any]) -> str:
    lines = header_lines("Inference speed: dense vs compressed SmolLM2-135M", data["command"], data["environment"])
    c, d = data["models"]["compressed"], data["models"]["dense"]
    recipe = c.get("recipe") or {}
    lines += [
        f"Compressed: {recipe.get('method', '?')} at ratio {recipe.get('ratio', '?')} ({c['format']} format); "
        f"dtype {data['dtype']}; logits {'all positions' if data['all_logits'] else 'last position only'}; "
        f"median of {data['repeats']} alternating runs after {data['warmup']} warm-up.",
        "",
        "| model | params | KV cache bytes/token (run dtype) | KV cache bytes/token (fp16) |",
        "|---|---:|---:|---:|",
    ]
    for name, m in (("dense", d), ("compressed", c)):
        lines.append(f"| {name} | {m['params']:,} | {m['kv_bytes_per_token']:,} | {m['kv_bytes_per_token_fp16']:,} |")
    lines += [
        "",
        "| prefill shape | dense tok/s | compressed tok/s | dense median (s) | compressed median (s) | speed-up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in data["prefill"]:
        lines.append(
            f"| {r['batch']} × {r['tokens']} | {r['dense']['tokens_per_s']:,.0f} | "
            f"{r['compressed']['tokens_per_s']:,.0f} | {r['dense']['median_s']:.4f} | "
            f"{r['compressed']['median_s']:.4f} | {r['speedup']:.2f}× |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    command = command_line("bench.speed")
    dense_dir = ensure_smollm2()
    with tempfile.TemporaryDirectory(prefix="slimkit-speed-") as tmp:
        compressed_dir = args.compressed
        if args.slim_dense:
            source = load_source(str(dense_dir))
            compressed_dir = Path(tmp) / "slim-dense"
            recipe = {"recipe": {"method": "none (dense)", "ratio": 0}}
            save_compressed(source.model, source, compressed_dir, recipe, fmt="slim")
        elif compressed_dir is None:
            start = time.perf_counter()
            compressed_dir = make_compressed(dense_dir, args, Path(tmp) / "compressed")
            print(f"compressed {args.method} @ {args.ratio} in {time.perf_counter() - start:.0f} s", flush=True)
        recipe_file = compressed_dir / RECIPE_FILE
        record = json.loads(recipe_file.read_text()) if recipe_file.is_file() else {}
        models = {
            "dense": AutoModelForCausalLM.from_pretrained(dense_dir, dtype=dtype).eval().to(device),
            "compressed": load_compressed(compressed_dir, dtype=dtype).to(device),
        }
    info = {
        name: {
            "class": type(m).__name__,
            "params": param_count(m),
            "kv_bytes_per_token": kv_bytes_per_token(m.config, dtype),
            "kv_bytes_per_token_fp16": kv_bytes_per_token(m.config, torch.float16),
        }
        for name, m in models.items()
    }
    info["compressed"] |= {
        "path": str(args.compressed) if args.compressed else None,
        "format": record.get("format", "?"),
        "recipe": record.get("recipe"),
        "ratio_achieved": record.get("ratio_achieved"),
    }
    vocab = models["dense"].config.vocab_size
    gen = torch.Generator().manual_seed(0)
    prefill = []
    for batch in (int(b) for b in args.batch_sizes.split(",") if b):
        ids = torch.randint(0, vocab, (batch, args.tokens), generator=gen).to(device)
        prefill.append(measure(models, ids, args, 0 if args.all_logits else 1))
        r = prefill[-1]
        print(
            f"{batch} x {args.tokens}: dense {r['dense']['tokens_per_s']:,.0f} tok/s, "
            f"compressed {r['compressed']['tokens_per_s']:,.0f} tok/s, speed-up {r['speedup']:.2f}x",
            flush=True,
        )
    data = {
        "command": command,
        "environment": environment(str(device)),
        "dtype": args.dtype,
        "all_logits": args.all_logits,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "models": info,
        "prefill": prefill,
    }
    for path in write_results(args.out_prefix, data, markdown(data)):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
