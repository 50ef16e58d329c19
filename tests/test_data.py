"""Calibration windows and the perplexity protocol."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from slimkit.calibration import CalibrationSpec, build_calibration
from slimkit.evaluate import EvalSpec, eval_windows, perplexity

from .conftest import make_tokenizer


def test_calibration_is_seeded_and_recorded() -> None:
    tok = make_tokenizer()
    a = build_calibration(tok, CalibrationSpec(samples=4, seq_len=32, seed=3))
    b = build_calibration(tok, CalibrationSpec(samples=4, seq_len=32, seed=3))
    c = build_calibration(tok, CalibrationSpec(samples=4, seq_len=32, seed=4))
    assert a.input_ids.shape == (4, 32) and torch.equal(a.input_ids, b.input_ids)
    assert not torch.equal(a.input_ids, c.input_ids)
    assert bool(a.attention_mask.all())
    assert a.provenance["text"] == "wikitext2_valid" and a.provenance["calibration_tokens"] == 128


def test_short_text_is_padded_and_masked(tmp_path: Path) -> None:
    text = tmp_path / "short.txt"
    text.write_text("A very short calibration text.")
    batch = build_calibration(make_tokenizer(), CalibrationSpec(text=str(text), samples=4, seq_len=64))
    assert batch.input_ids.shape == (1, 64)
    n = int(batch.attention_mask.sum())
    assert 0 < n < 64 and batch.attention_mask[0, :n].all() and not batch.attention_mask[0, n:].any()


def test_perplexity_matches_the_standard_protocol(tiny_llama_gqa: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_gqa).eval()
    windows = eval_windows(make_tokenizer(), EvalSpec(seq_len=64, max_tokens=256))
    assert windows.shape == (4, 64)
    with torch.no_grad():
        logits = model(windows).logits[:, :-1]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
    assert math.isclose(
        perplexity(model, windows, torch.device("cpu"), batch_size=3), math.exp(float(nll)), rel_tol=1e-5
    )


def test_perplexity_leaves_dtype_and_rope_buffers_alone(tiny_llama_gqa: Path) -> None:
    from slimkit.loading import load_source

    model = load_source(str(tiny_llama_gqa), dtype=torch.bfloat16).model
    inv_freq = model.model.rotary_emb.inv_freq.clone()
    perplexity(model, eval_windows(make_tokenizer(), EvalSpec(seq_len=32, max_tokens=64)), torch.device("cpu"))
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    assert torch.equal(model.model.rotary_emb.inv_freq, inv_freq)
