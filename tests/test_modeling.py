"""The shipped modeling file on its own: padding, KV cache and uneven GQA groups."""

from __future__ import annotations

from pathlib import Path

import torch

from slimkit.layerwise import LayerTarget, compress_model
from slimkit.loading import load_source


def compressed(path: Path) -> torch.nn.Module:
    source = load_source(str(path))
    ids = torch.randint(0, 8192, (8, 64), generator=torch.Generator().manual_seed(0))
    from slimkit.methods import method_for

    compress_model(
        source.model,
        ids,
        torch.ones_like(ids),
        method_for("intraslice"),
        [LayerTarget(0.4, 0.4)] * source.model.config.num_hidden_layers,
        torch.device("cpu"),
        show_progress=False,
    )
    return source.model


def test_uneven_gqa_groups_survive(tiny_llama_gqa: Path) -> None:
    model = compressed(tiny_llama_gqa)
    for layer in model.model.layers:
        attn = layer.self_attn
        assert attn.num_heads < 8  # heads were deleted individually ...
        counts = torch.bincount(attn.kv_index, minlength=attn.num_kv_heads)
        assert int(counts.min()) >= 1  # ... and every kept KV head still serves a query head


def test_left_padding_gives_the_same_next_token_logits(tiny_llama_gqa: Path) -> None:
    model = compressed(tiny_llama_gqa)
    short = torch.randint(0, 8192, (1, 10), generator=torch.Generator().manual_seed(2))
    long = torch.randint(0, 8192, (1, 16), generator=torch.Generator().manual_seed(3))
    batch = torch.cat([torch.cat([torch.zeros(1, 6, dtype=torch.long), short], 1), long])
    mask = torch.ones_like(batch)
    mask[0, :6] = 0
    position_ids = (mask.cumsum(1) - 1).clamp_min(0)
    with torch.no_grad():
        batched = model(batch, attention_mask=mask, position_ids=position_ids).logits[:, -1]
        alone = torch.cat([model(short).logits[:, -1], model(long).logits[:, -1]])
    assert float((batched - alone).abs().max()) <= 1e-4


def test_incremental_decoding_matches_full_forward(tiny_llama_gqa: Path) -> None:
    model = compressed(tiny_llama_gqa)
    ids = torch.randint(0, 8192, (2, 20), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :12], use_cache=True)
        step = model(ids[:, 12:], past_key_values=out.past_key_values, use_cache=True).logits
    assert float((full[:, 12:] - step).abs().max()) <= 1e-4


def test_phi3_longrope_matches_stock_at_short_and_long_lengths(tmp_path: Path) -> None:
    import transformers as T
    from transformers import AutoModelForCausalLM

    half = 48  # head_dim 96
    config = T.Phi3Config(
        vocab_size=512,
        hidden_size=384,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        original_max_position_embeddings=64,
        pad_token_id=0,
        rope_parameters={
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "short_factor": [1.0 + 0.01 * i for i in range(half)],
            "long_factor": [1.0 + 0.1 * i for i in range(half)],
        },
    )
    torch.manual_seed(0)
    T.Phi3ForCausalLM(config).save_pretrained(tmp_path)
    stock = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    slim = load_source(str(tmp_path)).model
    for length in (32, 100):  # below and above original_max_position_embeddings: short and long factors
        ids = torch.randint(0, 512, (1, length), generator=torch.Generator().manual_seed(length))
        with torch.no_grad():
            assert float((stock(ids).logits - slim(ids).logits).abs().max()) <= 1e-5


def test_mistral_sliding_window_matches_stock(tmp_path: Path) -> None:
    import transformers as T
    from transformers import AutoModelForCausalLM

    config = T.MistralConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=16,
    )
    torch.manual_seed(0)
    T.MistralForCausalLM(config).save_pretrained(tmp_path)
    stock = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    slim = load_source(str(tmp_path)).model
    ids = torch.randint(0, 512, (1, 40), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert float((stock(ids).logits - slim(ids).logits).abs().max()) <= 1e-5
        out = slim(ids[:, :30], use_cache=True)  # the window also applies across the KV cache
        step = slim(ids[:, 30:], past_key_values=out.past_key_values, use_cache=True).logits
        assert float((stock(ids).logits[:, 30:] - step).abs().max()) <= 1e-5
