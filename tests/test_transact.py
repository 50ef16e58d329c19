"""TransAct: the §4.3 head rule, the width plan and its GQA choice, shots, and stock outputs per family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from slimkit import CalibrationSpec, CompressionRequest, compress
from slimkit.errors import InvalidArgument
from slimkit.evaluate import EvalSpec
from slimkit.loading import load_source
from slimkit.shapes import attention_params, get_shapes, kv_cache_bytes_per_token, mlp_params
from slimkit.transact import TransActSpec
from slimkit.transact.driver import shot_budgets
from slimkit.transact.plan import (
    AttentionShape,
    TransActPlan,
    head_scores,
    plan_for_ratio,
    select_heads,
    shot_widths,
)
from slimkit.transact.prune import prune_layer
from slimkit.transact.scores import LayerScores, transitional_scores
from tests.conftest import save_tiny

CALIB = CalibrationSpec(samples=8, seq_len=64, seed=0)


def test_head_score_is_mean_plus_ten_over_dh_max() -> None:
    # Head 0: flat (mean 1, max 1) -> 1 + 10/16 = 1.625; head 1: one spike (mean 0.5, max 8.5) -> 0.5 + 5.3125;
    # head 2: mean 1.2 flat -> 1.95. The rule ranks the spiky head first, then the flat one with the higher mean.
    channels = torch.ones(3, 16, dtype=torch.float64)
    channels[1] = 0.0
    channels[1, 0] = 8.0
    channels[2] = 1.2
    scores = head_scores(channels)
    expected = channels.mean(1) + (10 / 16) * channels.amax(1)
    assert torch.allclose(scores, expected)
    assert scores.argsort(descending=True).tolist() == [1, 2, 0]


def test_gqa_selection_keeps_even_groups_and_the_best_heads() -> None:
    # 2 KV groups of 4 query heads. Planted: group 1 holds the two best heads overall.
    scores = torch.tensor([1.0, 5.0, 2.0, 0.5, 9.0, 0.1, 8.0, 0.2], dtype=torch.float64)
    groups, heads = select_heads(scores, 2, AttentionShape(kv_heads=2, heads_per_group=2))
    assert groups == [0, 1] and heads == [1, 2, 4, 6]  # the top 2 of each group, grouped, ascending
    groups, heads = select_heads(scores, 2, AttentionShape(kv_heads=1, heads_per_group=4))
    assert groups == [1] and heads == [4, 5, 6, 7]  # group 1's value 17.3 beats group 0's 8.5
    groups, heads = select_heads(scores, 2, AttentionShape(kv_heads=1, heads_per_group=2))
    assert groups == [1] and heads == [4, 6]


def _scores(config, heads: torch.Tensor, mlp: torch.Tensor) -> list[LayerScores]:
    return [LayerScores(heads=heads.clone(), mlp=mlp.clone()) for _ in range(config.num_hidden_layers)]


def test_the_split_follows_the_scores(tiny_llama_gqa: Path) -> None:
    config = load_source(str(tiny_llama_gqa)).model.config  # 8 heads / 2 KV, d_h 16, MLP 256
    flat_mlp = torch.ones(256, dtype=torch.float64)
    # Attention: group 1 carries almost nothing -> dropping that whole KV group costs ~nothing.
    heads = torch.ones(8, 16, dtype=torch.float64)
    heads[4:] = 1e-3
    plan = plan_for_ratio(config, _scores(config, heads, flat_mlp), 0.3, cap=0.8)
    assert (plan.kv_heads, plan.heads_per_group, plan.attention_mode) == (1, 4, "kv_groups")
    # Now one head per group is useless instead: fewer query heads per group, both groups stay.
    heads = torch.ones(8, 16, dtype=torch.float64)
    heads[[3, 7]] = 1e-3
    plan = plan_for_ratio(config, _scores(config, heads, flat_mlp), 0.2, cap=0.8)
    assert (plan.kv_heads, plan.heads_per_group, plan.attention_mode) == (2, 3, "query_heads")
    # Flat heads, an MLP whose lower half is idle: the MLP pays.
    mlp = torch.ones(256, dtype=torch.float64)
    mlp[128:] = 1e-3
    plan = plan_for_ratio(config, _scores(config, torch.ones(8, 16, dtype=torch.float64), mlp), 0.3, cap=0.8)
    assert plan.attention_mode == "none" and plan.intermediate_size < 256


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.7])
def test_ratio_lands_within_one_mlp_step(tiny_llama_gqa: Path, ratio: float) -> None:
    config = load_source(str(tiny_llama_gqa)).model.config
    torch.manual_seed(0)
    scores = [LayerScores(torch.rand(8, 16, dtype=torch.float64), torch.rand(256, dtype=torch.float64))] * 2
    plan = plan_for_ratio(config, scores, ratio, cap=0.8)
    shape = get_shapes(config)[0]
    total = attention_params(shape, config) + mlp_params(shape, config)
    step = 8 * 3 * config.hidden_size / total  # 8 MLP channels in every layer, as a ratio
    assert abs(plan.ratio_achieved - ratio) <= step + 1e-9
    assert plan.intermediate_size % 8 == 0 and plan.kv_heads >= 1 and plan.heads_per_group >= 1


def test_impossible_ratio_is_refused(tiny_llama_gqa: Path) -> None:
    config = load_source(str(tiny_llama_gqa)).model.config
    scores = [LayerScores(torch.ones(8, 16, dtype=torch.float64), torch.ones(256, dtype=torch.float64))] * 2
    with pytest.raises(InvalidArgument, match="cap"):
        plan_for_ratio(config, scores, 0.85, cap=0.5)


def test_linear_descent_reaches_the_plan_on_the_last_shot() -> None:
    plan = TransActPlan(2, 2, 3072, "kv_groups_and_query_heads", 0.5, 0.5, 0.5, 0.5, {})
    steps = shot_widths(AttentionShape(8, 4), 11008, plan, 8)
    widths = [w for _, w in steps]
    assert widths == sorted(widths, reverse=True) and widths[-1] == 3072
    assert all((11008 - w) % 8 == 0 for w in widths)
    assert steps[-1][0] == AttentionShape(2, 2)
    assert [a.kv_heads for a, _ in steps] == [8, 8, 7, 6, 5, 4, 3, 2]  # ⌊(dim − target)/r⌋ per shot
    # Each step removes about an equal share: no shot takes more than twice the average cut.
    cuts = [a - b for a, b in zip([11008, *widths], widths, strict=False)]
    assert max(cuts) <= 2 * (11008 - 3072) / 8
    assert shot_budgets(1000, 4) == [125, 208, 291, 376]  # ∝ 1/2 + (i−1)/(K−1), the remainder to the last
    assert shot_budgets(1000, 1) == [1000] and shot_budgets(0, 3) == [0, 0, 0]
    assert shot_budgets(3000, 3, seq_len=512) == [512, 1024, 1536]  # ⌈3000/512⌉ = 6 whole windows


def test_keeping_everything_reproduces_the_dense_logits(tiny_model: Path, sample_ids: torch.Tensor) -> None:
    model = load_source(str(tiny_model)).model
    with torch.no_grad():
        before = model(sample_ids).logits
    for i, shape in enumerate(get_shapes(model.config)):
        nq, nkv = shape["num_attention_heads"], shape["num_key_value_heads"]
        prune_layer(model, i, list(range(nkv)), list(range(nq)), torch.arange(shape["intermediate_size"]))
    with torch.no_grad():
        assert torch.equal(model(sample_ids).logits, before)


def test_scores_ignore_padding(tiny_llama_gqa: Path) -> None:
    model = load_source(str(tiny_llama_gqa)).model
    ids = torch.randint(0, 1000, (2, 32), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    full = transitional_scores(model, ids[:1], mask[:1], torch.device("cpu"))
    padded_mask = mask.clone()
    padded_mask[1] = 0  # a second window that is all padding adds nothing
    padded = transitional_scores(model, ids, padded_mask, torch.device("cpu"))
    for a, b in zip(full, padded, strict=True):
        assert torch.allclose(a.heads, b.heads) and torch.allclose(a.mlp, b.mlp)
    assert all(s.heads.shape == (8, 16) and s.mlp.shape == (256,) for s in full)


@pytest.mark.parametrize("family", ["llama_mha", "llama_gqa", "qwen2", "phi3"])
def test_transact_output_is_the_stock_architecture(family: str, tmp_path: Path, sample_ids: torch.Tensor) -> None:
    src = save_tiny(family, tmp_path / "src")
    request = CompressionRequest(
        str(src), method="transact", ratio=0.6, calibration=CALIB, evaluation=None, device="cpu"
    )  # 0.6 > what the MLP alone may give (cap 0.8 of the MLP): heads must go too
    result = compress(request, tmp_path / "out", show_progress=False)
    record = json.loads((tmp_path / "out" / "compression.json").read_text())
    plan = record["transact"]["plan"]
    assert result.format == record["format"] == "stock"
    assert plan["attention_mode"] != "none" and plan["attention_ratio"] > 0
    config_json = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "auto_map" not in config_json and not (tmp_path / "out" / "modeling_slim.py").exists()
    config = AutoConfig.from_pretrained(tmp_path / "out")  # the stock class, no remote code
    config.validate()
    source = AutoConfig.from_pretrained(src)
    assert type(config) is type(source)
    d_h = source.hidden_size // source.num_attention_heads
    assert config.head_dim == d_h  # heads keep their full width
    assert config.num_key_value_heads == plan["kv_heads"]
    assert config.num_attention_heads == plan["kv_heads"] * plan["heads_per_group"]
    assert config.intermediate_size == plan["intermediate_size"]
    kv = record["kv_cache_bytes_per_token_fp16"]
    assert kv["after"] == source.num_hidden_layers * 2 * plan["kv_heads"] * d_h * 2
    assert kv["after"] == kv_cache_bytes_per_token(result.model.config)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()  # no trust_remote_code
    assert type(reloaded).__module__.startswith("transformers.models.")
    with torch.no_grad():
        diff = (reloaded(sample_ids).logits - result.model(sample_ids).logits).abs().max()
    assert float(diff) <= 1e-4
    params = sum(p.numel() for p in reloaded.parameters())
    assert params == record["params_after"]["total"]
    out = reloaded.generate(sample_ids[:1, :8], max_new_tokens=6, do_sample=False)
    assert out.shape == (1, 14)
    assert abs(record["ratio_achieved"]["attention_mlp"] - 0.6) < 0.05
    assert record["recipe"]["transact"] == {"shots": 1, "recovery_tokens": 0}


def test_shots_with_training_between_them(tiny_llama_gqa: Path, tmp_path: Path) -> None:
    request = CompressionRequest(
        str(tiny_llama_gqa),
        method="transact",
        ratio=0.6,
        calibration=CALIB,
        evaluation=EvalSpec(text="wikitext2_test", seq_len=64, max_tokens=512),
        device="cpu",
        transact=TransActSpec(shots=3, recovery_tokens=3072),  # 6 windows of 512: 1, 2 and 3 per shot
    )  # no `recovery`: the shots train with the recovery defaults, and there is no final recovery
    stages: list[str] = []
    result = compress(request, tmp_path / "out", show_progress=False, progress=lambda s, d, t: stages.append(s))
    report = result.record["transact"]
    shots = report["shots"]
    assert [s["shot"] for s in shots] == [1, 2, 3]
    widths = [s["mlp_width"] for s in shots]
    assert widths == sorted(widths, reverse=True) and widths[-1] == report["plan"]["intermediate_size"]
    assert all("recovery" in s and s["recovery"]["steps"] >= 1 for s in shots)
    lrs = [s["recovery"]["lr"] for s in shots]
    assert lrs == sorted(lrs) and lrs[-1] == pytest.approx(2 * 5e-5)  # peak lr · 2i/K, up to 2× at the last
    assert [s["recovery"]["tokens"] for s in shots] == [512, 1024, 1536]
    assert report["recovery_tokens"] == 3072
    assert stages.count("score") == 3 and "recover" in stages
    assert result.record["recovery"] is None and result.format == "stock"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"speedup": 1.5, "ratio": None}, "same shape"),
        ({"allocation": "global_pca"}, "same shape"),
        ({"head_step": 8}, "head_step"),
        ({"transact": TransActSpec(shots=0)}, "shots"),
        ({"transact": TransActSpec(recovery_tokens=-1)}, "recovery_tokens"),
        ({"method": "intraslice", "transact": TransActSpec(shots=2)}, "only apply"),
    ],
)
def test_bad_transact_requests_are_refused(changes: dict, message: str) -> None:
    fields = {"method": "transact", "ratio": 0.3, "evaluation": None} | changes
    request = CompressionRequest("some/model", **fields)
    with pytest.raises(InvalidArgument, match=message):
        request.validate()


def test_cli_transact(tiny_llama_gqa: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from slimkit.cli import main

    args = ["compress", str(tiny_llama_gqa), "--method", "transact", "--ratio", "0.6", "--out", str(tmp_path / "out")]
    assert main([*args, "--samples", "8", "--seq-len", "64", "--no-eval", "--shots", "2"]) == 0
    out = capsys.readouterr().out
    assert "format stock" in out and "2 shot(s), 0 training tokens between them" in out
    record = json.loads((tmp_path / "out" / "compression.json").read_text())
    assert record["recipe"]["transact"] == {"shots": 2, "recovery_tokens": 0} and "head_step" not in record["recipe"]
    refused = [*args[:-1], str(tmp_path / "x"), "--head-step", "8"]
    assert main(refused) == 2 and "head_step does not apply" in capsys.readouterr().err
