"""Fisher importances of attention blocks and MLP channels from mask gradients (algorithms.md §3.5).

One gradient pass over the calibration windows with the full next-token loss:
- each window's loss is its mean token NLL (padding excluded), and a *group* of `group_size` (8)
  consecutive windows is back-propagated as the sum of its windows' losses. Because the gradient is
  linear, this is exactly the reference's "per-sample mask gradients summed in groups of 8", without
  storing per-sample gradients; a group may be split into micro-batches to bound memory;
- MLP unit (layer, channel n): I = Σ_groups g_n²;
- attention unit (layer, head h, block f): the head's d_h gradient coordinates, optionally rotated into
  the eigenbasis of its KV group's block of H = Σ xxᵀ (o_proj inputs, float64; `global_pca`), are split
  into F = `frac` contiguous blocks of d_h/F; I = Σ_groups (Σ_{c ∈ block} g_c)². In the rotated basis the
  blocks are groups of principal components in descending eigenvalue order.

Memory (why a 7B model fits one 80 GB GPU): weights stay in the model dtype and frozen (no weight
gradients, no optimizer state); every decoder layer runs under non-reentrant activation checkpointing, so
only its input (B·T·d) is kept and its internals are recomputed during backward; the lm_head + cross-entropy
runs over chunks of `LOSS_CHUNK` tokens, each checkpointed, so the vocabulary-wide logits of one chunk
exist at a time; `tokens_per_step` (8192) bounds the micro-batch. Estimated for Llama-2-7B in bf16 with
2048-token windows (4 per step): 13.5 GB weights + 2.1 GB layer inputs + one layer's recompute (< 3 GB)
+ one logits chunk with its gradient (< 1 GB) + the H blocks (134 MB): about 20 GB of an 80 GB GPU. Not
yet measured on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from slimkit.errors import InvalidArgument
from slimkit.estimator.masks import HeadMoments, MaskSet
from slimkit.estimator.placement import compute_dtype, frozen_on
from slimkit.linalg import eigh_desc
from slimkit.methods.head_plan import width_step
from slimkit.modeling.modeling_slim import SlimForCausalLM, attention_mask_for
from slimkit.shapes import get_shapes

GROUP_SIZE = 8
LOSS_CHUNK = 2048  # tokens per checkpointed lm_head + cross-entropy chunk
FP16_LOSS_SCALE = 1024.0  # static loss scale so fp16 activation gradients do not underflow


@dataclass
class Importances:
    """Fisher importances per unit, float64 on CPU, one tensor per layer."""

    attention: list[torch.Tensor]  # (n_h, frac): Σ_groups (Σ_{c ∈ block f of head h} g_c)²
    mlp: list[torch.Tensor]  # (I,): Σ_groups g_n²
    frac: int
    rotated: bool
    groups: int
    samples: int
    tokens: int  # next-token predictions in the loss


def blocks_per_head(model: SlimForCausalLM, frac: int | None) -> int:
    """`frac`, or by default one block per step of the engine's head-width grid (`width_step`).

    The paper's default is one block per head, but IntraSlice never removes a head's channels as a whole:
    it narrows heads in steps of `width_step(d_h)` (8 channels for real models). Blocks of that width rank
    exactly the units the engine can remove, so a layer's attention ratio is counted in achievable steps,
    and in the rotated basis the tail components of a head go before its leading ones. On SmolLM2-135M
    (d_h = 64, 8 blocks) this beats one block per head at 20, 30 and 40 % (README, "Allocation").
    """
    head_dims = {layer.self_attn.v_head_dim for layer in model.model.layers}
    if frac is None:
        frac = min(d // width_step(d) for d in head_dims)
    if frac < 1 or any(d % frac for d in head_dims):
        raise InvalidArgument(f"frac={frac} must divide every head width ({sorted(head_dims)})")
    return frac


def next_token_loss(model: SlimForCausalLM, ids: torch.Tensor, valid: torch.Tensor, checkpointed: bool = True):
    """Σ over the windows of each window's mean next-token NLL; padding (valid False) is excluded."""
    inner = model.model
    x = inner.embed_tokens(ids)  # (B, T, d)
    T = ids.shape[1]
    cos, sin = inner.rotary_emb(x, torch.arange(T, device=ids.device)[None])
    mask = attention_mask_for(valid, T, 0, model.config.sliding_window, x.dtype, x.device)
    for layer in inner.layers:
        x = checkpoint(layer, x, cos, sin, mask, use_reentrant=False) if checkpointed else layer(x, cos, sin, mask)
    hidden = inner.norm(x)[:, :-1]
    pairs = valid[:, :-1] & valid[:, 1:]  # position t predicts token t + 1
    weight = pairs / pairs.sum(1, keepdim=True).clamp_min(1)  # 1 / (predictions in the window)
    rows, targets, w = hidden[pairs], ids[:, 1:][pairs], weight[pairs]
    total = hidden.new_zeros((), dtype=torch.float32)
    nll = partial(_token_nll, model.lm_head)
    for c in range(0, rows.shape[0], LOSS_CHUNK):
        chunk = (rows[c : c + LOSS_CHUNK], targets[c : c + LOSS_CHUNK])
        losses = checkpoint(nll, *chunk, use_reentrant=False) if checkpointed else nll(*chunk)
        total = total + (losses * w[c : c + LOSS_CHUNK]).sum()
    return total


def _token_nll(head: torch.nn.Module, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(h).float(), y, reduction="none")


def group_bases(blocks: torch.Tensor, kv_index: list[int]) -> torch.Tensor:
    """(n_h, d_h, d_h): for each head, the eigenvectors (columns, descending) of its KV group's summed block.

    Query heads sharing a KV head share v_proj rows, so the engine compresses them with one basis
    (attention_prune step 7); the estimator measures importance in that same basis. Eigenvector signs are
    arbitrary in LAPACK; they are fixed here (largest-magnitude entry positive) so results are reproducible:
    with F < d_h a block *sum* of rotated coordinates depends on them.
    """
    out = torch.empty_like(blocks)
    for g in sorted(set(kv_index)):
        members = [i for i, k in enumerate(kv_index) if k == g]
        vectors = eigh_desc(blocks[members].sum(0))[1]
        peak = vectors.gather(0, vectors.abs().argmax(0, keepdim=True))
        out[members] = vectors * torch.where(peak < 0, -1.0, 1.0).to(vectors.dtype)
    return out


def attention_importance(grads: torch.Tensor, n_h: int, frac: int, bases: torch.Tensor | None) -> torch.Tensor:
    """grads (G, D) group gradients of one layer → (n_h, frac) importances."""
    per_head = grads.view(grads.shape[0], n_h, -1)  # (G, n_h, d_h)
    if bases is not None:
        per_head = torch.einsum("gnc,ncj->gnj", per_head, bases)  # row vector g_h · U_h
    d_h = per_head.shape[-1]
    return per_head.view(grads.shape[0], n_h, frac, d_h // frac).sum(-1).square().sum(0)


def fisher_importances(
    model: SlimForCausalLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    rotate: bool,
    device: torch.device,
    frac: int | None = None,
    group_size: int = GROUP_SIZE,
    tokens_per_step: int = 8192,
    checkpointed: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Importances:
    """Run the gradient pass; `progress(done, total)` counts windows. The model is restored afterwards."""
    frac = blocks_per_head(model, frac)
    n, T = input_ids.shape
    dtype = compute_dtype(model, device)
    scale = FP16_LOSS_SCALE if dtype == torch.float16 else 1.0
    micro = max(1, min(group_size, tokens_per_step // T))
    with frozen_on(model, device, dtype):
        moments = HeadMoments(model, device) if rotate else None
        with MaskSet(model, device, moments) as masks:
            layers = len(masks.attention)
            masks_all = masks.tensors()
            attn_groups: list[list[torch.Tensor]] = [[] for _ in range(layers)]
            mlp = [torch.zeros(m.shape, dtype=torch.float64, device=device) for m in masks.mlp]
            tokens = 0
            for start in range(0, n, group_size):
                acc = [torch.zeros_like(m, requires_grad=False) for m in masks_all]
                stop = min(start + group_size, n)
                for s in range(start, stop, micro):
                    e = min(s + micro, stop)
                    ids = input_ids[s:e].to(device)
                    valid = attention_mask[s:e].to(device).bool()
                    tokens += int((valid[:, :-1] & valid[:, 1:]).sum())
                    if moments is not None:
                        moments.valid, moments.active = valid, True
                    loss = next_token_loss(model, ids, valid, checkpointed)
                    if moments is not None:
                        moments.active = False  # the checkpoint recompute in backward must not count twice
                    if loss.requires_grad:  # False only for windows without a single next-token pair
                        for a, g in zip(acc, torch.autograd.grad(loss * scale, masks_all), strict=True):
                            a += g
                    if progress is not None:
                        progress(e, n)
                group = [a.double() / scale for a in acc]
                if not all(bool(torch.isfinite(g).all()) for g in group):
                    raise FloatingPointError(
                        "non-finite mask gradients (fp16 overflow?); run the estimator in bfloat16 or float32"
                    )
                for i in range(layers):
                    attn_groups[i].append(group[i].cpu())
                    mlp[i] += group[layers + i].square()
        shapes = get_shapes(model.config)
        attention = []
        for i, layer in enumerate(model.model.layers):
            n_h = layer.self_attn.num_heads
            bases = group_bases(moments.blocks[i], shapes[i]["kv_index"]).cpu() if moments is not None else None
            attention.append(attention_importance(torch.stack(attn_groups[i]), n_h, frac, bases))
    groups = -(-n // group_size)
    return Importances(attention, [m.cpu() for m in mlp], frac, rotate, groups, n, tokens)
