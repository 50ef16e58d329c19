"""Per-layer shapes of a `SlimForCausalLM`, their parameter counts, and the whole-model counts.

A *shape* is the dict `layer_shape()` returns: head counts, q/k and v/o widths, GQA map, kept RoPE
frequencies and MLP width. Parameter counts are computed from shapes (not from modules) so that a method
can price a candidate shape before it builds anything.
"""

from __future__ import annotations

from typing import Any

import torch

from slimkit.modeling.modeling_slim import SlimConfig, SlimForCausalLM, layer_shape

Shape = dict[str, Any]
MLP_ROUND = 8  # MLP channels are dropped in multiples of 8: tensor-core friendly widths


def get_shapes(config: SlimConfig) -> list[Shape]:
    return [layer_shape(config, i) for i in range(config.num_hidden_layers)]


def set_shapes(config: SlimConfig, shapes: list[Shape]) -> None:
    """Record every layer's shape in `per_layer_config` (written out explicitly, one entry per layer)."""
    config.per_layer_config = {i: dict(s) for i, s in enumerate(shapes)}
    config.allow_global_per_layer_attribute_access = True  # global values = the dense source shape
    config.serialize_explicit_per_layer_config = True


def set_shape(config: SlimConfig, index: int, shape: Shape) -> None:
    shapes = get_shapes(config)
    shapes[index] = shape
    set_shapes(config, shapes)


def attention_params(shape: Shape, config: SlimConfig) -> int:
    d, nq, nkv = config.hidden_size, shape["num_attention_heads"], shape["num_key_value_heads"]
    qk, v = shape["qk_head_dim"], shape["v_head_dim"]
    weights = d * (nq * qk + nkv * qk + nkv * v + nq * v)
    bias = (nq * qk + nkv * qk + nkv * v) * config.attention_bias + d * config.attention_out_bias
    return weights + bias


def mlp_params(shape: Shape, config: SlimConfig) -> int:
    width, d = shape["intermediate_size"], config.hidden_size
    return 3 * d * width + (2 * width + d) * config.mlp_bias


def param_counts(model: SlimForCausalLM) -> dict[str, int]:
    """Total parameters, parameters without embeddings/head, and the decoder attention+MLP parameters."""
    seen: set[int] = set()
    total = embeddings = 0
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:  # tied embedding and head count once
            continue
        seen.add(id(p))
        total += p.numel()
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            embeddings += p.numel()
    shapes = get_shapes(model.config)
    decoder = sum(attention_params(s, model.config) + mlp_params(s, model.config) for s in shapes)
    return {"total": total, "without_embeddings": total - embeddings, "attention_mlp": decoder}


def kv_cache_bytes_per_token(config: SlimConfig, dtype: torch.dtype = torch.float16) -> int:
    """Bytes of K and V cache one token costs across all layers."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    per = sum(s["num_key_value_heads"] * (s["qk_head_dim"] + s["v_head_dim"]) for s in get_shapes(config))
    return per * itemsize
