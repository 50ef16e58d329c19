"""Registry of compression methods. A new method = one file + one line here.

Width methods (`LayerMethod`) shrink every layer in place, driven by `slimkit.layerwise`; depth methods
(`DepthMethod`) remove whole layers, driven by `slimkit.depth`; model methods choose one shape for every
layer from whole-model statistics and train between steps (TransAct, driven by `slimkit.transact`).
"""

from __future__ import annotations

from slimkit.depth import DepthMethod
from slimkit.depth.flattengpt import FlattenGPT
from slimkit.depth.shortgpt import ShortGPT
from slimkit.errors import InvalidArgument
from slimkit.layerwise import LayerMethod
from slimkit.methods.intraslice import IntraSlice
from slimkit.methods.wanda_sp import WandaSP
from slimkit.transact import TransAct

WIDTH_METHODS: dict[str, LayerMethod] = {
    "intraslice": IntraSlice(),
    "intraslice-nocomp": IntraSlice(compensate=False),
    "wanda-sp": WandaSP(),
}
DEPTH_METHODS: dict[str, DepthMethod] = {
    "flattengpt": FlattenGPT(),
    "flattengpt-paper": FlattenGPT("flattengpt-paper", serial_target=False),
    "shortgpt": ShortGPT(),
}
MODEL_METHODS: dict[str, TransAct] = {
    "transact": TransAct(),
}
METHODS: dict[str, LayerMethod | DepthMethod | TransAct] = {**WIDTH_METHODS, **DEPTH_METHODS, **MODEL_METHODS}


def method_for(name: str, head_step: int | None = None) -> LayerMethod | DepthMethod | TransAct:
    """The registered method; for a width method with `head_step`, a copy on that head-width grid."""
    if name not in METHODS:
        raise InvalidArgument(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    method = METHODS[name]
    if head_step is not None and name in WIDTH_METHODS:
        return method.with_head_step(head_step)
    return method


def is_depth_method(name: str) -> bool:
    return name in DEPTH_METHODS


def is_model_method(name: str) -> bool:
    return name in MODEL_METHODS
