"""What a compression job asks for (`CompressionRequest`): its checks, its defaults and the recipe it records.

Everything here is decided before any model is loaded, so a bad request fails in milliseconds with an
`InvalidArgument` naming the field; `recipe()` is what `compression.json` and the model card say was asked.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from slimkit.calibration import CalibrationSpec
from slimkit.devices import resolve_device
from slimkit.errors import InvalidArgument
from slimkit.estimator import VARIANTS
from slimkit.evaluate import EvalSpec
from slimkit.latency.noise import TimingPolicy
from slimkit.latency.workload import Workload
from slimkit.layerwise import LayerTarget
from slimkit.methods import is_depth_method, is_model_method, method_for
from slimkit.recipes import request_kwargs
from slimkit.recovery import RecoverySpec
from slimkit.transact import TransActSpec

MAX_RATIO = 0.9
MAX_SPEEDUP = 20.0
DEFAULT_RATIO = 0.3
QUALITY_HEAD_STEP = 2  # ratio targets: kept heads' widths free (even), see resolved_head_step


@dataclass
class CompressionRequest:
    model: str  # local folder or Hub id
    method: str = "intraslice"
    ratio: float | None = None  # fraction of decoder attention + MLP parameters to remove (default 0.3)
    speedup: float | None = None  # instead of a ratio: the workload's speed-up to reach on `device`
    workload: Workload = field(default_factory=Workload)  # what a speed-up is measured on
    layer_targets: list[LayerTarget] | None = None  # per-layer ratios; overrides ratio/speedup and allocation
    allocation: str | None = None  # uniform / global / global_pca; default uniform (ratio), global_pca (speed-up)
    bias: float | None = None  # λ_b, MLP share: default the method's (uniform), 1 (estimators), searched (speed-up)
    cap: float = 0.8  # per-layer ratio cap of the estimator and of speed-up allocations
    frac: int | None = None  # importance blocks per head (global estimators; None: one per head-width step)
    head_step: int | None = None  # kept heads' width grid; default 2 (free even widths) for a ratio, 8 for a speed-up
    latency_cache: str | None = None  # folder of cached latency profiles (default ~/.cache/slimkit/latency)
    timing: TimingPolicy | None = None  # speed-up timing noise bound and repeats (default: TimingPolicy.from_env())
    revision: str | None = None
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    evaluation: EvalSpec | None = field(default_factory=EvalSpec)
    device: str = "auto"
    dtype: str | None = None  # e.g. "bfloat16"; default: the checkpoint's dtype
    batch_size: int = 8
    verify: bool = True  # reload the saved folder and compare logits
    source_name: str | None = None  # how records name the source (e.g. the Hub id of a downloaded folder)
    source_revision: str | None = None  # the commit the folder was downloaded at
    recovery: RecoverySpec | None = None  # distillation from the dense model after compression (None: one-shot)
    transact: TransActSpec | None = None  # method "transact": shots and between-shot training (default 1, none)

    @classmethod
    def from_recipe(
        cls,
        source: str | Any,
        model: str | None = None,
        calibration_text: str | None = None,
        **overrides: Any,
    ) -> CompressionRequest:
        """The request a recorded recipe came from (`compression.json`, an output folder, a recipe file or
        dict): same method, target, calibration and seeds, hence the same weights. `model` (and `revision`)
        default to the record's source; `overrides` set the where-to-run fields (device, evaluation, …)."""
        kwargs = request_kwargs(source, calibration_text)
        if model is not None:
            kwargs["model"], kwargs["revision"] = model, overrides.pop("revision", None)
        kwargs |= overrides
        if not kwargs.get("model"):
            raise InvalidArgument("the recipe names no source model: give one")
        return cls(**kwargs)

    def target_ratio(self) -> float:
        return DEFAULT_RATIO if self.ratio is None else self.ratio

    def resolved_head_step(self) -> int | None:
        """The head-width grid width methods use; None = the 8-channel grid (2 for heads under 32 channels).

        A ratio target optimises quality: free even widths measured better than the 8-channel grid at 20 %
        (README, "IntraSlice quality"). A speed-up target plans on the 8-channel grid, whose widths the
        latency profile timed and PyTorch's fused attention kernels prefer.
        """
        if self.head_step is not None or self.speedup is not None or self.whole_model_shape():
            return self.head_step
        return QUALITY_HEAD_STEP

    def whole_model_shape(self) -> bool:
        """Methods that give every layer one shape (depth methods, TransAct): no head grid, no allocation."""
        return is_depth_method(self.method) or is_model_method(self.method)

    def resolved_transact(self) -> TransActSpec | None:
        if not is_model_method(self.method):
            return None
        return self.transact or TransActSpec()

    def resolved_allocation(self) -> str:
        if self.allocation is not None:
            return self.allocation
        return "global_pca" if self.speedup is not None else "uniform"

    def resolved_bias(self) -> float | None:
        """λ_b, the MLP's share of the pruning: as given; searched for a speed-up (None); for a uniform ratio
        target the method's own split (`uniform_bias`: IntraSlice 1.075, measured); 1 for the estimators."""
        if self.bias is not None:
            return self.bias
        if self.speedup is not None:
            return None
        if self.uses_uniform_split():
            return method_for(self.method).uniform_bias
        return 1.0

    def uses_uniform_split(self) -> bool:
        """A ratio target spread uniformly by a width method: every layer split by λ_b (`resolved_bias`)."""
        return (
            self.speedup is None
            and self.layer_targets is None
            and self.resolved_allocation() == "uniform"
            and not self.whole_model_shape()
        )

    def validate(self) -> None:
        method_for(self.method)
        allocation = self.resolved_allocation()
        if allocation not in VARIANTS:
            raise InvalidArgument(f"unknown allocation {allocation!r}; choose one of {', '.join(VARIANTS)}")
        if self.ratio is not None and self.speedup is not None:
            raise InvalidArgument("give a ratio or a speedup target, not both")
        if not 0 < self.target_ratio() <= MAX_RATIO:
            raise InvalidArgument(f"ratio must be in (0, {MAX_RATIO}], got {self.ratio}")
        if self.whole_model_shape() and (
            self.speedup is not None or self.layer_targets is not None or allocation != "uniform"
        ):
            what = "removes whole layers" if is_depth_method(self.method) else "gives every layer the same shape"
            raise InvalidArgument(
                f"{self.method} {what}: give a ratio (uniform allocation), not a speedup, "
                "per-layer targets or an estimator allocation"
            )
        if self.transact is not None:
            if not is_model_method(self.method):
                raise InvalidArgument(f"transact settings only apply to method 'transact', not {self.method!r}")
            self.transact.validate()
            shot_text = (self.recovery.text if self.recovery else None) or self.calibration.text
            if self.transact.recovery_tokens and self.evaluation is not None and shot_text == self.evaluation.text:
                raise InvalidArgument("the transact training text must not be the evaluation text (held out)")
        if self.speedup is not None:
            if not 1 < self.speedup <= MAX_SPEEDUP:
                raise InvalidArgument(f"speedup must be in (1, {MAX_SPEEDUP}], got {self.speedup}")
            if self.layer_targets is not None:
                raise InvalidArgument("a speedup target chooses the per-layer ratios itself; drop layer_targets")
            self.workload.validate()
        if not 0 < self.cap <= MAX_RATIO:
            raise InvalidArgument(f"cap must be in (0, {MAX_RATIO}], got {self.cap}")
        if self.bias is not None and self.bias < 0:
            raise InvalidArgument(f"bias must be >= 0, got {self.bias}")
        if self.frac is not None and self.frac < 1:
            raise InvalidArgument(f"frac must be >= 1, got {self.frac}")
        if self.head_step is not None:
            if self.head_step < 2 or self.head_step % 2:
                raise InvalidArgument(f"head_step must be an even number >= 2, got {self.head_step}")
            if self.whole_model_shape():
                what = "removes whole layers" if is_depth_method(self.method) else "keeps heads at full width"
                raise InvalidArgument(f"{self.method} {what}: head_step does not apply")
            if self.speedup is not None:
                raise InvalidArgument("a speedup target plans on the 8-channel head grid itself: drop head_step")
        for t in self.layer_targets or []:
            if not (0 <= t.attention <= MAX_RATIO and 0 <= t.mlp <= MAX_RATIO):
                raise InvalidArgument(f"per-layer ratios must be in [0, {MAX_RATIO}], got {t}")
        if self.batch_size < 1:
            raise InvalidArgument("batch_size must be >= 1")
        if self.dtype is not None and not isinstance(getattr(torch, self.dtype, None), torch.dtype):
            raise InvalidArgument(f"unknown dtype {self.dtype!r}")
        self.calibration.validate()
        if self.recovery is not None:
            self.recovery.validate()
            if self.evaluation is None:
                raise InvalidArgument("recovery needs an evaluation: it is kept only if held-out perplexity improves")
            if (self.recovery.text or self.calibration.text) == self.evaluation.text:
                raise InvalidArgument("the recovery text must not be the evaluation text (evaluation is held out)")
        resolve_device(self.device)

    def recipe(self) -> dict[str, Any]:
        recipe: dict[str, Any] = {
            "method": self.method,
            "ratio": None if self.speedup is not None else self.target_ratio(),
            "allocation": self.resolved_allocation() if not self.layer_targets else None,
            "layer_targets": [asdict(t) for t in self.layer_targets] if self.layer_targets else None,
            "calibration": calibration_recipe(self.calibration),
            "dtype": self.dtype,
        }
        if not self.whole_model_shape():
            recipe["head_step"] = self.resolved_head_step()
        if self.uses_uniform_split():
            recipe["bias"] = self.resolved_bias()
        if self.resolved_transact() is not None:
            recipe["transact"] = asdict(self.resolved_transact())
        if self.speedup is not None:
            recipe["speedup"] = {"target": self.speedup, "workload": self.workload.to_dict()}
        if self.resolved_allocation() != "uniform" or self.speedup is not None:
            recipe["estimator"] = {"bias": self.bias, "cap": self.cap, "frac": self.frac}
        if self.recovery is not None:
            recipe["recovery"] = self.recovery.recipe(calibration_recipe(self.calibration)["text"])
        return recipe


def calibration_recipe(spec: CalibrationSpec) -> dict[str, Any]:
    """The calibration part of the recipe: the label stands in for the text when one is given."""
    recipe = asdict(spec)
    label = recipe.pop("label")
    if label is not None:
        recipe["text"] = label
    return recipe
