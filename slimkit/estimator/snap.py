"""Snap per-layer ratios to shapes the engine will actually build, keeping the global reduction on target.

What the engine does with a layer target (so what "snapped" means here):
- MLP: drops `dropped_channels(I, r)` = round(I·r) *floored* to a multiple of 8 channels, so widths stay
  multiples of 8 (tensor-core friendly) when I is. Left alone, the floor under-prunes by 4 channels per
  layer on average, a systematic bias that on small models exceeds the 0.5 % tolerance.
- attention: searches the head plan (kept heads, one even width per layer for whole RoPE pairs, KV heads
  that lose all their query heads removed) whose *parameter count* is closest to (1 − r)·params. Which
  plan wins depends on calibration statistics of the already-pruned model, so it cannot be known here;
  it is predicted as exactly (1 − r)·params. Whatever attention misses by (up to a head or a width step),
  the engine's budget ledger (`slimkit.layerwise.BudgetLedger`) asks of the same layer's MLP, so the
  global total still lands on target; the per-layer split between attention and MLP moves a little.

Snapping rules:
1. each layer's MLP drop becomes the multiple of 8 *nearest* to I·r (not the floor), never more than the
   cap allows (⌊cap·I/8⌋·8) and never the whole layer;
2. the predicted total (attention by ratio, MLP by the snapped drops) is compared with s·P0; while one
   8-channel step on some layer brings it strictly closer, layers are visited largest MLP ratio first (the
   ones the estimator found least important, so a step costs least there), one step per layer per round;
3. the MLP ratio is written as drop/I exactly, which `dropped_channels` maps back to the same drop.
The predicted global reduction ends within half an 8-channel step (3·8·d parameters) of the target
unless the cap binds everywhere; the ledger absorbs attention's data-dependent error.
"""

from __future__ import annotations

from slimkit.layerwise import LayerTarget
from slimkit.methods.mlp_prune import dropped_channels
from slimkit.modeling.modeling_slim import SlimConfig
from slimkit.shapes import MLP_ROUND, attention_params, get_shapes, mlp_params


def predicted_removed(targets: list[LayerTarget], config: SlimConfig) -> tuple[float, int]:
    """(parameters the engine will remove, P0): MLP exactly as the engine rounds, attention by its ratio."""
    removed, total = 0.0, 0
    for t, shape in zip(targets, get_shapes(config), strict=True):
        a, m, width = attention_params(shape, config), mlp_params(shape, config), shape["intermediate_size"]
        kept = dict(shape, intermediate_size=width - dropped_channels(width, t.mlp))
        removed += t.attention * a + m - mlp_params(kept, config)
        total += a + m
    return removed, total


def predicted_ratio(targets: list[LayerTarget], config: SlimConfig) -> float:
    removed, total = predicted_removed(targets, config)
    return removed / total


def snap_targets(targets: list[LayerTarget], config: SlimConfig, ratio: float, cap: float) -> list[LayerTarget]:
    """MLP ratios on the engine's 8-channel grid, nudged so the predicted total meets `ratio` (see module doc)."""
    shapes = get_shapes(config)
    widths = [s["intermediate_size"] for s in shapes]
    limits = [min(int(cap * w) // MLP_ROUND * MLP_ROUND, (w - 1) // MLP_ROUND * MLP_ROUND) for w in widths]
    drops = [
        min(round(t.mlp * w / MLP_ROUND) * MLP_ROUND, lim) for t, w, lim in zip(targets, widths, limits, strict=True)
    ]

    def step_params(i: int) -> int:  # parameters one 8-channel step removes in layer i
        w = widths[i]
        return mlp_params(dict(shapes[i], intermediate_size=w), config) - mlp_params(
            dict(shapes[i], intermediate_size=w - MLP_ROUND), config
        )

    steps = [step_params(i) for i in range(len(widths))]
    removed, total = predicted_removed(_with_drops(targets, drops, widths), config)
    error = ratio * total - removed  # > 0: prune more
    moved = True
    while moved:
        moved = False
        for i in sorted(range(len(widths)), key=lambda i: -drops[i] / widths[i]):
            sign = 1 if error > 0 else -1
            if not 0 <= drops[i] + sign * MLP_ROUND <= limits[i] or abs(error - sign * steps[i]) >= abs(error):
                continue
            drops[i] += sign * MLP_ROUND
            error -= sign * steps[i]
            moved = True
    return _with_drops(targets, drops, widths)


def _with_drops(targets: list[LayerTarget], drops: list[int], widths: list[int]) -> list[LayerTarget]:
    out = [LayerTarget(t.attention, d / w) for t, d, w in zip(targets, drops, widths, strict=True)]
    for t, d, w in zip(out, drops, widths, strict=True):
        assert dropped_channels(w, t.mlp) == d, (w, t.mlp, d)
    return out
