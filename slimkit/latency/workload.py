"""What a speed-up is measured on, and how a whole model is timed against another.

A *workload* is what a user's request costs: `batch` sequences of `prompt_tokens`, prefilled in one
forward (only the last position's logits, as `generate` does), then `generated_tokens` greedy decode steps
with the KV cache. `generated_tokens=0` is a pure prefill. A speed-up is the median of per-round time ratios
of two models timed *alternately* in one process (A B A B …), so that drift of a shared machine (other
jobs, clocks, thermal state) hits both alike; rounds continue until that median is known to a tolerance
(`slimkit.latency.noise`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from slimkit.errors import InvalidArgument
from slimkit.latency.noise import TimingPolicy, measure_rounds

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


WorkloadTimer = Callable[[torch.nn.Module, torch.Tensor, int], float]
"""Seconds of one run of the workload: (model, prompt ids, generated tokens) -> seconds. The seam where a
deterministic timer (a cost model) replaces the clock in tests of what the planner does with timings."""


def workload_seconds(model: torch.nn.Module, ids: torch.Tensor, generated_tokens: int) -> float:
    """The real timer: wall time of one workload run, with the device synchronised around it."""
    sync(ids.device)
    start = time.perf_counter()
    run_workload(model, ids, generated_tokens)
    sync(ids.device)
    return time.perf_counter() - start


def side_by_side(
    models: dict[str, torch.nn.Module],
    workload: Workload,
    device: torch.device,
    policy: TimingPolicy | None = None,
    warmup: int = 1,
    timer: WorkloadTimer = workload_seconds,
    repeats: int | None = None,
    where: str | None = None,
) -> dict[str, Any]:
    """Median workload time of each model, timed alternately until known to the policy's tolerance.

    With exactly two models, `speedup` is the median of the per-round ratios first / second (name the
    reference first), with its 95 % interval: a ratio of neighbouring runs cancels drift that a ratio of
    two medians would keep. `repeats` fixes the number of rounds instead (benchmarks; never refused).
    Raises `TimingUnstable` when the rounds run out before the timings settle.
    """
    if repeats is not None:
        policy = TimingPolicy.fixed(repeats)
    policy = policy or TimingPolicy()
    vocab = min(m.config.vocab_size for m in models.values())
    ids = prompt_ids(workload, vocab, device)
    for model in models.values():
        for _ in range(warmup):
            timer(model, ids, workload.generated_tokens)

    def sampler(model: torch.nn.Module) -> Callable[[], float]:
        return lambda: timer(model, ids, workload.generated_tokens)

    rounds = measure_rounds(
        [sampler(m) for m in models.values()],
        policy,
        what=" and ".join(models) + f" ({workload.describe()})",
        where=where or str(device),
    )
    result: dict[str, Any] = {
        "workload": workload.to_dict(),
        "repeats": rounds.repeats,
        "warmup": warmup,
        "noise": rounds.noise,
        "seconds": round(rounds.seconds, 3),
    }
    tokens = workload.batch * (workload.prompt_tokens + workload.generated_tokens)
    for name, values, est in zip(models, rounds.samples, rounds.estimates, strict=True):
        result[name] = {
            "median_s": est.median,
            "low_s": est.low,
            "high_s": est.high,
            "noise": est.noise,
            "tokens_per_s": tokens / est.median,
            "times_s": [round(t, 6) for t in values],
        }
    if rounds.ratio is not None:
        result["speedup"] = rounds.ratio.median
        result["speedup_low"], result["speedup_high"] = rounds.ratio.low, rounds.ratio.high
        result["speedup_noise"] = rounds.ratio.noise
    return result
