"""IntraSlice quality ablations (issue 13): one configuration per call, perplexity on several domains.

One call compresses SmolLM2-135M (`app.smollm2`) with IntraSlice under the given knobs and appends one
JSON line to `--out`: achieved ratio, compression time, and perplexity on every evaluation text (64
windows × 512 tokens each by default, fp32 on CPU — the yardstick of issue 13). `--dense` evaluates the
uncompressed model instead. Knobs not given keep `IntraSliceOptions`' defaults — note the 8-channel head
grid: the engine's default for a ratio target is `--head-step 2` (README, "IntraSlice quality").
Held-out texts: WikiText-2 test (the calibration's domain when calibrating on
WikiText-2), technical documentation (`bench/data/techdocs_eval.txt`) and licence texts
(`bench/data/licenses_eval.txt`, a domain in no calibration set); see bench/data/README.md.

    python -m bench.intraslice_ablation --ratio 0.3 --head-step 2 --calib mixed  # the engine's defaults
    python -m bench.intraslice_ablation --ratio 0.3 --head-step 2 --damping 0.1  # one ablation row
    python -m bench.intraslice_ablation --dense
    python -m bench.intraslice_ablation --table bench/results/ablation_cpu.jsonl  # markdown of the rows
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data"
EVAL_TEXTS = {
    "wikitext2": "wikitext2_test",
    "techdocs": str(DATA / "techdocs_eval.txt"),
    "licenses": str(DATA / "licenses_eval.txt"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.intraslice_ablation", description=__doc__.splitlines()[0])
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--allocation", default="uniform", help="uniform, global or global_pca")
    p.add_argument("--calib", default="wikitext2_valid", help="calibration text (default: the issue's yardstick)")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--damping", type=float, help="δ as a fraction of the mean diagonal (engine default if unset)")
    p.add_argument("--head-step", type=int, help="head-width grid (2 = free even widths)")
    p.add_argument("--mlp-step", type=int, help="MLP channels dropped in multiples of this")
    p.add_argument("--compensation-target", choices=("layer", "dense"), help="what the least squares fit")
    p.add_argument("--order", choices=("attention_first", "mlp_first"))
    p.add_argument("--ridge-prior", choices=("zero", "plain"), help="what the o_proj ridge shrinks towards")
    p.add_argument(
        "--split",
        help="ATT,MLP: remove these fractions of every layer's attention and MLP instead of --ratio in both",
    )
    p.add_argument("--bias", type=float, help="λ_b, the MLP's share of the pruning (default: the engine's)")
    p.add_argument("--min-head-width", type=float, help="delete heads narrower than this fraction (>1: fewer, wider)")
    p.add_argument("--seed", type=int, default=0, help="calibration seed")
    p.add_argument("--no-compensation", action="store_true", help="intraslice-nocomp: no least squares")
    p.add_argument("--dtype", help="load (and store) the weights in this dtype, e.g. float32 (default: bfloat16)")
    p.add_argument("--eval-windows", type=int, default=64, help="windows of 512 tokens per evaluation text")
    p.add_argument("--dense", action="store_true", help="evaluate the uncompressed model")
    p.add_argument("--label", help="row label (default: built from the knobs)")
    p.add_argument("--out", type=Path, default=Path("bench/results/ablation_cpu.jsonl"))
    p.add_argument("--table", type=Path, help="print the markdown table of a results file and exit")
    args = p.parse_args(argv)
    if args.split and (args.allocation != "uniform" or args.bias is not None):
        p.error("--split sets every layer's fractions itself: it does not combine with --allocation or --bias")
    return args


def knobs(args: argparse.Namespace) -> dict[str, Any]:
    """The options that differ from the engine's defaults (what the row label shows)."""
    names = ("damping", "head_step", "mlp_step", "compensation_target", "order", "ridge_prior", "min_head_width")
    return {k: getattr(args, k) for k in names if getattr(args, k) is not None}


def evaluate_all(model: Any, tokenizer: Any, windows_per_text: int) -> dict[str, float]:
    from slimkit.evaluate import EvalSpec, eval_windows, perplexity

    out = {}
    for name, text in EVAL_TEXTS.items():
        if text.startswith("/") and not Path(text).is_file():
            continue
        windows = eval_windows(tokenizer, EvalSpec(text, 512, windows_per_text * 512))
        out[name] = round(perplexity(model, windows, _cpu()), 4)
    return out


def _cpu() -> Any:
    import torch

    return torch.device("cpu")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from transformers.utils import logging as hf_logging

    from app.smollm2 import ensure_smollm2
    from slimkit.api import CompressionRequest
    from slimkit.calibration import CalibrationSpec, build_calibration
    from slimkit.layerwise import compress_model
    from slimkit.loading import load_source
    from slimkit.methods.intraslice import IntraSlice, IntraSliceOptions
    from slimkit.planning import choose_targets
    from slimkit.shapes import param_counts
    from slimkit.tokenizer_files import load_tokenizer

    hf_logging.disable_progress_bar()
    import torch

    source = load_source(str(ensure_smollm2()), dtype=getattr(torch, args.dtype) if args.dtype else None)
    tokenizer = load_tokenizer(source.path, source.config)
    model = source.model
    from bench.common import command_line, git_commit

    row: dict[str, Any] = {"label": args.label or "dense"}
    row |= {"command": command_line("bench.intraslice_ablation"), "git_commit": git_commit()}
    if not args.dense:
        start = time.perf_counter()
        spec = CalibrationSpec(args.calib, args.samples, args.seq_len, args.seed)
        calib = build_calibration(tokenizer, spec)
        request = CompressionRequest(
            str(source.path),
            method="intraslice-nocomp" if args.no_compensation else "intraslice",
            ratio=args.ratio,
            bias=args.bias,
            allocation=args.allocation,
            device="cpu",
            layer_targets=split(args, model.config.num_hidden_layers),
        )
        uniform_bias = request.resolved_bias() if request.uses_uniform_split() else None
        row["label"] = args.label or _label(args, uniform_bias)
        targets, _, _ = choose_targets(request, model, calib, _cpu(), None, lambda *a: None)
        before = param_counts(model)
        method = IntraSlice(compensate=not args.no_compensation, options=IntraSliceOptions(**knobs(args)))
        compress_model(model, calib.input_ids, calib.attention_mask, method, targets, _cpu(), show_progress=False)
        after = param_counts(model)
        row |= {
            "ratio": args.ratio,
            "split": args.split,
            "bias": request.resolved_bias(),
            "allocation": args.allocation,
            "calibration": f"{Path(args.calib).name} {args.samples}x{args.seq_len} seed {args.seed}",
            "knobs": knobs(args),
            "removed_attention_mlp": round(1 - after["attention_mlp"] / before["attention_mlp"], 4),
            "layer_plans": _plans(model.config),
            "compression_time_s": round(time.perf_counter() - start, 1),
        }
    row["ppl"] = evaluate_all(model, tokenizer, args.eval_windows)
    return row


def split(args: argparse.Namespace, layers: int) -> list[Any] | None:
    """--split ATT,MLP as the same per-layer target for each of the model's `layers` (None without --split)."""
    from slimkit.layerwise import LayerTarget

    if not args.split:
        return None
    attention, mlp = (float(x) for x in args.split.split(","))
    return [LayerTarget(attention, mlp)] * layers


def _plans(config: Any) -> dict[str, int]:
    """How many layers got each shape: "query heads × head width, MLP width" → count."""
    from collections import Counter

    from slimkit.shapes import get_shapes

    shapes = get_shapes(config)
    keys = (f"{s['num_attention_heads']}x{s['v_head_dim']}, mlp {s['intermediate_size']}" for s in shapes)
    return dict(Counter(keys).most_common())


def _label(args: argparse.Namespace, uniform_bias: float | None) -> str:
    target = f"attention,MLP {args.split}" if args.split else f"{args.allocation} {args.ratio}"
    if uniform_bias is not None:
        target += f" λ_b {uniform_bias:g}"
    parts = [target, Path(args.calib).stem]
    if (args.samples, args.seq_len) != (64, 512):
        parts.append(f"{args.samples}x{args.seq_len}")
    if args.seed:
        parts.append(f"seed {args.seed}")
    parts += [f"{k}={v}" for k, v in knobs(args).items()] + (["no compensation"] if args.no_compensation else [])
    parts += [f"weights {args.dtype}"] if args.dtype else []
    return ", ".join(parts)


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    texts = [t for t in EVAL_TEXTS if any(t in r["ppl"] for r in rows)]
    lines = [
        "| run | removed attn+MLP | " + " | ".join(f"PPL {t}" for t in texts) + " | time (s) |",
        "|---|---:|" + "---:|" * len(texts) + "---:|",
    ]
    for r in rows:
        removed = f"{100 * r['removed_attention_mlp']:.1f} %" if "removed_attention_mlp" in r else "0"
        ppl = " | ".join(f"{r['ppl'][t]:.2f}" if t in r["ppl"] else "–" for t in texts)
        lines.append(f"| {r['label']} | {removed} | {ppl} | {r.get('compression_time_s', '–')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    row = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
