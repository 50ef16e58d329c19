"""TransAct's selection rule and width plan (algorithms.md §4.3–4.5), generalised to GQA.

Every layer gets the same shape (TransAct's design), so the output stays a stock architecture: `n_kv`
KV heads, each shared by `q` query heads of full width d_h, and an MLP of width `I'`. Under GQA the
result must stay a stock GQA shape, so there are two ways to remove attention:

- fewer query heads per group: every KV group keeps its best `q < g` heads (the same count everywhere);
- fewer groups: whole KV groups go, a group's value being the sum of its kept heads' scores.

Both can combine. For a ratio, every attention shape (n_kv', q') is tried with the MLP width that settles
the rest of the budget (to the nearest 8 channels); among the shapes that land within one MLP step of the
target, the plan removes the least *score mass*: per layer, the fraction of head-score mass dropped plus
the fraction of MLP channel-score mass dropped, averaged over layers. That is how the attention/MLP split
and the GQA choice follow the scores instead of a fixed rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from slimkit.errors import InvalidArgument
from slimkit.modeling.modeling_slim import SlimConfig
from slimkit.shapes import MLP_ROUND, Shape, attention_params, get_shapes, mlp_params
from slimkit.transact.scores import LayerScores

MAX_HEAD_FACTOR = 10.0  # head score = mean + (10 / d_h) · max of its channel scores (§4.3, 10/128 at d_h = 128)


def head_scores(channels: torch.Tensor) -> torch.Tensor:
    """(n_h, d_h) channel scores -> (n_h,) head scores: mean + (10/d_h)·max."""
    return channels.mean(1) + (MAX_HEAD_FACTOR / channels.shape[1]) * channels.amax(1)


@dataclass(frozen=True)
class AttentionShape:
    kv_heads: int
    heads_per_group: int

    @property
    def heads(self) -> int:
        return self.kv_heads * self.heads_per_group


def select_heads(scores: torch.Tensor, kv_heads: int, shape: AttentionShape) -> tuple[list[int], list[int]]:
    """(kept KV heads, kept query heads), both ascending, query heads grouped by their kept KV head.

    scores: (n_h,) head scores of a layer whose query head i reads KV head i // (n_h / kv_heads).
    """
    group = scores.numel() // kv_heads
    per_group = scores.view(kv_heads, group)
    best = per_group.topk(shape.heads_per_group, dim=1)  # each group's best heads
    kept_groups = best.values.sum(1).topk(shape.kv_heads).indices.sort().values.tolist()
    heads = [g * group + int(i) for g in kept_groups for i in best.indices[g].sort().values]
    return kept_groups, heads


def attention_mode(dense: AttentionShape, shape: AttentionShape) -> str:
    """What the attention plan removes, in words the record uses."""
    fewer_groups = shape.kv_heads < dense.kv_heads
    fewer_heads = shape.heads_per_group < dense.heads_per_group
    if dense.heads_per_group == 1:
        return "heads" if fewer_groups else "none"  # MHA: q, k and v heads go together
    return {(False, False): "none", (False, True): "query_heads", (True, False): "kv_groups"}.get(
        (fewer_groups, fewer_heads), "kv_groups_and_query_heads"
    )


def stock_shape(base: Shape, attention: AttentionShape, width: int) -> Shape:
    """A full-width-head shape with even, contiguous GQA groups (what a stock config describes)."""
    q = attention.heads_per_group
    return dict(
        base,
        num_attention_heads=attention.heads,
        num_key_value_heads=attention.kv_heads,
        kv_index=[i // q for i in range(attention.heads)],
        rope_index=[list(base["rope_index"][0]) for _ in range(attention.kv_heads)],
        intermediate_size=width,
    )


def uniform_dense_shape(config: SlimConfig) -> Shape:
    """The one shape of every layer, which must be a stock one (TransAct keeps the model stock)."""
    shapes = get_shapes(config)
    first = shapes[0]
    nq, nkv = first["num_attention_heads"], first["num_key_value_heads"]
    stock = (
        all(s == first for s in shapes)
        and nq % nkv == 0
        and first["qk_head_dim"] == first["v_head_dim"] == config.head_dim
        and first == stock_shape(first, AttentionShape(nkv, nq // nkv), first["intermediate_size"])
    )
    if not stock:
        raise InvalidArgument("transact needs a model whose layers share one stock shape (not a slim-format output)")
    return first


@dataclass
class TransActPlan:
    """Target widths for every layer, and why."""

    kv_heads: int
    heads_per_group: int
    intermediate_size: int
    attention_mode: str  # none / heads (MHA) / query_heads / kv_groups / kv_groups_and_query_heads
    ratio_target: float
    ratio_achieved: float  # decoder attention + MLP parameters removed (our definition)
    attention_ratio: float  # the attention's share of that: fraction of attention parameters removed
    mlp_ratio: float
    score_mass_removed: dict[str, float]  # mean over layers of the dropped fraction of head / MLP score mass

    @property
    def attention(self) -> AttentionShape:
        return AttentionShape(self.kv_heads, self.heads_per_group)

    def to_dict(self) -> dict:
        return asdict(self)


def _kept_fraction(sorted_cumsum: torch.Tensor, keep: int) -> float:
    return float(sorted_cumsum[keep - 1] / sorted_cumsum[-1]) if keep else 0.0


def plan_for_ratio(
    config: SlimConfig,
    scores: list[LayerScores],
    ratio: float,
    cap: float,
    allowed: Callable[[AttentionShape], bool] = lambda shape: True,
) -> TransActPlan:
    """The uniform shape that removes `ratio` of the decoder attention+MLP parameters at least score cost.

    Candidates keep at least one head and 8 MLP channels, remove at most `cap` of either module, land
    within one MLP step (8 channels in every layer) of the target, and are `allowed` (the stock config
    class accepts their head counts: Llama's wants hidden_size divisible by the number of heads).
    """
    base = uniform_dense_shape(config)
    L, width = config.num_hidden_layers, base["intermediate_size"]
    dense = AttentionShape(base["num_key_value_heads"], base["num_attention_heads"] // base["num_key_value_heads"])
    attn_dense, mlp_dense = attention_params(base, config), mlp_params(base, config)
    per_channel = mlp_dense - mlp_params(dict(base, intermediate_size=width - 1), config)
    target = ratio * L * (attn_dense + mlp_dense)
    tolerance = L * MLP_ROUND * per_channel
    heads = [head_scores(s.heads) for s in scores]
    head_totals = [float(h.sum()) for h in heads]
    mlp_cumsums = [s.mlp.sort(descending=True).values.cumsum(0) for s in scores]
    best: tuple[float, TransActPlan] | None = None
    for kv in range(1, dense.kv_heads + 1):
        for q in range(1, dense.heads_per_group + 1):
            shape = AttentionShape(kv, q)
            if not allowed(shape):
                continue
            attn_removed = attn_dense - attention_params(stock_shape(base, shape, width), config)
            if attn_removed > cap * attn_dense:
                continue
            drop = round((target / L - attn_removed) / per_channel / MLP_ROUND) * MLP_ROUND
            drop = min(max(drop, 0), int(cap * width) // MLP_ROUND * MLP_ROUND, width - MLP_ROUND)
            removed = L * (attn_removed + drop * per_channel)
            if abs(removed - target) > tolerance:
                continue
            head_cost = sum(
                1 - sum(float(h[i]) for i in select_heads(h, dense.kv_heads, shape)[1]) / total
                for h, total in zip(heads, head_totals, strict=True)
            )
            mlp_cost = sum(1 - _kept_fraction(c, width - drop) for c in mlp_cumsums)
            cost = (head_cost + mlp_cost) / L
            if best is None or cost < best[0] - 1e-12:
                best = (
                    cost,
                    TransActPlan(
                        kv_heads=kv,
                        heads_per_group=q,
                        intermediate_size=width - drop,
                        attention_mode=attention_mode(dense, shape),
                        ratio_target=ratio,
                        ratio_achieved=removed / (L * (attn_dense + mlp_dense)),
                        attention_ratio=attn_removed / attn_dense,
                        mlp_ratio=drop / width,
                        score_mass_removed={"heads": max(head_cost / L, 0.0), "mlp": max(mlp_cost / L, 0.0)},
                    ),
                )
    if best is None:
        raise InvalidArgument(
            f"transact cannot remove {ratio:.0%} with one shape for every layer while keeping at most "
            f"cap={cap} of the attention or the MLP removed, in head counts the stock config accepts; lower the "
            "ratio or raise the cap"
        )
    return best[1]


def shot_widths(dense: AttentionShape, width: int, plan: TransActPlan, shots: int) -> list[tuple[AttentionShape, int]]:
    """The widths after each of `shots` shots: a linear descent to the plan (§4.4), separately per dimension.

    dim_{t+1} = dim_t − ⌊(dim_t − target) / r⌋ with r shots remaining, for KV heads, heads per group and the
    MLP width (whose drop stays a multiple of 8 channels); the last shot reaches the plan exactly.
    """
    kv, q, w = dense.kv_heads, dense.heads_per_group, width
    steps = []
    for t in range(shots):
        r = shots - t
        kv -= (kv - plan.kv_heads) // r
        q -= (q - plan.heads_per_group) // r
        raw = w - (w - plan.intermediate_size) // r
        w = max(plan.intermediate_size, width - round((width - raw) / MLP_ROUND) * MLP_ROUND)
        steps.append((AttentionShape(kv, q), w))
    return steps
