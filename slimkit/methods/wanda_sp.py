"""Wanda-sp-style structured pruning: the baseline IntraSlice must beat.

Same units and the same per-layer parameter budgets as IntraSlice (heads, per-head width, RoPE pairs per
KV group, MLP channels), but every choice is a plain selection scored by |W|·‖X‖ (weight magnitude times
input activation norm), and nothing is compensated.
"""

from __future__ import annotations

from slimkit.layerwise import LayerContext, Replacement
from slimkit.methods.attention_prune import AttentionRecipe, prune_attention
from slimkit.methods.mlp_prune import prune_mlp


class WandaSP:
    name = "wanda-sp"
    uniform_bias = 1.0  # equal fractions, as the baseline's paper prunes

    def __init__(self, head_step: int | None = None) -> None:
        self.recipe = AttentionRecipe(pair_scores="weight", basis="select", compensate=False, head_step=head_step)

    def with_head_step(self, step: int) -> WandaSP:
        return WandaSP(step)

    def prune_attention(self, ctx: LayerContext, ratio: float) -> Replacement:
        return prune_attention(ctx, ratio, self.recipe)

    def prune_mlp(self, ctx: LayerContext, ratio: float) -> Replacement:
        return prune_mlp(ctx, ratio, score="wanda", compensate=False)
