"""MLP compression for one layer: keep the top channels of the down_proj input (§3.4, P2).

A selection of gate/up rows commutes with SiLU(gate) ⊙ up, so the compressed side stays exact; the
dense reconstruction of the dropped channels is folded into down_proj by least squares (Nyström), which
adds no parameter. Statistics are gathered through the layer's *already pruned* attention.
"""

from __future__ import annotations

import torch

from slimkit.layerwise import LayerContext, Replacement
from slimkit.linalg import DAMP, nystrom_compensation, reconstruction_error, solve_psd
from slimkit.methods.attention_stats import accumulate
from slimkit.shapes import MLP_ROUND, mlp_params


def down_inputs(layer: torch.nn.Module, x: torch.Tensor, ctx: LayerContext, mask: torch.Tensor | None):
    """a = act(gate(u)) ⊙ up(u), u = post_attention_layernorm(x + attention(x)): (b, T, I)."""
    h = x + layer.self_attn(layer.input_layernorm(x), ctx.cos, ctx.sin, mask)[0]
    u = layer.post_attention_layernorm(h)
    return layer.mlp.act_fn(layer.mlp.gate_proj(u)) * layer.mlp.up_proj(u)


@torch.no_grad()
def collect_mlp_moment(ctx: LayerContext) -> tuple[torch.Tensor, torch.Tensor | None]:
    """H = Σ a aᵀ over down_proj inputs a, float64 (I, I); with dense targets also C = Σ a_ref aᵀ.

    a_ref is the uncompressed layer's down_proj input on the dense model's inputs (None without them).
    """
    width = ctx.layer.mlp.down_proj.in_features
    H = torch.zeros(width, width, dtype=torch.float64, device=ctx.device)
    C = None if ctx.reference is None else torch.zeros_like(H)
    for x, x_ref, valid, mask in ctx.paired_batches():
        a = down_inputs(ctx.layer, x, ctx, mask)[valid]
        accumulate(H, a)
        if C is not None:
            accumulate(C, down_inputs(ctx.target_layer, x_ref, ctx, mask)[valid], a)
    return H, C


def dropped_channels(width: int, ratio: float, step: int = MLP_ROUND) -> int:
    return min(width - 1, round(width * ratio) // step * step)


def selected_mlp_state(mlp: torch.nn.Module, keep: torch.Tensor, down: torch.Tensor) -> dict[str, torch.Tensor]:
    """gate/up rows (and biases) of the kept channels with the new down_proj, float64."""
    state = {
        "mlp.gate_proj.weight": mlp.gate_proj.weight.double()[keep],
        "mlp.up_proj.weight": mlp.up_proj.weight.double()[keep],
        "mlp.down_proj.weight": down,
    }
    if mlp.gate_proj.bias is not None:
        state["mlp.gate_proj.bias"] = mlp.gate_proj.bias.double()[keep]
        state["mlp.up_proj.bias"] = mlp.up_proj.bias.double()[keep]
    return state


def prune_mlp(
    ctx: LayerContext, ratio: float, score: str, compensate: bool, damping: float = DAMP, step: int = MLP_ROUND
) -> Replacement:
    """score: "energy" (H_cc ‖W_d[:, c]‖², IntraSlice) or "wanda" (‖h_c‖ Σ_i |W_d[i, c]|, Wanda-sp).

    damping: δ of the Nyström solve as a fraction of the mean diagonal; step: channels are dropped in
    multiples of it.
    """
    mlp, shape = ctx.layer.mlp, ctx.shape
    width = mlp.down_proj.in_features
    drop = dropped_channels(width, ratio, step)
    report = {"params_before": mlp_params(shape, ctx.config)}
    if drop == 0:
        return Replacement({}, shape, report | {"params_after": report["params_before"]})
    H, C = collect_mlp_moment(ctx)
    W_d = mlp.down_proj.weight.double()  # (d, I)
    if score == "energy":
        scores = H.diagonal() * W_d.pow(2).sum(0)
    else:
        scores = H.diagonal().clamp_min(0).sqrt() * W_d.abs().sum(0)
    keep = scores.topk(width - drop).indices.sort().values
    select = torch.eye(width, dtype=torch.float64, device=H.device)[:, keep]  # (I, K)
    W_plain = W_d[:, keep]
    report["error_plain"] = reconstruction_error(W_d, H, W_plain, select, H, H)
    if compensate and C is not None:  # dense targets: W' = W C[:, S] (H_SS + δI)^{-1}
        W_new = solve_psd(H[keep][:, keep], (W_d @ C[:, keep]).T, damping).T
    elif compensate:
        W_new = nystrom_compensation(W_d, H, keep, frac=damping)
        report["error_compensated"] = reconstruction_error(W_d, H, W_new, select, H, H)
    else:
        W_new = W_plain
    state = selected_mlp_state(mlp, keep, W_new)
    new_shape = dict(shape, intermediate_size=width - drop)
    report["params_after"] = mlp_params(new_shape, ctx.config)
    return Replacement(state, new_shape, report)
