"""Multiplicative masks on the o_proj and down_proj inputs of every decoder layer (algorithms.md §3.5).

Why masks: at m = 1, ∂loss/∂m_c = Σ_tokens x_c · ∂loss/∂x_c is the first-order change of the loss when input
channel c of o_proj (an attention head coordinate) or down_proj (an MLP channel) is scaled. Squared and summed
over gradient groups it is the empirical Fisher information of removing that channel; summed over a head
block first, it is the Fisher of removing the block.

Why float32: the reference keeps the masks in the model dtype (fp16), where these token-summed gradients
underflow. Here `x ⊙ m` is formed in float32 and cast back to the activation dtype, so the reduction over
tokens that produces ∂/∂m runs in float32 whatever dtype the weights are in.

The masks only observe: they stay at 1 (the forward is unchanged up to one float32 round trip), and the
hooks are removed when the `MaskSet` context exits.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from slimkit.modeling.modeling_slim import SlimForCausalLM


class HeadMoments:
    """Per-head blocks of H = Σ xxᵀ over o_proj inputs x, float64 (n_h, d_h, d_h) per layer.

    Only the diagonal blocks are kept: the rotation of `global_pca` is block-diagonal (one basis per head or
    KV group), so the off-diagonal blocks would never be read. Products are formed in float32 and summed in
    float64, as in the engine's own statistics (algorithms.md P1).
    """

    def __init__(self, model: SlimForCausalLM, device: torch.device) -> None:
        self.blocks = [
            torch.zeros(a.num_heads, a.v_head_dim, a.v_head_dim, dtype=torch.float64, device=device)
            for a in (layer.self_attn for layer in model.model.layers)
        ]
        # Set by the driver: only the first forward of a step counts (the checkpoint recompute must not),
        # and padding tokens (False in `valid`, (B, T)) are left out.
        self.active = False
        self.valid: torch.Tensor | None = None

    def observer(self, index: int) -> Callable[[torch.Tensor], None]:
        block = self.blocks[index]
        n_h, d_h = block.shape[0], block.shape[1]

        @torch.no_grad()
        def observe(x: torch.Tensor) -> None:
            if not self.active:
                return
            rows = x[self.valid] if self.valid is not None else x.reshape(-1, x.shape[-1])
            heads = rows.float().view(-1, n_h, d_h).transpose(0, 1)  # (n_h, N, d_h)
            block.add_(torch.bmm(heads.transpose(1, 2), heads).double())

        return observe


class MaskSet:
    """Float32 masks (initialised to 1, requiring grad) on every layer's o_proj and down_proj input.

    Use as a context manager: the forward pre-hooks exist only inside the `with` block.
    """

    def __init__(self, model: SlimForCausalLM, device: torch.device, moments: HeadMoments | None = None) -> None:
        self.model = model
        self.moments = moments
        layers = model.model.layers
        self.attention = [self._ones(layer.self_attn.o_proj.in_features, device) for layer in layers]
        self.mlp = [self._ones(layer.mlp.down_proj.in_features, device) for layer in layers]
        self._handles: list[RemovableHandle] = []

    @staticmethod
    def _ones(width: int, device: torch.device) -> torch.Tensor:
        return torch.ones(width, dtype=torch.float32, device=device, requires_grad=True)

    def tensors(self) -> list[torch.Tensor]:
        """All masks, attention first then MLP, in layer order (the order `torch.autograd.grad` returns)."""
        return [*self.attention, *self.mlp]

    def __enter__(self) -> MaskSet:
        for i, layer in enumerate(self.model.model.layers):
            observe = self.moments.observer(i) if self.moments is not None else None
            self._handles.append(layer.self_attn.o_proj.register_forward_pre_hook(_masking(self.attention[i], observe)))
            self._handles.append(layer.mlp.down_proj.register_forward_pre_hook(_masking(self.mlp[i], None)))
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, trace: TracebackType | None
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _masking(mask: torch.Tensor, observe: Callable[[torch.Tensor], None] | None):
    """A forward pre-hook replacing the module input x by (x ⊙ mask) computed in float32."""

    def hook(module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        if observe is not None:
            observe(x)
        return ((x.float() * mask).to(x.dtype), *args[1:])

    return hook
