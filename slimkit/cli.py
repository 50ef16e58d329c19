"""Command line: `slimkit compress MODEL --ratio 0.3 --out DIR`, `slimkit eval DIR`, and `slimkit jobs …`
(the job service's client: `slimkit.jobs_cli`).

Exit codes: 0 success, 2 bad input or unsupported model (the message says which lever to pull),
130 interrupted (Ctrl-C: one line, no traceback, nothing left at --out), 1 anything else.

`--out` is never a folder with someone else's files in it: it must be new or empty, or an earlier slimkit
output that `--overwrite` replaces (see `slimkit.outdir`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from slimkit import __version__, jobs_cli
from slimkit.api import CompressionRequest, compress
from slimkit.calibration import DEFAULT_CALIBRATION_TEXT, CalibrationSpec
from slimkit.cli_progress import StageProgress
from slimkit.devices import resolve_device
from slimkit.errors import InvalidArgument, SlimError
from slimkit.estimator import VARIANTS
from slimkit.evaluate import EvalSpec, eval_windows, perplexity
from slimkit.latency.workload import Workload
from slimkit.methods import METHODS
from slimkit.recovery import RecoverySpec
from slimkit.transact import TransActSpec


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimkit", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"slimkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    defaults = argparse.ArgumentDefaultsHelpFormatter  # every option's help shows its default
    c = sub.add_parser("compress", help="compress a model (local folder or Hub id) into DIR", formatter_class=defaults)
    c.add_argument("model", nargs="?", help="local folder or Hub id (with --recipe: default the recorded source)")
    c.add_argument("--out", required=True, type=Path, help="new or empty folder for the output")
    c.add_argument(
        "--recipe",
        type=Path,
        help="replay a recorded recipe exactly (compression.json, an output folder, or a .json/.yaml recipe); "
        "the method, target and calibration options below are then taken from it",
    )
    c.add_argument("--overwrite", action="store_true", help="replace an earlier slimkit output in --out")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress output; only the summary")
    c.add_argument("--method", default="intraslice", choices=sorted(METHODS))
    target = c.add_mutually_exclusive_group()
    target.add_argument("--ratio", type=float, help="fraction of decoder attention+MLP params to remove (0.3)")
    target.add_argument("--speedup", type=float, help="instead: the speed-up of the workload to reach on --device")
    c.add_argument(
        "--allocation",
        choices=VARIANTS,
        help="spread the pruning uniformly, or by the global (PCA-aware) Fisher estimator "
        "(default: uniform for --ratio, global_pca for --speedup)",
    )
    c.add_argument(
        "--bias",
        type=float,
        help="λ_b, the MLP's share of the pruning (default: the method's split for uniform — IntraSlice 1.075 — "
        "1 for the estimators, searched for a speed-up)",
    )
    c.add_argument("--cap", type=float, default=0.8, help="estimator / speed-up: per-layer ratio cap")
    c.add_argument("--frac", type=int, help="estimator: importance blocks per head (default: one per 8-channel step)")
    c.add_argument(
        "--head-step",
        type=int,
        help="width methods: kept heads' widths are multiples of this (default 2 for a ratio: best quality; "
        "8: the grid fused GPU attention kernels prefer; speed-up targets always use 8)",
    )
    c.add_argument("--batch", type=int, default=1, help="speed-up workload: sequences per request")
    c.add_argument("--prompt-tokens", type=int, default=512, help="speed-up workload: prompt length")
    c.add_argument("--generated-tokens", type=int, default=0, help="speed-up workload: decode steps (0: prefill)")
    c.add_argument("--latency-cache", help="folder of cached latency profiles (default ~/.cache/slimkit/latency)")
    c.add_argument("--revision")
    c.add_argument(
        "--calib-text",
        default=DEFAULT_CALIBRATION_TEXT,
        help="file, mixed (default: prose, docs and code), wikitext2_valid, or hf://datasets/...",
    )
    c.add_argument("--samples", type=int, default=64)
    c.add_argument("--seq-len", type=int, default=512)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="auto")
    c.add_argument("--dtype", help="load weights in this dtype, e.g. bfloat16 (default: as stored)")
    c.add_argument("--batch-size", type=int, default=8)
    _eval_args(c)
    c.add_argument("--no-eval", action="store_true", help="skip perplexity before/after")
    c.add_argument("--no-verify", action="store_true", help="skip the reload check")
    _recovery_args(c)
    t = c.add_argument_group("transact (method transact only)")
    t.add_argument("--shots", type=int, help="pruning shots, each rescoring the current model (default 1)")
    t.add_argument(
        "--shot-recover-tokens",
        type=int,
        help="distillation tokens spread over the shots, more to later ones (default 0: prune only); they train "
        "with the recovery defaults, or with the --recover-* settings when --recover-tokens also asks for a "
        "final recovery",
    )

    jobs_cli.add_parser(sub)

    u = sub.add_parser("push", help="upload an output folder to the Hub with its model card", formatter_class=defaults)
    u.add_argument("folder", type=Path)
    u.add_argument("repo_id", help="<namespace>/<name>; created if missing")
    u.add_argument("--public", action="store_true", help="create the repo public (default: private)")
    u.add_argument("--overwrite", action="store_true", help="update a repo that already holds a slimkit output")

    e = sub.add_parser("eval", help="perplexity of a model folder (compressed or not)", formatter_class=defaults)
    e.add_argument("model", help="a model folder (compressed or not) or a Hub id")
    e.add_argument("--revision", help="Hub revision of a Hub id")
    e.add_argument("--device", default="auto")
    _eval_args(e)
    return parser


def _recovery_args(p: argparse.ArgumentParser) -> None:
    r = p.add_argument_group("recovery (distillation from the dense model after compression; off by default)")
    r.add_argument("--recover-tokens", type=int, help="training-token budget, e.g. 65536 (turns recovery on)")
    r.add_argument("--recover-text", help="what to train on (default: the calibration text; never --eval-text)")
    r.add_argument("--recover-seq-len", type=int, default=512)
    r.add_argument("--recover-batch", type=int, default=4, help="windows per optimizer step")
    r.add_argument("--recover-lr", type=float, help="peak learning rate (default 5e-5 full, 1e-3 lora)")
    r.add_argument(
        "--recover-mode",
        choices=("auto", "full", "lora"),
        default="auto",
        help="auto: every weight where that fits the GPU, LoRA otherwise (always full on a CPU)",
    )
    r.add_argument("--recover-temperature", type=float, default=1.0)
    r.add_argument("--recover-hidden-weight", type=float, default=0.0, help="weight of hidden-state matching")


def _recovery_spec(args: argparse.Namespace) -> RecoverySpec | None:
    if args.recover_tokens is None:
        return None
    return RecoverySpec(
        tokens=args.recover_tokens,
        text=args.recover_text,
        seq_len=args.recover_seq_len,
        batch_size=args.recover_batch,
        lr=args.recover_lr,
        mode=args.recover_mode,
        temperature=args.recover_temperature,
        hidden_weight=args.recover_hidden_weight,
    )


def _transact_spec(args: argparse.Namespace) -> TransActSpec | None:
    if args.shots is None and args.shot_recover_tokens is None:
        return None
    return TransActSpec(shots=args.shots or 1, recovery_tokens=args.shot_recover_tokens or 0)


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eval-text", default="wikitext2_test")
    p.add_argument("--eval-seq-len", type=int, default=512)
    p.add_argument("--eval-max-tokens", type=int, default=65536, help="cap on evaluated tokens (0: no cap)")


def _eval_spec(args: argparse.Namespace) -> EvalSpec:
    return EvalSpec(args.eval_text, args.eval_seq_len, args.eval_max_tokens or None)


def _summary(record: dict) -> str:
    before, after = record["params_before"], record["params_after"]
    ratio, metrics, t = record["ratio_achieved"], record["metrics"], record["timings_s"]
    recipe, speed = record["recipe"], record.get("speedup")
    target = f"target ratio {recipe['ratio']:.2f}" if speed is None else f"target speed-up {speed['target']:.2f}x"
    lines = [
        f"method       {recipe['method']} ({target}, "
        f"allocation {recipe['allocation'] or 'per-layer targets'}), format {record['format']}",
        f"attn+MLP     {before['attention_mlp']:,} -> {after['attention_mlp']:,} params "
        f"({ratio['attention_mlp']:.1%} removed)",
        f"no embedding {before['without_embeddings']:,} -> {after['without_embeddings']:,} "
        f"({ratio['without_embeddings']:.1%})",
        f"whole model  {before['total']:,} -> {after['total']:,} ({ratio['total']:.1%})",
        f"KV cache     {record['kv_cache_bytes_per_token_fp16']['before']:,} -> "
        f"{record['kv_cache_bytes_per_token_fp16']['after']:,} bytes/token (fp16)",
    ]
    if "perplexity_before" in metrics:
        lines.append(
            f"perplexity   {metrics['perplexity_before']:.3f} -> {metrics['perplexity_after']:.3f} "
            f"({metrics['evaluation']['text']}, {metrics['evaluation']['tokens']:,} tokens)"
        )
    if record.get("depth"):
        depth = record["depth"]
        merged = [g for g in depth["groups"] if len(g) > 1]
        lines.append(
            f"layers       {depth['layers_before']} -> {depth['layers_after']} ({depth['removed_layers']} removed; "
            + (f"merged {merged})" if merged else "dropped the rest)")
        )
    if record.get("transact"):
        plan, shots = record["transact"]["plan"], record["transact"]["shots"]
        lines.append(
            f"shape        {plan['kv_heads'] * plan['heads_per_group']} heads / {plan['kv_heads']} KV heads, MLP "
            f"{plan['intermediate_size']} in every layer ({plan['attention_mode']}: attention -"
            f"{plan['attention_ratio']:.1%}, MLP -{plan['mlp_ratio']:.1%}); {len(shots)} shot(s), "
            f"{record['transact']['recovery_tokens']:,} training tokens between them"
        )
    if record.get("recovery"):
        rec = record["recovery"]
        verdict = "kept" if rec["kept"] else "discarded: held-out perplexity got worse, pre-recovery weights kept"
        lines.append(
            f"recovery     {rec['tokens']:,} tokens in {rec['wall_s']:.0f}s, perplexity {rec['perplexity_before']:.3f} "
            f"-> {rec['perplexity_after']:.3f} ({verdict})"
        )
    if speed is not None:
        lines.append(
            f"speed-up     {speed['measured']:.2f}x measured (predicted {speed['predicted_speedup']:.2f}x, "
            f"target {speed['target']:.2f}x) on {speed['device']}, ratio {speed['ratio']:.3f}, bias {speed['bias']}"
        )
    lines.append("time         " + ", ".join(f"{k} {v:.1f}s" for k, v in t.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "jobs":
        return jobs_cli.run(args)
    finished = False  # set once the output is in place: a later Ctrl-C must not claim nothing was written
    try:
        if args.command == "compress" and args.recipe is not None:
            request = CompressionRequest.from_recipe(
                args.recipe,
                model=args.model,
                evaluation=None if args.no_eval else _eval_spec(args),
                device=args.device,
                batch_size=args.batch_size,
                verify=not args.no_verify,
                latency_cache=args.latency_cache,
            )
        elif args.command == "compress":
            if args.model is None:
                raise InvalidArgument("give the model to compress (or --recipe)")
            request = CompressionRequest(
                model=args.model,
                method=args.method,
                ratio=args.ratio,
                speedup=args.speedup,
                workload=Workload(args.batch, args.prompt_tokens, args.generated_tokens),
                revision=args.revision,
                allocation=args.allocation,
                bias=args.bias,
                cap=args.cap,
                frac=args.frac,
                head_step=args.head_step,
                latency_cache=args.latency_cache,
                calibration=CalibrationSpec(args.calib_text, args.samples, args.seq_len, args.seed),
                evaluation=None if args.no_eval else _eval_spec(args),
                device=args.device,
                dtype=args.dtype,
                batch_size=args.batch_size,
                verify=not args.no_verify,
                recovery=_recovery_spec(args),
                transact=_transact_spec(args),
            )
        if args.command == "push":
            from slimkit.push import push_output

            url = push_output(args.folder, args.repo_id, private=not args.public, overwrite=args.overwrite)
            print(f"pushed {args.folder} to {args.repo_id}: {url}")
        elif args.command == "compress":
            stages = None if args.quiet else StageProgress()
            result = compress(
                request, args.out, progress=stages, show_progress=not args.quiet, overwrite=args.overwrite
            )
            if stages is not None:
                stages.finish()
            finished = True
            print(_summary(result.record))
            print(f"saved to {result.out_dir}")
            remote = ", trust_remote_code=True" if result.format == "slim" else ""
            why = "  (slim format: its modeling file ships in the folder)" if remote else "  (a stock config)"
            print(f"load with   AutoModelForCausalLM.from_pretrained({str(result.out_dir)!r}{remote}){why}")
        elif args.command == "eval":
            from transformers import AutoTokenizer

            from slimkit.export import evaluable_folder, load_compressed

            with tempfile.TemporaryDirectory(prefix="slimkit-eval-") as workdir:
                folder = evaluable_folder(str(args.model), args.revision, Path(workdir))
                model = load_compressed(folder)
                # trust_remote_code=False: a slim output's config points to our modeling code, which would
                # otherwise stop AutoTokenizer at a [y/N] prompt; the tokenizer itself never needs code
                tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
            windows = eval_windows(tokenizer, _eval_spec(args))
            ppl = perplexity(model, windows, resolve_device(args.device), show_progress=True)
            print(
                json.dumps(
                    {
                        "model": str(args.model),
                        "perplexity": ppl,
                        "tokens": int(windows.numel()),
                        "text": args.eval_text,
                        "seq_len": args.eval_seq_len,
                    }
                )
            )
    except SlimError as err:
        print(f"error [{err.code}]: {err.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command != "compress":
            print("interrupted", file=sys.stderr)
        elif finished:
            print(f"interrupted; the output in {args.out} is complete", file=sys.stderr)
        else:
            print(f"interrupted; nothing was written to {args.out}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
