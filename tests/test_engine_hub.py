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


def test_push_an_output_with_its_card(local_hub, hub_model: str, tmp_path: Path, capsys) -> None:
    """`slimkit push`: a fresh repo gets the output and a card naming it; an existing output needs --overwrite;
    a repo that is not a slimkit output, or a folder that is not one, is refused and nothing is written."""
    import uuid

    from huggingface_hub import HfApi, hf_hub_download

    out = tmp_path / "out"
    assert (
        cli(
            [
                "compress",
                hub_model,
                "--ratio",
                "0.3",
                "--out",
                str(out),
                "--samples",
                "4",
                "--seq-len",
                "32",
                "--no-eval",
            ]
        )
        == 0
    )
    assert (out / "README.md").read_text().startswith("---\nbase_model: tester/engine-tiny")
    repo = f"tester/pushed-{uuid.uuid4().hex[:8]}"
    capsys.readouterr()
    assert cli(["push", str(out), repo]) == 0, capsys.readouterr().err
    files = set(HfApi().list_repo_files(repo))
    assert {"compression.json", "README.md", "config.json"} <= files
    card_text = Path(hf_hub_download(repo, "README.md")).read_text()
    assert f'from_pretrained("{repo}"' in card_text and "base_model: tester/engine-tiny" in card_text
    assert HfApi().model_info(repo).private is True
    assert cli(["push", str(out), repo]) == 2 and "--overwrite" in capsys.readouterr().err
    assert cli(["push", str(out), repo, "--overwrite"]) == 0
    head = HfApi().model_info(hub_model).sha
    assert cli(["push", str(out), hub_model, "--overwrite"]) == 2  # someone's model: never written over
    assert "not a slimkit output" in capsys.readouterr().err and HfApi().model_info(hub_model).sha == head
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert cli(["push", str(foreign), f"tester/never-{uuid.uuid4().hex[:6]}"]) == 2


def test_eval_takes_folders_and_hub_ids_with_coded_errors(local_hub, hub_model: str, tmp_path: Path, capsys) -> None:
    """`slimkit eval` on a Hub id (a stock source, and a slim output pushed there: our own modeling file is
    used, never the repo's), and coded errors, not tracebacks, for what is not a model."""
    import json
    import uuid

    fast = ["--eval-max-tokens", "64", "--eval-seq-len", "32", "--device", "cpu"]
    assert cli(["eval", hub_model, *fast]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["perplexity"] > 1
    out = tmp_path / "out"
    args = ["compress", hub_model, "--ratio", "0.3", "--out", str(out), "--samples", "4", "--seq-len", "32"]
    assert cli([*args, "--no-eval"]) == 0
    repo = f"tester/eval-{uuid.uuid4().hex[:8]}"
    assert cli(["push", str(out), repo]) == 0
    capsys.readouterr()
    assert cli(["eval", repo, *fast]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["model"] == repo
    (tmp_path / "empty").mkdir()
    for bad, code in ((str(tmp_path / "empty"), "no_safetensors"), ("tester/no-such-model", "model_not_found")):
        assert cli(["eval", bad, *fast]) == 2
        assert f"error [{code}]" in capsys.readouterr().err
