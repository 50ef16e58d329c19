"""Calibration passes through one attention module (algorithms.md §3.3 steps 1 and 6).

The attention forward is re-done here step by step (projections, RoPE, per-head SDPA) instead of hooking
the module, because the methods need what a hook cannot see: post-RoPE q and k per channel, and the same
attention recomputed with channels and heads masked out. Products are taken in float32 and accumulated in
float64 (P1); padding tokens are excluded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from slimkit.layerwise import LayerContext
from slimkit.modeling.modeling_slim import SlimAttention, rotate_half


@dataclass
class AttentionStats:
    H: torch.Tensor  # (D, D) Σ x xᵀ over o_proj inputs x (D = heads × v width)
    qk: torch.Tensor  # (n_h, qk) Σ |q_c k_c| per query head and channel, post-RoPE, same token
    input_sq: torch.Tensor  # (d,) Σ u_j² of the attention input u (after input_layernorm)
    tokens: int


def project(attn: SlimAttention, u: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Post-RoPE q (b, nh, T, qk) and k, v expanded to one KV head per query head."""
    b, T, _ = u.shape
    q = attn.q_proj(u).view(b, T, attn.num_heads, attn.qk_head_dim).transpose(1, 2)
    k = attn.k_proj(u).view(b, T, attn.num_kv_heads, attn.qk_head_dim).transpose(1, 2)
    v = attn.v_proj(u).view(b, T, attn.num_kv_heads, attn.v_head_dim).transpose(1, 2)
    cos_kv = cos.expand(b, -1, -1)[:, :, attn.rope_cols].permute(0, 2, 1, 3)  # (b, nkv, T, qk)
    sin_kv = sin.expand(b, -1, -1)[:, :, attn.rope_cols].permute(0, 2, 1, 3)
    k = k * cos_kv + rotate_half(k) * sin_kv
    q = q * cos_kv[:, attn.kv_index] + rotate_half(q) * sin_kv[:, attn.kv_index]
    return q, k[:, attn.kv_index], v[:, attn.kv_index]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float):
    """Per-head attention outputs flattened to o_proj inputs: (b, T, nh × v)."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale)
    b, nh, T, dv = out.shape
    return out.transpose(1, 2).reshape(b, T, nh * dv)


def accumulate(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor | None = None) -> None:
    """acc += aᵀ b (a, b: (N, ·) rows = tokens), product in fp32, sum in fp64."""
    a32 = a.float()
    acc += (a32.T @ (a32 if b is None else b.float())).double()


@torch.no_grad()
def collect_attention_stats(ctx: LayerContext) -> AttentionStats:
    attn = ctx.layer.self_attn
    D = attn.num_heads * attn.v_head_dim
    dev = ctx.device
    H = torch.zeros(D, D, dtype=torch.float64, device=dev)
    qk = torch.zeros(attn.num_heads, attn.qk_head_dim, dtype=torch.float64, device=dev)
    input_sq = torch.zeros(ctx.config.hidden_size, dtype=torch.float64, device=dev)
    tokens = 0
    for x, valid, mask in ctx.batches():
        u = ctx.layer.input_layernorm(x)
        q, k, v = project(attn, u, ctx.cos, ctx.sin)
        X = attend(q, k, v, mask, attn.scaling)[valid]  # (N, D) valid tokens only
        accumulate(H, X)
        w = valid[:, None, :, None].to(q.dtype)
        qk += ((q * k).abs() * w).sum((0, 2)).double()
        input_sq += u[valid].float().pow(2).sum(0).double()
        tokens += int(valid.sum())
    return AttentionStats(H, qk, input_sq, tokens)


@torch.no_grad()
def collect_masked_moments(
    ctx: LayerContext, channel_mask: torch.Tensor, head_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Moments of the attention recomputed with pruned q/k channels and deleted heads (step 6).

    channel_mask: (nh, qk) 0/1 per query head (its KV group's kept RoPE pairs); head_mask: (nh,) 0/1.
    Returns H̃ = Σ x̃ x̃ᵀ and C = Σ x̃ xᵀ, where x is the least-squares target: the unmasked output on the
    same inputs, or with dense targets the uncompressed layer's output on the dense model's inputs.
    The softmax scale is left at 1/√(original head width), exactly as the saved model computes it.
    """
    attn, ref = ctx.layer.self_attn, ctx.target_layer
    D = attn.num_heads * attn.v_head_dim
    H_t = torch.zeros(D, D, dtype=torch.float64, device=ctx.device)
    C = torch.zeros(D, D, dtype=torch.float64, device=ctx.device)
    cm = channel_mask.to(ctx.device, ctx.dtype)[None, :, None, :]  # (1, nh, 1, qk)
    hm = head_mask.to(ctx.device, ctx.dtype).repeat_interleave(attn.v_head_dim)  # (D,)
    for x, x_ref, valid, mask in ctx.paired_batches():
        q, k, v = project(attn, ctx.layer.input_layernorm(x), ctx.cos, ctx.sin)
        X_t = (attend(q * cm, k * cm, v, mask, attn.scaling) * hm)[valid]
        if x_ref is not x:
            q, k, v = project(ref.self_attn, ref.input_layernorm(x_ref), ctx.cos, ctx.sin)
        X = attend(q, k, v, mask, attn.scaling)[valid]
        accumulate(H_t, X_t)
        accumulate(C, X_t, X)
    return H_t, C
