"""Registry of supported model families: `config.model_type` -> adapter."""

from __future__ import annotations

from transformers import PreTrainedConfig

from slimkit.arch.base import ArchAdapter, StateDict
from slimkit.arch.llama import LlamaAdapter
from slimkit.arch.phi3 import Phi3Adapter
from slimkit.arch.qwen2 import Qwen2Adapter
from slimkit.errors import UnsupportedArchitecture

ADAPTERS: dict[str, ArchAdapter] = {
    model_type: adapter
    for adapter in (LlamaAdapter(), Qwen2Adapter(), Phi3Adapter())
    for model_type in adapter.model_types
}


def supported_model_types() -> list[str]:
    return sorted(ADAPTERS)


def adapter_for(config: PreTrainedConfig) -> ArchAdapter:
    """The adapter for this config, after checking the config's features; a clear error otherwise."""
    adapter = ADAPTERS.get(config.model_type)
    if adapter is None:
        raise UnsupportedArchitecture(
            f"model_type {config.model_type!r} is not supported; supported: {', '.join(supported_model_types())}"
        )
    adapter.check(config)
    return adapter


__all__ = ["ADAPTERS", "ArchAdapter", "StateDict", "adapter_for", "supported_model_types"]
