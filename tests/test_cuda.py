"""CUDA correctness (skipped without a GPU): the same compression on the GPU loads and agrees with CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slimkit import CalibrationSpec, CompressionRequest, compress

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
