"""The engine reads models (and calibration text) straight from a Hub, through the real client."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers as T

from slimkit import CalibrationSpec, CompressionRequest, compress
from slimkit.cli import main as cli
from slimkit.errors import ModelNotFound, NoSafetensors, RevisionNotFound

from .conftest import make_tokenizer, save_tiny

CALIB = CalibrationSpec(samples=4, seq_len=32)


@pytest.fixture(scope="module")
def hub_model(local_hub, tmp_path_factory: pytest.TempPathFactory) -> str:
    local_hub.seed("tester/engine-tiny", save_tiny("qwen2", tmp_path_factory.mktemp("engine-tiny")))
    return "tester/engine-tiny"


def test_cli_compresses_a_hub_model(hub_model: str, tmp_path: Path, capsys) -> None:
    rc = cli(
        [
            "compress",
            hub_model,
            "--ratio",
            "0.3",
            "--out",
            str(tmp_path / "out"),
            "--samples",
            "4",
            "--seq-len",
            "32",
            "--no-eval",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert "saved to" in capsys.readouterr().out
    record = (tmp_path / "out" / "compression.json").read_text()
    assert '"model": "tester/engine-tiny"' in record and '"revision": "' in record


def test_calibration_text_from_a_hub_dataset(local_hub, hub_model: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "calib.txt").write_text("Calibration text stored in a dataset repository. " * 200)
    local_hub.seed("tester/calib-text", data, repo_type="dataset")
    spec = CalibrationSpec(text="hf://datasets/tester/calib-text/calib.txt", samples=4, seq_len=32)
    result = compress(
        CompressionRequest(model=hub_model, ratio=0.3, calibration=spec, evaluation=None, device="cpu"),
        tmp_path / "out",
        show_progress=False,
    )
    assert result.record["calibration"]["text"] == spec.text


def test_hub_errors_are_coded(local_hub, hub_model: str, tmp_path: Path) -> None:
    def run(model: str, revision: str | None = None) -> None:
        compress(
            CompressionRequest(model=model, revision=revision, ratio=0.3, calibration=CALIB, evaluation=None),
            tmp_path / "out",
        )

    with pytest.raises(ModelNotFound):
        run("tester/does-not-exist")
    with pytest.raises(RevisionNotFound):
        run(hub_model, "no-such-branch")
    pickled = tmp_path / "pickled"
    T.LlamaForCausalLM(
        T.LlamaConfig(vocab_size=8192, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    ).save_pretrained(pickled)
    (pickled / "model.safetensors").unlink()
    torch.save({}, pickled / "pytorch_model.bin")
    make_tokenizer().save_pretrained(pickled)
    local_hub.seed("tester/pickled", pickled)
    with pytest.raises(NoSafetensors, match=r"pytorch_model\.bin"):
        run("tester/pickled")
    assert not (tmp_path / "out").exists()
