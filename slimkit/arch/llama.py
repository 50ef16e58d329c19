"""Llama family: Llama-2 (MHA), Llama-3 (GQA, `llama3` RoPE scaling), Mistral (its sliding window is kept).

The canonical layout *is* the Llama layout, so the mapping is the identity. `attention_bias` puts a bias on
all four attention projections, `mlp_bias` on all three MLP projections.
"""

from __future__ import annotations

from transformers import PreTrainedConfig

from slimkit.arch.base import ArchAdapter


class LlamaAdapter(ArchAdapter):
    model_types = ("llama", "mistral")

    def attention_biases(self, config: PreTrainedConfig) -> tuple[bool, bool]:
        bias = bool(getattr(config, "attention_bias", False))
        return bias, bias
