"""IntraSlice (arXiv 2602.01975): module-internal approximate PCA whose transforms fuse into the weights.

Attention: post-RoPE |q·k| pair selection per KV group, per-group PCA of the recomputed head outputs for
V/O, least-squares compensation into o_proj. MLP: energy scores, selection of gate/up rows, Nyström
compensation into down_proj. No parameter is added. `compensate=False` is the ablation without the
least-squares steps (the plain projections).
"""

from __future__ import annotations

from slimkit.layerwise import LayerContext, Replacement
from slimkit.methods.attention_prune import AttentionRecipe, prune_attention
from slimkit.methods.mlp_prune import prune_mlp


class IntraSlice:
    def __init__(self, compensate: bool = True) -> None:
        self.compensate = compensate
        self.name = "intraslice" if compensate else "intraslice-nocomp"
        self.recipe = AttentionRecipe(pair_scores="activation", basis="pca", compensate=compensate)

    def prune_attention(self, ctx: LayerContext, ratio: float) -> Replacement:
        return prune_attention(ctx, ratio, self.recipe)

    def prune_mlp(self, ctx: LayerContext, ratio: float) -> Replacement:
        return prune_mlp(ctx, ratio, score="energy", compensate=self.compensate)
