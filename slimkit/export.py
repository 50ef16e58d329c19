"""Write a compressed model as a folder that stock `transformers` loads.

- Stock format when every layer has the same shape that the source family's own config can express
  (e.g. nothing removed, or uniform whole-head removal): the source `config.json` with updated sizes and
  the family's own tensor names (Phi-3 weights re-fused). Loads with plain `from_pretrained`.
- Otherwise the slim format: `SlimConfig` (with `per_layer_config`) + `modeling_slim.py` via `auto_map`,
  loaded with `trust_remote_code=True`. Its config lists every layer's shape and keeps at top level only
  what all layers share (`published_config`): no tool reading the top level sees a dense width the model
  does not have.
Both are safetensors. The tokenizer is the source's, sanitised (`slimkit.tokenizer_files`: stock files only, no
`auto_map`, no custom class names), so the only remote code an output ever points to is our `modeling_slim.py`.

`write_compressed` fills a folder the caller staged; `save_compressed` stages, writes and publishes in one go
(`slimkit.outdir`: never into a foreign non-empty folder, nothing left behind on failure).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from slimkit import __version__
from slimkit.errors import ModelNotFound
from slimkit.loading import SourceModel, read_config, resolve, safetensors_files
from slimkit.modeling import modeling_slim
from slimkit.modeling.modeling_slim import SlimConfig, SlimForCausalLM
from slimkit.outdir import RECIPE_FILE, check_out_dir, publish, staging
from slimkit.shapes import Shape, get_shapes
from slimkit.tokenizer_files import copy_tokenizer, has_tokenizer, strip_auto_map

__all__ = ["RECIPE_FILE", "load_compressed", "save_compressed", "write_compressed"]


PER_LAYER_KEYS = (
    "num_attention_heads",
    "num_key_value_heads",
    "qk_head_dim",
    "v_head_dim",
    "intermediate_size",
    "kv_index",
    "rope_index",
)


def published_config(config: SlimConfig) -> SlimConfig:
    """The config as saved: a value all layers share is global, the others are listed for every layer.

    In memory the engine keeps the dense source shape as the global values (its planning reads them); a
    saved config must not, so the per-layer attributes that differ are absent from the top level (and
    transformers refuses to read them there) and the ones that agree hold the layers' common value.
    """
    shapes = get_shapes(config)
    saved = copy.deepcopy(config)
    saved.per_layer_config = None
    overrides: dict[int, dict[str, Any]] = {i: {} for i in range(len(shapes))}
    for key in PER_LAYER_KEYS:
        values = [shape[key] for shape in shapes]
        if all(value == values[0] for value in values):
            setattr(saved, key, values[0])
        else:
            for i, value in enumerate(values):
                overrides[i][key] = value
    if any(overrides.values()):
        saved.per_layer_config = {i: layer for i, layer in overrides.items() if layer}
    saved.allow_global_per_layer_attribute_access = False
    saved.serialize_explicit_per_layer_config = True
    return saved


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


def _needs_head_dim(source: SourceModel, shape: Shape, head_dim: int) -> bool:
    return (
        "head_dim" in source.config.to_dict() or source.config.hidden_size // shape["num_attention_heads"] != head_dim
    )


def stock_heads_valid(source: SourceModel, heads: int, kv_heads: int, head_dim: int) -> bool:
    """Whether the source family's own config class accepts this head layout (its validators, e.g. Llama's
    hidden_size % num_attention_heads == 0, which it checks even with an explicit head_dim)."""
    try:
        source.adapter.stock_config(
            source.config, num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim
        ).validate()
    except (ValueError, TypeError, StrictDataclassError):
        return False
    return True


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
        # Fewer full-width heads: say the width, or the stock class derives hidden_size / heads.
        **({"head_dim": model.config.head_dim} if _needs_head_dim(source, shape, model.config.head_dim) else {}),
    )
    try:
        config.validate()  # what the family's own class accepts (a slim output otherwise)
    except (ValueError, TypeError, StrictDataclassError):
        return None
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
    overwrite: bool = False,
) -> str:
    """Write the output into a staged sibling and rename it to `out_dir`; returns the format written.

    `out_dir` must be new, empty, or (with `overwrite`) an earlier slimkit output (`slimkit.outdir`).
    """
    check_out_dir(out_dir, overwrite, protected=[source.path])
    with staging(out_dir) as folder:
        written = write_compressed(model, source, folder, recipe, fmt, layer_sources)
        publish(folder, out_dir, overwrite)
    return written


def write_compressed(
    model: SlimForCausalLM,
    source: SourceModel,
    folder: Path,
    recipe: dict[str, Any],
    fmt: str = "auto",
    layer_sources: list[int] | None = None,
) -> str:
    """Save weights, config, tokenizer and `compression.json` into the empty `folder`; returns the format written.

    fmt: "auto" (stock when the shapes allow it, else slim) or "slim" (always ship the modeling file).
    layer_sources: after depth compression, the source layer each new layer inherits its per-layer
    settings from (see `ArchAdapter.stock_config`).
    """
    stock = _stock_model(model, source, layer_sources) if fmt == "auto" else None
    if stock is not None:
        stock.save_pretrained(folder)
        fmt = "stock"
    else:
        type(model.config).register_for_auto_class()
        type(model).register_for_auto_class("AutoModelForCausalLM")
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # serialising reads the global (dense) values on purpose
        try:
            model.save_pretrained(folder)  # weights, modeling file, auto_map (set on model.config here)
            published_config(model.config).to_json_file(folder / "config.json")
        finally:
            hf_logging.set_verbosity(verbosity)
        fmt = "slim"
    if has_tokenizer(source.path):
        copy_tokenizer(source.path, folder, source.config)
    strip_auto_map(source.path, folder, "generation_config.json")  # the source's sampling defaults and stop ids
    record = {"slimkit_version": __version__, **recipe, "format": fmt}
    (folder / RECIPE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return fmt


def load_compressed(path: str | Path, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Load a folder the way a user would: remote code only for a slimkit output in the slim format (whose
    only code is our modeling_slim.py); any other folder loads with stock classes only."""
    record = Path(path) / RECIPE_FILE
    remote = record.is_file() and json.loads(record.read_text()).get("format", "slim") == "slim"
    return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=remote, dtype=dtype).eval()


def evaluable_folder(model: str, revision: str | None, workdir: Path) -> Path:
    """A local folder `load_compressed` can open for `model` (a folder or a Hub id), with coded errors.

    A Hub snapshot never brings code (safetensors, configs and tokenizer files only): a slim output gets
    slimkit's own `modeling_slim.py` next to links to the downloaded files, in `workdir`, never the repo's.
    """
    path, _ = resolve(model, revision)
    safetensors_files(path)
    record = path / RECIPE_FILE
    if not record.is_file():
        read_config(path)  # not a slimkit output: a stock config, checked like any source
        return path
    if not (path / "config.json").is_file():
        raise ModelNotFound(f"{path.name}: no config.json")
    if json.loads(record.read_text()).get("format", "slim") != "slim" or (path / "modeling_slim.py").is_file():
        return path
    for item in path.iterdir():
        (workdir / item.name).symlink_to(item.resolve())
    shutil.copy(Path(modeling_slim.__file__), workdir / "modeling_slim.py")
    return workdir
