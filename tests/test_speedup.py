"""Speed-up targets: the latency profile, the planner's search, early failure, and whole jobs on a tiny model.

The planner is tested on profiles with known numbers (what it must do with them is exact; the noise
bounds and the verdict on a deterministic timer in test_timing_noise.py); the profile and the end-to-end
jobs run real timings on this machine, so they assert what a measurement guarantees (a value is reported
or the noise is refused by name, the cache is reused, curves never rise with pruning), not that a noisy
CPU hits a number: a loaded CI machine is normal.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest
import torch
import transformers as T

from slimkit import CalibrationSpec, CompressionRequest, compress
from slimkit.cli import main as cli_main
from slimkit.errors import InvalidArgument, SlimError, SpeedupUnreachable
from slimkit.estimator.fisher import Importances
from slimkit.latency.noise import TimingPolicy
from slimkit.latency.profile import GRID, LatencyProfile, _non_increasing, measure_profile
from slimkit.latency.target import SpeedModel, best_achievable, plan_speedup
from slimkit.latency.workload import Workload
from slimkit.layerwise import LayerTarget
from slimkit.loading import load_source
from slimkit.modeling.modeling_slim import SlimConfig

from .conftest import VOCAB, make_tokenizer

WORKLOAD = Workload(batch=4, prompt_tokens=128)
FAST = CalibrationSpec(samples=8, seq_len=64)
# Real timings in tests: the default noise bound, with a wall-time budget that keeps a refusal on a busy
# machine short. Either the timings settle or the job fails with `timing_unstable`; both are asserted.
REAL = TimingPolicy(max_seconds=20)
# For tests about something else than timing (reachability, caching): any noise is accepted.
ANY_NOISE = TimingPolicy(tolerance=1e6, min_repeats=2, max_repeats=2)
BUSY = {"timing_unstable", "speedup_unreachable"}  # what real timings may end in on a loaded machine


def save_wide_llama(path: Path, intermediate_size: int = 1024, seed: int = 0) -> Path:
    """4 layers of width 256 / MLP 1024: big enough that matmuls, not Python, dominate a CPU forward."""
    torch.manual_seed(seed)
    config = T.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=256,
        intermediate_size=intermediate_size,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    T.AutoModelForCausalLM.from_config(config).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_wide_llama(tmp_path_factory.mktemp("wide_llama"))


def linear_profile(attention_dense: float = 1.0, mlp_dense: float = 2.0, width: int = 1024) -> LatencyProfile:
    """Module time proportional to what is kept: attention (1 − r)·a, MLP (w / I)·m."""
    return LatencyProfile(
        key="synthetic",
        device="synthetic",
        dtype="float32",
        torch_version=torch.__version__,
        workload=WORKLOAD.to_dict(),
        attention=[(r, attention_dense * (1 - r)) for r in GRID],
        attention_shapes=[],
        mlp=[(w, mlp_dense * w / width) for w in range(8, width + 1, 8)],
        measure_s=0.0,
    )


def config_like_wide(layers: int = 4) -> SlimConfig:
    return SlimConfig(
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=32,
    )


def test_speed_model_predicts_from_the_profile() -> None:
    config = config_like_wide()
    # 4 layers × 3 s of decoder + 1 s for embedding and head: the dense model takes 13 s.
    speed = SpeedModel(linear_profile(), config, dense_s=13.0)
    assert speed.scale == 1.0
    assert speed.seconds([LayerTarget(0.0, 0.0)] * 4) == pytest.approx(13.0)
    half = [LayerTarget(0.5, 0.5)] * 4
    assert speed.seconds(half) == pytest.approx(13.0 - 4 * 1.5)
    assert best_achievable(speed, 0.8) == pytest.approx(13.0 / (13.0 - 4 * 0.8 * 3.0), rel=0.01)
    # Modules that time slower alone than inside the model: savings scale down to the measured decoder.
    slow = SpeedModel(linear_profile(2.0, 4.0), config, dense_s=13.0)
    assert slow.scale == pytest.approx(13.0 / 24.0) and slow.seconds(half) > 0
    # The speed-up is measured against stock transformers: a reference that runs 10 % faster than
    # slimkit's modeling code lowers every prediction by that much, the dense model's "speed-up" included.
    stock = SpeedModel(linear_profile(), config, dense_s=13.0, reference_s=11.7)
    assert stock.speedup([LayerTarget(0.0, 0.0)] * 4) == pytest.approx(0.9)
    assert stock.speedup(half) == pytest.approx(0.9 * speed.speedup(half))


def test_planner_meets_the_target_with_least_pruning_and_refuses_the_impossible() -> None:
    config = config_like_wide()
    speed = SpeedModel(linear_profile(), config, dense_s=13.0)
    plan = plan_speedup(speed, 1.5, 0.8, importances=None)
    assert plan.predicted_speedup >= 1.5
    assert plan.predicted_speedup == pytest.approx(1.5, abs=0.02)  # the smallest ratio that gets there
    assert plan.bias == 1.0 and len(plan.targets) == 4
    with pytest.raises(SpeedupUnreachable) as err:
        plan_speedup(speed, 5.0, 0.8, importances=None)  # the cap gives 13 / (13 - 4 · 2.39) = 3.8
    best = best_achievable(speed, 0.8)
    assert err.value.best == pytest.approx(best) and f"{best:.2f}x" in err.value.message


def test_planner_picks_the_split_with_least_estimated_loss() -> None:
    """MLP channels that carry almost no Fisher importance: the search must shift pruning onto the MLP."""
    config = config_like_wide()
    speed = SpeedModel(linear_profile(), config, dense_s=13.0)
    gen = torch.Generator().manual_seed(0)
    importances = Importances(
        attention=[1.0 + torch.rand(8, 1, generator=gen, dtype=torch.float64) for _ in range(4)],
        mlp=[1e-3 * torch.rand(1024, generator=gen, dtype=torch.float64) for _ in range(4)],
        frac=1,
        rotated=True,
        groups=2,
        samples=16,
        tokens=1024,
    )
    plan = plan_speedup(speed, 1.4, 0.8, importances)
    reachable = [c for c in plan.candidates if c["reachable"]]
    assert len(reachable) > 1 and plan.predicted_speedup >= 1.4
    assert plan.estimated_loss == min(c["estimated_loss"] for c in reachable)
    assert plan.bias > 1.0  # more of the pruning on the MLP than the default split
    assert sum(t.mlp for t in plan.targets) > sum(t.attention for t in plan.targets)
    pinned = plan_speedup(speed, 1.4, 0.8, importances, bias=1.0)
    assert pinned.bias == 1.0 and [c["bias"] for c in pinned.candidates] == [1.0]
    assert pinned.estimated_loss > plan.estimated_loss


def test_isotonic_fit_never_rises_with_pruning() -> None:
    attention = _non_increasing([(0.0, 5.0), (0.1, 4.0), (0.2, 4.5), (0.3, 3.0)], pruned_first=False)
    assert [t for _, t in attention] == [5.0, 4.25, 4.25, 3.0]
    mlp = _non_increasing([(8, 1.0), (16, 2.5), (24, 2.0), (32, 3.0)], pruned_first=True)
    assert [t for _, t in mlp] == [1.0, 2.25, 2.25, 3.0]


def test_profile_is_measured_once_per_device_shape_and_workload(wide: Path, tmp_path: Path) -> None:
    config = load_source(str(wide)).model.config
    cpu = torch.device("cpu")
    first = measure_profile(config, WORKLOAD, cpu, torch.float32, tmp_path, ANY_NOISE)
    assert first.measure_s > 0 and len(first.attention) == len(GRID)
    assert first.repeats == 2 and first.noise >= 0
    times = [t for _, t in first.attention]
    assert all(a >= b for a, b in itertools.pairwise(times)) and times[-1] > 0
    widths = [w for w, _ in first.mlp]
    assert widths == sorted(widths) and widths[-1] == 1024 and all(w % 8 == 0 for w in widths)
    assert all(s["width"] % 8 == 0 for s in first.attention_shapes)
    again = measure_profile(config, WORKLOAD, cpu, torch.float32, tmp_path, ANY_NOISE)
    assert again.measure_s == 0.0 and again.attention == first.attention and again.mlp == first.mlp
    decode = measure_profile(config, Workload(2, 64, 8), cpu, torch.float32, tmp_path, ANY_NOISE)
    assert decode.key != first.key and len(list(tmp_path.glob("*.json"))) == 2
    # A cached profile noisier than the policy allows is measured again, and replaced.
    cached = tmp_path / f"{first.key}.json"
    cached.write_text(cached.read_text().replace(f'"noise": {json.dumps(first.noise)}', '"noise": 1e9'))
    assert json.loads(cached.read_text())["noise"] == 1e9
    remeasured = measure_profile(config, WORKLOAD, cpu, torch.float32, tmp_path, ANY_NOISE)
    assert remeasured.measure_s > 0 and json.loads(cached.read_text())["noise"] == remeasured.noise


def test_speedup_job_reports_the_measured_speedup(wide: Path, tmp_path: Path) -> None:
    """Real timings: the job either reports a measured speed-up whose `met` is exactly measured >= target,
    or refuses (`timing_unstable` when this machine is too busy to time, `speedup_unreachable` when the
    timings it trusted put 1.2x out of reach) and leaves nothing behind. Never a number it cannot stand by."""
    stages: list[str] = []
    request = CompressionRequest(
        model=str(wide),
        speedup=1.2,
        workload=WORKLOAD,
        calibration=FAST,
        evaluation=None,
        latency_cache=str(tmp_path / "cache"),
        timing=REAL,
    )
    try:
        result = compress(
            request,
            tmp_path / "out",
            progress=lambda stage, done, total: stages.append(stage),
            show_progress=False,
        )
    except SlimError as err:
        assert err.code in BUSY, err.message
        if err.code == "timing_unstable":
            assert re.search(r"(varied by ±\d+ % over \d+ repeats \(bound ±5 %|contradicts the planned)", err.message)
        assert not (tmp_path / "out").exists()
        return
    speed = result.record["speedup"]
    assert speed["target"] == 1.2 and speed["predicted_speedup"] >= 1.2
    assert speed["measured"] > 0 and speed["met"] == (speed["measured"] >= 1.2)
    assert speed["measured_low"] <= speed["measured"] <= speed["measured_high"]
    assert speed["measured_noise"] <= 0.05 and abs(speed["deviation"]) <= speed["agreement_bound"]
    assert speed["noise"]["predicted"] == speed["predicted_noise"] and speed["timing"]["tolerance"] == 0.05
    assert max(speed["noise"]["stock_dense"], speed["noise"]["slim_dense"], speed["noise"]["profile"]) <= 0.05
    assert speed["dense_s"] > 0 and speed["compressed_s"] > 0 and len(speed["times_s"]["dense"]) == speed["repeats"]
    assert 5 <= speed["repeats"] <= 41 and 5 <= speed["repeats_at_planning"] <= 41
    assert speed["dense_s_at_planning"] > 0 and speed["stock_dense_s_at_planning"] > 0
    assert result.record["recipe"]["allocation"] == "global_pca" and result.record["recipe"]["ratio"] is None
    assert speed["estimated_loss"] is not None and len(speed["candidates"]) > 1
    assert 0 < result.record["ratio_achieved"]["attention_mlp"] <= 0.8
    assert stages.index("profile") < stages.index("calibrate") < stages.index("estimate") < stages.index("compress")
    assert "measure_speed" in stages and result.record["reload_max_abs_diff"] <= 1e-3
    saved = json.loads((tmp_path / "out" / "compression.json").read_text())
    assert saved["speedup"]["measured"] == speed["measured"] and saved["speedup"]["noise"] == speed["noise"]
    model = T.AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True)
    assert model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False).shape == (1, 7)


def test_unreachable_speedup_fails_before_calibration(wide: Path, tmp_path: Path) -> None:
    """19x is out of reach for this model under any timing this machine can trust (best about 2x)."""
    stages: list[str] = []
    request = CompressionRequest(
        model=str(wide),
        speedup=19.0,
        workload=WORKLOAD,
        calibration=FAST,
        latency_cache=str(tmp_path / "cache"),
        timing=REAL,
    )
    with pytest.raises(SlimError) as err:
        compress(request, tmp_path / "out", progress=lambda s, d, t: stages.append(s), show_progress=False)
    assert err.value.code in BUSY, err.value.message
    if isinstance(err.value, SpeedupUnreachable):
        assert 1.0 < err.value.best < 19.0 and re.search(r"best achievable is \d+\.\d\dx", err.value.message)
    assert "calibrate" not in stages and not (tmp_path / "out").exists()


def test_speedup_request_validation(wide: Path) -> None:
    for bad in (
        {"speedup": 1.0},
        {"speedup": 1.5, "ratio": 0.3},
        {"speedup": 1.5, "layer_targets": [LayerTarget(0.1, 0.1)] * 4},
        {"speedup": 1.5, "workload": Workload(batch=0)},
    ):
        with pytest.raises(InvalidArgument):
            CompressionRequest(model=str(wide), **bad).validate()


def test_cli_speedup(
    wide: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLIMKIT_TIMING_MAX_SECONDS", "20")  # the CLI's policy comes from the environment
    args = ["compress", str(wide), "--out", str(tmp_path / "out"), "--samples", "8", "--seq-len", "64"]
    args += ["--batch", "4", "--prompt-tokens", "128", "--latency-cache", str(tmp_path / "cache"), "--no-eval"]
    assert cli_main([*args, "--speedup", "19"]) == 2
    assert re.search(r"error \[(speedup_unreachable|timing_unstable)\]", capsys.readouterr().err)
    code = cli_main([*args, "--speedup", "1.2", "--allocation", "uniform"])
    out, err = capsys.readouterr()
    if code == 2:  # a busy machine: refused by name, nothing written
        assert re.search(r"error \[(speedup_unreachable|timing_unstable)\]", err), err
        assert not (tmp_path / "out").exists()
        return
    assert code == 0, err
    assert re.search(r"speed-up\s+\d+\.\d\dx measured \(predicted \d+\.\d\dx, target 1\.20x\)", out), out
