"""Qwen2: bias on q/k/v (not on o_proj), small models tie the input and output embeddings.

Tied embeddings need nothing special: no method here touches the embedding or the head. Qwen2 can mark
some layers as sliding-window (`layer_types`); the engine keeps one attention kind for all layers, so such
configs are refused.
"""

from __future__ import annotations

from transformers import PreTrainedConfig

from slimkit.arch.base import ArchAdapter
from slimkit.errors import UnsupportedArchitecture


class Qwen2Adapter(ArchAdapter):
    model_types = ("qwen2",)

    def attention_biases(self, config: PreTrainedConfig) -> tuple[bool, bool]:
        return True, False

    def mlp_bias(self, config: PreTrainedConfig) -> bool:
        return False

    def sliding_window(self, config: PreTrainedConfig) -> int | None:
        return None

    def check(self, config: PreTrainedConfig) -> None:
        super().check(config)
        if any(t != "full_attention" for t in (getattr(config, "layer_types", None) or [])):
            raise UnsupportedArchitecture("qwen2: sliding-window layers (use_sliding_window=True) are not supported")
