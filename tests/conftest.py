"""Tiny randomly initialised checkpoints of every supported family, saved as a user would have them.

Each fixture folder holds safetensors weights, a config of the family's own type and a real byte-level
BPE tokenizer (tests/fixtures/tokenizer, vocabulary 8192), so the engine sees exactly what it would
download from the Hub.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Point huggingface_hub at the local hub (tests/hub_fixtures.py) before anything imports it: it freezes
# HF_ENDPOINT and HF_HUB_DISABLE_XET at import. The port is chosen now; the session fixture serves on it.
_HF_HOME = tempfile.mkdtemp(prefix="slimkit-tests-hf-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ.pop("HF_HUB_OFFLINE", None)  # offline mode would block the local hub
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{_free_port()}"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_CACHE"] = os.path.join(_HF_HOME, "hub")
os.environ["HF_TOKEN"] = "localhub-test-token"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers as T  # noqa: E402

pytest_plugins = ["tests.service_fixtures", "tests.hub_fixtures"]

FIXTURES = Path(__file__).parent / "fixtures"
VOCAB = 8192

TINY_CONFIGS = {
    # Llama-2 style multi-head attention
    "llama_mha": lambda: T.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=512,
    ),
    # Llama-3 style grouped-query attention with llama3 RoPE scaling
    "llama_gqa": lambda: T.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 128,
        },
    ),
    # Qwen2: q/k/v bias, tied embeddings, GQA
    "qwen2": lambda: T.Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=4,
        tie_word_embeddings=True,
        max_position_embeddings=512,
    ),
    # Phi-3: fused qkv_proj / gate_up_proj, head_dim 96
    "phi3": lambda: T.Phi3Config(
        vocab_size=VOCAB,
        hidden_size=384,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        pad_token_id=0,
    ),
}


def make_tokenizer() -> T.PreTrainedTokenizerFast:
    return T.PreTrainedTokenizerFast(
        tokenizer_file=str(FIXTURES / "tokenizer" / "tokenizer.json"),
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<|pad|>",
    )


def save_tiny(name: str, path: Path, seed: int = 0, layers: int | None = None) -> Path:
    torch.manual_seed(seed)
    config = TINY_CONFIGS[name]()
    if layers is not None:  # a deeper variant (depth methods)
        config.num_hidden_layers = layers
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = [config.layer_types[0]] * layers
    model = T.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # non-trivial norms and biases, so a fusion bug cannot hide behind ones and zeros
        for pname, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.3 * torch.randn_like(p) if "norm" in pname else 0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session", params=list(TINY_CONFIGS))
def tiny_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny checkpoint of each family (session-scoped: written once per family)."""
    return save_tiny(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="session")
def tiny_llama_gqa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny("llama_gqa", tmp_path_factory.mktemp("llama_gqa_single"))


@pytest.fixture
def sample_ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 48), generator=torch.Generator().manual_seed(1))
