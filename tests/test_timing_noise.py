"""Speed-up timings that cannot lie: noise bounds, `met`, and plans the measurement contradicts.

Everything here runs on a deterministic timer — a cost model (1 ns per weight of every linear layer per
token, optionally with seeded jitter) plugged into the engine's timing seam in place of the clock — so
what the planner and the verdict do with timings is asserted exactly, on any machine and under any load.
The real clock is exercised by the end-to-end tests in test_speedup.py.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import transformers as T

from slimkit import CalibrationSpec, CompressionRequest
from slimkit.errors import InvalidArgument, TimingUnstable
from slimkit.latency.noise import TimingPolicy, estimate, measure_rounds
from slimkit.latency.profile import GRID, LatencyProfile, dense_layer_shape, device_name, profile_key
from slimkit.latency.target import SpeedModel, judge_measurement, plan_speedup
from slimkit.latency.workload import side_by_side
from slimkit.layerwise import LayerTarget
from slimkit.loading import load_source
from slimkit.planning import measure_achieved, prepare_speed

from .test_speedup import WORKLOAD, config_like_wide, linear_profile, save_wide_llama

CPU = torch.device("cpu")


def linear_cost(model: torch.nn.Module) -> float:
    """Seconds per token of the cost model: 1 ns per weight of every linear layer."""
    return 1e-9 * sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


class CostTimer:
    """A deterministic workload timer: the cost model's seconds, times a seeded jitter factor in [1 − j, 1 + j]."""

    def __init__(self, jitter: float = 0.0, seed: int = 0) -> None:
        self.jitter, self.rng, self.calls = jitter, random.Random(seed), 0

    def __call__(self, model: torch.nn.Module, ids: torch.Tensor, generated_tokens: int) -> float:
        self.calls += 1
        factor = 1 + self.jitter * (2 * self.rng.random() - 1)
        return linear_cost(model) * ids.numel() * factor


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_wide_llama(tmp_path_factory.mktemp("wide_llama"))


@pytest.fixture(scope="module")
def narrow(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wide model's layout with half the MLP: a stock checkpoint standing in for a compressed output."""
    path = save_wide_llama(tmp_path_factory.mktemp("narrow_llama"), intermediate_size=512, seed=1)
    (path / "compression.json").write_text(json.dumps({"format": "stock"}))
    return path


def request_for(
    model: Path, cache: Path, policy: TimingPolicy | None = None, target: float = 1.2
) -> CompressionRequest:
    return CompressionRequest(
        model=str(model),
        speedup=target,
        workload=WORKLOAD,
        calibration=CalibrationSpec(samples=8, seq_len=64),
        evaluation=None,
        device="cpu",
        latency_cache=str(cache),
        timing=policy,
    )


def test_median_interval_is_distribution_free() -> None:
    five = estimate([5.0, 1.0, 2.0, 3.0, 4.0])  # up to 8 samples: min … max (≥ 93.75 % coverage)
    assert (five.median, five.low, five.high) == (3.0, 1.0, 5.0) and five.noise == pytest.approx(2 / 3)
    nine = estimate([float(x) for x in range(1, 10)])  # 9 samples: x_(2) … x_(8), 96 % coverage
    assert (nine.median, nine.low, nine.high) == (5.0, 2.0, 8.0) and nine.noise == pytest.approx(0.6)
    # One wild sample among 41 does not move the interval: the order statistics ignore it.
    steady = estimate([1.0] * 40 + [50.0])
    assert steady.noise == 0.0 and steady.median == 1.0


def test_policy_validates_and_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ({"tolerance": 0.0}, {"min_repeats": 0}, {"min_repeats": 9, "max_repeats": 5}, {"margin": -0.1}):
        with pytest.raises(InvalidArgument):
            TimingPolicy(**bad)
    monkeypatch.setenv("SLIMKIT_TIMING_TOLERANCE", "0.2")
    monkeypatch.setenv("SLIMKIT_TIMING_MAX_REPEATS", "9")
    assert TimingPolicy.from_env() == TimingPolicy(tolerance=0.2, max_repeats=9)
    monkeypatch.setenv("SLIMKIT_TIMING_MAX_SECONDS", "soon")
    with pytest.raises(InvalidArgument, match="SLIMKIT_TIMING_MAX_SECONDS"):
        TimingPolicy.from_env()


def test_timings_repeat_until_the_median_is_known() -> None:
    """Three slow rounds, then steady: more rounds push the interval past the outliers, and it settles."""
    values = iter([2.0, 2.1, 1.9] + [1.0 + 0.001 * (i % 3) for i in range(100)])
    rounds = measure_rounds([lambda: next(values)], TimingPolicy(), "x", "here")
    assert 5 < rounds.repeats < 41 and rounds.noise <= 0.05
    assert rounds.estimates[0].median == pytest.approx(1.0, abs=0.003)


def test_profile_points_are_judged_against_their_dense_module() -> None:
    """A tiny point's ±50 % is ±1 % of its dense module's time: that is what its saving can be off by."""
    dense = iter([1.0] * 100)
    tiny = iter([0.02, 0.01, 0.03] * 40)
    samplers = [lambda: next(dense), lambda: next(tiny), lambda: 0.5]
    rounds = measure_rounds(samplers, TimingPolicy(), "x", "here", relative_to=[0, 0, 0])
    assert rounds.repeats == 5 and rounds.noise == pytest.approx(0.01)
    with pytest.raises(TimingUnstable):  # on its own scale the same point is far too noisy
        measure_rounds(samplers[1:2], TimingPolicy(max_repeats=9), "x", "here")


def test_the_wall_time_budget_stops_an_unsettled_timing() -> None:
    ticks = iter(range(0, 10_000, 100))  # the clock advances 100 s per reading
    jitter = random.Random(0)
    with pytest.raises(TimingUnstable) as err:
        measure_rounds(
            [lambda: 1 + jitter.random()], TimingPolicy(max_seconds=50), "x", "here", clock=lambda: next(ticks)
        )
    assert err.value.repeats == 5  # min_repeats always run; no round starts after the budget


def test_noisy_timer_is_refused_with_timing_unstable(wide: Path) -> None:
    model = T.AutoModelForCausalLM.from_pretrained(wide).eval()
    policy = TimingPolicy(max_repeats=15)
    with pytest.raises(TimingUnstable) as err:
        side_by_side({"a": model, "b": model}, WORKLOAD, CPU, policy, timer=CostTimer(jitter=0.5), where="cpu")
    assert err.value.code == "timing_unstable" and err.value.repeats == 15 and err.value.noise > 0.05
    assert err.value.bound == 0.05
    message = err.value.message
    assert f"±{err.value.noise * 100:.0f} % over 15 repeats (bound ±5 %" in message and "on cpu" in message
    assert "too busy" in message and "SLIMKIT_TIMING_TOLERANCE" in message
    # The same cost model without jitter: settled after the minimum rounds, the ratio exact.
    steady = side_by_side({"a": model, "b": model}, WORKLOAD, CPU, policy, timer=CostTimer())
    assert steady["repeats"] == 5 and steady["speedup"] == 1.0 and steady["noise"] == 0.0


def test_nothing_removed_is_never_predicted_faster() -> None:
    """A stock reference timed 2x slower than slimkit's code must not make a 0 %-removed plan 2x."""
    config = config_like_wide()
    skewed = SpeedModel(linear_profile(), config, dense_s=13.0, reference_s=26.0)
    assert skewed.speedup([LayerTarget(0.0, 0.0)] * 4) == pytest.approx(1.0)
    plan = plan_speedup(skewed, 1.2, 0.8, importances=None)
    assert plan.ratio > 0 and all(t.attention > 0 or t.mlp > 0 for t in plan.targets)
    assert plan.predicted_speedup == pytest.approx(1.2, abs=0.02)


def test_prediction_uncertainty_follows_the_measured_noise() -> None:
    config = config_like_wide()
    half = [LayerTarget(0.5, 0.5)] * 4
    exact = SpeedModel(linear_profile(), config, dense_s=13.0, reference_s=13.0)
    assert exact.uncertainty(half) == 0.0 and exact.uncertainty([LayerTarget(0.0, 0.0)] * 4) == 0.0
    profile = linear_profile()
    profile.noise = 0.02
    noisy = SpeedModel(profile, config, dense_s=13.0, reference_s=13.0, dense_noise=0.01, reference_noise=0.03)
    # base 3 % + (13 s · 1 % + 2 % of the dense modules' time · 4 layers · 2 points · (1 + 2) s) / 7 s predicted
    assert noisy.uncertainty(half) == pytest.approx(0.03 + (0.13 + 0.02 * 4 * 2 * 3.0) / 7.0)
    assert noisy.uncertainty([LayerTarget(0.0, 0.0)] * 4) == pytest.approx(0.03 + 0.13 / 13.0)
    plan = plan_speedup(noisy, 1.5, 0.8, importances=None)
    assert plan.record()["predicted_noise"] == pytest.approx(noisy.uncertainty(plan.targets))


def test_met_only_when_the_measurement_reaches_the_target() -> None:
    policy = TimingPolicy()  # margin 10 %
    near = judge_measurement(1.2, 1.25, 0.02, 1.19, 0.01, policy, "cpu")
    assert near["met"] is False and near["deviation"] == pytest.approx(1.19 / 1.25 - 1)
    assert near["agreement_bound"] == pytest.approx(0.13)
    assert judge_measurement(1.2, 1.25, 0.02, 1.2, 0.01, policy, "cpu")["met"] is True
    assert judge_measurement(1.2, 1.25, 0.02, 1.199999, 0.0, policy, "cpu")["met"] is False


@pytest.mark.parametrize("measured", [0.92, 1.08, 1.45, 2.24])
def test_a_measurement_contradicting_the_plan_is_refused(measured: float) -> None:
    """Planned 1.25x ± 2 %, measured ± 1 %, margin 10 %: anything outside 1.25 · (1 ± 13 %) is refused."""
    with pytest.raises(TimingUnstable) as err:
        judge_measurement(1.2, 1.25, 0.02, measured, 0.01, TimingPolicy(), "cpu")
    assert err.value.code == "timing_unstable" and err.value.bound == pytest.approx(0.13)
    assert f"measured speed-up {measured:.2f}x" in err.value.message and "planned 1.25x" in err.value.message


def test_planning_with_a_noisy_timer_fails_before_the_profile(wide: Path, tmp_path: Path) -> None:
    source = load_source(str(wide))
    request = request_for(wide, tmp_path / "cache", TimingPolicy(max_repeats=12))
    with pytest.raises(TimingUnstable, match=r"stock and slim .* over 12 repeats"):
        prepare_speed(request, source.model, source.path, CPU, lambda *a: None, timer=CostTimer(jitter=0.5))
    assert not (tmp_path / "cache").exists()  # no profile was measured


def cost_profile(model: torch.nn.Module, tokens: int) -> LatencyProfile:
    """The cost model's own layer profile: module seconds proportional to the weights they keep."""
    layer = model.model.layers[0]
    attention = linear_cost(layer.self_attn) * tokens
    mlp = linear_cost(layer.mlp) * tokens
    width = dense_layer_shape(model.config)["intermediate_size"]
    return LatencyProfile(
        key="cost",
        device=device_name(CPU),
        dtype="float32",
        torch_version=torch.__version__,
        workload=WORKLOAD.to_dict(),
        attention=[(r, attention * (1 - r)) for r in GRID],
        attention_shapes=[],
        mlp=[(w, mlp * w / width) for w in range(8, width + 1, 8)],
        measure_s=1.0,
        noise=0.0,
        repeats=5,
    )


def test_planning_with_a_stable_timer_predicts_from_the_measured_times(wide: Path, tmp_path: Path) -> None:
    source = load_source(str(wide))
    model, cache = source.model, tmp_path / "cache"
    tokens = WORKLOAD.batch * WORKLOAD.prompt_tokens
    shape = dense_layer_shape(model.config)
    key = profile_key(model.config, shape, WORKLOAD, CPU, torch.float32)
    cache.mkdir()
    profile = cost_profile(model, tokens)
    (cache / f"{key}.json").write_text(json.dumps(profile.to_dict()))  # the cache is the profile's seam
    timer = CostTimer()
    speed = prepare_speed(request_for(wide, cache), model, source.path, CPU, lambda *a: None, timer=timer)
    assert speed is not None and speed.profile.attention == profile.attention
    assert speed.dense_s == speed.base_s == pytest.approx(linear_cost(model) * tokens)
    assert speed.dense_noise == speed.reference_noise == 0.0 and speed.timing["repeats"] == 5
    assert speed.speedup([LayerTarget(0.0, 0.0)] * 4) == pytest.approx(1.0)
    assert timer.calls == 2 + 2 * 5  # one warm-up each, then 5 interleaved rounds: settled at once


def test_measured_speedup_is_judged_against_the_plan(wide: Path, narrow: Path, tmp_path: Path) -> None:
    dense = T.AutoModelForCausalLM.from_pretrained(wide)
    small = T.AutoModelForCausalLM.from_pretrained(narrow)
    exact = linear_cost(dense) / linear_cost(small)  # what the cost model will measure: 1.36x
    assert 1.3 < exact < 1.4

    def measure(target: float, predicted: float | None) -> dict:
        plan = None if predicted is None else {"predicted_speedup": predicted, "predicted_noise": 0.0}
        request = request_for(wide, tmp_path / "cache", target=target)
        return measure_achieved(request, wide, narrow, torch.float32, CPU, planned=plan, timer=CostTimer())

    agreed = measure(1.3, exact * 1.05)  # predicted 5 % high: within the 10 % margin
    assert agreed["measured"] == pytest.approx(exact) and agreed["measured_noise"] == 0.0
    assert agreed["met"] is True and agreed["deviation"] == pytest.approx(1 / 1.05 - 1)
    assert agreed["repeats"] == 5 and len(agreed["times_s"]["dense"]) == 5
    assert agreed["measured_low"] == agreed["measured_high"] == pytest.approx(exact)
    # Predicted 1.4x for a 1.4x target, measured 1.36x: an honest miss, reported as not met.
    assert measure(1.4, 1.4)["met"] is False
    # Planned 1.5x above what the measurement shows: refused rather than reported.
    with pytest.raises(TimingUnstable, match="contradicts the planned"):
        measure(1.3, exact * 1.5)
    # Without a plan to judge against, only the target decides.
    assert measure(exact * 0.99, None)["met"] is True and "deviation" not in measure(1.3, None)


def test_a_whole_speedup_job_on_a_deterministic_timer(wide: Path, tmp_path: Path) -> None:
    """`compress()` end to end with the cost model as its clock: planned, compressed, saved, measured and
    judged, with every number exact on any machine (the real-clock runs are in test_speedup.py)."""
    from slimkit import compress

    source = load_source(str(wide))
    tokens = WORKLOAD.batch * WORKLOAD.prompt_tokens
    cache = tmp_path / "cache"
    cache.mkdir()
    key = profile_key(source.model.config, dense_layer_shape(source.model.config), WORKLOAD, CPU, torch.float32)
    (cache / f"{key}.json").write_text(json.dumps(cost_profile(source.model, tokens).to_dict()))
    request = request_for(wide, cache, target=1.2)
    result = compress(request, tmp_path / "out", show_progress=False, timer=CostTimer())
    speed = result.record["speedup"]
    assert speed["met"] is (speed["measured"] >= 1.2) and speed["measured_noise"] == 0.0
    assert abs(speed["deviation"]) <= speed["agreement_bound"]  # the plan and the measurement agree
    assert speed["measured"] == pytest.approx(linear_cost(source.model) / linear_cost(result.model), rel=1e-6)
    assert speed["predicted_speedup"] >= 1.2 and 0 < speed["ratio"] < 0.8
    assert json.loads((tmp_path / "out" / "compression.json").read_text())["speedup"]["met"] is speed["met"]
