"""IntraSlice (arXiv 2602.01975): module-internal approximate PCA whose transforms fuse into the weights.

Attention: post-RoPE |q·k| pair selection per KV group, per-group PCA of the recomputed head outputs for
V/O, least-squares compensation into o_proj. MLP: energy scores, selection of gate/up rows, Nyström
compensation into down_proj. No parameter is added. `compensate=False` is the ablation without the
least-squares steps (the plain projections).

`IntraSliceOptions` holds the knobs the quality ablations (README, "IntraSlice quality") measured; the
defaults are the measured best, and every non-default value is recorded in the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from slimkit.layerwise import LayerContext, Replacement
from slimkit.linalg import DAMP
from slimkit.methods.attention_prune import AttentionRecipe, prune_attention
from slimkit.methods.head_plan import MIN_WIDTH_FRAC
from slimkit.methods.mlp_prune import prune_mlp
from slimkit.shapes import MLP_ROUND

# λ_b of a uniform ratio target: every layer's MLP gives 7.5 % more than the ratio and its attention the
# rest, so the layer still loses exactly the ratio (SmolLM2-135M at 20 %: 15.5 % of the attention, 21.5 % of
# the MLP). Attention is the more sensitive module: with equal fractions its output error dominated the gap
# to the authors' code, whose head floor happens to take less from attention (README, "IntraSlice
# quality"). Measured better than equal fractions in and far off the calibration domain; λ_b = 1 (the
# request's `bias`) restores equal fractions.
UNIFORM_MLP_BIAS = 1.075


@dataclass(frozen=True)
class IntraSliceOptions:
    damping: float = DAMP  # δ of every least-squares solve, as a fraction of the mean diagonal
    head_step: int | None = None  # head-width grid: None = 8 channels (2 for tiny heads); 2 = free even widths
    mlp_step: int = MLP_ROUND  # MLP channels are dropped in multiples of this
    # What the least squares fit: "layer" = the unpruned layer on the (already compressed) inputs it gets;
    # "dense" = the uncompressed model's activations (each layer also corrects the error of earlier ones).
    compensation_target: str = "layer"
    order: str = "attention_first"  # or "mlp_first" (ablation: the MLP fitted through the unpruned attention)
    ridge_prior: str = "zero"  # o_proj least squares shrunk towards zero, or "plain": towards W_o P
    # Heads narrower than this fraction of their original width are deleted instead (> 1: fewer, wider heads).
    min_head_width: float = MIN_WIDTH_FRAC

    def __post_init__(self) -> None:
        if self.damping <= 0:
            raise ValueError(f"damping must be > 0, got {self.damping}")
        if self.min_head_width <= 0:
            raise ValueError(f"min_head_width must be > 0, got {self.min_head_width}")
        if self.mlp_step < 1:
            raise ValueError(f"mlp_step must be >= 1, got {self.mlp_step}")
        if self.compensation_target not in ("layer", "dense"):
            raise ValueError(f"compensation_target must be 'layer' or 'dense', got {self.compensation_target!r}")
        if self.ridge_prior not in ("zero", "plain"):
            raise ValueError(f"ridge_prior must be 'zero' or 'plain', got {self.ridge_prior!r}")
        if self.order not in ("attention_first", "mlp_first"):
            raise ValueError(f"order must be 'attention_first' or 'mlp_first', got {self.order!r}")


class IntraSlice:
    def __init__(self, compensate: bool = True, options: IntraSliceOptions | None = None) -> None:
        self.compensate = compensate
        self.options = options or IntraSliceOptions()
        self.name = "intraslice" if compensate else "intraslice-nocomp"
        self.uniform_bias = UNIFORM_MLP_BIAS if compensate else 1.0  # the split of a uniform ratio target
        self.mlp_step = self.options.mlp_step  # read by the driver (layerwise.compress_model)
        self.compensation_target = self.options.compensation_target
        self.order = self.options.order
        self.recipe = AttentionRecipe(
            pair_scores="activation",
            basis="pca",
            compensate=compensate,
            damping=self.options.damping,
            head_step=self.options.head_step,
            ridge_prior=self.options.ridge_prior,
            min_head_width=self.options.min_head_width,
        )

    def with_head_step(self, step: int) -> IntraSlice:
        return IntraSlice(self.compensate, replace(self.options, head_step=step))

    def prune_attention(self, ctx: LayerContext, ratio: float) -> Replacement:
        return prune_attention(ctx, ratio, self.recipe)

    def prune_mlp(self, ctx: LayerContext, ratio: float) -> Replacement:
        o = self.options
        return prune_mlp(ctx, ratio, score="energy", compensate=self.compensate, damping=o.damping, step=o.mlp_step)
