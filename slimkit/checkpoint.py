"""Check a checkpoint against its config from the safetensors headers alone, before any weight is read.

A corrupt file (truncated, garbage header) or an absurd config (hidden_size 10^9, negative sizes, heads that
do not divide the width) must fail as `invalid_model` with a message naming files by their name only,
not with an allocator error or a worker path. Building the model is what allocates by the config (index
maps per head channel, RoPE tables), so everything here works on shapes: the header shapes are turned into
meta tensors, mapped to the canonical layout by the family's adapter, and compared with the shapes the
config implies. Only then may the loader read tensor data, whose size is then bounded by the files.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import PreTrainedConfig

from slimkit.arch import ArchAdapter
from slimkit.errors import InvalidModel
from slimkit.modeling.modeling_slim import SlimConfig

LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def check_config(config: PreTrainedConfig) -> None:
    """Sizes are positive integers and the attention heads tile the width (before the adapter divides by them)."""
    for name in _SIZES:
        value = getattr(config, name, None)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidModel(f"config.json: {name} must be a positive integer, got {value!r}")
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    if not isinstance(kv, int) or kv < 1 or heads % kv:
        raise InvalidModel(f"config.json: num_key_value_heads ({kv!r}) must be a positive divisor of {heads} heads")
    head_dim = getattr(config, "head_dim", None)
    if head_dim is None and config.hidden_size % heads:
        raise InvalidModel(
            f"config.json: num_attention_heads ({heads}) does not divide hidden_size ({config.hidden_size})"
        )
    if head_dim is not None and (not isinstance(head_dim, int) or head_dim < 1):
        raise InvalidModel(f"config.json: head_dim must be a positive integer, got {head_dim!r}")


def header_tensors(files: list[Path]) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint as a meta tensor of its stored shape and dtype (no data is read)."""
    out: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                    part = f.get_slice(key)
                    dtype = _SAFETENSORS_DTYPES.get(part.get_dtype(), torch.uint8)
                    out[key] = torch.empty(part.get_shape(), dtype=dtype, device="meta")
        except InvalidModel:
            raise
        except Exception as err:  # SafetensorError, OSError: truncated file, garbage header
            raise InvalidModel(
                f"{file.name} is not a readable safetensors file (truncated or corrupt header: {reason(err)})"
            ) from err
    return out


def reason(err: BaseException) -> str:
    """The first line of an error, with any absolute path reduced to its file name."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return re.sub(r"(?<![\w.:/])/(?:[^\s/'\"]+/)*([^\s/'\"]+)", r"\1", text)[:300]


def expected_shapes(config: SlimConfig) -> dict[str, tuple[int, ...]]:
    """The dense canonical model's parameter shapes, by formula (no module is built)."""
    d, V, inter = config.hidden_size, config.vocab_size, config.intermediate_size
    q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (V, d), "model.norm.weight": (d,)}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, d)
    layer: dict[str, tuple[int, ...]] = {
        "self_attn.q_proj.weight": (q, d),
        "self_attn.k_proj.weight": (kv, d),
        "self_attn.v_proj.weight": (kv, d),
        "self_attn.o_proj.weight": (d, q),
        "mlp.gate_proj.weight": (inter, d),
        "mlp.up_proj.weight": (inter, d),
        "mlp.down_proj.weight": (d, inter),
        "input_layernorm.weight": (d,),
        "post_attention_layernorm.weight": (d,),
    }
    if config.attention_bias:
        layer |= {"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,)}
    if config.attention_out_bias:
        layer["self_attn.o_proj.bias"] = (d,)
    if config.mlp_bias:
        layer |= {"mlp.gate_proj.bias": (inter,), "mlp.up_proj.bias": (inter,), "mlp.down_proj.bias": (d,)}
    for i in range(config.num_hidden_layers):
        shapes |= {f"model.layers.{i}.{name}": shape for name, shape in layer.items()}
    return shapes


def check_checkpoint(
    files: list[Path], config: PreTrainedConfig, adapter: ArchAdapter, slim_config: SlimConfig
) -> None:
    """Refuse a checkpoint whose headers do not fit its config, naming the first tensors that differ."""
    tensors = header_tensors(files)
    layers: dict[int, dict[str, torch.Tensor]] = {}
    canonical: dict[str, tuple[int, ...]] = {}
    for key, tensor in tensors.items():
        match = LAYER_KEY.match(key)
        if match:
            layers.setdefault(int(match[1]), {})[match[2]] = tensor
        else:
            canonical[key] = tuple(tensor.shape)
    if sorted(layers) != list(range(config.num_hidden_layers)):
        found = sorted(layers)
        raise InvalidModel(
            f"the checkpoint has {len(found)} layers ({found[:5]}{'...' if len(found) > 5 else ''}), "
            f"config.json says num_hidden_layers={config.num_hidden_layers}"
        )
    for i, layer in layers.items():
        try:
            mapped = adapter.to_canonical(layer, config)
        except (RuntimeError, ValueError, KeyError, IndexError) as err:
            raise InvalidModel(f"layer {i}: the weights do not fit config.json ({reason(err)})") from err
        canonical |= {f"model.layers.{i}.{name}": tuple(t.shape) for name, t in mapped.items()}
    if slim_config.tie_word_embeddings:
        canonical.pop("lm_head.weight", None)
    expected = expected_shapes(slim_config)
    wrong = [
        f"{k}: {list(canonical[k])} in the checkpoint, {list(v)} by config.json"
        for k, v in expected.items()
        if k in canonical and canonical[k] != v
    ]
    missing = [k for k in expected if k not in canonical]
    unexpected = [k for k in canonical if k not in expected]
    if wrong or missing or unexpected:
        problems = wrong[:3] + ([f"missing {missing[:4]}"] if missing else [])
        problems += [f"unexpected {unexpected[:4]}"] if unexpected else []
        raise InvalidModel("the checkpoint does not match its config.json: " + "; ".join(problems))
