"""Calibration text → fixed-seed token windows.

A calibration set is `samples` windows of `seq_len` tokens cut at seeded random offsets from one long
token stream (the text tokenized once), the protocol of SliceGPT/IntraSlice. When the text is shorter
than one window, the single window is right-padded and its padding masked out of every statistic.

Text sources: a local file, a bundled text (`BUNDLED`, in slimkit/data with its LICENSE file), or a file in a
Hub dataset repo, `hf://datasets/<owner>/<name>/<path>` (.txt, or .jsonl with a "text" field). The bundled texts:
`wikitext2_valid` and `wikitext2_test`, the WikiText-2 validation and test splits (English Wikipedia prose), and
`mixed`, 1.2 MB of three domains in equal shares interleaved in chunks of at most 4 KB: WikiText-2 validation
prose, the Python reference documentation and Python standard-library source code (built once by
scripts/build_mixed_calibration.py; mixed.sources.json records the source of every chunk).
Hub files are read with the caller's token (private and gated datasets), retried on 5xx like model
downloads, and refused before download when larger than `MAX_TEXT_BYTES`; any text that is binary
(NUL bytes, not UTF-8) or too large is `invalid_argument`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from slimkit.errors import InvalidArgument
from slimkit.hubio import DOWNLOAD_ATTEMPTS, RETRY_BASE_S, hub_errors, with_retries

BUNDLED = {"wikitext2_valid", "wikitext2_test", "mixed"}  # the API lists the same names (app.schemas.BUNDLED_TEXTS)
# Three domains in equal shares, so a job that names no calibration does not overfit one. SmolLM2 at 30 %,
# perplexity ratio to dense on WikiText-2 / technical docs / licence texts: calibrated on WikiText-2 alone
# 1.5x / 4.6x / 4.4x, on `mixed` 2.1x / 3.6x / 2.9x (README, "IntraSlice quality").
DEFAULT_CALIBRATION_TEXT = "mixed"
MAX_TEXT_BYTES = 256 * 2**20  # a calibration text beyond this is a mistake (a dataset dump, a binary file)


@dataclass(frozen=True)
class CalibrationSpec:
    text: str = DEFAULT_CALIBRATION_TEXT
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


def read_text(source: str, token: str | None = None, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The raw text named by `source` (bundled name, local path or hf://datasets/... file read with `token`)."""
    if source in BUNDLED:
        return resources.files("slimkit.data").joinpath(f"{source}.txt").read_text(encoding="utf-8")
    if source.startswith("hf://datasets/"):
        path = hub_text_file(source, token, max_bytes)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise InvalidArgument(f"calibration text {source!r}: no such file (or use one of {sorted(BUNDLED)})")
    if path.stat().st_size > max_bytes:
        raise InvalidArgument(f"calibration text {source!r} is larger than the {max_bytes:,}-byte cap")
    data = path.read_bytes()
    try:
        if b"\0" in data:
            raise UnicodeDecodeError("utf-8", data, data.index(b"\0"), data.index(b"\0") + 1, "NUL byte")
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidArgument(
            f"calibration text {source!r} is not UTF-8 text (binary content at byte {err.start})"
        ) from err
    return jsonl_text(source, text) if path.suffix == ".jsonl" else text


def jsonl_text(source: str, text: str) -> str:
    """The "text" fields of a JSON-lines file, joined by blank lines."""
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise InvalidArgument(f"calibration text {source!r}: line {number} is not JSON ({err})") from err
        if isinstance(row, dict) and "text" in row:
            out.append(str(row["text"]))
    return "\n\n".join(out)


def hub_text_file(
    source: str, token: str | None, max_bytes: int, attempts: int = DOWNLOAD_ATTEMPTS, base_s: float = RETRY_BASE_S
) -> Path:
    """Download an `hf://datasets/<owner>/<name>/<file>` with `token`, after checking its size on the Hub.

    A missing dataset or file is `invalid_argument` (it is the request's calibration argument that is wrong,
    not the model: `model_not_found` would point at the wrong field); no access is `gated_or_unauthorized`;
    5xx are retried, then `hub_unavailable`.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    parts = source.removeprefix("hf://datasets/").split("/", 2)
    if len(parts) != 3 or not all(parts):
        raise InvalidArgument(f"{source}: expected hf://datasets/<owner>/<name>/<file>")
    repo_id, filename = f"{parts[0]}/{parts[1]}", parts[2]
    try:
        with hub_errors(f"dataset {repo_id}", None, kind="dataset"):
            url = hf_hub_url(repo_id, filename, repo_type="dataset")
            meta = with_retries(lambda: get_hf_file_metadata(url, token=token), f"reading {source}", attempts, base_s)
            if meta.size is not None and meta.size > max_bytes:
                raise InvalidArgument(
                    f"calibration text {source!r} is {meta.size:,} bytes, above the {max_bytes:,}-byte cap"
                )
            return Path(
                with_retries(
                    lambda: hf_hub_download(repo_id, filename, repo_type="dataset", token=token),
                    f"downloading {source}",
                    attempts,
                    base_s,
                )
            )
    except InvalidArgument:
        raise
    except Exception as err:
        cause = err.__cause__
        if isinstance(cause, RemoteEntryNotFoundError | RepositoryNotFoundError | RevisionNotFoundError):
            raise InvalidArgument(
                f"calibration text {source!r} was not found on the Hub (no such dataset or file, or it is private "
                "to another account)"
            ) from err
        raise


def tokenize(tokenizer: PreTrainedTokenizerBase, text: str) -> torch.Tensor:
    """The whole text as one 1-D token stream, without special tokens."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def build_calibration(
    tokenizer: PreTrainedTokenizerBase, spec: CalibrationSpec, token: str | None = None
) -> CalibrationBatch:
    """The calibration windows of `spec`; `token` authenticates a Hub dataset file."""
    spec.validate()
    stream = tokenize(tokenizer, read_text(spec.text, token=token))
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
