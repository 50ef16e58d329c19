"""Bad input gets a clear error with a stable code, and never leaves an output folder behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers as T

from slimkit import CalibrationSpec, CompressionRequest, compress
from slimkit.cli import main as cli
from slimkit.errors import InvalidArgument, NoSafetensors, SlimError, UnsupportedArchitecture

from .conftest import make_tokenizer

CALIB = CalibrationSpec(samples=4, seq_len=32)


def request(model: Path, **kw) -> CompressionRequest:
    return CompressionRequest(model=str(model), calibration=CALIB, evaluation=None, device="cpu", **kw)


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.mark.parametrize("ratio", [0.0, -0.1, 0.95, 1.0])
def test_ratio_out_of_range(tiny_llama_gqa: Path, tmp_path: Path, ratio: float) -> None:
    with pytest.raises(InvalidArgument, match="ratio"):
        compress(request(tiny_llama_gqa, ratio=ratio), tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_unknown_method(tiny_llama_gqa: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"unknown method 'magic'.*intraslice"):
        compress(request(tiny_llama_gqa, method="magic"), tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_unsupported_architecture(tmp_path: Path) -> None:
    model = tmp_path / "gpt2"
    T.GPT2LMHeadModel(T.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=8192)).save_pretrained(model)
    make_tokenizer().save_pretrained(model)
    with pytest.raises(UnsupportedArchitecture, match=r"'gpt2'.*supported: llama, mistral, phi3, qwen2") as err:
        compress(request(model), tmp_path / "out")
    assert err.value.code == "unsupported_architecture"
    assert_nothing_written(tmp_path / "out")


def test_pickle_only_model_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "pickled"
    cfg = T.LlamaConfig(
        vocab_size=8192, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    T.LlamaForCausalLM(cfg).save_pretrained(model)
    (model / "model.safetensors").unlink()
    torch.save({"not": "loaded"}, model / "pytorch_model.bin")
    make_tokenizer().save_pretrained(model)
    with pytest.raises(NoSafetensors, match=r"pytorch_model\.bin") as err:
        compress(request(model), tmp_path / "out")
    assert err.value.code == "no_safetensors"
    assert_nothing_written(tmp_path / "out")


def test_failure_while_saving_leaves_nothing(tiny_llama_gqa: Path, tmp_path: Path, monkeypatch) -> None:
    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(T.PreTrainedModel, "save_pretrained", broken_save)
    with pytest.raises(OSError, match="disk full"):
        compress(request(tiny_llama_gqa, ratio=0.3), tmp_path / "out", show_progress=False)
    assert_nothing_written(tmp_path / "out")


def test_cli_reports_code_and_exits_2(tiny_llama_gqa: Path, tmp_path: Path, capsys) -> None:
    rc = cli(["compress", str(tiny_llama_gqa), "--ratio", "0.95", "--out", str(tmp_path / "out")])
    assert rc == 2
    assert "error [invalid_argument]: ratio must be in (0, 0.9]" in capsys.readouterr().err
    assert_nothing_written(tmp_path / "out")


def test_missing_model_folder(tmp_path: Path) -> None:
    with pytest.raises(SlimError) as err:
        compress(request(tmp_path / "nope"), tmp_path / "out")
    assert err.value.code == "model_not_found"


def test_calibration_longer_than_sliding_window(tmp_path: Path) -> None:
    model = tmp_path / "mistral"
    T.MistralForCausalLM(
        T.MistralConfig(
            vocab_size=8192,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,  # MistralConfig's default (8) exceeds the 2 heads: refused as invalid_model
            sliding_window=16,
        )
    ).save_pretrained(model)
    make_tokenizer().save_pretrained(model)
    with pytest.raises(InvalidArgument, match="sliding window"):
        compress(request(model, ratio=0.3), tmp_path / "out")
    assert_nothing_written(tmp_path / "out")
