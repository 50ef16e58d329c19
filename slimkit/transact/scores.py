"""TransAct's channel scores: the L2 norm of every transitional activation over the calibration tokens (§4.2).

Transitional activations are the ones *inside* a module, between full-width residuals: the attention
output before `o_proj` (heads × head_dim) and act(gate) ⊙ up before `down_proj` (MLP channels). Removing a
channel there removes a row of q/k/v (or gate/up) and a column of o (or down) and nothing else, so a
channel whose activation is small over real text carries little of what the module writes back.

s_c = sqrt(Σ_tokens a_c²) over non-padding tokens, accumulated in float64 whatever the compute dtype (the
authors accumulate in fp32; sums over 10⁵–10⁶ tokens of bf16 squares lose digits there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from slimkit.errors import Cancelled
from slimkit.evaluate import cast_parameters


@dataclass
class LayerScores:
    heads: torch.Tensor  # (n_h, d_v) float64: channel scores of the o_proj input, one row per query head
    mlp: torch.Tensor  # (I,) float64: channel scores of the down_proj input


@torch.no_grad()
def transitional_scores(
    model: torch.nn.Module,
    input_ids: torch.Tensor,  # (n, T) calibration windows
    attention_mask: torch.Tensor,  # (n, T), 0 on padding
    device: torch.device,
    batch_size: int = 8,
    should_cancel: Callable[[], bool] | None = None,
) -> list[LayerScores]:
    """Scores of every layer of a `SlimForCausalLM`, from full forwards of the current model on `device`.

    The model comes back where it was, in its own dtype (CPU computes in float32: half kernels there are
    slow and inexact, and bf16 -> fp32 -> bf16 is lossless).
    """
    store_dtype = model.model.embed_tokens.weight.dtype
    home = model.model.embed_tokens.weight.device
    compute = torch.float32 if device.type == "cpu" else store_dtype
    layers = model.model.layers
    o_sums = [torch.zeros(layer.self_attn.o_proj.in_features, dtype=torch.float64, device=device) for layer in layers]
    d_sums = [torch.zeros(layer.mlp.down_proj.in_features, dtype=torch.float64, device=device) for layer in layers]
    valid: torch.Tensor | None = None  # (b, T) bool of the batch being run, read by the hooks

    def accumulate(sums: torch.Tensor) -> Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            a = args[0][valid]  # (N, c) valid tokens only
            sums.add_(a.double().pow(2).sum(0))

        return hook

    handles = [
        layer.self_attn.o_proj.register_forward_pre_hook(accumulate(s)) for layer, s in zip(layers, o_sums, strict=True)
    ]
    handles += [
        layer.mlp.down_proj.register_forward_pre_hook(accumulate(s)) for layer, s in zip(layers, d_sums, strict=True)
    ]
    model.to(device)
    cast_parameters(model, compute)
    try:
        for start in range(0, input_ids.shape[0], batch_size):
            if should_cancel is not None and should_cancel():
                raise Cancelled("cancelled while scoring channels")
            ids = input_ids[start : start + batch_size].to(device)
            mask = attention_mask[start : start + batch_size].to(device)
            valid = mask.bool()
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
        model.to(home)
        cast_parameters(model, store_dtype)
    scores = []
    for layer, o, d in zip(layers, o_sums, d_sums, strict=True):
        heads = o.sqrt().view(layer.self_attn.num_heads, layer.self_attn.v_head_dim).cpu()
        scores.append(LayerScores(heads=heads, mlp=d.sqrt().cpu()))
    return scores
