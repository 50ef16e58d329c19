"""Prune a flattened group back to one layer of the original width (algorithms.md §5.4).

Attention: head i's importance is f_i = E_tokens ‖o_i ⊙ n_i‖, o_i the head's output (the o_proj input
slice) and n_i the column norms of its o_proj slice: how much the head writes into the residual stream.
Under GQA heads go in whole KV groups (a group's importance is the sum of its heads'), so the result keeps
exactly n_kv groups of n_h/n_kv heads — the stock shape. The paper describes no compensation; with
`compensate_attention` the kept heads' o_proj is refitted by least squares to the *whole* merged
attention output (the IntraSlice-style step, cheap here: the moment of the o_proj input is collected in
the same pass).

MLP: the merged activation ψ = act(gate)·up has 2I (m·I) channels with second moment C. Ridge leverage
scores s = diag(C (C + λI)^{-1}) with λ = `ridge_factor` × the mean eigenvalue of C (10, the paper's
empirical choice) rank the channels; the top I stay and down_proj gets the ridge Nyström compensation
W' = W_S + W_R (C_SS + λI)^{-1} C_SR. Statistics of the MLP are taken through the pruned attention.
"""

from __future__ import annotations

from typing import Any

import torch

from slimkit.layerwise import LayerContext
from slimkit.linalg import nystrom_compensation, reconstruction_error, solve_psd, solve_ridge
from slimkit.methods.attention_stats import accumulate, attend, project
from slimkit.methods.mlp_prune import selected_mlp_state

StateDict = dict[str, torch.Tensor]


@torch.no_grad()
def attention_statistics(ctx: LayerContext) -> tuple[torch.Tensor, torch.Tensor]:
    """(f (n_heads,) mean weighted output norm per head, H = Σ x xᵀ over o_proj inputs, float64)."""
    attn = ctx.layer.self_attn
    n, dv = attn.num_heads, attn.v_head_dim
    col_norms = attn.o_proj.weight.float().norm(dim=0).view(n, dv)  # (heads, dv)
    H = torch.zeros(n * dv, n * dv, dtype=torch.float64, device=ctx.device)
    f = torch.zeros(n, dtype=torch.float64, device=ctx.device)
    tokens = 0
    for x, valid, mask in ctx.batches():
        q, k, v = project(attn, ctx.layer.input_layernorm(x), ctx.cos, ctx.sin)
        X = attend(q, k, v, mask, attn.scaling)[valid]  # (N, heads × dv)
        accumulate(H, X)
        f += (X.float().view(-1, n, dv) * col_norms).norm(dim=-1).sum(0).double()
        tokens += X.shape[0]
    return f / max(tokens, 1), H


def kept_groups(importance: torch.Tensor, kv_index: list[int], keep: int) -> list[int]:
    """The `keep` KV groups with the largest summed head importance, ascending."""
    groups = torch.zeros(max(kv_index) + 1, dtype=torch.float64)
    for head, g in enumerate(kv_index):
        groups[g] += float(importance[head])
    return sorted(groups.topk(keep).indices.tolist())


def prune_attention_back(
    ctx: LayerContext, kv_heads: int, compensate: bool
) -> tuple[StateDict, dict[str, Any], list[int]]:
    """New attention tensors with `kv_heads` KV groups kept; (state, report, kept query heads)."""
    attn = ctx.layer.self_attn
    kv_of = ctx.shape["kv_index"]
    importance, H = attention_statistics(ctx)
    groups = kept_groups(importance, kv_of, kv_heads)
    heads = [i for g in groups for i in range(len(kv_of)) if kv_of[i] == g]  # grouped, so kv_index is stock
    qk, dv = attn.qk_head_dim, attn.v_head_dim
    cols = torch.cat([torch.arange(i * dv, (i + 1) * dv) for i in heads]).to(H.device)
    W_o = attn.o_proj.weight.double()  # (d, D)
    select = torch.eye(H.shape[0], dtype=torch.float64, device=H.device)[:, cols]  # (D, K)
    report: dict[str, Any] = {
        "head_importance": [round(float(v), 6) for v in importance],
        "kept_kv_groups": groups,
        "attention_error_plain": reconstruction_error(W_o, H, W_o[:, cols], select, H, H),
    }
    if compensate:  # W' = W H[:, K] H[K, K]^{-1}: the kept heads' o_proj fitted to the whole output
        W_new = solve_psd(H[cols][:, cols], H[cols] @ W_o.T).T
        report["attention_error_compensated"] = reconstruction_error(W_o, H, W_new, select, H, H)
    else:
        W_new = W_o[:, cols]
    q_rows = torch.cat([torch.arange(i * qk, (i + 1) * qk) for i in heads])
    k_rows = torch.cat([torch.arange(g * qk, (g + 1) * qk) for g in groups])
    v_rows = torch.cat([torch.arange(g * dv, (g + 1) * dv) for g in groups])
    state = {
        "self_attn.q_proj.weight": attn.q_proj.weight.double()[q_rows],
        "self_attn.k_proj.weight": attn.k_proj.weight.double()[k_rows],
        "self_attn.v_proj.weight": attn.v_proj.weight.double()[v_rows],
        "self_attn.o_proj.weight": W_new,
    }
    if attn.q_proj.bias is not None:
        state["self_attn.q_proj.bias"] = attn.q_proj.bias.double()[q_rows]
        state["self_attn.k_proj.bias"] = attn.k_proj.bias.double()[k_rows]
        state["self_attn.v_proj.bias"] = attn.v_proj.bias.double()[v_rows]
    return state, report, heads


def ridge_leverage(C: torch.Tensor, ridge: float) -> torch.Tensor:
    """diag(C (C + λI)^{-1}) for symmetric PSD C: how much of each channel the ridge fit explains."""
    return solve_ridge(C, C, ridge).diagonal()  # (C + λI)^{-1} C has the same diagonal


@torch.no_grad()
def mlp_moments(ctx: LayerContext, targets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """C = Σ ψψᵀ over the down_proj inputs ψ and, given the group's serial outputs t, B = Σ ψ (t − h)ᵀ.

    h is the merged layer's stream after its (pruned) attention, so B is what down_proj should add to
    reach the serial group's output.
    """
    layer = ctx.layer
    width = layer.mlp.down_proj.in_features
    C = torch.zeros(width, width, dtype=torch.float64, device=ctx.device)
    B = None if targets is None else torch.zeros(width, ctx.config.hidden_size, dtype=torch.float64, device=ctx.device)
    start = 0
    for x, valid, mask in ctx.batches():
        h = x + layer.self_attn(layer.input_layernorm(x), ctx.cos, ctx.sin, mask)[0]
        u = layer.post_attention_layernorm(h)
        psi = (layer.mlp.act_fn(layer.mlp.gate_proj(u)) * layer.mlp.up_proj(u))[valid]
        accumulate(C, psi)
        if B is not None:
            t = targets[start : start + x.shape[0]].to(ctx.device, ctx.dtype)
            accumulate(B, psi, (t - h)[valid])
        start += x.shape[0]
    return C, B


def prune_mlp_back(
    ctx: LayerContext, width: int, ridge_factor: float, targets: torch.Tensor | None = None
) -> tuple[StateDict, dict[str, Any]]:
    """New MLP tensors keeping `width` channels by ridge leverage, down_proj compensated.

    Without `targets`: the paper's ridge Nyström towards the wide merged MLP. With the group's serial
    outputs as `targets`: down_proj refitted by least squares (1 % damping) so that the layer's output
    reproduces the *serial* group's, which also absorbs part of the flattening error.
    """
    mlp = ctx.layer.mlp
    C, B = mlp_moments(ctx, targets)  # (m·I, m·I), (m·I, d)
    ridge = ridge_factor * float(C.diagonal().mean())  # the mean eigenvalue is trace / size
    scores = ridge_leverage(C, ridge)
    keep = scores.topk(width).indices.sort().values
    W_d = mlp.down_proj.weight.double()  # (d, m·I)
    select = torch.eye(C.shape[0], dtype=torch.float64, device=C.device)[:, keep]
    report: dict[str, Any] = {
        "ridge": ridge,
        "mlp_error_plain": reconstruction_error(W_d, C, W_d[:, keep], select, C, C),
    }
    if B is None:
        W_new = nystrom_compensation(W_d, C, keep, ridge=ridge)
    else:
        W_new = solve_psd(C[keep][:, keep], B[keep]).T  # (d, width)
        report["mlp_target"] = "serial"
    report["mlp_error_compensated"] = reconstruction_error(W_d, C, W_new, select, C, C)
    return selected_mlp_state(mlp, keep, W_new), report
