"""What a release on the Hub is, and whether it is ready to compress: the readiness gate of watch rules.

A release is a model repo at its head commit. It is a candidate only when its upload is complete — a
config, safetensors weights (a single file, or an index whose every shard is in the repo) — and it has had
no new commit for the rule's quiet period (big checkpoints arrive as several commits, and an index can
land before its shards). The job is pinned to that commit's sha, so a later push never changes what runs.

Facts that cost downloads (the config, the parameter count from the safetensors headers) are read once
per release and only when a rule needs them. Pickle-only weights are never taken (the service never loads
pickle); architectures are checked with the engine's own adapter check, so a release the engine would
refuse is recorded as skipped with the engine's reason, not run and failed.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from huggingface_hub import HfApi

from app.responses import utc

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
NOT_CONTENT = frozenset({".gitattributes", "README.md"})  # what a freshly created repo may hold


@dataclass
class Release:
    """A repo at its head commit, as the Hub describes it; facts are filled in lazily by the gate."""

    repo_id: str
    sha: str
    created_at: datetime | None
    last_commit_at: datetime
    files: frozenset[str]
    _facts: dict[str, object] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """Nothing uploaded yet (the Hub's first commit of a new repo): not a release, not even a waiting one."""
        return self.files <= NOT_CONTENT

    @classmethod
    def fetch(cls, api: HfApi, repo_id: str) -> Release:
        info = api.model_info(repo_id, timeout=30)
        return cls(
            repo_id=info.id,
            sha=str(info.sha),
            created_at=utc(info.created_at),
            last_commit_at=utc(info.last_modified) or datetime.now(UTC),
            files=frozenset(s.rfilename for s in info.siblings or []),
        )


@dataclass(frozen=True)
class Verdict:
    state: Literal["waiting", "skipped", "ready"]
    reason: str | None = None
    recheck_in_s: float | None = None  # waiting: when looking again can change the answer (None: next poll)


def upload_state(api: HfApi, release: Release, quiet_period_s: int, now: datetime) -> Verdict:
    """Complete and quiet ("ready"), still uploading ("waiting"), or never usable ("skipped")."""
    if "compression.json" in release.files:
        return Verdict("skipped", "already a compressed model (it has a compression.json): not compressed again")
    if SINGLE not in release.files and INDEX not in release.files:
        if any(name.endswith(PICKLE_SUFFIXES) for name in release.files):
            return Verdict("skipped", "no safetensors weights (pickle files are never loaded by this service)")
        return Verdict("waiting", "still uploading: no safetensors weights yet")
    if "config.json" not in release.files:
        return Verdict("waiting", "still uploading: no config.json yet")
    if SINGLE not in release.files:
        missing = sorted(set(_shards(api, release)) - release.files)
        if missing:
            listed = ", ".join(missing[:3]) + (" …" if len(missing) > 3 else "")
            return Verdict("waiting", f"still uploading: the safetensors index names shards not in the repo ({listed})")
    quiet_for = (now - release.last_commit_at).total_seconds()
    if quiet_for < quiet_period_s:
        return Verdict(
            "waiting",
            f"still uploading: the last commit is newer than the rule's quiet period ({quiet_period_s} s)",
            recheck_in_s=quiet_period_s - quiet_for,
        )
    return Verdict("ready")


def _shards(api: HfApi, release: Release) -> list[str]:
    if "shards" not in release._facts:
        index = json.loads(_download(api, release, INDEX))
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            release._facts["shards"] = ["(an index without a weight_map)"]  # never complete: waits, is not run
        else:
            release._facts["shards"] = sorted({str(v) for v in weight_map.values()})
    return release._facts["shards"]  # type: ignore[return-value]


def model_type(api: HfApi, release: Release) -> tuple[str | None, str | None]:
    """(config model_type, None) when the engine supports the model; (model_type, why not) otherwise."""
    if "model_type" not in release._facts:
        release._facts["model_type"] = _check_architecture(api, release)
    return release._facts["model_type"]  # type: ignore[return-value]


def _check_architecture(api: HfApi, release: Release) -> tuple[str | None, str | None]:
    from transformers import AutoConfig

    from slimkit.arch import adapter_for
    from slimkit.errors import UnsupportedArchitecture

    text = _download(api, release, "config.json")
    try:
        raw = json.loads(text)
    except ValueError:
        return None, "config.json is not valid JSON"
    kind = raw.get("model_type") if isinstance(raw, dict) else None
    if not isinstance(kind, str):
        return None, "unsupported architecture: config.json has no model_type"
    with tempfile.TemporaryDirectory(prefix="slimkit-release-") as folder:
        (Path(folder) / "config.json").write_text(text)
        try:  # never trust_remote_code: a config that needs custom code is unsupported, not run
            config = AutoConfig.from_pretrained(folder)
            adapter_for(config)
        except UnsupportedArchitecture as err:
            return kind, f"unsupported architecture: {err}"
        except (ValueError, KeyError, OSError) as err:
            return kind, f"unsupported architecture: {kind!r} is not a config stock transformers loads ({err})"
    return kind, None


def parameter_count(api: HfApi, release: Release) -> int:
    """Parameters counted from the safetensors headers (ranged reads of each shard's header, no weights)."""
    if "params" not in release._facts:
        meta = api.get_safetensors_metadata(release.repo_id, revision=release.sha)
        release._facts["params"] = int(sum(meta.parameter_count.values()))
    return release._facts["params"]  # type: ignore[return-value]


def _download(api: HfApi, release: Release, filename: str) -> str:
    path = api.hf_hub_download(release.repo_id, filename, revision=release.sha)
    return Path(path).read_text()
