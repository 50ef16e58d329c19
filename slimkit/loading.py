"""Load a source checkpoint (local folder or Hub id) into the canonical `SlimForCausalLM`.

Only safetensors are ever read: pickle-based weights (`*.bin`, `*.pt`) can execute code on load, so a
model that ships nothing else is refused with `no_safetensors`. No remote code is run either: the config
must be one that stock transformers knows and one of our adapters supports.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors import safe_open
from transformers import AutoConfig, PreTrainedConfig

from slimkit.arch import ArchAdapter, adapter_for
from slimkit.errors import (
    GatedOrUnauthorized,
    HubUnavailable,
    InvalidArgument,
    ModelNotFound,
    NoSafetensors,
    RevisionNotFound,
    UnsupportedArchitecture,
)
from slimkit.modeling.modeling_slim import SlimForCausalLM

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
HUB_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.jinja", "tokenizer.model", "*.txt"]
_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


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
    model: str, revision: str | None, token: str | None = None, local_dir: Path | None = None
) -> tuple[Path, str]:
    """Resolve `revision` to a commit and fetch that commit's safetensors, configs and tokenizer files.

    The file list is checked first, so a pickle-only repo is refused before any weight is transferred;
    `allow_patterns` keeps pickles out of the download even when both kinds are present.
    """
    from huggingface_hub import HfApi, snapshot_download  # deferred: HF_ENDPOINT must be set by then

    with hub_errors(model, revision):
        info = HfApi(token=token).model_info(model, revision=revision, files_metadata=False)
    names = [s.rfilename for s in info.siblings or []]
    if not any(n.endswith(".safetensors") for n in names):
        pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
        raise NoSafetensors(
            f"{model}@{info.sha}: no safetensors weights"
            + (f" (only pickle files: {', '.join(pickles[:3])})" if pickles else "")
            + "; pickle checkpoints are never loaded. Convert the model to safetensors first."
        )
    with hub_errors(model, revision):
        path = snapshot_download(
            model, revision=info.sha, allow_patterns=HUB_PATTERNS, token=token, local_dir=local_dir
        )
    return Path(path), info.sha


@contextmanager
def hub_errors(model: str, revision: str | None) -> Iterator[None]:
    """Translate the Hub client's errors into the engine's coded errors."""
    import httpx2  # the Hub client's HTTP library
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        yield
    except GatedRepoError as err:
        raise GatedOrUnauthorized(f"{model} is gated; accept its terms with the account whose token is used") from err
    except RevisionNotFoundError as err:
        raise RevisionNotFound(f"{model} has no revision {revision!r}") from err
    except RepositoryNotFoundError as err:
        raise ModelNotFound(f"no model {model!r} on the Hub (or it is private to another account)") from err
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            raise GatedOrUnauthorized(f"the Hub refused access to {model} (HTTP {status})") from err
        raise HubUnavailable(f"reading {model}@{revision} from the Hub failed: {err}") from err
    except (httpx2.TransportError, OSError) as err:  # refused, reset, timed out
        raise HubUnavailable(f"the Hub could not be reached for {model}: {err}") from err


def read_config(path: Path) -> PreTrainedConfig:
    if not (path / "config.json").is_file():
        raise ModelNotFound(f"{path}: no config.json")
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (ValueError, KeyError) as err:
        raise UnsupportedArchitecture(f"model_type {model_type!r} is unknown to transformers: {err}") from err


def safetensors_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in path.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
        raise NoSafetensors(
            f"{path}: no *.safetensors weights"
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
    adapter = adapter_for(config)  # refuses unsupported families before any weight is read
    files = safetensors_files(path)
    slim_config = adapter.slim_config(config)
    layers: dict[int, dict[str, torch.Tensor]] = {}
    state: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                tensor = f.get_tensor(key)
                if dtype is not None and tensor.is_floating_point():
                    tensor = tensor.to(dtype)
                match = _LAYER_KEY.match(key)
                if match:
                    layers.setdefault(int(match[1]), {})[match[2]] = tensor
                else:
                    state[key] = tensor
    if sorted(layers) != list(range(config.num_hidden_layers)):
        raise InvalidArgument(
            f"{path}: checkpoint has layers {sorted(layers)[:5]}..., config says {config.num_hidden_layers}"
        )
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
        raise InvalidArgument(
            f"{path}: checkpoint does not match its config: missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    if slim_config.tie_word_embeddings:
        slim.lm_head.weight = slim.model.embed_tokens.weight
    slim.eval()
    return SourceModel(slim, config, adapter, path, model, sha)
