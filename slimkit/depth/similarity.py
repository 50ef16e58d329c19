"""Which layers to flatten or drop: hidden-state similarity on calibration data (algorithms.md §5.3, §6).

`X_0 … X_L` are the residual stream at each layer's input (`X_L` the last layer's output, before the final
norm), from one dense forward over the calibration windows. S[i, j] is the mean token-wise cosine
similarity of X_i and X_j over a fixed random subset of the valid tokens (at most `tokens` of them, so
that L + 1 stored states fit in memory for a 7B model: 33 × 8192 × 4096 fp32 = 4.4 GB on the CPU).

- FlattenGPT groups greedily: adjacent groups [a..b] and [b+1..c] are merged while layers must go, always
  the pair with the highest S[a, c] — the first layer's input against the last layer's input. A flattened
  group feeds every block X_a instead of its own input, and S[a, c] says how far the last block's real
  input has drifted from that; the score penalises long groups whose endpoints drifted apart.
- The ShortGPT-style baseline drops the layers with the lowest block influence BI_ℓ = 1 − S[ℓ, ℓ+1]
  (input against output of layer ℓ).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from slimkit.errors import InvalidArgument
from slimkit.layerwise import LayerContext, run_layer
from slimkit.modeling.modeling_slim import SlimForCausalLM

SIMILARITY_TOKENS = 8192


def removed_layers(ratio: float, layers: int) -> int:
    """Whole layers a ratio of attention + MLP parameters stands for: round(ratio · L), at least 1."""
    k = round(ratio * layers)
    if k < 1:
        raise InvalidArgument(
            f"ratio {ratio} removes no whole layer of {layers}: depth pruning moves in steps of "
            f"1/{layers} = {1 / layers:.1%}"
        )
    if k > layers - 1:
        raise InvalidArgument(f"ratio {ratio} would remove all {layers} layers; keep at least one")
    return k


@torch.no_grad()
def hidden_state_similarity(
    model: SlimForCausalLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    device: torch.device,
    compute_dtype: torch.dtype,
    batch_size: int = 8,
    tokens: int = SIMILARITY_TOKENS,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """S (L + 1, L + 1), float64 on the CPU, from one dense layer-by-layer forward (model left unchanged)."""
    config = model.config
    storage = device if device.type == "cuda" else torch.device("cpu")
    valid = attention_mask.bool()
    flat = valid.flatten().nonzero().squeeze(1)
    pick = flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[:tokens]].sort().values
    inputs = model.model.embed_tokens(input_ids.to(model.device)).to(storage, compute_dtype)  # (n, T, d)
    positions = torch.arange(input_ids.shape[1], device=device)[None]
    rotary = model.model.rotary_emb.to(device)
    cos, sin = rotary(inputs[:1].to(device), positions)
    states = [_unit_rows(inputs, pick)]  # (N, d) per layer input, on the CPU
    layers = model.model.layers
    for i, layer in enumerate(layers):
        store_dtype = next(layer.parameters()).dtype
        layer.to(device, compute_dtype)
        ctx = LayerContext(layer, i, config, inputs, valid.to(storage), cos, sin, device, compute_dtype, batch_size)
        inputs = run_layer(ctx, layer)
        layer.to("cpu", store_dtype)
        states.append(_unit_rows(inputs, pick))
        if progress is not None:
            progress(i + 1, len(layers))
    rotary.to("cpu")
    stacked = torch.stack(states)  # (L + 1, N, d) unit rows
    return torch.einsum("ind,jnd->ij", stacked, stacked).double() / stacked.shape[1]


def _unit_rows(hidden: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
    rows = hidden.reshape(-1, hidden.shape[-1])[pick.to(hidden.device)].float().cpu()
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)


def greedy_groups(similarity: torch.Tensor, remove: int) -> list[list[int]]:
    """FlattenGPT's grouping: `remove` merges of adjacent groups, highest S[first of left, last of right]."""
    layers = similarity.shape[0] - 1
    groups = [[i] for i in range(layers)]
    for _ in range(remove):
        scores = [float(similarity[groups[g][0], groups[g + 1][-1]]) for g in range(len(groups) - 1)]
        best = max(range(len(scores)), key=lambda g: (scores[g], -g))  # ties: the earlier pair
        groups[best : best + 2] = [groups[best] + groups[best + 1]]
    return groups


def block_influence(similarity: torch.Tensor) -> list[float]:
    """BI_ℓ = 1 − cos(input of layer ℓ, its output), one per layer."""
    layers = similarity.shape[0] - 1
    return [1.0 - float(similarity[i, i + 1]) for i in range(layers)]


def lowest_influence_kept(similarity: torch.Tensor, remove: int) -> list[list[int]]:
    """The ShortGPT-style plan: every layer but the `remove` of lowest block influence, each alone."""
    influence = block_influence(similarity)
    dropped = set(sorted(range(len(influence)), key=lambda i: (influence[i], i))[:remove])
    return [[i] for i in range(len(influence)) if i not in dropped]
