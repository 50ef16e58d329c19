"""Calibration windows and the perplexity protocol."""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import json
import math
import platform
import tomllib
from pathlib import Path

import pytest
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
    assert a.provenance["text"] == "mixed" and a.provenance["calibration_tokens"] == 128  # the default text


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


# The bundled mixed-domain calibration text (slimkit/data/mixed.txt, built by scripts/build_mixed_calibration.py).
DATA = Path(__file__).resolve().parent.parent / "slimkit" / "data"
BUILDER = Path(__file__).resolve().parent.parent / "scripts" / "build_mixed_calibration.py"
DOMAINS = ("prose", "docs", "code")


def mixed_manifest() -> dict:
    return json.loads((DATA / "mixed.sources.json").read_text(encoding="utf-8"))


def load_builder():
    spec = importlib.util.spec_from_file_location("build_mixed_calibration", BUILDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mixed_text_has_three_domains_in_equal_shares() -> None:
    data = (DATA / "mixed.txt").read_bytes()
    manifest = mixed_manifest()
    assert hashlib.sha256(data).hexdigest() == manifest["sha256"] and len(data) == manifest["bytes"]
    assert 1_000_000 < len(data) < 1_500_000
    chunks = manifest["chunks"]
    assert [c[0] for c in chunks] == [0] + [c[1] for c in chunks[:-1]] and chunks[-1][1] == len(data)
    shares = {d: sum(c[1] - c[0] for c in chunks if c[2] == d) / len(data) for d in DOMAINS}
    assert all(0.25 <= share <= 0.42 for share in shares.values()), shares
    assert max(c[1] - c[0] for c in chunks) <= 4096 + 2  # a chunk and the blank line after it
    # The prose is cut from the WikiText-2 validation split, verbatim, and never from the test split.
    valid = (DATA / "wikitext2_valid.txt").read_text(encoding="utf-8")
    test = (DATA / "wikitext2_test.txt").read_text(encoding="utf-8")
    for start, end, domain, _ in chunks:
        if domain == "prose":
            chunk = data[start:end].decode("utf-8").rstrip()
            assert chunk in valid and chunk not in test


def test_mixed_calibration_windows_cover_all_three_domains() -> None:
    tok = make_tokenizer()
    batch = build_calibration(tok, CalibrationSpec(text="mixed", samples=64, seq_len=512, seed=0))
    assert batch.input_ids.shape == (64, 512) and bool(batch.attention_mask.all())
    assert batch.provenance["text"] == "mixed"
    text = (DATA / "mixed.txt").read_text(encoding="utf-8")
    encoded = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    stream, offsets = torch.tensor(encoded["input_ids"]), encoded["offset_mapping"]
    assert stream.numel() == batch.provenance["stream_tokens"]
    chunks = mixed_manifest()["chunks"]
    majority = []
    for window in batch.input_ids:
        candidates = (stream[: stream.numel() - 511] == window[0]).nonzero().flatten().tolist()
        start = next(s for s in candidates if torch.equal(stream[s : s + 512], window))
        lo = len(text[: offsets[start][0]].encode())
        hi = len(text[: offsets[start + 511][1]].encode())
        share = {
            d: sum(max(0, min(hi, c[1]) - max(lo, c[0])) for c in chunks if c[2] == d) / (hi - lo) for d in DOMAINS
        }
        majority.append(max(share.items(), key=lambda item: item[1]))
    assert {d for d, _ in majority} == set(DOMAINS)  # 64 windows see all three domains
    assert sum(s for _, s in majority) / len(majority) > 0.6  # and a window mostly sees one


def test_mixed_text_is_reproducible_from_its_builder(tmp_path: Path) -> None:
    manifest = mixed_manifest()
    here = f"{platform.python_implementation()} {platform.python_version()}"
    built_from = f"{manifest['implementation']} {manifest['python']}"
    if here != built_from:
        pytest.skip(f"mixed.txt was built from {built_from}; this is {here}, whose docs and sources differ")
    builder = load_builder()
    changed = [
        name
        for name, path in builder.input_files().items()
        if hashlib.sha256(path.read_bytes()).hexdigest() != manifest["inputs"].get(name)
    ]
    if changed:
        pytest.skip(f"this {here} has other sources than the one mixed.txt was built from: {changed[:5]}")
    built = builder.build(tmp_path)
    assert built["sha256"] == manifest["sha256"]
    for name in ("mixed.txt", "mixed.sources.json", "LICENSE.mixed"):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name


def test_mixed_licence_names_both_licences_and_ships() -> None:
    licence = (DATA / "LICENSE.mixed").read_text(encoding="utf-8")
    assert "CC BY-SA 3.0" in licence and "https://creativecommons.org/licenses/by-sa/3.0/" in licence
    assert "WikiText-2" in licence and "Merity et al." in licence
    assert "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2" in licence
    assert "Python Software Foundation; All Rights Reserved" in licence
    assert all(name in licence for name in load_builder().CODE_MODULES)
    pyproject = tomllib.loads((DATA.parent.parent / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["slimkit"]
    for name in ("mixed.txt", "mixed.sources.json", "LICENSE.mixed"):
        assert any(fnmatch.fnmatch(f"data/{name}", pattern) for pattern in patterns), name


def test_bundled_names_agree_between_the_engine_and_the_api() -> None:
    from pydantic import ValidationError

    from app.schemas import BUNDLED_TEXTS, Calibration
    from slimkit.calibration import BUNDLED, read_text

    assert set(BUNDLED_TEXTS) == BUNDLED
    assert Calibration(dataset="mixed").dataset == "mixed"
    with pytest.raises(ValidationError, match="mixed"):
        Calibration(dataset="mixed_test")
    assert read_text("mixed") == (DATA / "mixed.txt").read_text(encoding="utf-8")
