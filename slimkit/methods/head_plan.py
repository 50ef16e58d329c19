"""Which heads survive and how wide they stay (algorithms.md §3.3 steps 2–4), priced in parameters.

IntraSlice spends a channel budget K on the o_proj input (D = n_h × d_h channels): channel scores pick the
top-K channels, heads that got almost none of them go, a greedy pass deletes further heads while that
raises the spectral objective, a floor keeps every head at least 3/4 of its original width, and every
kept head gets the same width k ≈ K / #kept, a multiple of `width_step(d_h)`: 8 for heads of 32 channels
or more (tensor cores, and PyTorch's flash / memory-efficient SDPA kernels want head widths that are
multiples of 8), 2 (whole RoPE pairs) for the tiny heads of test models, where a step of 8 would leave
no width between the floor and the full head.

Under GQA a KV head only disappears with the last of its query heads, so the parameters saved are not
proportional to K. We therefore search K for the plan whose *parameter count* is closest to the layer's
target: that is what "ratio" means to the user (algorithms.md §3.6), and it is what the global ratio
estimator will budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from slimkit.errors import InvalidArgument


@dataclass(frozen=True)
class HeadPlan:
    heads: tuple[int, ...]  # kept query heads (original indices, ascending)
    width: int  # per-head q/k and v/o width (a multiple of `width_step`)
    kv_heads: tuple[int, ...]  # KV heads still read by some kept query head


MIN_WIDTH_FRAC = 0.75  # step (c): kept heads stay at least this fraction of their original width


def width_step(head_dim: int, step: int | None = None) -> int:
    """Granularity of a pruned head's width (see the module doc); always even, so RoPE pairs stay whole.

    `step` overrides the automatic grid (2 = the paper's free even widths), where it divides the head.
    """
    if step is not None:
        if step < 2 or step % 2 or head_dim % step:
            raise InvalidArgument(f"head_step {step} must be even and divide the head width {head_dim}")
        return step
    return 8 if head_dim >= 32 and head_dim % 8 == 0 else 2


def plan_for_budget(
    K: int,
    counts: list[int],  # kept channels per head among the top-K channel scores
    spectra_cum: torch.Tensor,  # (n_h, d_h + 1): spectra_cum[i, j] = Σ_{j' < j} S[i, j']
    head_dim: int,
    kv_of: list[int],
    min_width_frac: float = MIN_WIDTH_FRAC,
    step: int | None = None,
) -> HeadPlan:
    n = len(counts)
    total = spectra_cum[:, -1].tolist()
    kept = [i for i in range(n) if counts[i] >= math.floor(K / n / 4)] or [max(range(n), key=counts.__getitem__)]
    # Step (a) may delete so many heads that the rest would need to be wider than a head: restore the best.
    dropped = sorted(set(range(n)) - set(kept), key=lambda i: -total[i])
    while K / len(kept) > head_dim and dropped:
        kept.append(dropped.pop(0))

    def objective(heads: list[int]) -> float:
        k = min(head_dim, K // len(heads))
        return float(sum(spectra_cum[i, k] for i in heads))

    # Step (b): greedily delete the weakest head while the kept spectral mass grows.
    while len(kept) > 1:
        weakest = min(kept, key=total.__getitem__)
        trial = [i for i in kept if i != weakest]
        if K / len(trial) > head_dim or objective(trial) <= objective(kept):
            break
        kept = trial
    # Step (c): no head narrower than min_width_frac of the original.
    while len(kept) > 1 and K / len(kept) < min_width_frac * head_dim:
        weakest = min(kept, key=total.__getitem__)
        if K / (len(kept) - 1) > head_dim:
            break
        kept.remove(weakest)
    step = width_step(head_dim, step)
    width = min(head_dim, max(step, round(K / len(kept) / step) * step))  # (d) on the width grid
    heads = tuple(sorted(kept))
    return HeadPlan(heads, width, tuple(sorted({kv_of[i] for i in heads})))


def plan_params(plan: HeadPlan, hidden: int, qkv_bias: bool, o_bias: bool) -> int:
    nq, nkv, k = len(plan.heads), len(plan.kv_heads), plan.width
    return hidden * k * 2 * (nq + nkv) + qkv_bias * k * (nq + 2 * nkv) + o_bias * hidden


def search_plan(
    channel_scores: torch.Tensor,  # (D,) one score per o_proj input channel
    spectra: torch.Tensor,  # (n_h, d_h) per-head component scores, descending
    kv_of: list[int],
    target_params: int,
    hidden: int,
    qkv_bias: bool,
    o_bias: bool,
    step: int | None = None,
    min_width_frac: float = MIN_WIDTH_FRAC,
) -> HeadPlan:
    """The plan whose parameter count is closest to `target_params` over all channel budgets K."""
    n_h, d_h = spectra.shape
    order = channel_scores.argsort(descending=True).cpu()
    head_of = (order // d_h).tolist()
    spectra_cum = torch.cat([torch.zeros(n_h, 1, dtype=spectra.dtype), spectra.cpu().cumsum(1)], 1)
    cache: dict[int, tuple[HeadPlan, int]] = {}

    def evaluate(K: int) -> tuple[HeadPlan, int]:
        if K not in cache:
            counts = [0] * n_h
            for h in head_of[:K]:
                counts[h] += 1
            plan = plan_for_budget(K, counts, spectra_cum, d_h, kv_of, min_width_frac, step)
            cache[K] = (plan, plan_params(plan, hidden, qkv_bias, o_bias))
        return cache[K]

    lo, hi = 1, n_h * d_h  # parameters grow (almost) monotonically with K: bisect, then scan nearby
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if evaluate(mid)[1] <= target_params else (lo, mid)
    window = range(max(1, lo - 2 * n_h), min(n_h * d_h, hi + 2 * n_h) + 1)
    best = min(window, key=lambda K: (abs(evaluate(K)[1] - target_params), -K))
    return evaluate(best)[0]


def pair_scores(channel_scores: torch.Tensor) -> torch.Tensor:
    """Score of each RoPE pair (j, j + w/2) of a width-w head: the sum of its two channels. (..., w/2)"""
    half = channel_scores.shape[-1] // 2
    return channel_scores[..., :half] + channel_scores[..., half:]
