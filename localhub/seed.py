"""Put a local folder into a local-Hub repo directly, without HTTP.

Tests and the offline demo need "source" models on the Hub (e.g. SmolLM2 under its real id) before any job
runs. Uploading through the client would work too, but seeding straight into the store is faster, needs no
running server, and classifies files exactly as the preupload route does (default LFS patterns, size, NUL
bytes), so what the client later downloads looks like what it would have uploaded itself.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from localhub.context import HubState
from localhub.storage import DEFAULT_LFS_THRESHOLD, Entry, Operation, Storage, is_lfs

SKIPPED_DIRS = {".git", ".cache"}  # git internals; the `.cache/huggingface` metadata of `local_dir` downloads


def _target(target: FastAPI | HubState | Storage | Path | str) -> tuple[Storage, int]:
    if isinstance(target, FastAPI):
        target = target.state.hub
    if isinstance(target, HubState):
        return target.storage, target.lfs_threshold
    if isinstance(target, Storage):
        return target, DEFAULT_LFS_THRESHOLD
    return Storage(Path(target)), DEFAULT_LFS_THRESHOLD


def folder_entries(storage: Storage, folder: Path, lfs_threshold: int = DEFAULT_LFS_THRESHOLD) -> dict[str, Entry]:
    """Store every file under `folder` (regular or LFS) and return `{path in repo: entry}`."""
    entries: dict[str, Entry] = {}
    for file in sorted(folder.rglob("*")):
        rel = file.relative_to(folder)
        if not file.is_file() or SKIPPED_DIRS.intersection(rel.parts[:-1]):
            continue
        size = file.stat().st_size
        with file.open("rb") as f:
            sample = f.read(512)
        path = rel.as_posix()
        lfs = is_lfs(path, size, sample, lfs_threshold)
        entries[path] = storage.add_lfs_file(file) if lfs else storage.put_blob(file.read_bytes())
    return entries


def seed(
    target: FastAPI | HubState | Storage | Path | str,
    repo_id: str,
    folder: Path | str,
    *,
    repo_type: str = "model",
    private: bool | None = None,
    gated: bool | None = None,
    lfs_threshold: int | None = None,
    message: str = "Seed from a local folder",
    branch: str = "main",
) -> str:
    """Make `branch` of `repo_id` hold exactly the files of `folder`; returns the commit id.

    `target` is a running app (or its `HubState` / `Storage`), whose server sees the result at once, or a root
    folder, which a server started *afterwards* on that root will load. The repo is created if needed;
    `private` / `gated` are applied when given. Re-seeding an unchanged folder makes no new commit. A missing
    `branch` (e.g. `feature/x`, or `refs/pr/1` for a pull request's ref) is created from `main` first.
    """
    storage, default_threshold = _target(target)
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder")
    repo = storage.find(repo_type, repo_id) or storage.create_repo(repo_type, repo_id)
    if private is not None or gated is not None:
        storage.update_settings(repo_type, repo_id, private=private, gated=gated)
    if branch not in repo.branches:
        storage.create_branch(repo, branch, "main")
    entries = folder_entries(storage, folder, lfs_threshold or default_threshold)
    head = storage.resolve(repo, branch)
    if entries == head.files:
        return head.oid
    operations = [Operation("delete", path) for path in head.files if path not in entries]
    operations += [Operation("add", path, entry) for path, entry in entries.items()]
    return storage.commit(repo, branch, operations, message).oid
