"""The contract between the engine and one model family.

Every method works on one *canonical* layout, the Llama one used by `SlimForCausalLM`:
`model.layers.{i}.self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`, `input_layernorm`,
`post_attention_layernorm`, plus `model.embed_tokens`, `model.norm`, `lm_head`. An adapter knows how its
family's checkpoint maps onto that layout and back (fused projections, biases, which config fields exist),
and which of its configs the engine can handle. Adding a family = one file with one `ArchAdapter`
subclass + one line in `slimkit/arch/__init__.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from transformers import AutoConfig, PreTrainedConfig

from slimkit.errors import UnsupportedArchitecture
from slimkit.modeling.modeling_slim import SlimConfig

StateDict = dict[str, torch.Tensor]


class ArchAdapter(ABC):
    """Family-specific facts, isolated behind the canonical layout."""

    model_types: ClassVar[tuple[str, ...]]
    """The `config.model_type` values this adapter reads."""

    @abstractmethod
    def attention_biases(self, config: PreTrainedConfig) -> tuple[bool, bool]:
        """(bias on q/k/v, bias on o_proj) in this config."""

    def mlp_bias(self, config: PreTrainedConfig) -> bool:
        """Whether gate/up/down carry a bias."""
        return bool(getattr(config, "mlp_bias", False))

    def head_dim(self, config: PreTrainedConfig) -> int:
        """Width of one attention head."""
        return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    def check(self, config: PreTrainedConfig) -> None:
        """Refuse configs whose features the engine does not implement, before any work is done."""
        rope = config.rope_parameters or {}
        if float(rope.get("partial_rotary_factor", 1.0)) != 1.0:
            raise UnsupportedArchitecture(
                f"{config.model_type}: partial rotary embeddings (partial_rotary_factor="
                f"{rope['partial_rotary_factor']}) are not supported yet"
            )
        if getattr(config, "hidden_act", "silu") not in ("silu", "swish", "gelu", "gelu_pytorch_tanh"):
            raise UnsupportedArchitecture(f"{config.model_type}: activation {config.hidden_act!r} is not supported")
        if self.head_dim(config) % 2:
            raise UnsupportedArchitecture(f"{config.model_type}: odd head_dim cannot carry rotary pairs")

    def slim_config(self, config: PreTrainedConfig) -> SlimConfig:
        """The dense model, described as a `SlimConfig` with no per-layer overrides."""
        qkv_bias, o_bias = self.attention_biases(config)
        rope = dict(config.rope_parameters or {"rope_type": "default", "rope_theta": 10000.0})
        rope.pop("partial_rotary_factor", None)
        return SlimConfig(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            num_key_value_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            head_dim=self.head_dim(config),
            hidden_act=config.hidden_act,
            max_position_embeddings=config.max_position_embeddings,
            rms_norm_eps=config.rms_norm_eps,
            rope_parameters=rope,
            sliding_window=self.sliding_window(config),
            attention_bias=qkv_bias,
            attention_out_bias=o_bias,
            mlp_bias=self.mlp_bias(config),
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            pad_token_id=getattr(config, "pad_token_id", None),
            bos_token_id=getattr(config, "bos_token_id", None),
            eos_token_id=getattr(config, "eos_token_id", None),
            source_model_type=config.model_type,
        )

    def sliding_window(self, config: PreTrainedConfig) -> int | None:
        """The attention window every layer uses, or None for full attention."""
        return getattr(config, "sliding_window", None)

    def to_canonical(self, layer: StateDict, config: PreTrainedConfig) -> StateDict:
        """One decoder layer's tensors (names relative to the layer) in the canonical layout."""
        return dict(layer)

    def from_canonical(self, layer: StateDict, config: PreTrainedConfig) -> StateDict:
        """Inverse of `to_canonical`: the family's own tensor names for one layer."""
        return dict(layer)

    def stock_config(
        self, source: PreTrainedConfig, layer_sources: list[int] | None = None, **changes: Any
    ) -> PreTrainedConfig:
        """The source config with uniform shape changes (heads, widths, depth) applied.

        `layer_sources[i]`: the source layer whose per-layer settings new layer i inherits (depth methods;
        a merged group inherits from its first layer). Per-layer lists (`layer_types`, any list as long as
        the source's layer count) are re-indexed, and `max_window_layers` (the first layers that attend
        fully) is recounted, so the new stack keeps every layer's attention type.
        """
        fields = source.to_dict()
        for key in ("architectures", "transformers_version", "_name_or_path", "quantization_config"):
            fields.pop(key, None)
        if layer_sources is not None:
            n_layers = source.num_hidden_layers
            for key, value in list(fields.items()):
                if isinstance(value, list) and len(value) == n_layers and key != "architectures":
                    fields[key] = [value[i] for i in layer_sources]
            if isinstance(fields.get("max_window_layers"), int):
                fields["max_window_layers"] = sum(i < fields["max_window_layers"] for i in layer_sources)
            changes = {"num_hidden_layers": len(layer_sources), **changes}
        fields.update(changes)
        fields.pop("model_type", None)
        return AutoConfig.for_model(source.model_type, **fields)
