"""Calibration text → fixed-seed token windows.

A calibration set is `samples` windows of `seq_len` tokens cut at seeded random offsets from one long
token stream (the text tokenized once), the protocol of SliceGPT/IntraSlice. When the text is shorter
than one window, the single window is right-padded and its padding masked out of every statistic.

Text sources: a local file, the bundled WikiText-2 splits (`wikitext2_valid`, `wikitext2_test`), or a file
in a Hub dataset repo, `hf://datasets/<owner>/<name>/<path>` (.txt, or .jsonl with a "text" field).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from slimkit.errors import InvalidArgument

BUNDLED = {"wikitext2_valid", "wikitext2_test"}


@dataclass(frozen=True)
class CalibrationSpec:
    text: str = "wikitext2_valid"
    samples: int = 64
    seq_len: int = 512
    seed: int = 0
    label: str | None = None  # how records name the text, when `text` is a temporary path (inline text)

    def validate(self) -> None:
        if not 1 <= self.samples <= 4096:
            raise InvalidArgument(f"calibration samples must be in [1, 4096], got {self.samples}")
        if not 8 <= self.seq_len <= 32768:
            raise InvalidArgument(f"calibration seq_len must be in [8, 32768], got {self.seq_len}")


@dataclass
class CalibrationBatch:
    input_ids: torch.Tensor  # (n, T) long
    attention_mask: torch.Tensor  # (n, T) long, 0 on padding
    provenance: dict  # what was used, recorded in compression.json

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())


def read_text(source: str) -> str:
    """The raw text named by `source` (bundled name, local path or hf://datasets/... file)."""
    if source in BUNDLED:
        return resources.files("slimkit.data").joinpath(f"{source}.txt").read_text(encoding="utf-8")
    if source.startswith("hf://datasets/"):
        parts = source.removeprefix("hf://datasets/").split("/", 2)
        if len(parts) != 3:
            raise InvalidArgument(f"{source}: expected hf://datasets/<owner>/<name>/<file>")
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(f"{parts[0]}/{parts[1]}", parts[2], repo_type="dataset"))
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise InvalidArgument(f"calibration text {source!r}: no such file (or use one of {sorted(BUNDLED)})")
    if path.suffix == ".jsonl":
        rows = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        return "\n\n".join(str(row["text"]) for row in rows if "text" in row)
    return path.read_text(encoding="utf-8")


def tokenize(tokenizer: PreTrainedTokenizerBase, text: str) -> torch.Tensor:
    """The whole text as one 1-D token stream, without special tokens."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def build_calibration(tokenizer: PreTrainedTokenizerBase, spec: CalibrationSpec) -> CalibrationBatch:
    spec.validate()
    stream = tokenize(tokenizer, read_text(spec.text))
    if stream.numel() == 0:
        raise InvalidArgument(f"calibration text {spec.text!r} is empty")
    n, T = spec.samples, spec.seq_len
    if stream.numel() < T:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.full((1, T), pad, dtype=torch.long)
        ids[0, : stream.numel()] = stream
        mask = torch.zeros(1, T, dtype=torch.long)
        mask[0, : stream.numel()] = 1
    else:
        gen = torch.Generator().manual_seed(spec.seed)
        starts = torch.randint(0, stream.numel() - T + 1, (n,), generator=gen)
        ids = torch.stack([stream[s : s + T] for s in starts.tolist()])
        mask = torch.ones_like(ids)
    provenance = {
        "text": spec.label or spec.text,
        "samples": int(ids.shape[0]),
        "seq_len": T,
        "seed": spec.seed,
        "stream_tokens": int(stream.numel()),
        "calibration_tokens": int(mask.sum()),
    }
    return CalibrationBatch(ids, mask, provenance)
