"""From a speed-up target to per-layer ratios: predict, check reachability early, search the allocation.

Prediction. The dense model is timed whole on the workload (`dense_s`, real kernels, embedding and head
included); a candidate allocation saves, per layer, what the latency profile says its narrower attention
and MLP save: predicted time = max(dense_s, reference_s) − κ · Σ_l savings_l (the output may run on either
modeling code, so the slower one is assumed: an allocation that removes nothing is never predicted above
1x), and the predicted speed-up is the stock transformers model's time (`reference_s`, what the result is
measured against) over that. κ = min(1, decoder share of dense_s / the profile's dense layers): isolated
modules can time slower than inside a model (colder caches), and a saving can never exceed the time the
decoder actually takes. Every time used carries its measured noise (`slimkit.latency.noise`), and the
prediction carries their sum (`SpeedModel.uncertainty`).

Reachability. The fastest allocation the engine may produce is every layer at the per-layer cap; if even
that misses the target, the job fails before calibration with the best achievable value.

Search. For a bias λ_b (MLP share of the pruning, §3.5), the global ratio s is bisected for the smallest
allocation whose predicted speed-up meets the target: least pruning, so least quality loss under that
split. With the Fisher estimator's importances several λ_b are tried and the one whose removed units carry
the least Fisher importance (the estimator's own second-order loss estimate, ½ Σ removed I, as in
Fisher-based latency-constrained pruning) wins; `bias` pins λ_b instead. `uniform` has no importances,
so it uses one λ_b (1 unless pinned).

Verdict. After the output is measured, `met` is the measured speed-up against the target and nothing
else; a measurement further from the prediction than both uncertainties plus the policy's margin is
refused (`judge_measurement`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slimkit.errors import InvalidArgument, SpeedupUnreachable, TimingUnstable
from slimkit.estimator import Importances, targets_from_importances
from slimkit.estimator.allocate import uniform_targets
from slimkit.estimator.snap import predicted_ratio
from slimkit.latency.noise import TimingPolicy, describe_noise
from slimkit.latency.profile import LatencyProfile, dense_layer_shape
from slimkit.layerwise import LayerTarget
from slimkit.methods.mlp_prune import dropped_channels
from slimkit.modeling.modeling_slim import SlimConfig

BIASES = (0.5, 0.75, 1.0, 1.25, 1.5)
BISECT_STEPS = 24


@dataclass
class SpeedModel:
    """Predicted workload time of an allocation, from the layer profile and the dense model's time."""

    profile: LatencyProfile
    config: SlimConfig
    dense_s: float  # the whole dense model on the workload (median), on slimkit's modeling code
    reference_s: float | None = None  # the same model loaded by stock transformers: the speed-up's base
    dense_noise: float = 0.0  # relative half-width of the 95 % interval of dense_s
    reference_noise: float = 0.0  # the same for reference_s
    timing: dict[str, Any] = field(default_factory=dict)  # the side-by-side record behind the two times

    def __post_init__(self) -> None:
        self.base_s = self.dense_s if self.reference_s is None else self.reference_s
        base_noise = self.dense_noise if self.reference_s is None else self.reference_noise
        self.base_noise = base_noise
        # The output runs on slimkit's modeling code, or on stock transformers when its shapes fit the
        # family's stock config (an allocation that removes nothing *is* the source model). Priced on the
        # slower of the two, an allocation removing nothing is never predicted faster than the reference.
        slower_is_dense = self.dense_s >= self.base_s
        self.out_s = self.dense_s if slower_is_dense else self.base_s
        self.out_noise = self.dense_noise if slower_is_dense else base_noise
        shape = dense_layer_shape(self.config)
        self.width = shape["intermediate_size"]
        self.attn_s = self.profile.attention_seconds(0.0)
        self.mlp_s = self.profile.mlp_seconds(self.width)
        self.layer_s = self.attn_s + self.mlp_s
        decoder = self.config.num_hidden_layers * self.layer_s
        self.scale = min(1.0, self.dense_s / decoder) if decoder > 0 else 0.0

    def _modules(self, t: LayerTarget) -> tuple[float, float]:
        kept = self.width - dropped_channels(self.width, t.mlp)
        return self.profile.attention_seconds(t.attention), self.profile.mlp_seconds(kept)

    def seconds(self, targets: list[LayerTarget]) -> float:
        saved = 0.0
        for t in targets:
            attn, mlp = self._modules(t)
            saved += self.layer_s - attn - mlp
        return self.out_s - self.scale * saved

    def speedup(self, targets: list[LayerTarget]) -> float:
        return self.base_s / max(self.seconds(targets), 1e-12)

    def uncertainty(self, targets: list[LayerTarget]) -> float:
        """Relative uncertainty of `speedup(targets)` from the measured noise of everything it uses.

        The base time's noise, plus the predicted time's: the dense time's, and for every module that is
        narrowed the noise of both profile points its saving is the difference of — each a fraction of
        the dense module's time (the profile's noise), and each layer reads the same points, so their
        errors add up rather than average out.
        """
        spread = 0.0  # profile seconds whose noise reaches the prediction
        for t in targets:
            attn, mlp = self._modules(t)
            spread += (2 * self.attn_s if attn != self.attn_s else 0.0) + (2 * self.mlp_s if mlp != self.mlp_s else 0.0)
        time_error = self.out_s * self.out_noise + self.scale * self.profile.noise * spread
        return self.base_noise + time_error / max(self.seconds(targets), 1e-12)


def best_achievable(speed: SpeedModel, cap: float) -> float:
    """Predicted speed-up with every layer's attention and MLP at the cap: the most the engine can do."""
    return speed.speedup([LayerTarget(cap, cap)] * speed.config.num_hidden_layers)


def check_reachable(speed: SpeedModel, target: float, cap: float, where: str) -> float:
    """The best achievable speed-up; `SpeedupUnreachable` naming it when the target is above it."""
    best = best_achievable(speed, cap)
    if best < target:
        raise SpeedupUnreachable(
            f"a {target:.2f}x speed-up is out of reach for {where}: the best achievable is {best:.2f}x "
            f"(every layer pruned to the per-layer cap {cap}); ask for at most {best:.2f}x, a heavier workload "
            "(larger batch or prompt), or another device",
            best=best,
        )
    return best


def estimated_loss(importances: Importances, targets: list[LayerTarget], config: SlimConfig) -> float:
    """½ Σ Fisher importance of the units the targets remove (each layer's least important first)."""
    total = 0.0
    for t, attn, mlp in zip(targets, importances.attention, importances.mlp, strict=True):
        units = attn.flatten().double().sort().values
        total += float(units[: round(t.attention * units.numel())].sum())
        channels = mlp.double().sort().values
        total += float(channels[: dropped_channels(channels.numel(), t.mlp)].sum())
    return 0.5 * total


@dataclass
class SpeedupPlan:
    targets: list[LayerTarget]
    ratio: float  # the global ratio chosen
    bias: float
    predicted_speedup: float
    best_achievable: float
    estimated_loss: float | None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    predicted_noise: float = 0.0  # relative uncertainty of predicted_speedup (SpeedModel.uncertainty)

    def record(self) -> dict[str, Any]:
        return {
            "ratio": self.ratio,
            "bias": self.bias,
            "predicted_speedup": self.predicted_speedup,
            "predicted_noise": self.predicted_noise,
            "best_achievable": self.best_achievable,
            "estimated_loss": self.estimated_loss,
            "candidates": self.candidates,
        }


def _smallest_ratio(
    speed: SpeedModel, target: float, cap: float, targets_for: Callable[[float], list[LayerTarget]]
) -> tuple[float, list[LayerTarget]] | None:
    """Bisect the global ratio for the least pruning whose predicted speed-up meets `target`."""
    best: tuple[float, list[LayerTarget]] | None = None
    for top in (cap, cap - 1e-3, cap - 1e-2):  # at the cap itself whole units may not fit under it
        try:
            best = (top, targets_for(top))
            break
        except InvalidArgument:
            continue
    if best is None or speed.speedup(best[1]) < target:
        return None
    lo, hi = 0.0, best[0]
    for _ in range(BISECT_STEPS):
        mid = (lo + hi) / 2
        try:
            candidate = targets_for(mid)
        except InvalidArgument:  # only near the cap: a split that cannot be placed under it; look lower
            hi = mid
            continue
        if speed.speedup(candidate) >= target:
            hi, best = mid, (mid, candidate)
        else:
            lo = mid
    return best


def plan_speedup(
    speed: SpeedModel,
    target: float,
    cap: float,
    importances: Importances | None,
    bias: float | None = None,
) -> SpeedupPlan:
    """The allocation meeting `target` with the least (estimated) quality loss; see the module doc."""
    config = speed.config
    best = check_reachable(speed, target, cap, "this model")
    biases = (bias,) if bias is not None else (BIASES if importances is not None else (1.0,))
    candidates: list[dict[str, Any]] = []
    chosen: SpeedupPlan | None = None
    for lam in biases:

        def targets_for(s: float, lam: float = lam) -> list[LayerTarget]:
            if importances is None:
                return uniform_targets(config, s, lam, cap)
            return targets_from_importances(importances, config, s, lam, cap)

        found = _smallest_ratio(speed, target, cap, targets_for)
        if found is None:
            candidates.append({"bias": lam, "reachable": False})
            continue
        s, targets = found
        loss = estimated_loss(importances, targets, config) if importances is not None else None
        plan = SpeedupPlan(targets, s, lam, speed.speedup(targets), best, loss)
        plan.predicted_noise = speed.uncertainty(targets)
        candidates.append(
            {
                "bias": lam,
                "reachable": True,
                "ratio": s,
                "predicted_ratio": predicted_ratio(targets, config),
                "predicted_speedup": plan.predicted_speedup,
                "estimated_loss": loss,
            }
        )
        if chosen is None or (loss is not None and chosen.estimated_loss is not None and loss < chosen.estimated_loss):
            chosen = plan
    if chosen is None:  # the cap is reachable but no split's allocation gets there (rounding at the cap)
        raise SpeedupUnreachable(
            f"a {target:.2f}x speed-up is not reachable with the allocations tried; the best achievable is {best:.2f}x",
            best=best,
        )
    chosen.candidates = candidates
    return chosen


def judge_measurement(
    target: float,
    predicted: float,
    predicted_noise: float,
    measured: float,
    measured_noise: float,
    policy: TimingPolicy,
    where: str,
) -> dict[str, Any]:
    """`met` (the measured speed-up is at least the target, nothing else) and how measurement and plan agree.

    The plan and the measurement are minutes apart; if they disagree by more than both uncertainties plus
    the policy's margin (what the profile's representative head plans cannot know), one of them does not
    describe this machine — a load that changed in between, typically — and neither number is reported:
    `TimingUnstable`.
    """
    deviation = measured / predicted - 1
    bound = predicted_noise + measured_noise + policy.margin
    if abs(deviation) > bound:
        raise TimingUnstable(
            f"the measured speed-up {measured:.2f}x ({describe_noise(measured_noise)}) contradicts the "
            f"planned {predicted:.2f}x ({describe_noise(predicted_noise)}, plus a {policy.margin:.0%} margin) "
            f"on {where}: the machine's speed changed between planning and measuring, so neither can be "
            "trusted; retry on an idle device",
            noise=abs(deviation),
            bound=bound,
            repeats=0,
        )
    return {"met": measured >= target, "deviation": deviation, "agreement_bound": bound}
