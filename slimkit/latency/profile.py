"""Per-layer latency of candidate widths, measured on the device that will run the job, cached.

A speed-up target needs to know what pruning a layer *buys* on this device: on a GPU a 135 M model is
launch-bound and narrower matrices save little; on a CPU time follows the matmul sizes. So we time the two
modules of one decoder layer (the slim modeling file's own `SlimAttention` and `SlimMLP`, random weights
in the compute dtype) at a grid of widths, for the job's workload (prefill of batch × prompt tokens, plus
`generated_tokens` decode steps against a KV cache of the workload's mean context length):

- attention at ratios 0, 0.1, …, 0.9, each as a *representative* shape: the head count, KV heads and head
  width (on the engine's width grid) whose parameter count is closest to (1 − r) of the dense layer's,
  preferring more, narrower heads (the engine narrows heads down to ¾ of their width before it deletes
  them; only a last remaining head may go narrower). The engine's real head plan depends on calibration
  data; the final whole-model measurement is what the job reports;
- the MLP at widths I·(1 − r) on the 8-channel grid.
All points are timed in interleaved rounds until each median's 95 % interval is within the timing
policy's tolerance, as a fraction of the dense module's time (`slimkit.latency.noise`; `TimingUnstable`
otherwise); the worst point's noise is kept with the profile. Between grid points the latency is
interpolated linearly; each curve is made non-increasing in the amount pruned (noise on a shared machine
must not make pruning look like it costs time).

Profiles are cached as JSON under `cache_dir`, keyed by the device (GPU name and compute capability, or CPU
model and thread count), torch version, dtype, the layer's shape and the workload: every job on the same
worker and architecture reuses them, unless the cached profile's noise exceeds the job's tolerance.
"""

from __future__ import annotations

import bisect
import copy
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers.cache_utils import DynamicCache

from slimkit.errors import InvalidArgument
from slimkit.latency.noise import Rounds, TimingPolicy, measure_rounds
from slimkit.latency.workload import Workload, sync
from slimkit.methods.head_plan import MIN_WIDTH_FRAC, width_step
from slimkit.modeling.modeling_slim import SlimAttention, SlimConfig, SlimMLP, SlimRotaryEmbedding, attention_mask_for
from slimkit.shapes import MLP_ROUND, Shape, attention_params, get_shapes, set_shapes

PROFILE_VERSION = 2  # 2: profiles record their noise
GRID = tuple(round(0.1 * i, 1) for i in range(10))  # pruned fraction of a module: 0, 0.1, ..., 0.9
MIN_SAMPLE_S = 0.02  # one timing sample repeats a call until it lasts at least this long (a few timeslices)
MAX_INNER = 64


def default_cache_dir() -> Path:
    root = os.environ.get("SLIMKIT_CACHE") or Path.home() / ".cache" / "slimkit"
    return Path(root) / "latency"


def device_name(device: torch.device) -> str:
    """What the latency of a kernel depends on: the GPU model, or the CPU model and the threads used."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (sm{major}{minor})"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def representative_attention(shape: Shape, config: SlimConfig, ratio: float) -> Shape:
    """The head count / KV heads / width on the engine's grid closest to (1 − ratio) of the parameters."""
    n_h, n_kv, d_h = shape["num_attention_heads"], shape["num_key_value_heads"], config.head_dim
    group = n_h // n_kv
    step = width_step(d_h)
    floor = math.ceil(MIN_WIDTH_FRAC * d_h / step) * step
    target = (1 - ratio) * attention_params(shape, config)
    best: tuple[float, int, Shape] | None = None
    for heads in range(1, n_h + 1):
        kv = -(-heads // group)  # whole groups go first: the cheapest way to lose query heads
        for width in range(floor if heads > 1 else step, d_h + 1, step):
            candidate = dict(
                shape,
                num_attention_heads=heads,
                num_key_value_heads=kv,
                qk_head_dim=width,
                v_head_dim=width,
                kv_index=[i // group for i in range(heads)],
                rope_index=[list(range(width // 2)) for _ in range(kv)],
            )
            key = (abs(attention_params(candidate, config) - target), -heads)
            if best is None or key < best[:2]:
                best = (*key, candidate)
    assert best is not None
    return best[2]


@dataclass
class LatencyProfile:
    """Seconds one layer's attention / MLP costs for the workload, at the grid's widths."""

    key: str
    device: str
    dtype: str
    torch_version: str
    workload: dict[str, int]
    attention: list[tuple[float, float]]  # (ratio, seconds), ratio ascending
    attention_shapes: list[dict[str, int]]  # heads, KV heads, width behind each attention point
    mlp: list[tuple[int, float]]  # (width, seconds), width ascending
    measure_s: float  # how long measuring took (0 when read from the cache)
    noise: float = 0.0  # the worst half-width of a point's 95 % interval / its module's dense time (0.05: ±5 %)
    repeats: int = 0  # interleaved rounds timed

    def attention_seconds(self, ratio: float) -> float:
        return _interpolate([r for r, _ in self.attention], [t for _, t in self.attention], ratio)

    def mlp_seconds(self, width: float) -> float:
        return _interpolate([w for w, _ in self.mlp], [t for _, t in self.mlp], width)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _interpolate(xs: list[float], ys: list[float], x: float) -> float:
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    j = bisect.bisect_right(xs, x)
    x0, x1, y0, y1 = xs[j - 1], xs[j], ys[j - 1], ys[j]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


@dataclass
class Probe:
    """One timed call: `setup` (untimed) builds the call's state, `call` runs it once."""

    setup: Callable[[], Any]
    call: Callable[[Any], None]
    inner: int = 1  # calls per sample, so that a sample lasts at least MIN_SAMPLE_S


def _sampler(probe: Probe, device: torch.device) -> Callable[[], float]:
    def sample() -> float:
        state = probe.setup()
        sync(device)
        start = time.perf_counter()
        for _ in range(probe.inner):
            probe.call(state)
        sync(device)
        return (time.perf_counter() - start) / probe.inner

    return sample


def interleaved_medians(
    probes: list[Probe],
    device: torch.device,
    policy: TimingPolicy,
    progress: Callable[[int, int], None] | None = None,
    relative_to: list[int] | None = None,
) -> Rounds:
    """Seconds per call of each probe, sampled round-robin (all probes, then all again, …) until every
    median is known to the policy's tolerance (`TimingUnstable` otherwise), as a fraction of the median of
    the probe `relative_to` names (its dense counterpart).

    Interleaving matters: timed one after the other, the first candidates run on a colder machine (caches,
    allocator, thread pool, clocks) and look slower than they are, which inflates what pruning saves.
    """
    for probe in probes:  # warm-up round, and how many calls make one sample
        state = probe.setup()
        probe.call(state)
        sync(device)
        start = time.perf_counter()
        probe.call(state)
        sync(device)
        once = max(time.perf_counter() - start, 1e-7)
        probe.inner = max(1, min(MAX_INNER, int(MIN_SAMPLE_S / once)))
    samplers = [_sampler(probe, device) for probe in probes]
    what = "one layer's attention and MLP widths"
    return measure_rounds(samplers, policy, what, device_name(device), progress, relative_to=relative_to)


class _Bench:
    """Random inputs and RoPE tables for timing one layer's modules under a workload.

    Each module becomes weighted probes: its prefill call (weight 1) and, with generated tokens, one decode
    step against a KV cache of the workload's mean context (weight = generated tokens).
    """

    def __init__(self, config: SlimConfig, workload: Workload, device: torch.device, dtype: torch.dtype) -> None:
        self.config, self.workload, self.device, self.dtype = config, workload, device, dtype
        gen = torch.Generator().manual_seed(0)
        B, P, d = workload.batch, workload.prompt_tokens, config.hidden_size
        self.x_prefill = torch.randn(B, P, d, generator=gen).to(device, dtype)
        self.x_step = torch.randn(B, 1, d, generator=gen).to(device, dtype)
        rotary = SlimRotaryEmbedding(config).to(device)
        self.cos, self.sin = rotary(self.x_prefill, torch.arange(P, device=device)[None])
        context = workload.context_tokens
        self.cos_step, self.sin_step = rotary(self.x_step, torch.tensor([[context]], device=device))
        window = config.sliding_window
        self.mask_prefill = attention_mask_for(None, P, 0, window, dtype, device)
        self.mask_step = attention_mask_for(None, 1, context, window, dtype, device)

    def module_config(self, shape: Shape) -> SlimConfig:
        config = copy.deepcopy(self.config)
        config.num_hidden_layers = 1
        set_shapes(config, [shape])
        return config

    def _weighted(self, prefill: Probe, step: Probe) -> list[tuple[Probe, int]]:
        generated = self.workload.generated_tokens
        return [(prefill, 1)] + ([(step, generated)] if generated else [])

    @torch.inference_mode()
    def attention(self, shape: Shape) -> list[tuple[Probe, int]]:
        with torch.device(self.device):
            attn = SlimAttention(self.module_config(shape), 0).to(self.dtype).eval()
        B, n_kv, context = self.workload.batch, shape["num_key_value_heads"], self.workload.context_tokens
        k = torch.randn(B, n_kv, context, shape["qk_head_dim"], device=self.device, dtype=self.dtype)
        v = torch.randn(B, n_kv, context, shape["v_head_dim"], device=self.device, dtype=self.dtype)

        def fresh_cache() -> DynamicCache:
            cache = DynamicCache()
            cache.update(k, v, 0)
            return cache

        prefill = Probe(lambda: None, lambda _: attn(self.x_prefill, self.cos, self.sin, self.mask_prefill))
        step = Probe(fresh_cache, lambda cache: attn(self.x_step, self.cos_step, self.sin_step, self.mask_step, cache))
        return self._weighted(prefill, step)

    @torch.inference_mode()
    def mlp(self, shape: Shape) -> list[tuple[Probe, int]]:
        with torch.device(self.device):
            mlp = SlimMLP(self.module_config(shape), 0).to(self.dtype).eval()
        return self._weighted(
            Probe(lambda: None, lambda _: mlp(self.x_prefill)), Probe(lambda: None, lambda _: mlp(self.x_step))
        )


def _non_increasing(points: list[tuple[Any, float]], pruned_first: bool) -> list[tuple[Any, float]]:
    """Least-squares fit of the times that never grows with the amount pruned (pool adjacent violators).

    Noise on a shared machine must not make pruning look like it costs time, and a single slow or fast
    sample should move its neighbours by an average, not drag a whole side of the curve with it.
    """
    ordered = points[::-1] if pruned_first else list(points)  # least pruned first
    blocks: list[list[float]] = []  # [sum, count] of pooled runs, means non-increasing
    for _, t in ordered:
        blocks.append([t, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] < blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    fitted = [b[0] / b[1] for b in blocks for _ in range(int(b[1]))]
    out = [(x, t) for (x, _), t in zip(ordered, fitted, strict=True)]
    return out[::-1] if pruned_first else out


def profile_key(config: SlimConfig, shape: Shape, workload: Workload, device: torch.device, dtype: torch.dtype) -> str:
    layer = {k: shape[k] for k in ("num_attention_heads", "num_key_value_heads", "intermediate_size")}
    descriptor = {
        "version": PROFILE_VERSION,
        "device": device_name(device),
        "torch": torch.__version__,
        "dtype": str(dtype),
        "layer": layer,
        "model": {
            k: getattr(config, k)
            for k in ("hidden_size", "head_dim", "hidden_act", "sliding_window", "attention_bias", "mlp_bias")
        },
        "workload": workload.to_dict(),
        "grid": GRID,
    }
    return hashlib.sha256(json.dumps(descriptor, sort_keys=True).encode()).hexdigest()[:32]


def dense_layer_shape(config: SlimConfig) -> Shape:
    shapes = get_shapes(config)
    if any(s != shapes[0] for s in shapes[1:]):
        raise InvalidArgument("speed-up targets need a model whose layers all have the same shape")
    return shapes[0]


def measure_profile(
    config: SlimConfig,
    workload: Workload,
    device: torch.device,
    dtype: torch.dtype,
    cache_dir: Path | None = None,
    policy: TimingPolicy | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LatencyProfile:
    """The layer latency profile for this model shape, workload and device (from the cache when there).

    A cached profile is reused only if it was measured to the policy's tolerance; otherwise it is measured
    again (and replaced).
    """
    policy = policy or TimingPolicy()
    workload.validate()
    shape = dense_layer_shape(config)
    key = profile_key(config, shape, workload, device, dtype)
    cache_file = (cache_dir or default_cache_dir()) / f"{key}.json"
    if cache_file.is_file():
        try:
            data = json.loads(cache_file.read_text())
            data.update(
                attention=[tuple(p) for p in data["attention"]], mlp=[tuple(p) for p in data["mlp"]], measure_s=0.0
            )
            cached = LatencyProfile(**data)
            if cached.noise <= policy.tolerance:
                return cached
        except (ValueError, TypeError, KeyError):
            pass  # unreadable or from an older layout: measure again
    start = time.perf_counter()
    bench = _Bench(config, workload, device, dtype)
    width = shape["intermediate_size"]
    attention_shapes = [representative_attention(shape, config, r) for r in GRID]
    mlp_widths = sorted({max(MLP_ROUND, round(width * (1 - r) / MLP_ROUND) * MLP_ROUND) for r in GRID} | {width})
    candidates = [bench.attention(a) for a in attention_shapes]
    candidates += [bench.mlp(dict(shape, intermediate_size=w)) for w in mlp_widths]
    probes = [probe for weighted in candidates for probe, _ in weighted]
    # Each point's noise as a fraction of its module's dense time (first attention, last MLP candidate).
    per = len(candidates[0])
    dense_of = [0] * len(GRID) + [len(candidates) - 1] * len(mlp_widths)
    relative_to = [dense_of[c] * per + k for c in range(len(candidates)) for k in range(per)]
    with torch.inference_mode():
        rounds = interleaved_medians(probes, device, policy, progress, relative_to)
    medians = iter(e.median for e in rounds.estimates)
    seconds = [sum(weight * next(medians) for _, weight in weighted) for weighted in candidates]
    attention = list(zip(GRID, seconds[: len(GRID)], strict=True))
    mlp = list(zip(mlp_widths, seconds[len(GRID) :], strict=True))
    profile = LatencyProfile(
        key=key,
        device=device_name(device),
        dtype=str(dtype).removeprefix("torch."),
        torch_version=torch.__version__,
        workload=workload.to_dict(),
        attention=_non_increasing(attention, pruned_first=False),
        attention_shapes=[
            {"heads": s["num_attention_heads"], "kv_heads": s["num_key_value_heads"], "width": s["qk_head_dim"]}
            for s in attention_shapes
        ],
        mlp=_non_increasing(mlp, pruned_first=True),
        measure_s=round(time.perf_counter() - start, 3),
        noise=rounds.noise,
        repeats=rounds.repeats,
    )
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({k: v for k, v in profile.to_dict().items() if k != "measure_s"}, indent=1) + "\n")
    tmp.replace(cache_file)  # atomic: concurrent workers never read half a file
    return profile
