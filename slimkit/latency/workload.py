"""What a speed-up is measured on, and how a whole model is timed against another.

A *workload* is what a user's request costs: `batch` sequences of `prompt_tokens`, prefilled in one
forward (only the last position's logits, as `generate` does), then `generated_tokens` greedy decode steps
with the KV cache. `generated_tokens=0` is a pure prefill. A speed-up is a ratio of median workload times
of two models timed *alternately* in one process (A B A B …), so that drift of a shared machine (other
jobs, clocks, thermal state) hits both alike.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from slimkit.errors import InvalidArgument

MAX_TOKENS = 1 << 17


@dataclass(frozen=True)
class Workload:
    batch: int = 1
    prompt_tokens: int = 512
    generated_tokens: int = 0

    def validate(self) -> None:
        if self.batch < 1 or self.prompt_tokens < 1 or self.generated_tokens < 0:
            raise InvalidArgument(f"workload needs batch >= 1, prompt_tokens >= 1, generated_tokens >= 0: {self}")
        if self.batch * (self.prompt_tokens + self.generated_tokens) > MAX_TOKENS:
            raise InvalidArgument(f"workload too large to time: batch × tokens must be <= {MAX_TOKENS}")

    @property
    def context_tokens(self) -> int:
        """Mean KV-cache length over the decode steps (what one step is priced at)."""
        return self.prompt_tokens + self.generated_tokens // 2

    def describe(self) -> str:
        text = f"batch {self.batch} × {self.prompt_tokens} prompt tokens"
        return text + (f", {self.generated_tokens} generated" if self.generated_tokens else " (prefill)")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prompt_ids(workload: Workload, vocab_size: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Fixed random token ids (batch, prompt_tokens): the same prompt for every model timed."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (workload.batch, workload.prompt_tokens), generator=gen).to(device)


@torch.inference_mode()
def run_workload(model: torch.nn.Module, ids: torch.Tensor, generated_tokens: int) -> None:
    """Prefill (last-position logits), then greedy decode steps with the model's KV cache."""
    if generated_tokens == 0:
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
        return
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    past = out.past_key_values
    for _ in range(generated_tokens):
        token = out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        out = model(input_ids=token, past_key_values=past, use_cache=True)
        past = out.past_key_values


def workload_seconds(model: torch.nn.Module, ids: torch.Tensor, generated_tokens: int) -> float:
    sync(ids.device)
    start = time.perf_counter()
    run_workload(model, ids, generated_tokens)
    sync(ids.device)
    return time.perf_counter() - start


def side_by_side(
    models: dict[str, torch.nn.Module],
    workload: Workload,
    device: torch.device,
    repeats: int = 7,
    warmup: int = 1,
) -> dict[str, Any]:
    """Median workload time of each model, timed alternately; `speedup` when there are exactly two.

    The speed-up is median(first model) / median(second model): name the reference first.
    """
    vocab = min(m.config.vocab_size for m in models.values())
    ids = prompt_ids(workload, vocab, device)
    for model in models.values():
        for _ in range(warmup):
            workload_seconds(model, ids, workload.generated_tokens)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            times[name].append(workload_seconds(model, ids, workload.generated_tokens))
    result: dict[str, Any] = {"workload": workload.to_dict(), "repeats": repeats, "warmup": warmup}
    tokens = workload.batch * (workload.prompt_tokens + workload.generated_tokens)
    for name, values in times.items():
        median = statistics.median(values)
        result[name] = {"median_s": median, "tokens_per_s": tokens / median, "times_s": [round(t, 6) for t in values]}
    if len(models) == 2:
        first, second = models
        result["speedup"] = result[first]["median_s"] / result[second]["median_s"]
    return result
