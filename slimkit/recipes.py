"""Replaying a recorded recipe: `compression.json` (or its `recipe` part, or a JSON/YAML file holding one)
back into the `CompressionRequest` that produced it, so `slimkit compress --recipe compression.json` and
`CompressionRequest.from_recipe(...)` rerun a compression exactly (same seeds: the same weights).

What a recipe records is what decides the weights: method, target, allocation and its split λ_b or
estimator settings, head grid, calibration (text, samples, length, seed), dtype, TransAct's shots,
recovery. Where to run (device, batch size), what to evaluate and where to save are the caller's, as on the
first run. A calibration given inline was recorded by its hash only (`inline:sha256:…`): replaying it
needs the text again (`calibration_text=`).
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from slimkit.calibration import CalibrationSpec
from slimkit.errors import InvalidArgument
from slimkit.latency.workload import Workload
from slimkit.layerwise import LayerTarget
from slimkit.methods import is_depth_method, is_model_method
from slimkit.recovery import RecoverySpec
from slimkit.transact import TransActSpec

RECIPE_FILE = "compression.json"


def load_recipe(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A record or a bare recipe, from a dict, an output folder, or a .json / .yaml file."""
    if isinstance(source, dict):
        return source
    path = Path(source)
    if path.is_dir():
        path = path / RECIPE_FILE
    if not path.is_file():
        raise InvalidArgument(f"no recipe at {path.name}: give compression.json, an output folder, or a recipe file")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml  # a transformers dependency

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except ValueError as err:
        raise InvalidArgument(f"{path.name} is not valid {path.suffix.lstrip('.') or 'JSON'}: {err}") from err
    if not isinstance(data, dict):
        raise InvalidArgument(f"{path.name} must hold a mapping (a recipe or a compression.json record)")
    return data


def request_kwargs(source: str | Path | dict[str, Any], calibration_text: str | None = None) -> dict[str, Any]:
    """Keyword arguments of `CompressionRequest` that replay the recipe (model and revision from a record)."""
    data = load_recipe(source)
    recipe = data.get("recipe", data)
    if "method" not in recipe:
        raise InvalidArgument("not a recipe: it has no 'method' (give compression.json or its 'recipe')")
    kwargs: dict[str, Any] = {"method": recipe["method"], "dtype": recipe.get("dtype")}
    origin = data.get("source") if "recipe" in data else None
    if isinstance(origin, dict):
        kwargs["model"], kwargs["revision"] = origin.get("model"), origin.get("revision")
    speedup = recipe.get("speedup")
    if speedup:
        kwargs["speedup"] = speedup["target"]
        kwargs["workload"] = Workload(**speedup.get("workload", {}))
    else:
        kwargs["ratio"] = recipe.get("ratio")
    if recipe.get("layer_targets"):
        kwargs["layer_targets"] = [LayerTarget(**t) for t in recipe["layer_targets"]]
    else:
        kwargs["allocation"] = recipe.get("allocation")
    if recipe.get("bias") is not None:
        kwargs["bias"] = recipe["bias"]
    elif _uniform_width_ratio(recipe):
        kwargs["bias"] = 1.0  # recorded before λ_b split uniform targets: equal fractions, as it was run
    estimator = recipe.get("estimator") or {}
    kwargs |= {k: estimator[k] for k in ("bias", "cap", "frac") if estimator.get(k) is not None}
    if recipe.get("head_step") is not None:
        kwargs["head_step"] = recipe["head_step"]
    if recipe.get("transact"):
        kwargs["transact"] = TransActSpec(**recipe["transact"])
    calibration = dict(recipe.get("calibration") or {})
    text = calibration_text or calibration.get("text")
    if text is None or str(text).startswith("inline:"):
        raise InvalidArgument(
            "the recipe's calibration text was given inline (only its hash is recorded): pass it again"
        )
    kwargs["calibration"] = CalibrationSpec(
        text=text, **{k: calibration[k] for k in ("samples", "seq_len", "seed") if k in calibration}
    )
    if recipe.get("recovery"):
        known = {f.name for f in fields(RecoverySpec)}
        spec = {k: v for k, v in recipe["recovery"].items() if k in known}
        if spec.get("text") == calibration.get("text"):
            spec["text"] = None  # "the calibration text", as it was asked
        kwargs["recovery"] = RecoverySpec(**spec)
    return kwargs


def _uniform_width_ratio(recipe: dict[str, Any]) -> bool:
    """A width method's uniform ratio target (the recipes whose split λ_b decides)."""
    return (
        not recipe.get("speedup")
        and not recipe.get("layer_targets")
        and recipe.get("allocation") in (None, "uniform")
        and not (is_depth_method(recipe["method"]) or is_model_method(recipe["method"]))
    )
