"""Slim decoder: a Llama-style causal LM in which every layer has its own attention and MLP shape.

This single file is shipped next to every compressed checkpoint that a stock `transformers` config cannot
describe, and is loaded through `auto_map` (`trust_remote_code=True`). It depends only on `torch` and
`transformers`, so it keeps working without the compression engine installed.

What a pruned layer may look like, and why a stock Llama class cannot express it:
- its own number of query heads and KV heads (`num_attention_heads`, `num_key_value_heads`);
- *uneven* GQA groups: query head i reads KV head `kv_index[i]`, and groups may differ in size;
- query/key width `qk_head_dim` and value/output width `v_head_dim` smaller than the original head;
- for each KV head, the RoPE frequency pairs it kept (`rope_index`): post-pruning, channel j of a head
  rotates with the original frequency `rope_index[g][j]`, so positions are encoded exactly as before;
- its own MLP width (`intermediate_size`).
The softmax scale stays 1/sqrt(original head_dim): pruning q/k channels must not rescale every logit.

Per-layer values live in the standard `per_layer_config` of the config (transformers >= 5.23). In memory
(while compressing) the global values are those of the dense source model; a saved config lists every
layer's shape and keeps at top level only what all layers share, so nothing reading the top level gets a
dense width that the model does not have (transformers refuses ambiguous reads of per-layer attributes).
`head_dim` is the original head width (RoPE frequencies, softmax scale); the kept widths are `qk_head_dim`
and `v_head_dim`. RoPE cos/sin are computed once per forward at the original head width with the source
model's own RoPE variant (default, llama3, longrope, ...), and each layer gathers the columns its heads
kept; layers that kept everything in order (with even GQA groups) take the stock path, so a dense-shaped
slim model runs like stock Llama.

Like stock models it supports gradient checkpointing, `output_hidden_states`, `output_attentions` (eager
attention) and `attn_implementation` "eager", "sdpa" or the flash-attention kernels transformers registers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging

logger = logging.get_logger(__name__)


@strict
class SlimConfig(PreTrainedConfig):
    """Dense source shape globally; each layer's pruned shape in `per_layer_config`."""

    model_type = "slim_decoder"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    head_dim: int = 128  # original head width: sets RoPE frequencies and the softmax scale
    qk_head_dim: int | None = None  # per layer: kept query/key channels per head (even)
    v_head_dim: int | None = None  # per layer: kept value/output channels per head
    kv_index: list[int] | None = None  # per layer: KV head read by each query head
    rope_index: list[list[int]] | None = None  # per layer: kept RoPE frequencies of each KV head
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_parameters: dict | None = None
    sliding_window: int | None = None  # every layer attends to at most this many past tokens
    attention_bias: bool = False  # bias on q/k/v (Qwen2)
    attention_out_bias: bool = False  # bias on o_proj (Llama with attention_bias=True)
    mlp_bias: bool = False
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    source_model_type: str | None = None  # e.g. "llama", "qwen2", "phi3": where the weights came from

    def __post_init__(self, **kwargs: Any) -> None:
        if self.rope_parameters is None:
            self.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
        super().__post_init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.is_heterogeneous and not self.allow_global_per_layer_attribute_access:
            for key in self.per_layer_attributes:  # they differ between layers: no global value to show
                out.pop(key, None)
        return out


def layer_shape(config: SlimConfig, layer_idx: int) -> dict[str, Any]:
    """The resolved shape of one layer, with dense defaults filled in."""
    cfg = config.per_layer_config[layer_idx] if config.is_heterogeneous else config
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    d_h = config.head_dim
    qk = cfg.qk_head_dim or d_h
    group = max(n_heads // max(n_kv, 1), 1)
    kv_index = cfg.kv_index if cfg.kv_index is not None else [i // group for i in range(n_heads)]
    # A dense head keeps the first qk/2 frequencies (all of them when unpruned).
    rope_index = cfg.rope_index if cfg.rope_index is not None else [list(range(qk // 2)) for _ in range(n_kv)]
    if len(kv_index) != n_heads or any(not 0 <= g < n_kv for g in kv_index):
        raise ValueError(f"layer {layer_idx}: kv_index must name a KV head for each of the {n_heads} query heads")
    if qk % 2 or len(rope_index) != n_kv or any(len(r) * 2 != qk for r in rope_index):
        raise ValueError(f"layer {layer_idx}: rope_index must keep qk_head_dim/2 frequencies per KV head")
    return {
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "qk_head_dim": qk,
        "v_head_dim": cfg.v_head_dim or d_h,
        "intermediate_size": cfg.intermediate_size,
        "kv_index": list(kv_index),
        "rope_index": [list(r) for r in rope_index],
    }


class SlimRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


class SlimRotaryEmbedding(nn.Module):
    """cos/sin at the *original* head width, with the source model's RoPE variant."""

    def __init__(self, config: SlimConfig) -> None:
        super().__init__()
        self.config = config
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        self.rope_type = config.rope_parameters.get("rope_type", "default")
        inv_freq, self.attention_scaling = self.compute_inv_freq(config)
        self.inv_freq = nn.Buffer(inv_freq, persistent=False)
        self.original_inv_freq = nn.Buffer(inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_inv_freq(config: SlimConfig) -> tuple[torch.Tensor, float]:
        rope_type = config.rope_parameters.get("rope_type", "default")
        if rope_type != "default":
            return ROPE_INIT_FUNCTIONS[rope_type](config)
        d_h, base = config.head_dim, config.rope_parameters["rope_theta"]
        return 1.0 / (base ** (torch.arange(0, d_h, 2, dtype=torch.float) / d_h)), 1.0

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(x.device, torch.float)  # (B, T, d_h/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, d_h): channel j and j + d_h/2 share a frequency
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def eager_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax(q kᵀ · scale + mask) v in plain matmuls, returning the weights: (B, nh, T, v), (B, nh, T, S)."""
    scores = torch.matmul(q, k.transpose(2, 3)) * scale
    if mask is not None:
        scores = scores + mask
    elif q.shape[2] > 1:  # plain causal (no cache, no padding): the mask was left to SDPA's own causal path
        S, T = k.shape[2], q.shape[2]
        causal = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(weights, v), weights


class SlimAttention(nn.Module):
    """Multi-head attention with per-KV-head RoPE columns, uneven GQA groups and a fixed softmax scale."""

    def __init__(self, config: SlimConfig, layer_idx: int) -> None:
        super().__init__()
        shape = layer_shape(config, layer_idx)
        self.config = config  # read at call time: `_attn_implementation` may change after loading
        self.layer_idx = layer_idx
        self.num_heads = shape["num_attention_heads"]
        self.num_kv_heads = shape["num_key_value_heads"]
        self.qk_head_dim = shape["qk_head_dim"]
        self.v_head_dim = shape["v_head_dim"]
        self.scaling = config.head_dim**-0.5
        self.is_causal = True  # read by transformers' attention kernels
        d, qk, v = config.hidden_size, self.qk_head_dim, self.v_head_dim
        self.q_proj = nn.Linear(d, self.num_heads * qk, bias=config.attention_bias)
        self.k_proj = nn.Linear(d, self.num_kv_heads * qk, bias=config.attention_bias)
        self.v_proj = nn.Linear(d, self.num_kv_heads * v, bias=config.attention_bias)
        self.o_proj = nn.Linear(self.num_heads * v, d, bias=config.attention_out_bias)
        # Column j of KV head g rotates like column rope_cols[g, j] of the original head.
        half = config.head_dim // 2
        rope_cols = [list(r) + [i + half for i in r] for r in shape["rope_index"]]
        self.index_values = {"rope_cols": rope_cols, "kv_index": shape["kv_index"]}
        for name, value in self.index_values.items():
            self.register_buffer(name, torch.tensor(value, dtype=torch.long), persistent=False)
        # Fast paths (why: a dense-shaped layer must cost what a stock Llama layer costs): every KV head keeps
        # all frequencies in order -> cos/sin broadcast without a gather; even, contiguous GQA groups -> the
        # kernel shares each KV head across its group instead of copying it per query head.
        self.rope_identity = all(cols == list(range(config.head_dim)) for cols in rope_cols)
        group = self.num_heads // self.num_kv_heads
        self.even_groups = self.num_heads % self.num_kv_heads == 0 and shape["kv_index"] == [
            i // group for i in range(self.num_heads)
        ]
        self.num_key_value_groups = 1  # k and v reach the kernels already expanded to one per query head

    def rotate(
        self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE on q (B, nh, T, qk) and k (B, nkv, T, qk) with each KV head's kept frequencies."""
        if self.rope_identity:
            cos_q = cos_k = cos[:, None]  # (B, 1, T, d_h)
            sin_q = sin_k = sin[:, None]
        else:
            cos_k = cos[:, :, self.rope_cols].permute(0, 2, 1, 3)  # (B, nkv, T, qk)
            sin_k = sin[:, :, self.rope_cols].permute(0, 2, 1, 3)
            cos_q, sin_q = cos_k[:, self.kv_index], sin_k[:, self.kv_index]
        return q * cos_q + rotate_half(q) * sin_q, k * cos_k + rotate_half(k) * sin_k

    def expand_kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, nkv, S, *) -> (B, nh, S, *): each query head's own KV head."""
        if self.even_groups:
            group = self.num_heads // self.num_kv_heads
            return k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return k[:, self.kv_index], v[:, self.kv_index]

    def forward(
        self,
        x: torch.Tensor,  # (B, T, d)
        cos: torch.Tensor,  # (B, T, d_h) at the original head width
        sin: torch.Tensor,
        mask: torch.Tensor | None,  # eager/sdpa: additive (B, 1, T, S) or None for plain causal; else 2-D padding
        past_key_values: Cache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns the output (B, T, d) and, with eager attention, the weights (B, nh, T, S)."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.qk_head_dim).transpose(1, 2)  # (B, nh, T, qk)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.qk_head_dim).transpose(1, 2)  # (B, nkv, T, qk)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.v_head_dim).transpose(1, 2)  # (B, nkv, T, v)
        q, k = self.rotate(q, k, cos, sin)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)
        implementation = self.config._attn_implementation or "sdpa"
        weights = None
        if implementation == "sdpa" and self.even_groups:
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                is_causal=mask is None and T > 1,
                scale=self.scaling,
                enable_gqa=self.num_heads != self.num_kv_heads,
            )  # (B, nh, T, v)
        elif implementation == "sdpa":
            k, v = self.expand_kv(k, v)
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None and T > 1, scale=self.scaling
            )
        elif implementation == "eager":
            out, weights = eager_attention(q, *self.expand_kv(k, v), mask, self.scaling)
        else:  # a flash-attention kernel transformers registers: 2-D padding mask in, (B, T, nh, v) out
            kernel = ALL_ATTENTION_FUNCTIONS[implementation]
            k, v = self.expand_kv(k, v)
            window = self.config.sliding_window
            out, _ = kernel(self, q, k, v, mask, dropout=0.0, scaling=self.scaling, sliding_window=window)
            return self.o_proj(out.reshape(B, T, self.num_heads * self.v_head_dim)), None
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.num_heads * self.v_head_dim)), weights


class SlimMLP(nn.Module):
    def __init__(self, config: SlimConfig, layer_idx: int) -> None:
        super().__init__()
        width = layer_shape(config, layer_idx)["intermediate_size"]
        self.gate_proj = nn.Linear(config.hidden_size, width, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, width, bias=config.mlp_bias)
        self.down_proj = nn.Linear(width, config.hidden_size, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class SlimDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: SlimConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = SlimAttention(config, layer_idx)
        self.mlp = SlimMLP(config, layer_idx)
        self.input_layernorm = SlimRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = SlimRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, d)
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        past_key_values: Cache | None = None,
        output_attentions: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """The layer output (B, T, d); with `output_attentions`, also the attention weights (eager only).

        Pass `past_key_values` by keyword: under gradient checkpointing it is dropped (a recomputed forward
        must not write the cache twice).
        """
        attn_out, weights = self.self_attn(self.input_layernorm(x), cos, sin, mask, past_key_values)
        x = x + attn_out
        x = x + self.mlp(self.post_attention_layernorm(x))
        return (x, weights) if output_attentions else x


def attention_mask_for(
    attention_mask: torch.Tensor | None,
    q_len: int,
    past_len: int,
    window: int | None,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor | None:
    """Additive (B, 1, q_len, past_len + q_len) mask: causal, window and key padding; None if plain causal."""
    kv_len = past_len + q_len
    unpadded = attention_mask is None or bool(attention_mask.all())
    if unpadded and (past_len == 0 or q_len == 1) and (window is None or kv_len <= window):
        return None  # SDPA's own causal path (or a single query that may see every key)
    keep = torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(past_len)
    if window is not None:
        keep = keep & ~torch.ones_like(keep).tril(past_len - window)
    keep = keep[None, None]
    if attention_mask is not None:
        keep = keep & attention_mask[:, None, None, -kv_len:].bool()
    # A fully padded query row would softmax over nothing; let it see everything (its output is unused).
    keep = keep | ~keep.any(-1, keepdim=True)
    return torch.zeros(keep.shape, dtype=dtype, device=device).masked_fill(~keep, torch.finfo(dtype).min)


class SlimPreTrainedModel(PreTrainedModel):
    config: SlimConfig
    config_class = SlimConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SlimDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = True  # through transformers' registered flash kernels, when installed

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=std)
        elif isinstance(module, SlimRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, SlimAttention):  # index maps are derived from the config, never stored
            for name, value in module.index_values.items():
                init.copy_(getattr(module, name), torch.tensor(value, dtype=torch.long))
        elif isinstance(module, SlimRotaryEmbedding):
            inv_freq = module.compute_inv_freq(module.config)[0]
            init.copy_(module.inv_freq, inv_freq)
            init.copy_(module.original_inv_freq, inv_freq)


class SlimModel(SlimPreTrainedModel):
    def __init__(self, config: SlimConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(SlimDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = SlimRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = SlimRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        config = self.config
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        implementation = config._attn_implementation or "sdpa"
        if output_attentions and implementation != "eager":
            logger.warning_once(f"`{implementation}` attention returns no weights: use attn_implementation='eager'")
            output_attentions = False
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, d)
        use_cache = config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False  # a recomputed layer must not write the cache twice
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + x.shape[1], device=x.device)[None]
        cos, sin = self.rotary_emb(x, position_ids)
        if implementation in ("eager", "sdpa"):
            mask = attention_mask_for(attention_mask, x.shape[1], past_len, config.sliding_window, x.dtype, x.device)
        else:  # transformers' flash kernels take the 2-D padding mask (None when nothing is padded)
            mask = None if attention_mask is None or bool(attention_mask.all()) else attention_mask
        hidden_states: tuple[torch.Tensor, ...] = ()
        attentions: tuple[torch.Tensor, ...] = ()
        for layer in self.layers:
            if output_hidden_states:
                hidden_states += (x,)
            out = layer(x, cos, sin, mask, past_key_values=past_key_values, output_attentions=output_attentions)
            if output_attentions:
                x, weights = out
                attentions += (weights,)
            else:
                x = out
        x = self.norm(x)
        return BaseModelOutputWithPast(
            last_hidden_state=x,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=(*hidden_states, x) if output_hidden_states else None,
            attentions=attentions if output_attentions else None,
        )


class SlimForCausalLM(SlimPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: SlimConfig) -> None:
        super().__init__(config)
        self.model = SlimModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        out = self.model(
            input_ids,
            attention_mask,
            position_ids,
            past_key_values,
            inputs_embeds,
            use_cache,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        hidden = out.last_hidden_state
        logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        loss = None
        if labels is not None:
            shift = logits[:, :-1].float().reshape(-1, logits.shape[-1])
            loss = F.cross_entropy(shift, labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )


__all__ = ["SlimConfig", "SlimForCausalLM", "SlimModel", "SlimPreTrainedModel"]
