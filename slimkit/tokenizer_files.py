"""The source's tokenizer, taken over without any pointer to code that stock `transformers` does not ship.

A source folder is untrusted input: its `tokenizer_config.json` may name a custom tokenizer class and carry an
`auto_map` to a Python file in the repo. Copied verbatim, an output would republish that pointer (and
`AutoTokenizer` would ask to run the code). So only the files stock `transformers` reads are taken, and in
`tokenizer_config.json` the `auto_map` is dropped and a class name that is not a `transformers` tokenizer is
replaced by the class stock `transformers` actually loads from those files (its own fallback for an unknown
class, `TokenizersBackend`, when a `tokenizer.json` is there). The sanitised files are loaded with
`trust_remote_code=False` and the model's own config (so the folder's `config.json`, which may point to
remote code itself, is never consulted), and the class that loaded is written out explicitly.

The files are copied rather than re-serialised with `save_pretrained`: byte-for-byte the source's vocabulary,
merges and chat template, and none of the loading arguments transformers would write back.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedConfig, PreTrainedTokenizerBase
from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

from slimkit.errors import InvalidArgument

# What stock transformers reads to build a tokenizer (fast or sentencepiece), and nothing else.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)
CONFIG_FILE = "tokenizer_config.json"
GENERIC_CLASS = "TokenizersBackend"  # what transformers itself falls back to for an unknown class


def stock_tokenizer_class(name: object) -> bool:
    """Whether `name` is a tokenizer class that ships with transformers (not one registered or loaded from a repo)."""
    if not isinstance(name, str) or not name:
        return False
    for candidate in (name, name.removesuffix("Fast"), name + "Fast"):
        cls = tokenizer_class_from_name(candidate)
        if (
            isinstance(cls, type)
            and issubclass(cls, PreTrainedTokenizerBase)
            and cls.__module__.startswith("transformers.")
        ):
            return True
    return False


def sanitise_config(config: dict[str, Any], has_tokenizer_json: bool) -> dict[str, Any]:
    """`tokenizer_config.json` without remote-code pointers and with only stock class names."""
    clean = {k: v for k, v in config.items() if k != "auto_map"}
    if "tokenizer_class" in clean and not stock_tokenizer_class(clean["tokenizer_class"]):
        if has_tokenizer_json:
            clean["tokenizer_class"] = GENERIC_CLASS
        else:  # no tokenizer.json for the generic class to read: let transformers choose from the model type
            del clean["tokenizer_class"]
    processor = clean.get("processor_class")
    if processor is not None and not (isinstance(processor, str) and _is_transformers_name(processor)):
        del clean["processor_class"]
    return clean


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def copy_tokenizer(source: Path, dest: Path, model_config: PreTrainedConfig) -> PreTrainedTokenizerBase:
    """Copy the stock tokenizer files from `source` into `dest`, sanitised, and load them back from `dest`.

    The class that loaded is written into `dest`'s `tokenizer_config.json`, so that which class a user gets does
    not depend on the folder's model config (a slim output's is not one transformers knows).
    """
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, dest / name)
            if name.endswith(".json") and name != CONFIG_FILE:
                _drop_top_level_auto_map(dest / name)
    path = dest / CONFIG_FILE
    config = _read_json(path) if path.is_file() else {}
    config = sanitise_config(config if isinstance(config, dict) else {}, (dest / "tokenizer.json").is_file())
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    tokenizer = AutoTokenizer.from_pretrained(dest, config=model_config, trust_remote_code=False)
    if "tokenizer_class" not in config:  # otherwise a slim output's AutoTokenizer would go by its custom config
        config["tokenizer_class"] = type(tokenizer).__name__
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return tokenizer


def load_tokenizer(source: Path, model_config: PreTrainedConfig) -> PreTrainedTokenizerBase:
    """The source's tokenizer, loaded by stock transformers only (through a sanitised copy of its files)."""
    with tempfile.TemporaryDirectory(prefix="slimkit-tokenizer-") as staging:
        return copy_tokenizer(source, Path(staging), model_config)


def strip_auto_map(source: Path, dest: Path, name: str) -> None:
    """Copy a JSON file (e.g. `generation_config.json`) without its `auto_map`, if the source has one."""
    if not (source / name).is_file():
        return
    data = _read_json(source / name)
    if isinstance(data, dict):
        data.pop("auto_map", None)
    (dest / name).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _drop_top_level_auto_map(path: Path) -> None:
    """Rewrite a JSON file without a top-level `auto_map` (parsed only if the word occurs: tokenizer.json is big)."""
    if b'"auto_map"' not in path.read_bytes():
        return
    data = _read_json(path)
    if isinstance(data, dict) and "auto_map" in data:
        del data["auto_map"]
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidArgument(f"the source's {path.name} is not valid JSON: {err}") from err


def _is_transformers_name(name: str) -> bool:
    import transformers

    return hasattr(transformers, name)
