"""Structured selection in place: keep some heads and MLP channels of one layer, touch nothing else (§4.1).

Kept query heads' rows of q_proj and columns of o_proj, kept KV heads' rows of k_proj/v_proj, kept MLP
channels' rows of gate/up and columns of down_proj (biases follow their rows). No compensation: what the
selection loses, TransAct wins back by training. The kept tensors are copies of the old ones, so a layer
that keeps everything computes exactly what it computed before.
"""

from __future__ import annotations

import torch

from slimkit.layerwise import build_layer
from slimkit.modeling.modeling_slim import SlimForCausalLM
from slimkit.shapes import get_shapes
from slimkit.transact.plan import AttentionShape, stock_shape


def head_rows(heads: list[int], width: int) -> torch.Tensor:
    """Row (or column) indices of whole heads of `width` channels, in the order given."""
    return torch.tensor([h * width + c for h in heads for c in range(width)], dtype=torch.long)


@torch.no_grad()
def prune_layer(
    model: SlimForCausalLM, index: int, kv_keep: list[int], q_keep: list[int], mlp_keep: torch.Tensor
) -> None:
    """Replace layer `index` by one that keeps the given KV heads, query heads and MLP channels.

    q_keep must list, for each kept KV head in order, the query heads that read it (as `select_heads` does),
    so the new layer has even, contiguous GQA groups; mlp_keep: ascending channel indices.
    """
    layer = model.model.layers[index]
    attn, d_h = layer.self_attn, model.config.head_dim
    q_rows, kv_rows = head_rows(q_keep, d_h), head_rows(kv_keep, d_h)
    state = {k: v.detach() for k, v in layer.state_dict().items()}
    for name, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
        state[f"self_attn.{name}.weight"] = state[f"self_attn.{name}.weight"][rows]
        if getattr(attn, name).bias is not None:
            state[f"self_attn.{name}.bias"] = state[f"self_attn.{name}.bias"][rows]
    state["self_attn.o_proj.weight"] = state["self_attn.o_proj.weight"][:, q_rows]
    for name in ("gate_proj", "up_proj"):
        state[f"mlp.{name}.weight"] = state[f"mlp.{name}.weight"][mlp_keep]
        if getattr(layer.mlp, name).bias is not None:
            state[f"mlp.{name}.bias"] = state[f"mlp.{name}.bias"][mlp_keep]
    state["mlp.down_proj.weight"] = state["mlp.down_proj.weight"][:, mlp_keep]
    shape = stock_shape(
        get_shapes(model.config)[index], AttentionShape(len(kv_keep), len(q_keep) // len(kv_keep)), len(mlp_keep)
    )
    device, dtype = layer.input_layernorm.weight.device, layer.input_layernorm.weight.dtype
    model.model.layers[index] = build_layer(model.config, index, shape, state, device, dtype, dtype)
