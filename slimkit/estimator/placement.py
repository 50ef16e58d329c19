"""Put a model on the estimator's device, frozen, and give it back exactly as it was.

The estimator needs the whole model on one device (a full-model backward), but the caller's model must
come back untouched for the compression that follows: same device, same dtype, same `requires_grad`
flags, bit-identical weights. So parameters are *replaced* by device/dtype copies and the original tensors
are put back afterwards, instead of casting there and back. On CPU half-precision kernels are slow and
inexact, so computation runs in float32 there (as in `slimkit.layerwise`); on a GPU in the model dtype.

Buffers only change device, never dtype: the RoPE `inv_freq` tables are float32 on purpose.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from slimkit.modeling.modeling_slim import SlimForCausalLM


def compute_dtype(model: SlimForCausalLM, device: torch.device) -> torch.dtype:
    store = model.model.embed_tokens.weight.dtype
    return torch.float32 if device.type == "cpu" else store


@contextmanager
def frozen_on(model: SlimForCausalLM, device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Inside the block: parameters on `device` in `dtype` with `requires_grad=False`; restored on exit."""
    params = list(model.parameters())  # tied embedding/head: one Parameter, listed once
    saved = [(p.data, p.requires_grad) for p in params]
    buffers = [(m, name, b) for m in model.modules() for name, b in m._buffers.items() if b is not None]
    try:
        for p in params:
            p.requires_grad_(False)
            p.data = p.data.to(device, dtype)
        for module, name, buffer in buffers:
            module._buffers[name] = buffer.to(device)
        yield
    finally:
        for p, (data, flag) in zip(params, saved, strict=True):
            p.data = data
            p.requires_grad_(flag)
            p.grad = None
        for module, name, buffer in buffers:
            module._buffers[name] = buffer
