"""TransAct benchmark (issue 15): where transitional-activation pruning stands against IntraSlice and FlattenGPT.

SmolLM2-135M (`app.smollm2`: 9 heads sharing 3 KV heads, MLP 1536), calibration 64 × 512 windows of
WikiText-2 validation (seed 0), for each ratio in `--ratios`:

- `transact` prune-only (K = 1, no training);
- `transact` K = `--shots` shots with `--tokens` distillation tokens spread over them (TransAct's schedule);
- `transact` K = 1 followed by `--tokens` of ordinary recovery (is iterating worth it at the same budget?);
- `intraslice` and `flattengpt` one-shot, and each followed by `--tokens` of the same recovery.

Recovery is the engine's distillation with its defaults (full parameters, KL at T = 1, lr 5e-5 cosine,
4 × 512 windows per step, WikiText-2 validation, seed 1; TransAct's shots use seeds 101…). Perplexity on
64 × 512 tokens of WikiText-2 *test* and of the technical docs (`bench/data/techdocs_eval.txt`, another
domain). Then every output and the dense model are timed side by side in one loop (prefill of batch ×
512 random tokens, use_cache=False, last-position logits, fp32, alternating models, medians of
`--repeats`): speed-up = dense median / output median. KV-cache bytes per token from the configs (fp16).
One JSON line per output goes to `--out`; `--table FILE` prints the README table.

    python -m bench.transact --ratios 0.2,0.3 --tokens 16384 --shots 4
    python -m bench.transact --table bench/results/transact_cpu.jsonl
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

CPU = torch.device("cpu")
CALIB_TEXT = "wikitext2_valid"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.transact", description=__doc__.splitlines()[0])
    p.add_argument("--ratios", default="0.2,0.3")
    p.add_argument("--tokens", type=int, default=16384, help="training tokens of every recovered row")
    p.add_argument("--shots", type=int, default=4, help="K of the iterative TransAct row")
    p.add_argument("--methods", default="transact,intraslice,flattengpt", help="which rows to run")
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--batch-sizes", default="1,8", help="prefill batch sizes timed")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", type=Path, default=Path("bench/results/transact_cpu.jsonl"))
    p.add_argument("--table", type=Path, help="print the markdown table of a results file and exit")
    return p.parse_args(argv)


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = [
        "| ratio | run | removed attn+MLP | params | KV bytes/token | training tokens | WikiText-2 | tech docs | "
        "prefill speed-up b=1 / b=8 |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        speed = " / ".join(f"{r['speedup'][b]:.2f}×" for b in sorted(r["speedup"], key=int))
        lines.append(
            f"| {r['ratio']} | {r['label']} | {r['removed_attention_mlp']:.1%} | {r['params'] / 1e6:.1f} M | "
            f"{r['kv_bytes_per_token']:,} | {r['tokens']:,} | {r['ppl']['wikitext2']:.2f} | "
            f"{r['ppl']['techdocs']:.2f} | {speed} |"
        )
    return "\n".join(lines)


@torch.inference_mode()
def side_by_side(models: dict[str, torch.nn.Module], batch: int, repeats: int) -> dict[str, float]:
    """Median prefill seconds of every model, timed in alternation after one warm-up each."""
    ids = torch.randint(0, 32000, (batch, 512), generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    from transformers import AutoModelForCausalLM

    from app.smollm2 import ensure_smollm2
    from bench.common import command_line, git_commit
    from bench.recovery import evaluate
    from slimkit import CalibrationSpec, CompressionRequest, TransActSpec, compress
    from slimkit.export import load_compressed
    from slimkit.loading import load_source
    from slimkit.recovery import RecoverySpec, layer_boundaries, recover, training_windows
    from slimkit.tokenizer_files import load_tokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    command, commit = command_line("bench.transact"), git_commit()
    dense_dir = ensure_smollm2()
    source = load_source(str(dense_dir))
    tokenizer = load_tokenizer(source.path, source.config)
    dense_ppl = evaluate(source.model, tokenizer, args.eval_windows)
    print(f"dense: {dense_ppl}", flush=True)
    spec = RecoverySpec(tokens=args.tokens, text=CALIB_TEXT)
    train = training_windows(tokenizer, spec, CALIB_TEXT) if args.tokens else None
    teacher = AutoModelForCausalLM.from_pretrained(dense_dir, dtype=torch.float32).eval()
    runs = []  # (ratio, label, method, transact spec, final recovery?)
    iterative = TransActSpec(args.shots, args.tokens)
    for ratio in (float(r) for r in args.ratios.split(",")):
        runs += [
            (ratio, "transact prune-only (K=1)", "transact", TransActSpec(1, 0), False),
            (ratio, f"transact K={args.shots}, training between shots", "transact", iterative, False),
            (ratio, "transact K=1, then recovery", "transact", TransActSpec(1, 0), True),
            (ratio, "intraslice one-shot", "intraslice", None, False),
            (ratio, "intraslice, then recovery", "intraslice", None, True),
            (ratio, "flattengpt one-shot", "flattengpt", None, False),
            (ratio, "flattengpt, then recovery", "flattengpt", None, True),
        ]
    methods = args.methods.split(",")
    runs = [run for run in runs if run[2] in methods and (args.tokens or not run[4])]
    rows: list[dict[str, Any]] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    dense = AutoModelForCausalLM.from_pretrained(dense_dir, dtype=torch.float32).eval()
    models: dict[str, torch.nn.Module] = {"dense": dense}
    compressed: dict[tuple[float, str], tuple[Path, float]] = {}  # one compression per (ratio, method, shots)
    with tempfile.TemporaryDirectory(prefix="slimkit-transact-bench-") as tmp:
        for ratio, label, method, transact, final in runs:
            key = (ratio, f"{method}-{transact}")
            if key not in compressed:
                start = time.perf_counter()
                request = CompressionRequest(
                    model=str(dense_dir),
                    method=method,
                    ratio=ratio,
                    calibration=CalibrationSpec(CALIB_TEXT, 64, 512, 0),
                    evaluation=None,
                    verify=False,
                    transact=transact,
                )
                out = Path(tmp) / f"{method}-{ratio}-{len(compressed)}"
                compressed[key] = (compress(request, out, show_progress=False).out_dir, time.perf_counter() - start)
            folder, compression_s = compressed[key]
            record = json.loads((folder / "compression.json").read_text())
            model = load_compressed(folder, dtype=torch.float32)
            report = {"tokens": record["transact"]["recovery_tokens"] if record.get("transact") else 0, "wall_s": 0}
            if final:
                groups = record["depth"]["groups"] if record.get("depth") else None
                pairs = layer_boundaries(model.config.num_hidden_layers, groups)
                report = recover(model, teacher, *train, spec, CPU, pairs, show_progress=True)
            row = {
                "label": label,
                "command": command,
                "git_commit": commit,
                "method": method,
                "ratio": ratio,
                "transact": {k: record["transact"][k] for k in ("plan", "shots")} if record.get("transact") else None,
                "removed_attention_mlp": record["ratio_achieved"]["attention_mlp"],
                "removed_total": record["ratio_achieved"]["total"],
                "params": record["params_after"]["total"],
                "kv_bytes_per_token": record["kv_cache_bytes_per_token_fp16"]["after"],
                "format": record["format"],
                "tokens": report["tokens"],
                "compression_s": round(compression_s, 1),
                "recovery_s": report["wall_s"],
                "ppl": evaluate(model, tokenizer, args.eval_windows),
                "ppl_dense": dense_ppl,
            }
            print(json.dumps(row), flush=True)
            with args.out.with_suffix(".partial").open("a") as f:  # kept if the timing below fails
                f.write(json.dumps(row) + "\n")
            rows.append(row)
            models[f"{ratio} {label}"] = model
    speeds = {b: side_by_side(models, int(b), args.repeats) for b in args.batch_sizes.split(",")}
    with args.out.open("a") as f:
        for row in rows:
            name = f"{row['ratio']} {row['label']}"
            row["speedup"] = {b: round(s["dense"] / s[name], 3) for b, s in speeds.items()}
            row["prefill_median_s"] = {b: round(s[name], 5) for b, s in speeds.items()}
            row["dense_prefill_median_s"] = {b: round(s["dense"], 5) for b, s in speeds.items()}
            f.write(json.dumps(row) + "\n")
    print(table(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
