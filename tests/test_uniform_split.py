"""The split of a uniform ratio target (issue 13): every layer loses the ratio of its own parameters,
IntraSlice takes λ_b = 1.075 of it from the MLP and the rest from attention (measured better than equal
fractions), baselines keep equal fractions, and the split is recorded, carded and replayed exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from slimkit import CalibrationSpec, CompressionRequest, compress
from slimkit.card import render
from slimkit.estimator.allocate import layer_budgets, uniform_targets
from slimkit.loading import load_source
from slimkit.methods.intraslice import UNIFORM_MLP_BIAS
from slimkit.shapes import MLP_ROUND, attention_params, get_shapes, mlp_params, set_shapes

CALIB = CalibrationSpec("wikitext2_valid", samples=4, seq_len=64)


def removed_fractions(record: dict) -> tuple[float, float, float]:
    """(attention, MLP, attention + MLP) fractions removed, from the record's per-layer shapes."""
    config = load_source(record["source"]["model"]).model.config
    before = get_shapes(config)
    after = record["layer_shapes"]
    a0 = sum(attention_params(s, config) for s in before)
    m0 = sum(mlp_params(s, config) for s in before)
    a1 = sum(attention_params(dict(b, **s), config) for b, s in zip(before, after, strict=True))
    m1 = sum(mlp_params(dict(b, **s), config) for b, s in zip(before, after, strict=True))
    return 1 - a1 / a0, 1 - m1 / m0, 1 - (a1 + m1) / (a0 + m0)


def test_each_layer_is_split_on_its_own_parameters(tiny_llama_gqa: Path) -> None:
    config = load_source(str(tiny_llama_gqa)).model.config
    shapes = get_shapes(config)
    shapes[1] = dict(shapes[1], intermediate_size=shapes[1]["intermediate_size"] // 2)  # an uneven input
    set_shapes(config, shapes)
    targets = uniform_targets(config, 0.3, 1.075, 0.8)
    assert targets[0] != targets[1]
    for t, b, shape in zip(targets, layer_budgets(config), shapes, strict=True):
        assert t.attention < 0.3 < t.mlp  # the MLP gives more, the attention less
        assert round(t.mlp * b.mlp_units) % MLP_ROUND == 0  # the MLP's share on the engine's grid
        removed = (
            t.attention * b.attention_params
            + b.mlp_params
            - mlp_params(dict(shape, intermediate_size=b.mlp_units - round(t.mlp * b.mlp_units)), config)
        )
        assert removed == pytest.approx(0.3 * (b.attention_params + b.mlp_params))  # the layer's own ratio
    equal, units = uniform_targets(config, 0.3, 1.0, 0.8)[0], layer_budgets(config)[0].mlp_units
    assert equal.mlp == pytest.approx(0.3, abs=MLP_ROUND / 2 / units)  # λ_b = 1: equal, up to the grid


def test_intraslice_takes_less_from_attention_and_records_the_split(tiny_llama_gqa: Path, tmp_path: Path) -> None:
    runs = {
        name: compress(
            CompressionRequest(model=str(tiny_llama_gqa), ratio=0.3, calibration=CALIB, evaluation=None, **kw),
            tmp_path / name,
            show_progress=False,
        ).record
        for name, kw in {"default": {}, "equal": {"bias": 1.0}, "wanda": {"method": "wanda-sp"}}.items()
    }
    assert runs["default"]["recipe"]["bias"] == UNIFORM_MLP_BIAS
    assert runs["equal"]["recipe"]["bias"] == runs["wanda"]["recipe"]["bias"] == 1.0
    attention, mlp, total = removed_fractions(runs["default"])
    assert attention < 0.27 and mlp > 0.31 and total == pytest.approx(0.3, abs=0.01)
    attention, mlp, total = removed_fractions(runs["equal"])
    assert abs(attention - mlp) < 0.03 and total == pytest.approx(0.3, abs=0.01)
    card = render(runs["default"], "acme/base", None, "me/out")
    assert f"its MLP λ_b = {UNIFORM_MLP_BIAS:g} times that fraction, its attention the rest" in card
    assert "the same fraction of its attention and of its MLP" in render(runs["equal"], "acme/base", None, "me/o")


def test_replay_keeps_the_recorded_split_and_old_records_replay_with_equal_fractions() -> None:
    recipe = {"method": "intraslice", "ratio": 0.3, "allocation": "uniform", "calibration": {"text": "mixed"}}
    assert CompressionRequest.from_recipe(recipe, model="m").bias == 1.0  # recorded before the split existed
    assert CompressionRequest.from_recipe(dict(recipe, bias=1.2), model="m").bias == 1.2
    depth = dict(recipe, method="flattengpt")
    assert CompressionRequest.from_recipe(depth, model="m").bias is None
    assert "bias" not in CompressionRequest(model="m", method="flattengpt", ratio=0.2).recipe()
    assert "bias" not in CompressionRequest(model="m", ratio=0.2, allocation="global_pca").recipe()
    assert CompressionRequest(model="m", ratio=0.2).resolved_bias() == UNIFORM_MLP_BIAS
    assert CompressionRequest(model="m", speedup=1.5).resolved_bias() is None
