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
    """exp(mean next-token NLL) over all windows, computed batch by batch on `device`."""
    was = next(model.parameters()).device
    model.to(device)
    total, count = 0.0, 0
    try:
        for start in tqdm(range(0, windows.shape[0], batch_size), desc="perplexity", disable=not show_progress):
            ids = windows[start : start + batch_size].to(device)
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
            total += float(nll)
            count += ids[:, 1:].numel()
    finally:
        model.to(was)
    return math.exp(total / count)
