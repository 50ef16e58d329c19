"""Peak memory and speed of recovery (distillation) for a Llama-2-7B-shaped model on one GPU (issue 14).

    python -m bench.gpu_recovery_7b --mode lora             # the mode meant for a 7B on one 80 GB GPU
    python -m bench.gpu_recovery_7b --mode full             # 16 bytes per student parameter: needs more
    python -m bench.gpu_recovery_7b --shape tiny --device cpu --tokens 4096   # smoke run of this script

One call runs the real pipeline (`slimkit.compress` with `recovery`) on a randomly initialised model saved
as a checkpoint (`bench.gpu_7b.build`: bf16, 32 layers, d = 4096, 32 heads, I = 11008): IntraSlice at
`--ratio`, a small held-out evaluation (recovery needs one), then distillation from the dense source
reloaded as the teacher, with gradient checkpointing and teacher logits computed on the fly. It prints one
JSON line (and appends it to `--out`): the peak accelerator memory of every stage (`bench.memory.StageMemory`
resets the allocator's peak at each stage change, so `peak_gib["recover"]` is the recovery's own peak with
both models resident), recovery tokens per second, and the command. Random weights do the same work and
need the same memory as trained ones; the losses they give mean nothing, so none are reported as quality.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
import transformers as T

from bench.common import command_line, git_commit
from bench.gpu_7b import build
from bench.memory import MIB, StageMemory
from slimkit import CalibrationSpec, CompressionRequest, EvalSpec, RecoverySpec, compress

# A 2-layer model of the same family, for checking this script without a GPU.
TINY = {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 2, "num_attention_heads": 4}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_recovery_7b", description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/llama7b"))
    p.add_argument("--shape", choices=("7b", "tiny"), default="7b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--mode", choices=("lora", "full"), default="lora")
    p.add_argument("--tokens", type=int, default=65536, help="recovery budget (16 steps of 4 × 1024 by default)")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--samples", type=int, default=128, help="calibration windows of --seq-len tokens")
    p.add_argument("--out", type=Path, default=Path("bench/results/gpu_recovery_7b.jsonl"))
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    src = build(args.work) if args.shape == "7b" else build(args.work, "llama-tiny-random", TINY, args.device)
    out = args.work / f"out-recovery-{args.mode}"
    request = CompressionRequest(
        model=str(src),
        ratio=args.ratio,
        device=args.device,
        calibration=CalibrationSpec(samples=args.samples, seq_len=args.seq_len),
        evaluation=EvalSpec(seq_len=args.seq_len, max_tokens=8 * args.seq_len, dense=False),
        recovery=RecoverySpec(tokens=args.tokens, seq_len=args.seq_len, batch_size=args.batch_size, mode=args.mode),
        verify=False,
    )
    start = time.perf_counter()
    try:
        with StageMemory(device) as memory:
            result = compress(request, out, progress=memory, show_progress=False)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    record, recovery = result.record, result.record["recovery"]
    peaks = memory.cuda if device.type == "cuda" else memory.rss
    return {
        "command": command_line("bench.gpu_recovery_7b"),
        "git_commit": git_commit(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": T.__version__,
        "shape": args.shape,
        "mode": args.mode,
        "ratio_achieved": round(record["ratio_achieved"]["attention_mlp"], 4),
        "params_student": record["params_after"]["total"],
        "params_teacher": record["params_before"]["total"],
        "recovery_tokens": recovery["tokens"],
        "recovery_steps": recovery["steps"],
        "recovery_wall_s": recovery["wall_s"],
        "recovery_tokens_per_s": round(recovery["tokens"] / recovery["wall_s"], 1),
        "peak_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process RSS",
        "peak_gib": {stage: round(mib * MIB / 2**30, 2) for stage, mib in peaks.items()},
        "timings_s": record["timings_s"],
        "call_s": round(time.perf_counter() - start, 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    row = run(args)
    line = json.dumps(row)
    print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
