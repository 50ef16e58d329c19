"""Method behaviour: least squares must help, budgets must be met, baselines must differ from IntraSlice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from slimkit.calibration import CalibrationSpec, build_calibration
from slimkit.layerwise import LayerTarget, compress_model
from slimkit.loading import load_source
from slimkit.methods import WIDTH_METHODS, method_for
from slimkit.methods.head_plan import plan_for_budget, search_plan
from slimkit.methods.intraslice import IntraSlice, IntraSliceOptions
from slimkit.shapes import get_shapes, param_counts


def run(path: Path, method: str, ratio: float = 0.3, samples: int = 8):
    source = load_source(str(path))
    batch = build_calibration(AutoTokenizer.from_pretrained(path), CalibrationSpec(samples=samples, seq_len=64))
    targets = [LayerTarget(ratio, ratio)] * source.model.config.num_hidden_layers
    reports = compress_model(
        source.model,
        batch.input_ids,
        batch.attention_mask,
        method_for(method),
        targets,
        torch.device("cpu"),
        show_progress=False,
    )
    return source.model, reports


def test_least_squares_lowers_every_layers_error(tiny_model: Path) -> None:
    _, reports = run(tiny_model, "intraslice")
    for r in reports:
        assert r["attention_error_compensated"] < r["attention_error_plain"], r
        assert r["mlp_error_compensated"] < r["mlp_error_plain"], r


@pytest.mark.parametrize("method", sorted(WIDTH_METHODS))
def test_every_method_meets_the_same_budget(tiny_llama_gqa: Path, method: str) -> None:
    model, reports = run(tiny_llama_gqa, method)
    shapes = get_shapes(model.config)
    assert all(s["intermediate_size"] % 8 == 0 for s in shapes)
    assert all(s["qk_head_dim"] % 2 == 0 for s in shapes)
    dense = 2 * (2 * 128 * 128 + 2 * 128 * 32 + 3 * 128 * 256)
    ratio = 1 - param_counts(model)["attention_mlp"] / dense
    # Attention moves in whole heads and width steps; the MLPs settle the balance to the nearest 8
    # channels, so the model lands within half an MLP step (3 · 128 · 8 parameters) of the target.
    assert abs(ratio - 0.3) <= 3 * 128 * 8 / 2 / dense + 1e-9, (ratio, reports)


def test_intraslice_and_wanda_choose_differently(tiny_llama_gqa: Path, sample_ids: torch.Tensor) -> None:
    a, _ = run(tiny_llama_gqa, "intraslice")
    b, _ = run(tiny_llama_gqa, "wanda-sp")
    with torch.no_grad():
        assert not torch.allclose(a(sample_ids).logits, b(sample_ids).logits)


def test_head_plan_deletes_starved_heads_and_keeps_even_width() -> None:
    # 4 heads of width 16; head 3 gets almost none of the top channels and has the least spectral mass.
    spectra = torch.tensor([[8.0] * 16, [6.0] * 16, [4.0] * 16, [0.1] * 16], dtype=torch.float64)
    cum = torch.cat([torch.zeros(4, 1, dtype=torch.float64), spectra.cumsum(1)], 1)
    plan = plan_for_budget(K=44, counts=[16, 16, 12, 0], spectra_cum=cum, head_dim=16, kv_of=[0, 0, 1, 1])
    assert 3 not in plan.heads
    assert plan.width % 2 == 0 and plan.width <= 16
    assert plan.kv_heads == (0, 1)


def test_head_plan_width_floor() -> None:
    # A budget of half the channels must not give every head half its width: heads go instead.
    spectra = torch.ones(8, 16, dtype=torch.float64)
    cum = torch.cat([torch.zeros(8, 1, dtype=torch.float64), spectra.cumsum(1)], 1)
    plan = plan_for_budget(K=64, counts=[8] * 8, spectra_cum=cum, head_dim=16, kv_of=list(range(8)))
    assert plan.width >= 12 and len(plan.heads) * plan.width <= 64 + 2 * len(plan.heads)


def test_a_width_floor_above_one_deletes_heads_until_the_rest_would_overflow() -> None:
    # SmolLM2's attention at 20 %: 461 of 9 × 64 channels. The 3/4 floor keeps all 9 heads (51 wide); a floor
    # of 1.5 × 64 (what the authors' fixed floor of 96 channels means for 64-wide heads) deletes the weakest
    # heads until one more deletion would need heads wider than 64: 8 heads of 58.
    decay = 0.9 ** torch.arange(64, dtype=torch.float64)  # most of a head's mass in its first components
    spectra = torch.linspace(10, 9, 9, dtype=torch.float64)[:, None] * decay
    cum = torch.cat([torch.zeros(9, 1, dtype=torch.float64), spectra.cumsum(1)], 1)
    args = dict(K=461, counts=[51] * 9, spectra_cum=cum, head_dim=64, kv_of=[i // 3 for i in range(9)], step=2)
    assert len(plan_for_budget(**args).heads) == 9
    wide = plan_for_budget(**args, min_width_frac=1.5)
    assert wide.heads == tuple(range(8)) and wide.width == 58  # the weakest head (8) went


def test_search_plan_hits_parameter_target() -> None:
    torch.manual_seed(0)
    n_h, d_h, hidden = 8, 16, 128
    scores = torch.rand(n_h * d_h, dtype=torch.float64)
    spectra = scores.view(n_h, d_h).sort(1, descending=True).values
    full = 2 * hidden * d_h * (n_h + 2)
    for ratio in (0.1, 0.3, 0.5):
        plan = search_plan(
            scores, spectra, [i // 4 for i in range(n_h)], round((1 - ratio) * full), hidden, False, False
        )
        params = 2 * hidden * plan.width * (len(plan.heads) + len(plan.kv_heads))
        assert abs(params - (1 - ratio) * full) <= 2 * 2 * hidden * (len(plan.heads) + len(plan.kv_heads))


def test_head_widths_stay_on_the_8_channel_grid_for_real_heads() -> None:
    # head_dim 64: every kept head width is a multiple of 8 (SDPA flash kernels, tensor cores), at least 48.
    spectra = torch.ones(8, 64, dtype=torch.float64)
    cum = torch.cat([torch.zeros(8, 1, dtype=torch.float64), spectra.cumsum(1)], 1)
    for K in range(8 * 30, 8 * 64 + 1, 13):
        plan = plan_for_budget(K=K, counts=[K // 8] * 8, spectra_cum=cum, head_dim=64, kv_of=[i // 2 for i in range(8)])
        assert plan.width % 8 == 0 and 48 <= plan.width <= 64, (K, plan)


def run_with(path: Path, method, ratio: float = 0.3, samples: int = 8, layers: int | None = None):
    source = load_source(str(path))
    batch = build_calibration(AutoTokenizer.from_pretrained(path), CalibrationSpec(samples=samples, seq_len=64))
    n = source.model.config.num_hidden_layers if layers is None else layers
    targets = [LayerTarget(ratio, ratio)] * n + [LayerTarget(0.0, 0.0)] * (source.model.config.num_hidden_layers - n)
    reports = compress_model(
        source.model, batch.input_ids, batch.attention_mask, method, targets, torch.device("cpu"), show_progress=False
    )
    return source.model, reports


def test_dense_targets_equal_layer_targets_on_the_first_layer(tiny_llama_gqa: Path) -> None:
    # Layer 0's attention sees the dense model's inputs either way, so both targets give it the same
    # tensors; its MLP differs (the dense target is reached through the *unpruned* attention), and so does
    # every later layer (the dense target also fits the error of the layers before).
    layer, dense = (
        run_with(tiny_llama_gqa, IntraSlice(options=IntraSliceOptions(compensation_target=t)))[0]
        for t in ("layer", "dense")
    )
    first = layer.model.layers[0].state_dict()
    for k, v in dense.model.layers[0].state_dict().items():
        if k.startswith("self_attn."):
            torch.testing.assert_close(v, first[k], rtol=1e-4, atol=1e-5)
    down = "mlp.down_proj.weight"
    assert not torch.allclose(dense.model.layers[0].state_dict()[down], first[down])
    a, b = layer.model.layers[1].state_dict(), dense.model.layers[1].state_dict()
    assert any(a[k].shape != b[k].shape or not torch.allclose(a[k], b[k]) for k in a)


def test_free_head_widths_and_fine_mlp_steps(tiny_llama_gqa: Path) -> None:
    options = IntraSliceOptions(head_step=2, mlp_step=1, damping=0.05, order="mlp_first")
    model, reports = run_with(tiny_llama_gqa, IntraSlice(options=options))
    dense = 2 * (2 * 128 * 128 + 2 * 128 * 32 + 3 * 128 * 256)
    ratio = 1 - param_counts(model)["attention_mlp"] / dense
    assert abs(ratio - 0.3) <= 3 * 128 / 2 / dense + 1e-9, (ratio, reports)  # within half an MLP channel
    assert all(r["mlp_error_compensated"] < r["mlp_error_plain"] for r in reports)


def test_ridge_prior_decides_what_heavy_damping_shrinks_towards(tiny_llama_gqa: Path) -> None:
    # Plain ridge shrinks o_proj's least squares towards zero, i.e. towards no attention output at all;
    # shrunk towards the uncompensated projection, heavy damping falls back to it and light damping still fits.
    def errors(prior: str, damping: float) -> list[tuple[float, float]]:
        options = IntraSliceOptions(head_step=2, damping=damping, ridge_prior=prior)
        reports = run_with(tiny_llama_gqa, IntraSlice(options=options))[1]
        return [(r["attention_error_compensated"], r["attention_error_plain"]) for r in reports]

    for compensated, plain in errors("plain", 1e4):
        assert compensated == pytest.approx(plain, rel=1e-2)
    for compensated, plain in errors("zero", 1e4):
        assert compensated > 0.99 > plain
    for compensated, plain in errors("plain", 0.01):
        assert compensated < plain


@pytest.mark.parametrize(
    "bad",
    [{"damping": 0.0}, {"mlp_step": 0}, {"compensation_target": "teacher"}, {"order": "random"}, {"ridge_prior": "x"}],
)
def test_intraslice_options_refuse_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        IntraSliceOptions(**bad)


def test_ratio_jobs_default_to_free_head_widths_and_record_the_grid(tiny_llama_gqa: Path, tmp_path: Path) -> None:
    from slimkit import CompressionRequest, compress

    calib = CalibrationSpec(samples=8, seq_len=64)
    widths = {}
    for step in (None, 8):
        request = CompressionRequest(
            str(tiny_llama_gqa), ratio=0.35, head_step=step, calibration=calib, evaluation=None, device="cpu"
        )
        record = compress(request, tmp_path / str(step), show_progress=False).record
        assert record["recipe"]["head_step"] == (2 if step is None else 8)
        widths[step] = [s["qk_head_dim"] for s in record["layer_shapes"]]
    assert all(w % 8 == 0 for w in widths[8]), widths
    assert any(w % 8 for w in widths[None]), widths  # a width off the 8-grid: the free grid was used


@pytest.mark.parametrize(
    "kwargs",
    [{"head_step": 3}, {"head_step": 8, "speedup": 1.3, "ratio": None}, {"head_step": 8, "method": "shortgpt"}],
)
def test_head_step_is_refused_where_it_does_not_apply(tiny_llama_gqa: Path, kwargs: dict) -> None:
    from slimkit import CompressionRequest
    from slimkit.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="head_step"):
        CompressionRequest(**({"model": str(tiny_llama_gqa), "ratio": 0.3} | kwargs)).validate()
