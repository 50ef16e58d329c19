"""Timings that carry their own uncertainty: repeat interleaved rounds until the medians are known, or refuse.

A timing on a shared machine is a sample from a distribution that load, clocks and caches move; a median
of a fixed number of runs says nothing about how far the next one could land (a planner's stock/slim
ratio once swung from 0.47 to 2.24 between runs). So every timing here is taken in *rounds* (each
candidate once per round, always in the same order, so that drift hits all alike) and summarised by its
median and a confidence interval of that median. Rounds continue until every interval — and, for two
candidates, the interval of their per-round ratio — is within the tolerance, or the budget (rounds or
seconds) runs out; then `TimingUnstable` names the noise seen.

The interval is distribution-free: the order statistics x_(k) ≤ median ≤ x_(n+1−k) with the largest k
whose binomial tail keeps at least 95 % coverage (min … max up to 8 samples). Its width shrinks like
1/√n while the noise is stationary, so repeating helps on a steady machine and not on one whose load
jumps around — which is exactly the machine on which a speed-up cannot be measured.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from slimkit.errors import InvalidArgument, TimingUnstable

COVERAGE_TAIL = 0.025  # each side: a 95 % interval of the median
ENV_PREFIX = "SLIMKIT_TIMING_"


@dataclass(frozen=True)
class TimingPolicy:
    """How hard to try for a trustworthy timing, and how far a measurement may sit from its prediction."""

    tolerance: float = 0.05  # the largest relative half-width of a median's (or ratio's) 95 % interval
    min_repeats: int = 5  # rounds always timed
    max_repeats: int = 41  # rounds at most, then `TimingUnstable`
    max_seconds: float = 120.0  # wall time after which no further round starts (min_repeats always run)
    margin: float = 0.10  # allowed measured/predicted disagreement beyond the noise (the profile's model error)

    def __post_init__(self) -> None:
        if not self.tolerance > 0:
            raise InvalidArgument(f"timing tolerance must be > 0, got {self.tolerance}")
        if self.min_repeats < 1 or self.max_repeats < self.min_repeats:
            raise InvalidArgument(
                f"timing repeats need 1 <= min_repeats <= max_repeats, got {self.min_repeats}, {self.max_repeats}"
            )
        if not self.max_seconds > 0:
            raise InvalidArgument(f"timing max_seconds must be > 0, got {self.max_seconds}")
        if not self.margin >= 0:
            raise InvalidArgument(f"timing margin must be >= 0, got {self.margin}")

    @classmethod
    def from_env(cls) -> TimingPolicy:
        """Defaults overridden by SLIMKIT_TIMING_TOLERANCE / _MIN_REPEATS / _MAX_REPEATS / _MAX_SECONDS / _MARGIN.

        Lets an operator loosen or tighten the bound of every job on a worker without touching requests.
        """
        values: dict[str, float | int] = {}
        for name, kind in (
            ("tolerance", float),
            ("min_repeats", int),
            ("max_repeats", int),
            ("max_seconds", float),
            ("margin", float),
        ):
            raw = os.environ.get(ENV_PREFIX + name.upper())
            if raw:
                try:
                    values[name] = kind(raw)
                except ValueError:
                    raise InvalidArgument(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a number") from None
        return cls(**values)

    @classmethod
    def fixed(cls, repeats: int) -> TimingPolicy:
        """Exactly `repeats` rounds, never refused (benchmarks that report the noise rather than act on it)."""
        return cls(tolerance=math.inf, min_repeats=repeats, max_repeats=repeats)

    def to_dict(self) -> dict[str, float | int | None]:
        return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in asdict(self).items()}


def _rank(n: int) -> int:
    """Largest k >= 1 with P(Binomial(n, ½) < k) <= 2.5 %: [x_(k), x_(n+1−k)] covers the median with >= 95 %."""
    k, tail = 1, 0.0
    while True:
        tail += math.comb(n, k - 1) / 2**n  # now P(B <= k − 1) = P(B < k)
        if tail > COVERAGE_TAIL:
            return max(k - 1, 1)
        k += 1


@dataclass(frozen=True)
class Estimate:
    """A median with its distribution-free 95 % interval."""

    median: float
    low: float
    high: float
    repeats: int

    @property
    def noise(self) -> float:
        """Relative half-width on the wider side: 0.05 reads "±5 %"."""
        return self.noise_against(self.median)

    def noise_against(self, base: float) -> float:
        """The half-width on the wider side as a fraction of `base` (another candidate's median, or its own)."""
        return max(self.median - self.low, self.high - self.median) / base if base > 0 else math.inf

    def to_dict(self) -> dict[str, float | int]:
        return {"median": self.median, "low": self.low, "high": self.high, "noise": self.noise}


def estimate(values: Sequence[float]) -> Estimate:
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("no samples")
    k = _rank(n)
    return Estimate(statistics.median(ordered), ordered[k - 1], ordered[n - k], n)


@dataclass
class Rounds:
    """What `measure_rounds` saw: per-candidate samples (seconds), their estimates, and the pair's ratio."""

    samples: list[list[float]]
    estimates: list[Estimate]
    ratio: Estimate | None  # first / second, per round, when there are exactly two candidates
    seconds: float  # wall time spent in the rounds
    relative_to: Sequence[int] | None = None  # per candidate: whose median its interval is a fraction of

    @property
    def repeats(self) -> int:
        return len(self.samples[0])

    def noise_of(self, i: int) -> float:
        if self.relative_to is None:
            return self.estimates[i].noise
        return self.estimates[i].noise_against(self.estimates[self.relative_to[i]].median)

    @property
    def noise(self) -> float:
        """The worst relative uncertainty of anything measured."""
        worst = max(self.noise_of(i) for i in range(len(self.estimates)))
        return max(worst, self.ratio.noise) if self.ratio is not None else worst


def summarise(samples: list[list[float]], seconds: float = 0.0, relative_to: Sequence[int] | None = None) -> Rounds:
    estimates = [estimate(s) for s in samples]
    ratio = None
    if len(samples) == 2:
        ratio = estimate([a / max(b, 1e-12) for a, b in zip(samples[0], samples[1], strict=True)])
    return Rounds(samples, estimates, ratio, seconds, relative_to)


def describe_noise(noise: float) -> str:
    return "±∞" if math.isinf(noise) else f"±{noise * 100:.0f} %"


def measure_rounds(
    samplers: Sequence[Callable[[], float]],
    policy: TimingPolicy,
    what: str,
    where: str,
    progress: Callable[[int, int], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    relative_to: Sequence[int] | None = None,
) -> Rounds:
    """Time every sampler once per round until each estimate is within `policy.tolerance`, or refuse.

    A sampler returns the seconds of one timed run of its candidate (it does the timing itself, so a
    deterministic one can stand in for the clock in tests). `what` and `where` name the candidates and the
    device in the error. `relative_to[i]` makes candidate i's interval a fraction of another candidate's
    median rather than of its own (profile points: what matters is the error against the dense module's
    time, not against a tiny module's).
    """
    samples: list[list[float]] = [[] for _ in samplers]
    start = clock()
    while True:
        for sampler, out in zip(samplers, samples, strict=True):
            out.append(sampler())
        n = len(samples[0])
        if progress is not None:
            progress(n, policy.max_repeats)
        if n < policy.min_repeats:
            continue
        elapsed = clock() - start
        rounds = summarise(samples, elapsed, relative_to)
        if rounds.noise <= policy.tolerance:
            return rounds
        if n >= policy.max_repeats or elapsed >= policy.max_seconds:
            raise TimingUnstable(
                f"timings of {what} on {where} varied by {describe_noise(rounds.noise)} over {n} repeats "
                f"(bound {describe_noise(policy.tolerance)}, 95 % interval of the median); the machine is too "
                "busy to measure a speed-up: retry on an idle device, or raise the tolerance "
                f"({ENV_PREFIX}TOLERANCE, or CompressionRequest.timing)",
                noise=rounds.noise,
                bound=policy.tolerance,
                repeats=n,
            )
