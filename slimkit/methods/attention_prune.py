"""Attention compression for one layer: heads, RoPE pairs, V/O basis, o_proj compensation (§3.3).

One routine serves IntraSlice and its baselines; a recipe says which choices differ:
- pair scores: post-RoPE mean |q ⊙ k| per channel (IntraSlice), or input-weighted row norms
  Σ_j |W_ij|·‖u_j‖ of W_q and W_k (Wanda-sp);
- V/O basis per KV group: PCA of the recomputed head outputs (IntraSlice), or a channel selection;
- o_proj: least-squares compensation towards the unpruned outputs, or a plain projection.
The result is physically smaller: fewer heads, narrower q/k/v/o, fewer KV heads, smaller KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimkit.layerwise import LayerContext, Replacement
from slimkit.linalg import DAMP, eigh_desc, reconstruction_error, solve_psd, solve_psd_toward
from slimkit.methods.attention_stats import AttentionStats, collect_attention_stats, collect_masked_moments
from slimkit.methods.head_plan import MIN_WIDTH_FRAC, HeadPlan, pair_scores, search_plan
from slimkit.shapes import attention_params


@dataclass(frozen=True)
class AttentionRecipe:
    pair_scores: str  # "activation" | "weight"
    basis: str  # "pca" | "select"
    compensate: bool
    damping: float = DAMP  # δ of the o_proj least squares, as a fraction of the mean diagonal
    head_step: int | None = None  # head-width grid; None: automatic (`head_plan.width_step`)
    # What the o_proj ridge shrinks towards: "zero" (plain ridge, the paper's) or "plain" (the uncompensated
    # projection W_o P, so more damping means less compensation instead of a smaller output).
    ridge_prior: str = "zero"
    # Heads whose width would fall under this fraction of the original are deleted instead (§3.3 step 4c);
    # above 1, heads are deleted until one more deletion would need a head wider than the original.
    min_head_width: float = MIN_WIDTH_FRAC


def _spectra(stats: AttentionStats, scores: torch.Tensor, n_h: int, width: int, basis: str) -> torch.Tensor:
    """(n_h, width) descending per-head component scores for the head plan (§3.3 step 3)."""
    per_head = scores.view(n_h, width)
    if basis == "select":  # a selection keeps channels: its "spectrum" is the sorted channel scores
        return per_head.sort(1, descending=True).values
    out = torch.empty(n_h, width, dtype=torch.float64, device=scores.device)
    for i in range(n_h):
        block = stats.H[i * width : (i + 1) * width, i * width : (i + 1) * width]
        values = eigh_desc(block)[0]
        out[i] = values / values.sum().clamp_min(1e-30) * per_head[i].sum()
    return out


def _group_channel_scores(ctx: LayerContext, stats: AttentionStats, plan: HeadPlan, recipe: AttentionRecipe):
    """{kv head: (qk,) channel scores summed over its kept query heads}."""
    attn = ctx.layer.self_attn
    kv_of = ctx.shape["kv_index"]
    qk = attn.qk_head_dim
    if recipe.pair_scores == "activation":
        per_q = stats.qk / max(stats.tokens, 1)
        per_k = torch.zeros(attn.num_kv_heads, qk, dtype=torch.float64, device=per_q.device)
    else:
        norms = stats.input_sq.sqrt()
        per_q = (attn.q_proj.weight.double().abs() @ norms).view(attn.num_heads, qk)
        per_k = (attn.k_proj.weight.double().abs() @ norms).view(attn.num_kv_heads, qk)
    groups = {g: per_k[g].clone() for g in plan.kv_heads}
    for i in plan.heads:
        groups[kv_of[i]] += per_q[i]
    return groups


def prune_attention(ctx: LayerContext, ratio: float, recipe: AttentionRecipe) -> Replacement:
    attn, shape, config = ctx.layer.self_attn, ctx.shape, ctx.config
    if ratio <= 0:
        return Replacement({}, shape, {"params_before": attention_params(shape, config)})
    n_h, qk, dv = attn.num_heads, attn.qk_head_dim, attn.v_head_dim
    if qk != dv:
        raise ValueError("attention pruning expects equal q/k and v widths (a layer is compressed once)")
    stats = collect_attention_stats(ctx)
    W_o = attn.o_proj.weight.double()  # (d, D)
    scores = stats.H.diagonal() * W_o.pow(2).sum(0)  # (D,) Wanda-sp/FLAP-like channel score (§3.3 step 2)
    target = round((1 - ratio) * attention_params(shape, config))
    plan = search_plan(
        scores,
        _spectra(stats, scores, n_h, dv, recipe.basis),
        shape["kv_index"],
        target,
        config.hidden_size,
        config.attention_bias,
        config.attention_out_bias,
        step=recipe.head_step,
        min_width_frac=recipe.min_head_width,
    )
    k, kv_of = plan.width, shape["kv_index"]

    # Q/K: keep whole RoPE pairs, chosen per KV group (§3.3 step 5).
    groups = _group_channel_scores(ctx, stats, plan, recipe)
    pairs = {g: pair_scores(s).topk(k // 2).indices.sort().values.cpu() for g, s in groups.items()}
    cols = {g: torch.cat([p, p + qk // 2]) for g, p in pairs.items()}  # kept channels, rotate_half order

    # V/O: one basis per KV group, shared by its query heads (§3.3 step 7).
    channel_mask = torch.zeros(n_h, qk)
    head_mask = torch.zeros(n_h)
    for i in plan.heads:
        channel_mask[i, cols[kv_of[i]]] = 1
        head_mask[i] = 1
    need_moments = recipe.basis == "pca" or recipe.compensate
    H_t, C = collect_masked_moments(ctx, channel_mask, head_mask) if need_moments else (None, None)
    bases = {}
    for g in plan.kv_heads:
        members = [i for i in plan.heads if kv_of[i] == g]
        if recipe.basis == "pca":
            block = sum(H_t[i * dv : (i + 1) * dv, i * dv : (i + 1) * dv] for i in members)
            bases[g] = eigh_desc(block)[1][:, :k]  # (dv, k)
        else:
            group_scores = sum(scores[i * dv : (i + 1) * dv] for i in members)
            keep = group_scores.topk(k).indices.sort().values
            bases[g] = torch.eye(dv, dtype=torch.float64, device=scores.device)[:, keep]
    D = n_h * dv
    P = torch.zeros(D, len(plan.heads) * k, dtype=torch.float64, device=W_o.device)  # x̃ -> z = Pᵀ x̃
    for slot, i in enumerate(plan.heads):
        P[i * dv : (i + 1) * dv, slot * k : (slot + 1) * k] = bases[kv_of[i]]

    # o_proj: least squares towards the unpruned outputs (§3.3 step 8), or the plain projection.
    W_plain = W_o @ P
    report = {
        "params_before": attention_params(shape, config),
        "heads": len(plan.heads),
        "kv_heads": len(plan.kv_heads),
        "width": k,
    }
    if H_t is not None:
        report["error_plain"] = reconstruction_error(W_o, stats.H, W_plain, P, H_t, C)
    if recipe.compensate:
        A, B = P.T @ H_t @ P, P.T @ C  # (K_eff, K_eff), (K_eff, D)
        if recipe.ridge_prior == "plain":
            M = solve_psd_toward(A, B, P.T.contiguous(), recipe.damping)
        else:
            M = solve_psd(A, B, recipe.damping)  # (K_eff, D)
        W_new = W_o @ M.T
        report["error_compensated"] = reconstruction_error(W_o, stats.H, W_new, P, H_t, C)
    else:
        W_new = W_plain
    state = _fused_tensors(ctx, plan, cols, bases, W_new)
    new_shape = dict(shape)
    new_shape.update(
        num_attention_heads=len(plan.heads),
        num_key_value_heads=len(plan.kv_heads),
        qk_head_dim=k,
        v_head_dim=k,
        kv_index=[plan.kv_heads.index(kv_of[i]) for i in plan.heads],
        rope_index=[[shape["rope_index"][g][p] for p in pairs[g].tolist()] for g in plan.kv_heads],
    )
    report["params_after"] = attention_params(new_shape, config)
    return Replacement(state, new_shape, report)


def _fused_tensors(ctx: LayerContext, plan: HeadPlan, cols: dict, bases: dict, W_o_new: torch.Tensor):
    """Slice q/k rows to the kept pairs, rotate v rows into each group's basis, install the new o_proj."""
    attn = ctx.layer.self_attn
    qk, dv, kv_of = attn.qk_head_dim, attn.v_head_dim, ctx.shape["kv_index"]
    q_rows = torch.cat([i * qk + cols[kv_of[i]] for i in plan.heads])
    k_rows = torch.cat([g * qk + cols[g] for g in plan.kv_heads])
    state = {
        "self_attn.q_proj.weight": attn.q_proj.weight.double()[q_rows],
        "self_attn.k_proj.weight": attn.k_proj.weight.double()[k_rows],
        "self_attn.v_proj.weight": torch.cat(
            [bases[g].T @ attn.v_proj.weight.double()[g * dv : (g + 1) * dv] for g in plan.kv_heads]
        ),
        "self_attn.o_proj.weight": W_o_new,
    }
    if attn.q_proj.bias is not None:
        state["self_attn.q_proj.bias"] = attn.q_proj.bias.double()[q_rows]
        state["self_attn.k_proj.bias"] = attn.k_proj.bias.double()[k_rows]
        state["self_attn.v_proj.bias"] = torch.cat(
            [bases[g].T @ attn.v_proj.bias.double()[g * dv : (g + 1) * dv] for g in plan.kv_heads]
        )
    return state
