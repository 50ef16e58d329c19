"""From unit importances to per-layer attention and MLP ratios (algorithms.md §3.5 "Budget allocation").

Prices are *parameters*, counted exactly as `slimkit.shapes.attention_params` / `mlp_params` count them,
because a ratio means "fraction of decoder attention + MLP parameters removed" everywhere in slimkit:
- MLP channel of layer l: mlp_params(l) / I_l (3d, plus bias entries when the MLP has biases);
- attention unit (head h, block f) of layer l: attention_params(l) / (n_h · F), the *average* price
  including the layer's k/v (and bias) parameters. Under GQA, k/v rows only disappear when a whole KV
  group goes, so the marginal price of one unit is less than this average; the average is what makes
  the units of a layer add up exactly to its parameters, and the engine's head-plan search then meets the
  layer's parameter target (k/v included) by choosing widths and heads.

Budget (λ_b = `bias`): MLP keeps the top (1 − s·λ_b) of its parameters, attention keeps whatever is left of
(1 − s)·P0, each by one ranking across all layers; per-layer ratio = 1 − kept units / units. A module type
whose global share would exceed the cap hands the excess to the other type. Each per-layer vector is then
capped (0.8) and the excess redistributed so the total is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimkit.errors import InvalidArgument
from slimkit.layerwise import LayerTarget
from slimkit.modeling.modeling_slim import SlimConfig
from slimkit.shapes import MLP_ROUND, Shape, attention_params, get_shapes, mlp_params

TOL = 1e-9


@dataclass(frozen=True)
class LayerBudget:
    """One layer's parameters and units, priced as `slimkit.shapes` counts them."""

    attention_params: int
    mlp_params: int
    attention_units: int  # n_h · F
    mlp_units: int  # I

    @property
    def attention_price(self) -> float:
        return self.attention_params / self.attention_units

    @property
    def mlp_price(self) -> float:
        return self.mlp_params / self.mlp_units


def layer_budgets(config: SlimConfig, frac: int = 1) -> list[LayerBudget]:
    return [
        LayerBudget(
            attention_params(s, config), mlp_params(s, config), s["num_attention_heads"] * frac, s["intermediate_size"]
        )
        for s in get_shapes(config)
    ]


def module_ratios(budgets: list[LayerBudget], ratio: float, bias: float, cap: float) -> tuple[float, float]:
    """Global (attention, MLP) ratios: MLP s·λ_b, attention the rest of s·P0, both kept within [0, cap]."""
    if not 0 < ratio <= cap:
        raise InvalidArgument(f"ratio must be in (0, cap={cap}], got {ratio}")
    A = sum(b.attention_params for b in budgets)
    M = sum(b.mlp_params for b in budgets)
    r_m = min(max(ratio * bias, 0.0), cap)
    r_a = ratio + (ratio - r_m) * M / A  # exactly `ratio` when λ_b = 1
    if r_a > cap:
        r_a, r_m = cap, ratio + (ratio - cap) * A / M
    elif r_a < 0:
        r_a, r_m = 0.0, ratio * (A + M) / M
    return r_a, r_m


def uniform_targets(config: SlimConfig, ratio: float, bias: float = 1.0, cap: float = 0.8) -> list[LayerTarget]:
    """Every layer loses the fraction `ratio` of *its own* parameters: its MLP s·λ_b, its attention the rest.

    The MLP ratio s·λ_b is put on the engine's 8-channel grid (nearest multiple of 8) and the attention
    ratio absorbs the difference, so the engine's floor-rounding does not leave the uniform baseline a few
    tenths of a percent *less* pruned than the global variants it is compared with; with λ_b = 1 and I·s on
    the grid this is exactly (s, s). Layers of different shapes (an already-compressed input) are each
    split on their own parameters.
    """
    splits: dict[LayerBudget, LayerTarget] = {}
    targets = []
    for budget, shape in zip(layer_budgets(config), get_shapes(config), strict=True):
        if budget not in splits:
            splits[budget] = _layer_split(budget, shape, config, ratio, bias, cap)
        targets.append(splits[budget])
    return targets


def _layer_split(
    b: LayerBudget, shape: Shape, config: SlimConfig, ratio: float, bias: float, cap: float
) -> LayerTarget:
    """One layer's (attention, MLP) ratios removing `ratio` of its parameters, the MLP's on the grid."""
    if b.attention_params == 0 or b.mlp_params == 0:  # one module already gone: the other takes it all
        return LayerTarget(ratio if b.attention_params else 0.0, ratio if b.mlp_params else 0.0)
    _, r_m = module_ratios([b], ratio, bias, cap)
    limit = int(cap * b.mlp_units) // MLP_ROUND * MLP_ROUND

    def pair(drop: int) -> tuple[float, float, float]:  # (|error| in parameters, attention ratio, MLP ratio)
        removed_mlp = b.mlp_params - mlp_params(dict(shape, intermediate_size=b.mlp_units - drop), config)
        r_a = min(max(ratio + (ratio * b.mlp_params - removed_mlp) / b.attention_params, 0.0), cap)
        error = abs(ratio * (b.attention_params + b.mlp_params) - removed_mlp - r_a * b.attention_params)
        return error, r_a, drop / b.mlp_units

    below = int(r_m * b.mlp_units) // MLP_ROUND * MLP_ROUND  # the two grid points around s·λ_b; nearest on ties
    nearest = round(r_m * b.mlp_units / MLP_ROUND) * MLP_ROUND
    candidates = sorted({min(d, limit) for d in (below, below + MLP_ROUND)}, key=lambda d: d != nearest)
    _, r_a, r_m = min((pair(d) for d in candidates), key=lambda p: p[0])
    return LayerTarget(r_a, r_m)


def keep_top(importance: list[torch.Tensor], prices: list[float], budget: float) -> tuple[list[int], float]:
    """Units kept per layer: the globally most important, in rank order, while their total price fits."""
    scores = torch.cat([imp.flatten().double() for imp in importance])
    layer_of = torch.cat([torch.full((imp.numel(),), i) for i, imp in enumerate(importance)])
    price = torch.tensor(prices, dtype=torch.float64)[layer_of]
    order = scores.argsort(descending=True, stable=True)
    spent = price[order].cumsum(0)
    kept = spent <= budget * (1 + TOL)
    counts = torch.bincount(layer_of[order][kept], minlength=len(importance))
    return counts.tolist(), float(spent[kept][-1]) if bool(kept.any()) else 0.0


def cap_and_redistribute(
    ratios: list[float], weights: list[float], cap: float, extra: float = 0.0
) -> tuple[list[float], float]:
    """Cap every ratio; spread the excess (in weight units) over the others, proportionally to their ratio.

    Receivers are visited largest ratio first; each takes its proportional share of what is left, at most
    up to the cap, so a receiver that hits the cap passes its shortfall on to the smaller ones. If the
    proportional pass cannot place everything (receivers with ratio 0), a second pass spreads the rest
    evenly in ratio. `extra` is excess handed over from elsewhere. Returns the ratios and what could not
    be placed (0 unless every layer is at the cap), so Σ ratio·weight is otherwise preserved.
    """
    r = [min(x, cap) for x in ratios]
    excess = extra + sum((x - cap) * w for x, w in zip(ratios, weights, strict=True) if x > cap)
    for proportional in (True, False):
        receivers = sorted((i for i in range(len(r)) if r[i] < cap), key=lambda i: -r[i])
        basis = {i: (r[i] if proportional else 1.0) for i in receivers}
        mass = sum(basis[i] * weights[i] for i in receivers)
        for i in receivers:
            if excess <= TOL * sum(weights) or mass <= 0:
                break
            take = min(excess * basis[i] / mass, cap - r[i])
            mass -= basis[i] * weights[i]
            r[i] += take
            excess -= take * weights[i]
    return r, max(excess, 0.0)


def allocate(
    importance_attention: list[torch.Tensor],
    importance_mlp: list[torch.Tensor],
    config: SlimConfig,
    ratio: float,
    bias: float = 1.0,
    cap: float = 0.8,
    frac: int = 1,
) -> list[LayerTarget]:
    """Per-layer ratios from one global ranking per module type, capped and redistributed (unsnapped)."""
    budgets = layer_budgets(config, frac)
    for b, imp_a, imp_m in zip(budgets, importance_attention, importance_mlp, strict=True):
        if imp_a.numel() != b.attention_units or imp_m.numel() != b.mlp_units:
            raise InvalidArgument("importances do not match the model's layer shapes")
    total = sum(b.attention_params + b.mlp_params for b in budgets)
    _, r_m = module_ratios(budgets, ratio, bias, cap)
    mlp_budget = (1 - r_m) * sum(b.mlp_params for b in budgets)
    kept_m, spent_m = keep_top(importance_mlp, [b.mlp_price for b in budgets], mlp_budget)
    kept_a, _ = keep_top(importance_attention, [b.attention_price for b in budgets], (1 - ratio) * total - spent_m)
    mlp = [1 - k / b.mlp_units for k, b in zip(kept_m, budgets, strict=True)]
    attn = [1 - k / b.attention_units for k, b in zip(kept_a, budgets, strict=True)]
    # Whole attention units round the attention share up a little; at a type-level cap that remainder, or
    # any other that one type cannot place under the cap, moves to the other type.
    w_m, w_a = [float(b.mlp_params) for b in budgets], [float(b.attention_params) for b in budgets]
    mlp, left = cap_and_redistribute(mlp, w_m, cap)
    attn, left = cap_and_redistribute(attn, w_a, cap, extra=left)
    if left > 0:
        mlp, left = cap_and_redistribute(mlp, w_m, cap, extra=left)
    if left > 1e-6 * total:
        raise InvalidArgument(f"cannot place the pruning budget under the per-layer cap {cap}")
    return [LayerTarget(a, m) for a, m in zip(attn, mlp, strict=True)]
