"""Wall time to compress a randomly initialised Llama-2-7B-shaped model on one GPU (issue 3 target: ≤ 5 min).

    python -m bench.gpu_7b --samples 128 --seq-len 2048 [--work /tmp/llama7b] [--ratio 0.3]

Builds the model (random weights, bf16, Llama-2-7B config: 32 layers, d=4096, 32 heads, I=11008) and
saves it as safetensors, then runs `slimkit.compress` on CUDA with WikiText-2 calibration and no
evaluation, and prints one JSON line: stage timings, peak GPU memory, parameter counts, and the command.
Random weights give the same amount of work as trained ones; quality is measured elsewhere.
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

from slimkit import CalibrationSpec, CompressionRequest, compress

TOKENIZER = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "tokenizer" / "tokenizer.json"


LLAMA2_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32}


def build(work: Path, name: str = "llama2-7b-random", shape: dict = LLAMA2_7B, device: str = "cuda") -> Path:
    """A randomly initialised bf16 Llama checkpoint of `shape` under `work/name` (built once, then reused)."""
    src = work / name
    if (src / "config.json").exists():
        return src
    config = T.LlamaConfig(
        **shape,
        num_key_value_heads=shape["num_attention_heads"],
        vocab_size=32000,
        max_position_embeddings=4096,
        dtype="bfloat16",
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = T.LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(src)
    T.PreTrainedTokenizerFast(
        tokenizer_file=str(TOKENIZER), eos_token="<|endoftext|>", pad_token="<|pad|>"
    ).save_pretrained(src)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return src


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--work", type=Path, default=Path("/tmp/llama7b"))
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--method", default="intraslice")
    args = p.parse_args()
    t0 = time.perf_counter()
    src = build(args.work)
    build_s = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats()
    t1 = time.perf_counter()
    result = compress(
        CompressionRequest(
            model=str(src),
            method=args.method,
            ratio=args.ratio,
            evaluation=None,
            device="cuda",
            calibration=CalibrationSpec(samples=args.samples, seq_len=args.seq_len),
            batch_size=args.batch_size,
            verify=False,
        ),
        args.work / "out",
        show_progress=False,
    )
    total = time.perf_counter() - t1
    r = result.record
    print(
        json.dumps(
            {
                "command": "python -m bench.gpu_7b " + " ".join(sys.argv[1:]),
                "gpu": torch.cuda.get_device_name(),
                "torch": torch.__version__,
                "transformers": T.__version__,
                "build_checkpoint_s": round(build_s, 1),
                "compress_call_s": round(total, 1),
                "timings_s": r["timings_s"],
                "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                "params_before": r["params_before"],
                "params_after": r["params_after"],
                "ratio_achieved": r["ratio_achieved"],
                "calibration": r["calibration"],
            }
        )
    )
    shutil.rmtree(args.work / "out", ignore_errors=True)


if __name__ == "__main__":
    main()
