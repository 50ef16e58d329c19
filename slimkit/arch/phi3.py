"""Phi-3: fused `qkv_proj` (rows [q | k | v]) and `gate_up_proj` (rows [gate | up]), no biases.

The fused weights are split into the canonical q/k/v and gate/up on the way in and re-fused on the way
out, so every method applies identical selections to both halves of a fused matrix by construction.
Head width is hidden/heads (96 on Phi-3-mini) unless the config names it (a TransAct output does);
LongRoPE variants keep their per-frequency factors because the slim model gathers cos/sin from the
original frequencies.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedConfig

from slimkit.arch.base import ArchAdapter, StateDict


class Phi3Adapter(ArchAdapter):
    model_types = ("phi3",)

    def attention_biases(self, config: PreTrainedConfig) -> tuple[bool, bool]:
        return False, False

    def mlp_bias(self, config: PreTrainedConfig) -> bool:
        return False

    def to_canonical(self, layer: StateDict, config: PreTrainedConfig) -> StateDict:
        out = dict(layer)
        qkv = out.pop("self_attn.qkv_proj.weight")  # (n_h*d_h + 2*n_kv*d_h, d)
        q_rows = config.num_attention_heads * self.head_dim(config)
        kv_rows = config.num_key_value_heads * self.head_dim(config)
        q, k, v = torch.split(qkv, [q_rows, kv_rows, kv_rows])
        gate, up = out.pop("mlp.gate_up_proj.weight").chunk(2)  # (2I, d) -> 2 x (I, d)
        out.update(
            {
                "self_attn.q_proj.weight": q,
                "self_attn.k_proj.weight": k,
                "self_attn.v_proj.weight": v,
                "mlp.gate_proj.weight": gate,
                "mlp.up_proj.weight": up,
            }
        )
        return out

    def from_canonical(self, layer: StateDict, config: PreTrainedConfig) -> StateDict:
        out = dict(layer)
        qkv = [out.pop(f"self_attn.{n}_proj.weight") for n in "qkv"]
        gate_up = [out.pop(f"mlp.{n}_proj.weight") for n in ("gate", "up")]
        out["self_attn.qkv_proj.weight"] = torch.cat(qkv)
        out["mlp.gate_up_proj.weight"] = torch.cat(gate_up)
        return out
