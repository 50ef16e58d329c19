"""Registry of compression methods: name -> layer method. A new method = one file + one line here."""

from __future__ import annotations

from slimkit.errors import InvalidArgument
from slimkit.layerwise import LayerMethod
from slimkit.methods.intraslice import IntraSlice
from slimkit.methods.wanda_sp import WandaSP

METHODS: dict[str, LayerMethod] = {
    "intraslice": IntraSlice(),
    "intraslice-nocomp": IntraSlice(compensate=False),
    "wanda-sp": WandaSP(),
}


def method_for(name: str) -> LayerMethod:
    if name not in METHODS:
        raise InvalidArgument(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]
