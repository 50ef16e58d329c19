"""FlattenGPT (Xu et al., ICML 2026; algorithms.md §5): flatten adjacent layers, prune back to one layer.

Plan: greedy merging of adjacent groups by hidden-state similarity (`similarity.greedy_groups`).
Merge: the group becomes one wide layer that computes the flattened function exactly (`merge`), then its
attention keeps the original number of KV groups / heads by head importance and its MLP the original width
by ridge leverage (`prune_back`). Statistics are taken on the inputs the new layer will really see (the
rebuilt prefix), the MLP's through the already pruned attention. The result has the dense layer shape, so
the model stays in the family's stock architecture, with fewer layers.

One step differs from the paper by default, because it measured better (README, `bench.depth`): down_proj
is refitted by least squares so the new layer reproduces the *serial* group's output on the calibration
set (`serial_target=True`), instead of the paper's ridge Nyström towards the wide flattened MLP. The
flattening itself is the approximation (on SmolLM2 it costs up to half of a pair's update); fitting the
last projection to the real target absorbs much of it. `flattengpt-paper` is the paper's version.
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
    """`serial_target`: down_proj fitted to the serial group's output (else the paper's ridge Nyström);
    `compensate_attention`: o_proj of the kept heads refitted to the whole merged attention output."""

    def __init__(
        self,
        name: str = "flattengpt",
        serial_target: bool = True,
        compensate_attention: bool = False,
        ridge_factor: float = 10.0,
    ) -> None:
        self.name = name
        self.compensate_attention = compensate_attention
        self.ridge_factor = ridge_factor
        self.serial_target = serial_target

    def plan(self, similarity: torch.Tensor, remove: int) -> list[list[int]]:
        return greedy_groups(similarity, remove)

    def merge(
        self,
        layers: list[SlimDecoderLayer],
        config: SlimConfig,
        context_for: ContextFor,
        store_dtype: torch.dtype,
        serial: torch.Tensor | None = None,
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
        width = dense["intermediate_size"]
        mid_config = single_layer_config(config, dict(dense, intermediate_size=len(layers) * width))
        mid = build_layer(mid_config, 0, state, device, store_dtype, compute)
        targets = serial if self.serial_target else None
        mlp_state, mlp_report = prune_mlp_back(context_for(mid, mid_config), width, self.ridge_factor, targets)
        state.update(mlp_state)
        del mid
        return build_layer(config, 0, state, device, store_dtype, compute), attn_report | mlp_report
