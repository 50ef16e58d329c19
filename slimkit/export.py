"""Write a compressed model as a folder that stock `transformers` loads.

- Stock format when every layer has the same shape that the source family's own config can express
  (e.g. nothing removed, or uniform whole-head removal): the source `config.json` with updated sizes and
  the family's own tensor names (Phi-3 weights re-fused). Loads with plain `from_pretrained`.
- Otherwise the slim format: `SlimConfig` (with `per_layer_config`) + `modeling_slim.py` via `auto_map`,
  loaded with `trust_remote_code=True`.
Both are safetensors. The folder is written to a temporary sibling and renamed at the end, so a failure
never leaves a partial output behind.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from slimkit.loading import SourceModel
from slimkit.modeling.modeling_slim import SlimConfig, SlimForCausalLM
from slimkit.shapes import Shape, get_shapes

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "generation_config.json",
)
RECIPE_FILE = "compression.json"


def uniform_stock_shape(config: SlimConfig) -> Shape | None:
    """The one shape shared by all layers if a stock config can describe it, else None."""
    shapes = get_shapes(config)
    first = shapes[0]
    if any(s != first for s in shapes[1:]):
        return None
    nq, nkv, d_h = first["num_attention_heads"], first["num_key_value_heads"], config.head_dim
    if nq % nkv or first["kv_index"] != [i // (nq // nkv) for i in range(nq)]:
        return None
    if first["qk_head_dim"] != d_h or first["v_head_dim"] != d_h:
        return None
    if any(r != list(range(d_h // 2)) for r in first["rope_index"]):
        return None
    return first


def _stock_model(
    model: SlimForCausalLM, source: SourceModel, layer_sources: list[int] | None
) -> torch.nn.Module | None:
    shape = uniform_stock_shape(model.config)
    if shape is None:
        return None
    config = source.adapter.stock_config(
        source.config,
        layer_sources=layer_sources,
        num_hidden_layers=model.config.num_hidden_layers,
        num_attention_heads=shape["num_attention_heads"],
        num_key_value_heads=shape["num_key_value_heads"],
        intermediate_size=shape["intermediate_size"],
        **({"head_dim": model.config.head_dim} if "head_dim" in source.config.to_dict() else {}),
    )
    state: dict[str, torch.Tensor] = {}
    prefix_len = len("model.layers.")
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in model.state_dict().items():
        if key.startswith("model.layers."):
            index, name = key[prefix_len:].split(".", 1)
            layers.setdefault(int(index), {})[name] = tensor
        elif not (key == "lm_head.weight" and model.config.tie_word_embeddings):
            state[key] = tensor
    for i, layer in layers.items():
        for name, tensor in source.adapter.from_canonical(layer, source.config).items():
            state[f"model.layers.{i}.{name}"] = tensor
    with init_empty_weights(include_buffers=False):
        stock = AutoModelForCausalLM.from_config(config)
    expected = {k: v.shape for k, v in stock.state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    if {k: v.shape for k, v in state.items()} != expected:  # e.g. a family without a head_dim field
        return None
    stock.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        stock.tie_weights()
    return stock


def save_compressed(
    model: SlimForCausalLM,
    source: SourceModel,
    out_dir: Path,
    recipe: dict[str, Any],
    fmt: str = "auto",
    layer_sources: list[int] | None = None,
) -> str:
    """Save weights, config, tokenizer and `compression.json`; returns the format written.

    fmt: "auto" (stock when the shapes allow it, else slim) or "slim" (always ship the modeling file).
    layer_sources: after depth compression, the source layer each new layer inherits its per-layer
    settings from (see `ArchAdapter.stock_config`).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        stock = _stock_model(model, source, layer_sources) if fmt == "auto" else None
        if stock is not None:
            stock.save_pretrained(tmp)
            fmt = "stock"
        else:
            type(model.config).register_for_auto_class()
            type(model).register_for_auto_class("AutoModelForCausalLM")
            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # serialising reads the global (dense) values on purpose
            try:
                model.save_pretrained(tmp)
            finally:
                hf_logging.set_verbosity(verbosity)
            fmt = "slim"
        for name in TOKENIZER_FILES:
            if (source.path / name).is_file():
                shutil.copy2(source.path / name, tmp / name)
        (tmp / RECIPE_FILE).write_text(json.dumps({**recipe, "format": fmt}, indent=2, sort_keys=True) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return fmt


def load_compressed(path: str | Path, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Load an output folder the way a user would (remote code only for the slim format)."""
    recipe = json.loads((Path(path) / RECIPE_FILE).read_text()) if (Path(path) / RECIPE_FILE).is_file() else {}
    remote = recipe.get("format", "slim") == "slim"
    return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=remote, dtype=dtype).eval()
