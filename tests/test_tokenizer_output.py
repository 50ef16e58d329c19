"""A source's remote-code pointers are never republished, and an output's tokenizer loads without a prompt.

The source here is hostile: its `tokenizer_config.json` names a custom tokenizer class with an `auto_map` to a
Python file that leaves a marker if it is ever imported, and its `generation_config.json` carries an `auto_map`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from slimkit import CalibrationSpec, CompressionRequest, compress
from slimkit.export import save_compressed
from slimkit.loading import load_source
from slimkit.tokenizer_files import TOKENIZER_FILES, load_tokenizer, sanitise_config, stock_tokenizer_class

TEXT = "Structured compression keeps the tokenizer: the same ids, byte for byte.\n"
PROMPT = "Do you wish to run the custom code"


@pytest.fixture
def hostile(tiny_llama_gqa: Path, tmp_path: Path) -> Path:
    source = tmp_path / "hostile"
    shutil.copytree(tiny_llama_gqa, source)
    marker = tmp_path / "custom-code-ran"
    (source / "tokenization_custom.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import PreTrainedTokenizerFast\n\n\n"
        "class CustomTokenizerFast(PreTrainedTokenizerFast):\n    pass\n"
    )
    config = json.loads((source / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "CustomTokenizerFast"
    config["auto_map"] = {"AutoTokenizer": [None, "tokenization_custom.CustomTokenizerFast"]}
    (source / "tokenizer_config.json").write_text(json.dumps(config))
    pointer = {"AutoTokenizer": [None, "tokenization_custom.CustomTokenizerFast"]}
    (source / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<|endoftext|>", "auto_map": pointer}))
    generation = json.loads((source / "generation_config.json").read_text())
    generation["auto_map"] = {"AutoModelForCausalLM": "tokenization_custom.CustomTokenizerFast"}
    (source / "generation_config.json").write_text(json.dumps(generation))
    return source


def auto_maps(value: Any) -> list[Any]:
    """Every `auto_map` value anywhere in a JSON document."""
    if isinstance(value, dict):
        return [v for k, v in value.items() if k == "auto_map"] + [m for v in value.values() for m in auto_maps(v)]
    if isinstance(value, list):
        return [m for v in value for m in auto_maps(v)]
    return []


def assert_no_foreign_pointers(out: Path, source: Path) -> None:
    found = {p.name: auto_maps(json.loads(p.read_text())) for p in out.glob("*.json")}
    found = {name: maps for name, maps in found.items() if maps}
    if (out / "modeling_slim.py").is_file():  # the slim format's own pointer to the file we ship, and only that
        [pointer] = found.pop("config.json")
        assert all(str(ref).startswith("modeling_slim.") for ref in pointer.values()), pointer
    assert found == {}
    slim = (out / "modeling_slim.py").exists()
    assert sorted(p.name for p in out.glob("*.py")) == (["modeling_slim.py"] if slim else [])
    grep = subprocess.run(["grep", "-rl", "auto_map", str(out)], capture_output=True, text=True)
    expected = {"config.json", "modeling_slim.py"} if slim else set()
    assert {Path(line).name for line in grep.stdout.splitlines()} == expected
    assert "custom" not in (out / "tokenizer_config.json").read_text().lower()
    assert stock_tokenizer_class(json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"])
    assert not (source.parent / "custom-code-ran").exists()


def test_compress_takes_over_no_remote_code(hostile: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = compress(
        CompressionRequest(
            model=str(hostile), ratio=0.3, calibration=CalibrationSpec(samples=4, seq_len=32), evaluation=None
        ),
        out,
        show_progress=False,
    )
    assert result.format == "slim"
    assert_no_foreign_pointers(out, hostile)
    # only stock tokenizer files, holding what the source's had
    assert {p.name for p in out.iterdir()} - {"config.json", "model.safetensors", "modeling_slim.py"} <= {
        *TOKENIZER_FILES,
        "generation_config.json",
        "compression.json",
        "README.md",  # the model card
    }
    assert (out / "tokenizer.json").read_bytes() == (hostile / "tokenizer.json").read_bytes()
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == json.loads((hostile / "generation_config.json").read_text())["eos_token_id"]
    reloaded = AutoTokenizer.from_pretrained(out, trust_remote_code=False)
    source = load_source(str(hostile))
    assert reloaded(TEXT)["input_ids"] == load_tokenizer(hostile, source.config)(TEXT)["input_ids"]


def test_sanitise_config_keeps_stock_names_only() -> None:
    stock = {"tokenizer_class": "LlamaTokenizerFast", "processor_class": "AutoProcessor", "model_max_length": 8}
    assert sanitise_config(stock, has_tokenizer_json=True) == stock
    custom = {"tokenizer_class": "EvilTokenizer", "processor_class": "EvilProcessor", "auto_map": {"x": "y.Z"}}
    assert sanitise_config(custom, has_tokenizer_json=True) == {"tokenizer_class": "TokenizersBackend"}
    assert sanitise_config(custom, has_tokenizer_json=False) == {}  # let transformers pick by model type
    assert not stock_tokenizer_class("AutoTokenizer") and not stock_tokenizer_class("os")


@pytest.mark.parametrize("fmt", ["auto", "slim"])
def test_written_tokenizer_is_clean_in_both_formats(hostile: Path, tmp_path: Path, fmt: str) -> None:
    source = load_source(str(hostile))
    out = tmp_path / "out"
    written = save_compressed(source.model, source, out, {"note": "identity"}, fmt=fmt)
    assert written == ("stock" if fmt == "auto" else "slim")
    assert_no_foreign_pointers(out, hostile)


LOAD = """
import sys
from transformers import AutoTokenizer
kwargs = {"trust_remote_code": False} if sys.argv[2] == "explicit" else {}
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1], **kwargs)
print(type(tokenizer).__module__, tokenizer("hello world")["input_ids"])
"""


def load_in_subprocess(folder: Path, how: str) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter with stdin closed: a remote-code prompt would print its question and fail or stall."""
    return subprocess.run(
        [sys.executable, "-c", LOAD, str(folder), how],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_output_tokenizer_loads_without_a_prompt(hostile: Path, tmp_path: Path) -> None:
    source = load_source(str(hostile))
    stock, slim = tmp_path / "stock", tmp_path / "slim"
    assert save_compressed(source.model, source, stock, {}, fmt="auto") == "stock"
    assert save_compressed(source.model, source, slim, {}, fmt="slim") == "slim"
    # a stock output: plain AutoTokenizer, no argument at all
    run = load_in_subprocess(stock, "plain")
    assert run.returncode == 0 and PROMPT not in run.stdout + run.stderr, run.stdout + run.stderr
    assert run.stdout.startswith("transformers.")
    # a slim output: its config.json points to modeling_slim.py, which the tokenizer never needs
    run = load_in_subprocess(slim, "explicit")
    assert run.returncode == 0 and PROMPT not in run.stdout + run.stderr, run.stdout + run.stderr
    assert run.stdout.startswith("transformers.")


def test_cli_eval_of_a_slim_output_asks_nothing(hostile: Path, tmp_path: Path) -> None:
    source = load_source(str(hostile))
    out = tmp_path / "slim"
    save_compressed(source.model, source, out, {}, fmt="slim")
    command = ["eval", str(out), "--device", "cpu", "--eval-seq-len", "32", "--eval-max-tokens", "64"]
    run = subprocess.run(
        [sys.executable, "-m", "slimkit.cli", *command],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert run.returncode == 0, run.stderr
    assert PROMPT not in run.stdout + run.stderr
    assert json.loads(run.stdout.splitlines()[-1])["tokens"] == 64
