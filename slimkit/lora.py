"""Low-rank adapters for recovery: train a small update of every projection, then merge it into the weight.

Why our own (a few lines) instead of a dependency: recovery only needs `W + (α/r)·B A` on the decoder's
linear layers and an exact merge back, so the saved model keeps the compressed shape and format.
Adapters are float32 whatever the base dtype (the frozen base stays as stored: bf16 on a GPU).
"""

from __future__ import annotations

import math

import torch
from torch import nn

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    """y = base(x) + (α/r) · x Aᵀ Bᵀ, A: (r, in), B: (out, r); B starts at zero, so training starts at base."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = (x.to(self.lora_a.dtype) @ self.lora_a.T) @ self.lora_b.T
        return self.base(x) + (self.scale * update).to(x.dtype)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The base layer with the update folded in (computed in float32, stored in the base dtype)."""
        weight = self.base.weight.float() + self.scale * (self.lora_b @ self.lora_a)
        self.base.weight.copy_(weight.to(self.base.weight.dtype))
        return self.base


def add_adapters(model: nn.Module, rank: int, alpha: float) -> list[nn.Parameter]:
    """Freeze `model`, wrap every decoder projection in a `LoRALinear`; returns the trainable parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    trainable: list[nn.Parameter] = []
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name in TARGETS:
                base = getattr(parent, name, None)
                if isinstance(base, nn.Linear):
                    wrapped = LoRALinear(base, rank, alpha)
                    setattr(parent, name, wrapped)
                    trainable += [wrapped.lora_a, wrapped.lora_b]
    return trainable


def merge_adapters(model: nn.Module) -> None:
    """Replace every `LoRALinear` by its merged base layer and make the whole model trainable again."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merged())
    for p in model.parameters():
        p.requires_grad_(True)
