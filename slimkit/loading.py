"""Load a source checkpoint (local folder or Hub id) into the canonical `SlimForCausalLM`.

Only safetensors are ever read: pickle-based weights (`*.bin`, `*.pt`) can execute code on load, so a
model that ships nothing else is refused with `no_safetensors`. No remote code is run either: the config
must be one that stock transformers knows and one of our adapters supports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors import safe_open
from transformers import AutoConfig, PreTrainedConfig

from slimkit.arch import ArchAdapter, adapter_for, supported_model_types
from slimkit.checkpoint import LAYER_KEY, check_checkpoint, check_config, reason
from slimkit.errors import InvalidModel, ModelNotFound, NoSafetensors, UnsupportedArchitecture
from slimkit.hubio import DOWNLOAD_ATTEMPTS, RETRY_BASE_S, check_revision, hub_errors, with_retries
from slimkit.modeling.modeling_slim import SlimForCausalLM

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
HUB_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.jinja", "tokenizer.model", "*.txt"]


@dataclass
class SourceModel:
    """A dense model in canonical form, with what is needed to describe and re-export it."""

    model: SlimForCausalLM
    config: PreTrainedConfig  # the source family's own config
    adapter: ArchAdapter
    path: Path  # local folder holding config, weights and tokenizer files
    name: str  # as the user gave it: Hub id or folder
    revision: str | None  # resolved commit for Hub models


def resolve(model: str, revision: str | None = None, token: str | None = None) -> tuple[Path, str | None]:
    """A local folder for `model`: the folder itself, or a safetensors-only snapshot from the Hub."""
    local = Path(model).expanduser()
    if local.is_dir():
        return local, None
    if local.exists() or model.startswith((".", "/")):
        raise ModelNotFound(f"{model}: not a model folder")
    return download(model, revision, token)


def download(
    model: str,
    revision: str | None,
    token: str | None = None,
    local_dir: Path | None = None,
    attempts: int = DOWNLOAD_ATTEMPTS,
    retry_base_s: float = RETRY_BASE_S,
) -> tuple[Path, str]:
    """Resolve `revision` to a commit and fetch that commit's safetensors, configs and tokenizer files.

    The file list is checked first, so a pickle-only repo is refused before any weight is transferred;
    `allow_patterns` keeps pickles out of the download even when both kinds are present. Each Hub call is
    tried `attempts` times on 5xx / 429 / connection errors (a retried snapshot skips finished files).
    """
    from huggingface_hub import HfApi, snapshot_download  # deferred: HF_ENDPOINT must be set by then

    check_revision(model, revision)
    api = HfApi(token=token)
    with hub_errors(model, revision):
        info = with_retries(
            lambda: api.model_info(model, revision=revision, files_metadata=False),
            f"reading {model}@{revision}",
            attempts,
            retry_base_s,
        )
    names = [s.rfilename for s in info.siblings or []]
    if not any(n.endswith(".safetensors") for n in names):
        pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
        raise NoSafetensors(
            f"{model}@{info.sha}: no safetensors weights"
            + (f" (only pickle files: {', '.join(pickles[:3])})" if pickles else "")
            + "; pickle checkpoints are never loaded. Convert the model to safetensors first."
        )
    sha = info.sha
    with hub_errors(model, revision):
        path = with_retries(
            lambda: snapshot_download(
                model, revision=sha, allow_patterns=HUB_PATTERNS, token=token, local_dir=local_dir
            ),
            f"downloading {model}@{sha}",
            attempts,
            retry_base_s,
        )
    return Path(path), sha


def read_config(path: Path) -> PreTrainedConfig:
    """The source's config, refused as `invalid_model` when it is not JSON or its sizes make no sense."""
    if not (path / "config.json").is_file():
        raise ModelNotFound(f"{path.name}: no config.json")
    try:
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidModel(f"config.json is not valid JSON ({reason(err)})") from err
    if not isinstance(raw, dict):
        raise InvalidModel("config.json must hold a JSON object")
    from huggingface_hub.errors import StrictDataclassError  # transformers' config classes validate with it

    model_type = raw.get("model_type")
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except KeyError as err:
        raise UnsupportedArchitecture(f"model_type {model_type!r} is unknown to transformers: {reason(err)}") from err
    except StrictDataclassError as err:  # e.g. heads that do not divide the width, a negative size
        raise InvalidModel(f"config.json is not a valid {model_type} config ({reason(err.__cause__ or err)})") from err
    except (ValueError, TypeError) as err:
        if "model_type" in str(err) or "Unrecognized" in str(err):
            raise UnsupportedArchitecture(
                f"model_type {model_type!r} is unknown to transformers: {reason(err)}"
            ) from err
        raise InvalidModel(f"config.json is not a valid {model_type} config ({reason(err)})") from err
    return config


def safetensors_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in path.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
        raise NoSafetensors(
            f"{path.name}: no *.safetensors weights"
            + (f" (found pickle files {', '.join(pickles[:3])}, which are never loaded)" if pickles else "")
        )
    return files


def load_source(
    model: str,
    revision: str | None = None,
    dtype: torch.dtype | None = None,
    token: str | None = None,
) -> SourceModel:
    """Read config + safetensors into a dense `SlimForCausalLM` on CPU, in the checkpoint dtype by default."""
    path, sha = resolve(model, revision, token)
    config = read_config(path)
    if config.model_type in supported_model_types():
        check_config(config)  # sizes first: the family's own checks divide by them
    adapter = adapter_for(config)  # refuses unsupported families before any weight is read
    files = safetensors_files(path)
    slim_config = adapter.slim_config(config)
    check_checkpoint(files, config, adapter, slim_config)  # headers vs config: nothing is allocated by the config
    layers: dict[int, dict[str, torch.Tensor]] = {}
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                    tensor = f.get_tensor(key)
                    if dtype is not None and tensor.is_floating_point():
                        tensor = tensor.to(dtype)
                    match = LAYER_KEY.match(key)
                    if match:
                        layers.setdefault(int(match[1]), {})[match[2]] = tensor
                    else:
                        state[key] = tensor
        except Exception as err:  # SafetensorError: data shorter than the header says
            raise InvalidModel(f"{file.name}: the tensor data cannot be read ({reason(err)})") from err
    for i, layer in layers.items():
        for name, tensor in adapter.to_canonical(layer, config).items():
            state[f"model.layers.{i}.{name}"] = tensor
    if slim_config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    weight_dtype = state["model.embed_tokens.weight"].dtype
    slim_config.dtype = weight_dtype
    with init_empty_weights(include_buffers=False):  # parameters on meta; RoPE tables and index maps real
        slim = SlimForCausalLM(slim_config)
    missing, unexpected = slim.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not (k == "lm_head.weight" and slim_config.tie_word_embeddings)]
    if missing or unexpected:
        raise InvalidModel(
            f"the checkpoint does not match its config: missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    if slim_config.tie_word_embeddings:
        slim.lm_head.weight = slim.model.embed_tokens.weight
    slim.eval()
    return SourceModel(slim, config, adapter, path, model, sha)
