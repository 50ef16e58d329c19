"""Perplexity with the standard protocol (algorithms.md §9.6).

The text is tokenized once, cut into non-overlapping windows of `seq_len` tokens (the tail that does not
fill a window is dropped), and PPL = exp(Σ token NLL / (rows · (seq_len − 1))). `max_tokens` caps the
number of windows for quick runs; the cap is recorded with the number so runs stay comparable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from slimkit.calibration import read_text, tokenize
from slimkit.errors import InvalidArgument


@dataclass(frozen=True)
class EvalSpec:
    text: str = "wikitext2_test"
    seq_len: int = 512
    max_tokens: int | None = 65536
    batch_size: int = 4
    dense: bool = True  # also evaluate the uncompressed model (skip when comparing many runs of one model)


def eval_windows(tokenizer: PreTrainedTokenizerBase, spec: EvalSpec) -> torch.Tensor:
    stream = tokenize(tokenizer, read_text(spec.text))
    rows = stream.numel() // spec.seq_len
    if spec.max_tokens is not None:
        rows = min(rows, spec.max_tokens // spec.seq_len)
    if rows < 1:
        raise InvalidArgument(f"evaluation text {spec.text!r} has fewer than {spec.seq_len} tokens")
    return stream[: rows * spec.seq_len].view(rows, spec.seq_len)


@torch.no_grad()
def perplexity(
    model: torch.nn.Module,
    windows: torch.Tensor,
    device: torch.device,
    batch_size: int = 4,
    show_progress: bool = False,
) -> float:
    """exp(mean next-token NLL) over all windows, computed batch by batch on `device`.

    On CPU, half-precision models are evaluated in float32 (as they are compressed there): CPU half
    kernels are slow and round differently from GPU ones.
    """
    param = next(model.parameters())
    was_device, was_dtype = param.device, param.dtype
    model.to(device)
    if device.type == "cpu":
        cast_parameters(model, torch.float32)
    total, count = 0.0, 0
    try:
        for start in tqdm(range(0, windows.shape[0], batch_size), desc="perplexity", disable=not show_progress):
            ids = windows[start : start + batch_size].to(device)
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1]  # (b, T-1, V)
            for row, target in zip(logits, ids[:, 1:], strict=True):  # fp32 upcast one row at a time
                total += float(F.cross_entropy(row.float(), target, reduction="sum"))
            count += ids[:, 1:].numel()
    finally:
        cast_parameters(model, was_dtype)
        model.to(was_device)
    return math.exp(total / count)


def cast_parameters(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast parameters only: `module.to(dtype)` would also round float32 buffers such as RoPE frequencies."""
    for p in model.parameters():  # tied parameters are yielded once
        p.data = p.data.to(dtype)
