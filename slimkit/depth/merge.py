"""Flatten a group of adjacent decoder layers into one wide layer (algorithms.md §5.2), exactly.

Serial:    X ← X + A_1(N_1(X)); X ← X + M_1(N'_1(X)); X ← X + A_2(N_2(X)); …
Flattened: X ← X + Σ_j A_j(N_j(X));  X ← X + Σ_j M_j(N'_j(X))      (every block reads the group's input)

The flattened function *is* one standard decoder layer with m·n_h heads and m·I MLP channels:
1. each block's RMSNorm scale α is folded into the columns of its own input projections (q/k/v for the
   input norm, gate/up for the post-attention norm), W · diag(α), and the merged layer's norms get weight 1;
   an RMSNorm with unit weight is the weight-free norm that all blocks then share;
2. q/k/v rows (and biases) are concatenated block after block; KV head g of block j becomes KV head
   j·n_kv + g, and block j's query heads read it; o_proj columns are concatenated and the o_proj biases
   summed (their outputs are summed);
3. gate/up rows (and biases) are concatenated, down_proj columns concatenated and its biases summed.
Only the flattening approximates the serial function; this merge adds no error of its own (tested).
Everything in float64 from the original weights.
"""

from __future__ import annotations

import copy

import torch

from slimkit.modeling.modeling_slim import SlimConfig, SlimDecoderLayer
from slimkit.shapes import Shape, set_shapes

StateDict = dict[str, torch.Tensor]


def merged_shape(shape: Shape, blocks: int) -> Shape:
    """A dense layer shape widened to `blocks` side-by-side copies (heads, KV heads, MLP channels)."""
    n_kv = shape["num_key_value_heads"]
    kv_index = [j * n_kv + g for j in range(blocks) for g in shape["kv_index"]]
    return dict(
        shape,
        num_attention_heads=blocks * shape["num_attention_heads"],
        num_key_value_heads=blocks * n_kv,
        intermediate_size=blocks * shape["intermediate_size"],
        kv_index=kv_index,
        rope_index=[list(r) for _ in range(blocks) for r in shape["rope_index"]],
    )


def single_layer_config(config: SlimConfig, shape: Shape) -> SlimConfig:
    """A one-layer copy of `config` whose only layer has `shape` (to build and run a merged layer)."""
    one = copy.deepcopy(config)
    one.num_hidden_layers = 1
    set_shapes(one, [shape])
    return one


@torch.no_grad()
def merged_state(layers: list[SlimDecoderLayer]) -> StateDict:
    """The flattened group's tensors (canonical names relative to the layer), float64."""

    def w(layer: SlimDecoderLayer, name: str) -> torch.Tensor:
        return layer.get_parameter(name).detach().double()

    def has(layer: SlimDecoderLayer, name: str) -> bool:
        module_name, _, attr = name.rpartition(".")
        return getattr(layer.get_submodule(module_name), attr, None) is not None

    first = layers[0]
    d = first.input_layernorm.weight.numel()
    state: StateDict = {
        "input_layernorm.weight": torch.ones(d, dtype=torch.float64),
        "post_attention_layernorm.weight": torch.ones(d, dtype=torch.float64),
    }
    norms = {"self_attn": "input_layernorm.weight", "mlp": "post_attention_layernorm.weight"}
    readers = {"self_attn": ("q_proj", "k_proj", "v_proj"), "mlp": ("gate_proj", "up_proj")}
    writers = {"self_attn": "o_proj", "mlp": "down_proj"}
    for module in ("self_attn", "mlp"):
        for proj in readers[module]:
            name = f"{module}.{proj}"
            folded = [w(layer, f"{name}.weight") * w(layer, norms[module])[None] for layer in layers]  # W·diag(α)
            state[f"{name}.weight"] = torch.cat(folded)
            if has(first, f"{name}.bias"):
                state[f"{name}.bias"] = torch.cat([w(layer, f"{name}.bias") for layer in layers])
        name = f"{module}.{writers[module]}"
        state[f"{name}.weight"] = torch.cat([w(layer, f"{name}.weight") for layer in layers], dim=1)
        if has(first, f"{name}.bias"):
            state[f"{name}.bias"] = sum(w(layer, f"{name}.bias") for layer in layers)
    return state
