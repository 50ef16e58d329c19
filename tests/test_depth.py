"""Depth compression: exact flattening, the grouping rules, and stock checkpoints with fewer layers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as T

from slimkit import CalibrationSpec, CompressionRequest, EvalSpec, compress
from slimkit.depth.merge import merged_shape, merged_state, single_layer_config
from slimkit.depth.prune_back import ridge_leverage
from slimkit.depth.similarity import block_influence, greedy_groups, lowest_influence_kept, removed_layers
from slimkit.errors import InvalidArgument
from slimkit.loading import load_source
from slimkit.modeling.modeling_slim import SlimDecoderLayer
from slimkit.shapes import get_shapes

from .conftest import save_tiny

FAMILIES = ("llama_gqa", "qwen2", "phi3")


def save_deep(name: str, path: Path, layers: int = 4) -> Path:
    return save_tiny(name, path, layers=layers)


@pytest.fixture(scope="module", params=FAMILIES)
def deep_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_deep(request.param, tmp_path_factory.mktemp(f"deep_{request.param}"))


def flattened_reference(layers: list[SlimDecoderLayer], x: torch.Tensor, cos, sin) -> torch.Tensor:
    """Every block reads the group's input; attention outputs summed, then MLP outputs summed (§5.2)."""
    h = x + sum(layer.self_attn(layer.input_layernorm(x), cos, sin, None)[0] for layer in layers)
    return h + sum(layer.mlp(layer.post_attention_layernorm(h)) for layer in layers)


@torch.no_grad()
def test_merging_reproduces_the_flattened_function_exactly(tiny_model: Path) -> None:
    model = load_source(str(tiny_model)).model.double()
    config = model.config
    layers = list(model.model.layers)
    wide_config = single_layer_config(config, merged_shape(get_shapes(config)[0], len(layers)))
    wide = SlimDecoderLayer(wide_config, 0).double()
    wide.load_state_dict(merged_state(layers))
    shape = get_shapes(wide_config)[0]
    assert shape["num_attention_heads"] == 2 * config.num_attention_heads
    assert shape["num_key_value_heads"] == 2 * config.num_key_value_heads
    assert shape["intermediate_size"] == 2 * config.intermediate_size
    x = torch.randn(2, 24, config.hidden_size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cos, sin = model.model.rotary_emb(x, torch.arange(24)[None])
    want = flattened_reference(layers, x, cos, sin)
    got = wide(x, cos, sin, None)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-10), float((got - want).abs().max())
    serial = layers[1](layers[0](x, cos, sin, None), cos, sin, None)
    assert not torch.allclose(got, serial, atol=1e-3)  # flattening itself is the approximation


def test_greedy_grouping_merges_the_most_similar_endpoints() -> None:
    # Inputs X_0..X_4 of 4 layers (+ output). Layers 1-2 are near-identity; S[1, 3] stays high too.
    S = torch.eye(5, dtype=torch.float64)
    for (i, j), v in {(0, 1): 0.5, (1, 2): 0.99, (2, 3): 0.97, (1, 3): 0.96, (3, 4): 0.6, (0, 2): 0.4}.items():
        S[i, j] = S[j, i] = v
    assert greedy_groups(S, 1) == [[0], [1, 2], [3]]
    # next: [1,2]+[3] scores S[1, 3] = 0.96, beating [0]+[1,2] (S[0, 2] = 0.4) and [3]+[4]... (none)
    assert greedy_groups(S, 2) == [[0], [1, 2, 3]]
    assert block_influence(S) == pytest.approx([0.5, 0.01, 0.03, 0.4])
    assert lowest_influence_kept(S, 2) == [[0], [3]]


def test_ratio_maps_to_whole_layers() -> None:
    assert removed_layers(0.1, 30) == 3 and removed_layers(0.2, 30) == 6 and removed_layers(0.3, 30) == 9
    with pytest.raises(InvalidArgument, match="no whole layer"):
        removed_layers(0.01, 30)
    with pytest.raises(InvalidArgument):
        removed_layers(0.9, 2)


def test_ridge_leverage_matches_its_definition() -> None:
    A = torch.randn(12, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    C = A @ A.T  # rank-deficient PSD
    want = (C @ torch.linalg.inv(C + 2.0 * torch.eye(12, dtype=torch.float64))).diagonal()
    assert torch.allclose(ridge_leverage(C, 2.0), want, atol=1e-10)


@pytest.mark.parametrize("method", ["flattengpt", "flattengpt-paper", "shortgpt"])
def test_depth_output_is_stock_with_fewer_layers(deep_model: Path, tmp_path: Path, method: str) -> None:
    out = tmp_path / "out"
    result = compress(
        CompressionRequest(
            model=str(deep_model),
            method=method,
            ratio=0.5,
            calibration=CalibrationSpec(samples=8, seq_len=64),
            evaluation=EvalSpec(max_tokens=1024, seq_len=64),
        ),
        out,
        show_progress=False,
    )
    depth = result.record["depth"]
    assert result.format == "stock" and depth["layers_before"] == 4 and depth["removed_layers"] == 2
    assert depth["layers_after"] == 2 == len(depth["groups"])
    assert result.record["ratio_achieved"]["attention_mlp"] == pytest.approx(0.5)
    assert result.record["reload_max_abs_diff"] <= 1e-3  # the engine's own reload check passed
    if method.startswith("flattengpt"):
        assert sum(len(g) for g in depth["groups"]) == 4  # every source layer lives on in a group
        merged = [r for r in result.record["layers"] if len(r["sources"]) > 1]
        assert merged and all(r["output_error"] > 0 for r in merged)
    if method == "flattengpt-paper":  # the ridge Nyström helps against the wide MLP it approximates
        assert all(r["mlp_error_compensated"] < r["mlp_error_plain"] for r in merged)
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and "auto_map" not in config
    if "layer_types" in config:
        assert config["layer_types"] == ["full_attention"] * 2
    if "max_window_layers" in config:  # Qwen2: the source's 28 counts the new layers whose source is below it
        assert config["max_window_layers"] == 2
    stock = T.AutoModelForCausalLM.from_pretrained(out)  # no trust_remote_code
    assert type(stock).__name__ == T.AutoModelForCausalLM.from_pretrained(deep_model).__class__.__name__
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        assert torch.allclose(stock(ids).logits, result.model(ids).logits, atol=1e-4)
    generated = stock.generate(ids, max_new_tokens=4, do_sample=False)
    with torch.no_grad():
        assert torch.equal(generated, stock.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False))


def test_serial_target_lowers_the_error_against_the_serial_layers(tmp_path: Path) -> None:
    """Same groups, heads and channels; only down_proj differs, fitted to the serial output by least squares."""
    source = save_deep("llama_gqa", tmp_path / "src")
    errors = {}
    for method in ("flattengpt", "flattengpt-paper"):
        record = compress(
            CompressionRequest(
                model=str(source), method=method, ratio=0.5, calibration=CalibrationSpec(samples=8, seq_len=64)
            ),
            tmp_path / method,
            show_progress=False,
        ).record
        merged = [r for r in record["layers"] if len(r["sources"]) > 1]
        errors[method] = [r["output_error"] for r in merged]
        assert merged
    assert len(errors["flattengpt"]) == len(errors["flattengpt-paper"])
    # the first group sees identical inputs in both runs, so least squares must win there outright
    assert errors["flattengpt"][0] < errors["flattengpt-paper"][0]


def test_depth_methods_refuse_width_options(deep_model: Path) -> None:
    for bad in ({"speedup": 1.5}, {"ratio": 0.5, "allocation": "global_pca"}):
        with pytest.raises(InvalidArgument, match="removes whole layers"):
            CompressionRequest(model=str(deep_model), method="flattengpt", **bad).validate()


def test_cli_flattengpt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from slimkit.cli import main

    source = save_deep("llama_gqa", tmp_path / "src")
    args = ["compress", str(source), "--method", "flattengpt", "--ratio", "0.5", "--out", str(tmp_path / "out")]
    assert main([*args, "--samples", "8", "--seq-len", "64", "--no-eval"]) == 0
    out = capsys.readouterr().out
    assert "layers       4 -> 2 (2 removed; merged" in out and "format stock" in out
    refused = ["compress", str(source), "--method", "flattengpt", "--speedup", "1.5", "--out", str(tmp_path / "x")]
    assert main(refused) == 2 and "removes whole layers" in capsys.readouterr().err
