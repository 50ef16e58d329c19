"""FlattenGPT (Xu et al., ICML 2026; algorithms.md §5): flatten adjacent layers, prune back to one layer.

Plan: greedy merging of adjacent groups by hidden-state similarity (`similarity.greedy_groups`).
Merge: the group becomes one wide layer that computes the flattened function exactly (`merge`), then its
attention keeps the original number of KV groups / heads by head importance and its MLP the original width
by ridge leverage with Nyström compensation (`prune_back`). Statistics are taken on the inputs the new
layer will really see (the rebuilt prefix), the MLP's through the already pruned attention. The result has
the dense layer shape, so the model stays in the family's stock architecture, with fewer layers.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate import init_empty_weights

from slimkit.depth.driver import ContextFor
from slimkit.depth.merge import merged_shape, merged_state, single_layer_config
from slimkit.depth.prune_back import prune_attention_back, prune_mlp_back
from slimkit.depth.similarity import greedy_groups
from slimkit.modeling.modeling_slim import SlimConfig, SlimDecoderLayer
from slimkit.shapes import Shape, get_shapes

StateDict = dict[str, torch.Tensor]


def build_layer(
    config: SlimConfig, index: int, state: StateDict, device: torch.device, store: torch.dtype, compute: torch.dtype
) -> SlimDecoderLayer:
    """A layer of `config`'s shape at `index` holding `state`, cast once to the stored dtype, then computing."""
    with init_empty_weights(include_buffers=False):
        layer = SlimDecoderLayer(config, index)
    layer.load_state_dict({k: v.to(device, store) for k, v in state.items()}, assign=True)
    return layer.to(device, compute).eval()


class FlattenGPT:
    name = "flattengpt"

    def __init__(self, compensate_attention: bool = False, ridge_factor: float = 10.0) -> None:
        self.compensate_attention = compensate_attention
        self.ridge_factor = ridge_factor

    def plan(self, similarity: torch.Tensor, remove: int) -> list[list[int]]:
        return greedy_groups(similarity, remove)

    def merge(
        self, layers: list[SlimDecoderLayer], config: SlimConfig, context_for: ContextFor, store_dtype: torch.dtype
    ) -> tuple[SlimDecoderLayer, dict[str, Any]]:
        dense: Shape = get_shapes(config)[0]
        probe = context_for(layers[0], config)
        device, compute = probe.device, probe.dtype
        state = merged_state(layers)
        wide_config = single_layer_config(config, merged_shape(dense, len(layers)))
        wide = build_layer(wide_config, 0, state, device, store_dtype, compute)
        attn_state, attn_report, _ = prune_attention_back(
            context_for(wide, wide_config), dense["num_key_value_heads"], self.compensate_attention
        )
        state.update(attn_state)
        del wide
        # Attention at the dense shape, MLP still m·I wide: its statistics go through the pruned attention.
        mid_config = single_layer_config(
            config, dict(dense, intermediate_size=len(layers) * dense["intermediate_size"])
        )
        mid = build_layer(mid_config, 0, state, device, store_dtype, compute)
        mlp_state, mlp_report = prune_mlp_back(
            context_for(mid, mid_config), dense["intermediate_size"], self.ridge_factor
        )
        state.update(mlp_state)
        del mid
        return build_layer(config, 0, state, device, store_dtype, compute), attn_report | mlp_report
