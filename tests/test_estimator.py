"""Global ratio estimator (algorithms.md §3.5): budgets met after the engine's rounding, caps, sensitivity.

The model is a custom tiny Llama (4 layers, hidden 128, 4 query / 2 KV heads of width 32, MLP 512): an
8-channel MLP step is 3072 parameters, 0.29 % of the attention + MLP parameters, so the engine's rounding
is finer than the 0.5 % tolerance (the stock tiny fixtures, MLP 256 over 2 layers, are not).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as T

from slimkit import CompressionRequest, compress
from slimkit.calibration import CalibrationSpec, build_calibration
from slimkit.errors import InvalidArgument
from slimkit.estimator import EstimatorResult, estimate_layer_targets
from slimkit.estimator.allocate import allocate, cap_and_redistribute, layer_budgets
from slimkit.estimator.fisher import next_token_loss
from slimkit.estimator.masks import MaskSet
from slimkit.estimator.snap import predicted_removed, snap_targets
from slimkit.layerwise import LayerTarget
from slimkit.loading import load_source
from slimkit.shapes import attention_params, get_shapes, mlp_params

from .conftest import VOCAB, make_tokenizer

CALIB = CalibrationSpec(samples=16, seq_len=64)
RATIO = 0.3
CAP = 0.8


def save_llama(path: Path, weak_layer: int | None = None) -> Path:
    """A 4-layer GQA Llama; `weak_layer` gets its MLP output scaled by 0.01 (its MLP barely matters)."""
    torch.manual_seed(0)
    config = T.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    model = T.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
        if weak_layer is not None:
            model.model.layers[weak_layer].mlp.down_proj.weight.mul_(0.01)
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_llama(tmp_path_factory.mktemp("estimator_llama"))


@pytest.fixture(scope="module")
def estimates(llama: Path) -> dict[str, EstimatorResult]:
    return {
        v: estimate_layer_targets(load_source(str(llama)).model, make_tokenizer(), RATIO, v, CALIB, device="cpu")
        for v in ("global", "global_pca")
    }


def removed_fraction(targets: list[LayerTarget], path: Path) -> float:
    """Global reduction implied by the targets, from slimkit.shapes: MLP as the engine rounds, attention by ratio."""
    config = load_source(str(path)).model.config
    removed, total = predicted_removed(targets, config)
    shapes = get_shapes(config)
    assert total == sum(attention_params(s, config) + mlp_params(s, config) for s in shapes)
    return removed / total


@pytest.mark.parametrize("variant", ["global", "global_pca"])
def test_targets_imply_the_requested_reduction(llama: Path, estimates: dict[str, EstimatorResult], variant: str):
    result = estimates[variant]
    config = load_source(str(llama)).model.config
    step = 8 * 3 * config.hidden_size  # one 8-channel MLP step
    total = sum(b.attention_params + b.mlp_params for b in layer_budgets(config))
    implied = removed_fraction(result.targets, llama)
    assert abs(implied - RATIO) * total <= step / 2 + 1e-6  # within half an engine step: 0.15 % here
    assert implied == pytest.approx(result.predicted_ratio)
    assert all(0 <= t.attention <= CAP and 0 <= t.mlp <= CAP for t in result.targets)
    assert len(set(result.targets)) > 1  # not uniform: the Fisher ranking differs per layer
    assert set(result.timings_s) == {"calibrate", "gradients", "allocate"}


def test_compressed_model_achieves_the_requested_reduction(
    llama: Path, estimates: dict[str, EstimatorResult], tmp_path: Path
):
    targets = estimates["global_pca"].targets
    request = CompressionRequest(model=str(llama), layer_targets=targets, evaluation=None, calibration=CALIB)
    record = compress(request, tmp_path / "out", show_progress=False).record
    achieved = record["ratio_achieved"]["attention_mlp"]
    # Relative 0.5 % of the target (0.0015 here), the stricter reading of "within 0.5 %".
    assert abs(achieved - RATIO) <= 0.005 * RATIO, achieved
    # Layer by layer the MLP settles what attention's coarse steps left owing: after every layer the
    # running balance of parameters asked for vs removed is within half an 8-channel MLP step.
    half_step = 8 * 3 * 128 / 2
    owed = removed = 0.0
    for layer, t in zip(record["layers"], targets, strict=True):
        a_before, m_before = layer["attention_params_before"], layer["mlp_params_before"]
        owed += t.attention * a_before + t.mlp * m_before
        removed += a_before - layer["attention_params_after"] + m_before - layer["mlp_params_after"]
        assert abs(owed - removed) <= half_step + 1e-6, (layer["layer"], owed - removed)


def test_snapping_corrects_the_engine_rounding_on_the_largest_ratio_layer(llama: Path) -> None:
    config = load_source(str(llama)).model.config
    budgets = layer_budgets(config)
    raw = [LayerTarget(0.3, m) for m in (0.3, 0.3, 0.35, 0.3)]
    total = sum(b.attention_params + b.mlp_params for b in budgets)
    ratio = sum(t.attention * b.attention_params + t.mlp * b.mlp_params for t, b in zip(raw, budgets, strict=True))
    ratio /= total
    # The engine floors 153.6 → 152 and 179.2 → 176 channels: 8 channels (0.31 %) short of the request.
    assert ratio - removed_fraction(raw, llama) > 0.003
    snapped = snap_targets(raw, config, ratio, CAP)
    assert [round(t.mlp * 512) for t in snapped] == [152, 152, 184, 152]  # the step went to the largest ratio
    assert [t.attention for t in snapped] == [0.3] * 4
    assert abs(removed_fraction(snapped, llama) - ratio) * total <= 8 * 3 * config.hidden_size / 2


def test_cap_and_redistribution_keep_the_total() -> None:
    weights = [100.0, 100.0, 200.0, 100.0]
    ratios = [0.95, 0.9, 0.1, 0.2]
    capped, left = cap_and_redistribute(ratios, weights, CAP)
    assert left == 0
    assert max(capped) <= CAP + 1e-12
    assert sum(r * w for r, w in zip(capped, weights, strict=True)) == pytest.approx(
        sum(r * w for r, w in zip(ratios, weights, strict=True))
    )
    assert capped[3] - 0.2 == pytest.approx(2 * (capped[2] - 0.1))  # excess spread in proportion to ratio
    # A receiver with ratio 0 still takes its share when the others are full.
    assert cap_and_redistribute([1.0, 0.0], [1.0, 1.0], CAP)[0] == pytest.approx([CAP, 0.2])
    # Nothing left to place it in: the remainder is reported, not lost.
    assert cap_and_redistribute([1.0, 0.9], [1.0, 1.0], CAP) == (pytest.approx([CAP, CAP]), pytest.approx(0.3))


def test_allocation_respects_the_cap_when_one_layer_would_take_everything(llama: Path) -> None:
    config = load_source(str(llama)).model.config
    budgets = layer_budgets(config)
    # Layer 2's units are all worthless: the ranking alone would prune it entirely.
    attn = [torch.full((b.attention_units,), 0.0 if i == 2 else 1.0 + i) for i, b in enumerate(budgets)]
    mlp = [torch.rand(b.mlp_units) + (0.0 if i == 2 else 1.0) for i, b in enumerate(budgets)]
    mlp[2] *= 1e-6
    targets = allocate(attn, mlp, config, 0.5, cap=CAP)
    assert all(t.attention <= CAP + 1e-12 and t.mlp <= CAP + 1e-12 for t in targets)
    assert targets[2].attention == pytest.approx(CAP) and targets[2].mlp == pytest.approx(CAP)
    removed = sum(
        t.attention * b.attention_params + t.mlp * b.mlp_params for t, b in zip(targets, budgets, strict=True)
    )
    total = sum(b.attention_params + b.mlp_params for b in budgets)
    assert removed / total == pytest.approx(0.5, abs=max(b.attention_price for b in budgets) / total)


@pytest.fixture(scope="module")
def weak_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_llama(tmp_path_factory.mktemp("weak_llama"), weak_layer=1)


@pytest.mark.parametrize("variant", ["global", "global_pca"])
def test_an_unimportant_layer_gets_a_higher_mlp_ratio(weak_llama: Path, variant: str) -> None:
    model = load_source(str(weak_llama)).model
    calib = CalibrationSpec("wikitext2_valid", samples=8, seq_len=64)  # the ranking is text-dependent: pin it
    targets = estimate_layer_targets(model, make_tokenizer(), RATIO, variant, calib, device="cpu").targets
    assert targets[1].mlp > targets[0].mlp and targets[1].mlp > targets[2].mlp, targets
    assert targets[1].mlp == pytest.approx(CAP, abs=8 / 512)  # all its channels rank last: it hits the cap


def test_uniform_gives_every_layer_the_global_ratio(llama: Path) -> None:
    model = load_source(str(llama)).model
    result = estimate_layer_targets(model, None, RATIO, "uniform")
    config = model.config
    assert len(set(result.targets)) == 1 and result.importances is None
    for t, b in zip(result.targets, layer_budgets(config), strict=True):
        width = round(512 * (1 - t.mlp))
        removed = t.attention * b.attention_params + b.mlp_params - 3 * config.hidden_size * width
        assert removed / (b.attention_params + b.mlp_params) == pytest.approx(RATIO)
    assert result.predicted_ratio == pytest.approx(RATIO)
    # On the 8-channel grid already: exactly (s, s).
    exact = estimate_layer_targets(model, None, 0.25, "uniform").targets
    assert exact == [LayerTarget(0.25, 0.25)] * 4


def test_masks_are_float32_and_weights_get_no_gradient(llama: Path) -> None:
    model = load_source(str(llama), dtype=torch.bfloat16).model
    ids = build_calibration(make_tokenizer(), CalibrationSpec(samples=2, seq_len=32)).input_ids
    valid = torch.ones_like(ids, dtype=torch.bool)
    model.requires_grad_(False)
    with torch.no_grad():
        plain = next_token_loss(model, ids, valid)
    with MaskSet(model, torch.device("cpu")) as masks:
        assert all(m.dtype == torch.float32 and bool((m == 1).all()) for m in masks.tensors())
        loss = next_token_loss(model, ids, valid)
        grads = torch.autograd.grad(loss, masks.tensors())
    assert float(loss.detach()) == pytest.approx(float(plain), rel=1e-3)  # masks at 1 leave the forward unchanged
    assert all(g.dtype == torch.float32 and bool(torch.isfinite(g).all()) and bool(g.any()) for g in grads)
    assert all(p.grad is None for p in model.parameters())
    assert not model.model.layers[0].self_attn.o_proj._forward_pre_hooks  # hooks gone after the block


def test_estimator_leaves_the_model_as_it_was(llama: Path) -> None:
    model = load_source(str(llama)).model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    seen: list[tuple[int, int]] = []
    calib = build_calibration(make_tokenizer(), CalibrationSpec(samples=3, seq_len=32))
    result = estimate_layer_targets(
        model, None, 0.2, "global_pca", calib, device="cpu", progress=lambda d, n: seen.append((d, n))
    )
    assert seen[-1] == (3, 3)
    assert result.importances is not None and result.importances.groups == 1 and result.importances.rotated
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():  # our loss is the model's own next-token loss
        ids = calib.input_ids[:1]
        assert float(next_token_loss(model, ids, torch.ones_like(ids, dtype=torch.bool))) == pytest.approx(
            float(model(input_ids=ids, labels=ids).loss), rel=1e-5
        )


@pytest.mark.parametrize(("frac", "blocks"), [(1, 1), (None, 4), (32, 32)])
def test_importance_blocks_per_head(llama: Path, frac: int | None, blocks: int) -> None:
    """F blocks of d_h/F rotated coordinates per head: the paper's F = 1, the default (one per 8-channel
    head-width step: 4 for d_h = 32), single channels."""
    model = load_source(str(llama)).model
    calib = build_calibration(make_tokenizer(), CalibrationSpec(samples=4, seq_len=32))
    result = estimate_layer_targets(model, None, RATIO, "global_pca", calib, device="cpu", frac=frac)
    assert result.importances is not None and result.importances.frac == blocks
    assert all(a.shape == (4, blocks) and bool((a >= 0).all()) for a in result.importances.attention)
    # Attention ratios are counted in blocks: multiples of 1 / (n_h · F) (snapping only moves the MLP).
    assert all(abs(t.attention * 4 * blocks - round(t.attention * 4 * blocks)) < 1e-9 for t in result.targets)
    step = 8 * 3 * 128 / sum(b.attention_params + b.mlp_params for b in layer_budgets(model.config))
    assert abs(removed_fraction(result.targets, llama) - RATIO) <= step / 2 + 1e-9  # half an MLP step


def test_blocks_that_do_not_divide_the_head_width_are_refused(llama: Path) -> None:
    model = load_source(str(llama)).model
    with pytest.raises(InvalidArgument, match="frac=3 must divide every head width"):
        estimate_layer_targets(model, make_tokenizer(), RATIO, "global_pca", CALIB, device="cpu", frac=3)


def test_compress_with_an_estimated_allocation(llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from slimkit.cli import main as cli

    rc = cli(
        [
            "compress",
            str(llama),
            "--ratio",
            "0.3",
            "--allocation",
            "global_pca",
            "--out",
            str(tmp_path / "o"),
            "--samples",
            "8",
            "--seq-len",
            "32",
            "--no-eval",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert "allocation global_pca" in capsys.readouterr().out
    record = json.loads((tmp_path / "o" / "compression.json").read_text())
    assert record["recipe"]["allocation"] == "global_pca"
    assert record["allocation"]["variant"] == "global_pca" and len(record["allocation"]["layers"]) == 4
    assert abs(record["ratio_achieved"]["attention_mlp"] - 0.3) <= 0.005  # within half a percentage point
    assert len({s["intermediate_size"] for s in record["layer_shapes"]}) > 1  # not uniform any more
