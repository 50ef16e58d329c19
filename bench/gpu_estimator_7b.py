"""Wall time of the global ratio estimator on a random Llama-2-7B-shaped model on one GPU (issue 5 target ≤ 2 min).

    python -m bench.gpu_estimator_7b --samples 128 --seq-len 2048 [--variant global_pca]

Reuses the checkpoint of `bench.gpu_7b` (built on first use), loads it with `slimkit.loading.load_source`,
and prints one JSON line: gradient-pass and total times, peak GPU memory, the predicted global ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from bench.gpu_7b import build
from slimkit.calibration import CalibrationSpec
from slimkit.estimator import estimate_layer_targets
from slimkit.loading import load_source


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--work", type=Path, default=Path("/tmp/llama7b"))
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--variant", default="global_pca")
    args = p.parse_args()
    src = build(args.work)
    t0 = time.perf_counter()
    source = load_source(str(src))
    tokenizer = AutoTokenizer.from_pretrained(src)
    load_s = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats()
    t1 = time.perf_counter()
    result = estimate_layer_targets(
        source.model,
        tokenizer,
        args.ratio,
        variant=args.variant,
        device="cuda",
        calibration=CalibrationSpec(samples=args.samples, seq_len=args.seq_len),
    )
    total = time.perf_counter() - t1
    print(
        json.dumps(
            {
                "command": "python -m bench.gpu_estimator_7b " + " ".join(sys.argv[1:]),
                "gpu": torch.cuda.get_device_name(),
                "torch": torch.__version__,
                "load_s": round(load_s, 1),
                "estimator_s": round(total, 1),
                "timings_s": result.timings_s,
                "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                "predicted_ratio": result.predicted_ratio,
                "variant": args.variant,
                "mlp_ratio_range": [min(t.mlp for t in result.targets), max(t.mlp for t in result.targets)],
            }
        )
    )


if __name__ == "__main__":
    main()
