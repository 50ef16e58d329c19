"""CUDA correctness (skipped without a GPU): the same compression on the GPU loads and agrees with CPU."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from slimkit import CalibrationSpec, CompressionRequest, EvalSpec, RecoverySpec, compress
from slimkit.export import load_compressed

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CALIB = CalibrationSpec(samples=8, seq_len=64)


def test_cuda_matches_cpu_in_fp32(tiny_model: Path, tmp_path: Path, sample_ids: torch.Tensor) -> None:
    results = {
        device: compress(
            CompressionRequest(
                model=str(tiny_model), ratio=0.3, calibration=CALIB, evaluation=None, device=device, dtype="float32"
            ),
            tmp_path / device,
            show_progress=False,
        )
        for device in ("cpu", "cuda")
    }
    assert results["cpu"].record["layer_shapes"] == results["cuda"].record["layer_shapes"]
    with torch.no_grad():
        cpu, gpu = (results[d].model(sample_ids).logits for d in ("cpu", "cuda"))
    assert float((cpu - gpu).abs().max()) <= 1e-3 * float(cpu.abs().max())


def test_cuda_bf16_compress_and_reload(tiny_model: Path, tmp_path: Path) -> None:
    result = compress(
        CompressionRequest(
            model=str(tiny_model), ratio=0.3, calibration=CALIB, evaluation=None, device="cuda", dtype="bfloat16"
        ),
        tmp_path / "bf16",
        show_progress=False,
    )
    assert result.record["reload_max_abs_diff"] is not None
    assert next(result.model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_cuda_bf16_recovery_trains_and_keeps_the_shape(tiny_llama_gqa: Path, tmp_path: Path, mode: str) -> None:
    """Recovery on the GPU in bf16 (the 7B path): finite losses, the student's dtype and shape kept, loadable."""
    lr = 1e-3 if mode == "lora" else 3e-4
    result = compress(
        CompressionRequest(
            model=str(tiny_llama_gqa),
            ratio=0.4,
            calibration=CalibrationSpec("wikitext2_valid", samples=8, seq_len=64),
            evaluation=EvalSpec("wikitext2_test", seq_len=64, max_tokens=1024, dense=False),
            recovery=RecoverySpec(tokens=4096, seq_len=64, batch_size=4, mode=mode, lr=lr),
            device="cuda",
            dtype="bfloat16",
        ),
        tmp_path / mode,
        show_progress=False,
    )
    rec = result.record["recovery"]
    assert rec["tokens"] == 4096 and rec["steps"] == 16
    assert math.isfinite(rec["perplexity_before"]) and math.isfinite(rec["perplexity_after"])
    assert next(result.model.parameters()).dtype == torch.bfloat16
    reloaded = load_compressed(tmp_path / mode)
    assert {k: v.shape for k, v in reloaded.state_dict().items()} == {
        k: v.shape for k, v in result.model.state_dict().items()
    }
