"""Replaying a recorded recipe: the CLI's `--recipe compression.json` and `CompressionRequest.from_recipe` rebuild
the request, and the same seeds give the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from slimkit import CompressionRequest
from slimkit.cli import main
from slimkit.errors import InvalidArgument

FAST = ["--samples", "4", "--seq-len", "32", "--no-eval", "--calib-text", "wikitext2_valid"]


def weights(folder: Path) -> dict:
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors |= load_file(file)
    return tensors


def test_cli_recipe_replay_gives_identical_weights(tiny_llama_gqa: Path, tmp_path: Path, capsys) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    args = ["compress", str(tiny_llama_gqa), "--out", str(first), "--ratio", "0.25", "--seed", "3", *FAST]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "load with   AutoModelForCausalLM.from_pretrained(" in out and "trust_remote_code=True" in out
    assert main(["compress", "--recipe", str(first / "compression.json"), "--out", str(second), "--no-eval"]) == 0
    a, b = weights(first), weights(second)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    recipe_a = json.loads((first / "compression.json").read_text())
    recipe_b = json.loads((second / "compression.json").read_text())
    assert recipe_a["recipe_sha256"] == recipe_b["recipe_sha256"]
    assert recipe_b["recipe"]["calibration"]["seed"] == 3


def test_from_recipe_reads_records_recipes_and_yaml(tmp_path: Path) -> None:
    record = {
        "source": {"model": "acme/base", "revision": "abc"},
        "recipe": {
            "method": "intraslice",
            "ratio": 0.3,
            "allocation": "global_pca",
            "layer_targets": None,
            "calibration": {"text": "mixed", "samples": 16, "seq_len": 256, "seed": 2},
            "dtype": "bfloat16",
            "head_step": 8,
            "estimator": {"bias": 0.5, "cap": 0.7, "frac": None},
            "recovery": {"tokens": 4096, "text": "mixed", "lr": 5e-05, "seq_len": 128, "mode": "lora"},
        },
    }
    request = CompressionRequest.from_recipe(record, device="cpu")
    assert (request.model, request.revision, request.method, request.ratio) == ("acme/base", "abc", "intraslice", 0.3)
    assert request.allocation == "global_pca" and request.head_step == 8 and (request.bias, request.cap) == (0.5, 0.7)
    assert (request.calibration.samples, request.calibration.seq_len, request.calibration.seed) == (16, 256, 2)
    assert request.recovery.tokens == 4096 and request.recovery.text is None and request.recovery.mode == "lora"
    assert request.recipe() == record["recipe"] | {"recovery": request.recovery.recipe("mixed")}
    (tmp_path / "recipe.yaml").write_text("method: flattengpt\nratio: 0.2\ncalibration: {text: wikitext2_valid}\n")
    again = CompressionRequest.from_recipe(tmp_path / "recipe.yaml", model="acme/other")
    assert (again.model, again.method, again.ratio) == ("acme/other", "flattengpt", 0.2)
    inline = {"method": "intraslice", "calibration": {"text": "inline:sha256:00"}}
    with pytest.raises(InvalidArgument, match="inline"):
        CompressionRequest.from_recipe(inline, model="acme/x")
    assert CompressionRequest.from_recipe(inline, model="acme/x", calibration_text="some text").calibration.text
    with pytest.raises(InvalidArgument, match="no source model"):
        CompressionRequest.from_recipe({"method": "intraslice", "calibration": {"text": "mixed"}})


def test_cli_reports_every_stage_or_nothing_when_quiet(tiny_llama_gqa: Path, tmp_path: Path, capsys) -> None:
    args = ["compress", str(tiny_llama_gqa), "--ratio", "0.25", *FAST]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    for stage in ("load the model", "calibration data", "compress", "save", "verify the reload"):
        assert f"{stage}: done in" in err, err
    assert "compress: 2/2 layers" in err
    assert main([*args, "--out", str(tmp_path / "b"), "--quiet"]) == 0
    quiet = capsys.readouterr()
    assert "done in" not in quiet.err and "saved to" in quiet.out
