"""The slim output as a first-class transformers model: training, outputs, kernels, config (issue 14 §1).

Every test loads a saved slim output the way a user would (`AutoModelForCausalLM.from_pretrained` with
`trust_remote_code=True`), so what is checked is the shipped modeling file, not the engine's copy in memory.
The output has layers of different shapes (different head counts, widths and MLP widths), uneven GQA groups
and pruned RoPE pairs: the general code paths, not only the stock-shaped fast path.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import peft
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM, Trainer, TrainingArguments
from transformers.integrations.heterogeneity import AmbiguousGlobalPerLayerAttributeError

from slimkit.export import save_compressed
from slimkit.layerwise import LayerTarget, compress_model
from slimkit.loading import load_source
from slimkit.methods import method_for

VOCAB = 8192


@pytest.fixture(scope="module")
def slim_output(tiny_llama_gqa: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A slim output whose two layers differ in heads, head width and MLP width."""
    source = load_source(str(tiny_llama_gqa))
    ids = torch.randint(0, VOCAB, (8, 64), generator=torch.Generator().manual_seed(0))
    targets = [LayerTarget(0.4, 0.2), LayerTarget(0.2, 0.5)]
    method = method_for("intraslice")
    compress_model(source.model, ids, torch.ones_like(ids), method, targets, torch.device("cpu"), show_progress=False)
    out = tmp_path_factory.mktemp("slim") / "out"
    assert save_compressed(source.model, source, out, {"method": "intraslice"}, fmt="slim") == "slim"
    return out


def load(folder: Path, **kwargs: object) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32, **kwargs)


def batch(n: int = 2, length: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def test_layers_really_differ(slim_output: Path) -> None:
    model = load(slim_output)
    a, b = (layer.self_attn for layer in model.model.layers)
    assert (a.num_heads, a.qk_head_dim) != (b.num_heads, b.qk_head_dim)
    mlp_widths = {layer.mlp.down_proj.in_features for layer in model.model.layers}
    assert len(mlp_widths) == 2
    assert not all(layer.self_attn.rope_identity for layer in model.model.layers)


def test_saved_config_top_level_holds_no_dense_width(slim_output: Path, tiny_llama_gqa: Path) -> None:
    saved = json.loads((slim_output / "config.json").read_text())
    dense = json.loads((tiny_llama_gqa / "config.json").read_text())
    layers = saved["per_layer_config"]
    assert len(layers) == dense["num_hidden_layers"]
    for key in ("intermediate_size", "num_attention_heads", "qk_head_dim", "kv_index", "rope_index"):
        values = [layer.get(key, saved.get(key)) for layer in layers.values()]
        if len({json.dumps(v) for v in values}) > 1:  # differs between layers: listed per layer, absent on top
            assert key not in saved, key
            assert all(key in layer for layer in layers.values()), key
        else:  # shared: the true common value on top, never the dense source's
            assert saved[key] == values[0], key
    assert saved.get("intermediate_size") != dense["intermediate_size"]
    config = AutoConfig.from_pretrained(slim_output, trust_remote_code=True)
    with pytest.raises(AmbiguousGlobalPerLayerAttributeError):
        _ = config.intermediate_size  # what a tool assuming one width per model would read
    assert [c.intermediate_size for c in config.per_layer_config] == [
        layer.mlp.down_proj.in_features for layer in load(slim_output).model.layers
    ]


LOAD_AND_RUN = """
import sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
model(torch.tensor([[1, 2, 3, 4]]), output_hidden_states=True)
model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False)
print("ok")
"""


def test_loading_and_running_is_quiet(slim_output: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-c", LOAD_AND_RUN, str(slim_output)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    noise = [
        line
        for line in run.stderr.splitlines()
        if line.strip() and not line.startswith(("Loading weights", "Writing model shards"))
    ]
    assert noise == [], noise  # no per-layer-config warnings, no "model of type" warnings


def test_hidden_states_match_the_stock_model_in_count_shape_and_value(tiny_llama_gqa: Path) -> None:
    stock = LlamaForCausalLM.from_pretrained(tiny_llama_gqa, dtype=torch.float32).eval()
    slim = load_source(str(tiny_llama_gqa)).model.float().eval()  # dense-shaped SlimForCausalLM, same weights
    ids = batch()
    with torch.no_grad():
        want = stock(ids, output_hidden_states=True).hidden_states
        got = slim(ids, output_hidden_states=True).hidden_states
    assert len(got) == len(want) == stock.config.num_hidden_layers + 1
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert float((g - w).abs().max()) <= 1e-4


def test_eager_and_sdpa_agree_but_run_different_kernels(slim_output: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"sdpa": 0}
    real = F.scaled_dot_product_attention

    def counting(*args: object, **kwargs: object) -> torch.Tensor:
        calls["sdpa"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    ids = batch()
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # padding: the additive-mask path of both kernels
    results = {}
    for implementation in ("eager", "sdpa"):
        model = load(slim_output, attn_implementation=implementation).eval()
        assert model.config._attn_implementation == implementation
        calls["sdpa"] = 0
        with torch.no_grad():
            out = model(ids, attention_mask=mask, output_attentions=implementation == "eager")
        results[implementation] = (out, calls["sdpa"])
    (eager, eager_sdpa_calls), (sdpa, sdpa_calls) = results["eager"], results["sdpa"]
    assert eager_sdpa_calls == 0 and sdpa_calls == len(eager.attentions) == 2
    assert [a.shape[1] for a in eager.attentions] == [
        layer.self_attn.num_heads for layer in load(slim_output).model.layers
    ]
    assert all(torch.allclose(a.sum(-1), torch.ones(())) for a in eager.attentions)  # rows are distributions
    valid = mask.bool()
    assert float((eager.logits - sdpa.logits)[valid].abs().max()) <= 1e-4
    with pytest.raises(ValueError, match="flex_attention"):  # not implemented: refused, never silently sdpa
        load(slim_output, attn_implementation="flex_attention")


def test_trainer_with_gradient_checkpointing(slim_output: Path, tmp_path: Path) -> None:
    model = load(slim_output)
    ids = batch(8, 32, seed=3)
    data = [{"input_ids": row, "labels": row} for row in ids]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        gradient_checkpointing=True,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    result = trainer.train()
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    assert torch.isfinite(torch.tensor(result.training_loss))
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(".self_attn.q_proj." in k for k in changed) and any(".mlp.down_proj." in k for k in changed)


def test_checkpointed_gradients_equal_plain_ones(slim_output: Path) -> None:
    ids = batch(2, 16, seed=5)
    grads = []
    for checkpointed in (False, True):
        model = load(slim_output).train()
        if checkpointed:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            assert all(layer.gradient_checkpointing for layer in model.model.layers)
        model(ids, labels=ids).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_peft_lora_trains_merges_and_reloads(slim_output: Path, tmp_path: Path) -> None:
    model = load(slim_output)
    lora = peft.get_peft_model(
        model,
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False),
    )
    lora.print_trainable_parameters()
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-3)
    ids = batch(4, 24, seed=6)
    losses = []
    for _ in range(3):
        loss = lora(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    merged = lora.merge_and_unload().eval()
    with torch.no_grad():
        want = merged(ids).logits
    merged.save_pretrained(tmp_path / "merged")
    reloaded = load(tmp_path / "merged").eval()
    assert [layer.self_attn.q_proj.weight.shape for layer in reloaded.model.layers] == [
        layer.self_attn.q_proj.weight.shape for layer in load(slim_output).model.layers
    ]  # LoRA merged back: the saved shape is unchanged
    with torch.no_grad():
        assert float((reloaded(ids).logits - want).abs().max()) <= 1e-4
