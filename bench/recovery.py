"""Recovery benchmark (issue 14): how much of the one-shot loss distillation wins back, per token budget.

One call compresses SmolLM2-135M (`app.smollm2`) once with `--method` at `--ratio` (calibration: 64 × 512
windows of WikiText-2 validation, seed 0), then for each budget in `--budgets` reloads that output and
distils the dense model into it (`slimkit.recovery.recover`: training windows of the recovery text, seed 1,
never an evaluation text), and evaluates perplexity on 64 × 512 tokens of WikiText-2 *test* and of the
technical-docs text (`bench/data/techdocs_eval.txt`, another domain than the recovery data). Budget 0 is
the one-shot model. Each budget appends one JSON line to `--out` with wall time and seconds per 1k tokens.

    python -m bench.recovery --method intraslice --ratio 0.3 --budgets 0,16384,65536
    python -m bench.recovery --method flattengpt --ratio 0.2 --budgets 0,16384,65536
    python -m bench.recovery --device cuda --budgets 262144,1048576 --out bench/results/recovery_cuda.jsonl
    python -m bench.recovery --table bench/results/recovery_cpu.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

DATA = Path(__file__).resolve().parent / "data"
EVAL_TEXTS = {"wikitext2": "wikitext2_test", "techdocs": str(DATA / "techdocs_eval.txt")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__.splitlines()[0])
    p.add_argument("--method", default="intraslice")
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--budgets", default="0,16384,65536", help="comma-separated training-token budgets")
    p.add_argument("--text", default="wikitext2_valid", help="recovery (and calibration) text")
    p.add_argument("--mode", choices=("full", "lora"), default="full")
    p.add_argument("--lr", type=float, help="peak learning rate (engine default if unset)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--hidden-weight", type=float, default=0.0)
    p.add_argument("--eval-windows", type=int, default=64, help="windows of 512 tokens per evaluation text")
    p.add_argument("--device", default="cpu", help="where to compress, train and evaluate (fp32 everywhere)")
    p.add_argument("--out", type=Path, default=Path("bench/results/recovery_cpu.jsonl"))
    p.add_argument("--table", type=Path, help="print the markdown table of a results file and exit")
    return p.parse_args(argv)


def evaluate(model: torch.nn.Module, tokenizer: Any, windows: int, device: torch.device) -> dict[str, float]:
    from slimkit.evaluate import EvalSpec, eval_windows, perplexity

    return {
        name: round(perplexity(model, eval_windows(tokenizer, EvalSpec(text, 512, windows * 512)), device), 4)
        for name, text in EVAL_TEXTS.items()
    }


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = [
        "| method | ratio | mode | tokens | wall time | s per 1k tokens | WikiText-2 | tech docs |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        per_k = f"{r['s_per_1k_tokens']:.1f}" if r["tokens"] else "–"
        lines.append(
            f"| {r['method']} | {r['ratio']} | {r['mode'] if r['tokens'] else 'none'} | {r['tokens']:,} | "
            f"{r['wall_s']:.0f} s | {per_k} | {r['ppl']['wikitext2']:.2f} | {r['ppl']['techdocs']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    from transformers import AutoModelForCausalLM

    from app.smollm2 import ensure_smollm2
    from bench.common import command_line, git_commit
    from slimkit import CalibrationSpec, CompressionRequest, compress
    from slimkit.export import load_compressed
    from slimkit.loading import load_source
    from slimkit.recovery import RecoverySpec, layer_boundaries, recover, training_windows
    from slimkit.tokenizer_files import load_tokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    command, commit = command_line("bench.recovery"), git_commit()
    dense_dir = ensure_smollm2()
    source = load_source(str(dense_dir))
    tokenizer = load_tokenizer(source.path, source.config)
    device = torch.device(args.device)
    dense_ppl = evaluate(source.model.float(), tokenizer, args.eval_windows, device)
    print(f"dense: {dense_ppl}", flush=True)
    with tempfile.TemporaryDirectory(prefix="slimkit-recovery-") as tmp:
        start = time.perf_counter()
        request = CompressionRequest(
            model=str(dense_dir),
            method=args.method,
            ratio=args.ratio,
            calibration=CalibrationSpec(args.text, 64, 512, 0),
            evaluation=None,
            verify=False,
            device=args.device,
            dtype="float32" if device.type == "cuda" else None,  # fp32 compute as on CPU (stored fp32 there)
        )
        out = compress(request, Path(tmp) / "out", show_progress=False).out_dir
        compression_s = time.perf_counter() - start
        record = json.loads((out / "compression.json").read_text())
        bias = record["recipe"].get("bias")  # the uniform split λ_b
        groups = record["depth"]["groups"] if record.get("depth") else None
        for budget in (int(b) for b in args.budgets.split(",") if b):
            student = load_compressed(out, dtype=torch.float32)
            report: dict[str, Any] = {"tokens": 0, "wall_s": 0.0}
            spec = RecoverySpec(
                tokens=max(budget, 1),
                text=args.text,
                seq_len=args.seq_len,
                batch_size=args.batch_size,
                lr=args.lr,
                mode=args.mode,
                hidden_weight=args.hidden_weight,
            )
            if budget:
                teacher = AutoModelForCausalLM.from_pretrained(dense_dir, dtype=torch.float32).eval()
                ids, mask = training_windows(tokenizer, spec, args.text)
                pairs = layer_boundaries(student.config.num_hidden_layers, groups)
                report = recover(student, teacher, ids, mask, spec, device, pairs, show_progress=True)
                del teacher
            row = {
                "label": f"{args.method} {args.ratio}, {budget} tokens {args.mode}",
                "command": command,
                "git_commit": commit,
                "method": args.method,
                "ratio": args.ratio,
                "bias": bias,
                "mode": args.mode,
                "lr": spec.resolved_lr(),
                "recovery_text": args.text,
                "compression_s": round(compression_s, 1),
                "tokens": report["tokens"],
                "wall_s": report["wall_s"],
                "s_per_1k_tokens": round(1000 * report["wall_s"] / report["tokens"], 2) if report["tokens"] else None,
                "loss_first": report.get("loss_first"),
                "loss_last": report.get("loss_last"),
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "ppl": evaluate(student, tokenizer, args.eval_windows, device),
                "ppl_dense": dense_ppl,
            }
            print(json.dumps(row), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
