"""Outputs must load: dense identity through both formats, and 30 % models reloaded in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from slimkit import CalibrationSpec, CompressionRequest, compress
from slimkit.export import save_compressed
from slimkit.loading import load_source

CALIB = CalibrationSpec(samples=8, seq_len=64, seed=0)


def test_canonical_model_matches_stock(tiny_model: Path, sample_ids: torch.Tensor) -> None:
    stock = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    slim = load_source(str(tiny_model)).model
    with torch.no_grad():
        diff = (stock(sample_ids).logits - slim(sample_ids).logits).abs().max()
    assert float(diff) <= 1e-5


@pytest.mark.parametrize("fmt", ["auto", "slim"])
def test_nothing_removed_reproduces_dense(tiny_model: Path, tmp_path: Path, sample_ids: torch.Tensor, fmt: str) -> None:
    dense = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    source = load_source(str(tiny_model))
    out = tmp_path / "out"
    written = save_compressed(source.model, source, out, {"note": "identity"}, fmt=fmt)
    assert written == ("stock" if fmt == "auto" else "slim")
    config = json.loads((out / "config.json").read_text())
    if written == "stock":  # loads with no custom code at all
        assert (
            "auto_map" not in config
            and config["model_type"] == json.loads((tiny_model / "config.json").read_text())["model_type"]
        )
    reloaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=written == "slim").eval()
    with torch.no_grad():
        diff = (dense(sample_ids).logits - reloaded(sample_ids).logits).abs().max()
    assert float(diff) <= 1e-4


RELOAD_SCRIPT = """
import json, sys, torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
out, ref = sys.argv[1], sys.argv[2]
tensors = load_file(ref)
model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
with torch.no_grad():
    logits = model(tensors["ids"]).logits
    prompt = tensors["ids"][:1, :8]
    cached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False)
print(json.dumps({"diff": float((logits - tensors["logits"]).abs().max()),
                  "generated": cached.shape[1] - prompt.shape[1], "cache_agrees": bool(torch.equal(cached, uncached))}))
"""


def test_compressed_reloads_in_fresh_process(tiny_model: Path, tmp_path: Path, sample_ids: torch.Tensor) -> None:
    out = tmp_path / "out"
    result = compress(
        CompressionRequest(model=str(tiny_model), ratio=0.3, calibration=CALIB, evaluation=None, device="cpu"),
        out,
        show_progress=False,
    )
    assert result.format == "slim"
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    assert not list(out.glob("*.bin"))
    with torch.no_grad():
        logits = result.model(sample_ids).logits
    save_file({"ids": sample_ids, "logits": logits}, str(tmp_path / "ref.safetensors"))
    run = subprocess.run(
        [sys.executable, "-c", RELOAD_SCRIPT, str(out), str(tmp_path / "ref.safetensors")],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["diff"] <= 1e-4
    assert report["generated"] == 12 and report["cache_agrees"]
    record = result.record
    target = 0.3 * record["params_before"]["attention_mlp"]
    removed = record["params_before"]["attention_mlp"] - record["params_after"]["attention_mlp"]
    assert abs(removed - target) <= rounding_unit(result.model.config)
    assert record["params_after"]["total"] < record["params_before"]["total"]
    assert record["kv_cache_bytes_per_token_fp16"]["after"] < record["kv_cache_bytes_per_token_fp16"]["before"]


def rounding_unit(config) -> int:
    """One rounding step per layer: 8 MLP channels, plus a 2-channel change of every head's width."""
    d, heads, kv = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    return config.num_hidden_layers * (8 * 3 * d + 2 * 2 * d * (heads + kv))
