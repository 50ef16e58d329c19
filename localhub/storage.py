"""Repository state and blob store of the local Hub.

The real Hub is a git server with an LFS store behind it. The client never sees git objects, only a few
derived facts: each file's git-blob SHA-1 (`oid`), the LFS SHA-256 and pointer size of large files, and a
40-hex commit id per revision. So this store keeps exactly that: per repo, branches → commit oid, and per
commit the full `{path: Entry}` map (snapshots, not diffs, so any old commit stays readable in O(1)).

File contents live on disk, addressed by hash, because checkpoints are 100+ MB: regular files under
`blobs/<sha1>`, LFS objects under `lfs/<sha256>`. The repo metadata is small and is rewritten to
`state.json` after each change, so a demo server restarted on the same root keeps its repos.

Every public method takes one lock: uvicorn runs sync routes in a thread pool and the pytest fixture seeds
from the test thread while the server thread serves.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

REPO_TYPES = ("model", "dataset")
DEFAULT_LFS_THRESHOLD = 10 * 1024 * 1024
# Patterns of the Hub's default `.gitattributes` (the files it stores in LFS whatever their size).
_LFS_GLOBS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack *.npy *.npz "
    "*.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors *.tar *.tar.* *.tflite *.tgz "
    "*.wasm *.xz *.zip *.zst *tfevents* *.gguf"
)
LFS_PATTERNS = tuple(_LFS_GLOBS.split())
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


class HubError(Exception):
    """An error the server turns into an HTTP status plus the `X-Error-Code` the client maps to exceptions."""

    status = 400
    code: str | None = None

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class RepoNotFound(HubError):
    status, code = 404, "RepoNotFound"


class RevisionNotFound(HubError):
    status, code = 404, "RevisionNotFound"


class EntryNotFound(HubError):
    status, code = 404, "EntryNotFound"


class GatedRepo(HubError):
    status, code = 403, "GatedRepo"


class RepoExists(HubError):
    status = 409


class StaleParent(HubError):
    status = 412


class UnknownLfsObject(HubError):
    status = 422


@dataclass(frozen=True)
class LfsInfo:
    sha256: str
    pointer_size: int


@dataclass(frozen=True)
class Entry:
    """One file of a commit: `oid` is the git-blob SHA-1 of the content, or of the LFS pointer for LFS files."""

    size: int
    oid: str
    lfs: LfsInfo | None = None


@dataclass(frozen=True)
class Operation:
    kind: Literal["add", "delete", "delete_folder"]
    path: str
    entry: Entry | None = None


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    created: float
    files: dict[str, Entry]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool = False
    gated: bool = False
    created: float = field(default_factory=time.time)
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)


def git_blob_oid(data: bytes) -> str:
    """The id git gives a blob: what the client compares to detect unchanged regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def lfs_entry(sha256: str, size: int) -> Entry:
    pointer = lfs_pointer(sha256, size)
    return Entry(size=size, oid=git_blob_oid(pointer), lfs=LfsInfo(sha256=sha256, pointer_size=len(pointer)))


def is_lfs(path: str, size: int, sample: bytes, threshold: int = DEFAULT_LFS_THRESHOLD) -> bool:
    """The Hub's rule (the client obeys it): default LFS patterns, size ≥ threshold, or binary-looking content."""
    name = path.rsplit("/", 1)[-1]
    if size == 0:
        return False  # the client forces empty files to regular anyway
    return any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS) or size >= threshold or b"\0" in sample[:512]


def valid_repo_id(repo_id: str) -> bool:
    parts = repo_id.split("/")
    return len(parts) == 2 and all(_NAME.fullmatch(p) for p in parts) and not parts[1].endswith(".git")


def valid_ref(name: str) -> bool:
    """A branch name git would accept (`main`, `feature/x`, `refs/pr/1`), checked before it is stored."""
    parts = name.split("/")
    return (
        0 < len(name) <= 200
        and not re.search(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{", name)
        and all(p and not p.startswith(".") and not p.endswith((".lock", ".")) for p in parts)
    )


def valid_path(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and all(p not in ("", ".", "..") for p in parts) and "\0" not in path


class LfsUpload:
    """An LFS object being received: hashed while written to a temp file, published only if the hash matches."""

    def __init__(self, storage: Storage, sha256: str) -> None:
        self._storage = storage
        self.sha256 = sha256
        fd, name = tempfile.mkstemp(dir=storage.root / "tmp", prefix="lfs-")
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self._tmp = Path(name)
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    def finish(self, expected_size: int | None = None) -> None:
        """Publish the object; raises `HubError` (and discards it) on a size or hash mismatch."""
        self._file.close()
        got = self._hash.hexdigest()
        if got != self.sha256 or (expected_size is not None and expected_size != self.size):
            self._tmp.unlink(missing_ok=True)
            raise HubError(f"LFS object mismatch: want {self.sha256} ({expected_size} B), got {got} ({self.size} B)")
        os.replace(self._tmp, self._storage.lfs_path(self.sha256))

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


class Storage:
    """All repos of one server, persisted under `root` (see the module docstring for the layout)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        for sub in ("blobs", "lfs", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], Repo] = {}
        # Called as listener(repo, action, scope) after a repo is created, committed to or changes settings,
        # with the Hub's webhook event names (`localhub.webhooks`).
        self.listeners: list[Callable[[Repo, str, str], None]] = []
        self._load()

    def _changed(self, repo: Repo, action: str, scope: str) -> None:
        for listener in list(self.listeners):
            listener(repo, action, scope)

    # -- repos -------------------------------------------------------------------------------------------
    def create_repo(self, repo_type: str, repo_id: str, *, private: bool = False, gated: bool = False) -> Repo:
        """A new repo whose `main` holds one empty commit with a random id, as the Hub makes one at creation."""
        if repo_type not in REPO_TYPES or not valid_repo_id(repo_id):
            raise HubError(f"invalid repo: {repo_type} {repo_id!r}")
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                raise RepoExists(f"You already created this {repo_type} repo: {repo_id}")
            repo = Repo(repo_type, repo_id, private=private, gated=gated)
            first = Commit(secrets.token_hex(20), None, "initial commit", time.time(), {})
            repo.commits[first.oid] = first
            repo.branches["main"] = first.oid
            self._repos[(repo_type, repo_id)] = repo
            self._save()
        self._changed(repo, "create", "repo")
        return repo

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self._lock:
            if self._repos.pop((repo_type, repo_id), None) is None:
                raise RepoNotFound(f"{repo_type} {repo_id} not found")
            self._save()

    def find(self, repo_type: str, repo_id: str) -> Repo | None:
        with self._lock:
            return self._repos.get((repo_type, repo_id))

    def repos(self, repo_type: str) -> list[Repo]:
        with self._lock:
            return [repo for (kind, _), repo in self._repos.items() if kind == repo_type]

    def update_settings(
        self, repo_type: str, repo_id: str, *, private: bool | None = None, gated: bool | None = None
    ) -> None:
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            if repo is None:
                raise RepoNotFound(f"{repo_type} {repo_id} not found")
            repo.private = repo.private if private is None else private
            repo.gated = repo.gated if gated is None else gated
            self._save()
        self._changed(repo, "update", "repo.config")

    def create_branch(self, repo: Repo, branch: str, revision: str = "main") -> str:
        """A new branch (any ref name: `feature/x`, `refs/pr/1`) at the commit of `revision`; its commit id."""
        if not valid_ref(branch):
            raise HubError(f"invalid branch name: {branch!r}")
        with self._lock:
            if branch in repo.branches:
                raise RepoExists(f"Reference already exists: {branch}")
            commit = self.resolve(repo, revision)
            repo.branches[branch] = commit.oid
            self._save()
            return commit.oid

    def resolve(self, repo: Repo, revision: str) -> Commit:
        """A branch name or a full commit id → its commit."""
        with self._lock:
            oid = repo.branches.get(revision, revision)
            commit = repo.commits.get(oid)
        if commit is None:
            raise RevisionNotFound(f"Invalid rev id: {revision}")
        return commit

    # -- blobs -------------------------------------------------------------------------------------------
    def put_blob(self, data: bytes) -> Entry:
        """Store a regular file's content; returns its entry."""
        oid = git_blob_oid(data)
        path = self.root / "blobs" / oid
        if not path.exists():
            fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        return Entry(size=len(data), oid=oid)

    def lfs_path(self, sha256: str) -> Path:
        if not _SHA256.fullmatch(sha256):
            raise HubError(f"not a sha256: {sha256!r}")
        return self.root / "lfs" / sha256

    def lfs_size(self, sha256: str) -> int | None:
        """Size of a stored LFS object, or None if it is not stored (or `sha256` is malformed)."""
        if not _SHA256.fullmatch(sha256):
            return None
        path = self.root / "lfs" / sha256
        return path.stat().st_size if path.exists() else None

    def begin_lfs(self, sha256: str) -> LfsUpload:
        self.lfs_path(sha256)  # validates the name before any file is created
        return LfsUpload(self, sha256)

    def add_lfs_file(self, source: Path) -> Entry:
        """Copy a local file into the LFS store (seeding), hashing it on the way."""
        digest = hashlib.sha256()
        with source.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        sha = digest.hexdigest()
        if self.lfs_size(sha) is None:
            upload = self.begin_lfs(sha)
            with source.open("rb") as f:
                while chunk := f.read(1 << 20):
                    upload.write(chunk)
            upload.finish()
        return lfs_entry(sha, source.stat().st_size)

    def content_path(self, entry: Entry) -> Path:
        return self.lfs_path(entry.lfs.sha256) if entry.lfs else self.root / "blobs" / entry.oid

    # -- commits -----------------------------------------------------------------------------------------
    def commit(
        self,
        repo: Repo,
        branch: str,
        operations: Iterable[Operation],
        title: str,
        description: str = "",
        parent: str | None = None,
    ) -> Commit:
        """Apply `operations` on top of `branch` and advance it; `parent` (if given) must be the branch head."""
        with self._lock:
            head = repo.branches.get(branch)
            if head is None:
                raise RevisionNotFound(f"Invalid rev id: {branch}")
            if parent is not None and parent != head:
                raise StaleParent(f"parentCommit {parent} is not the head of {branch} ({head})")
            files = dict(repo.commits[head].files)
            for op in operations:
                if op.kind == "add":
                    assert op.entry is not None
                    files[op.path] = op.entry
                elif op.kind == "delete":
                    if files.pop(op.path, None) is None:
                        raise EntryNotFound(f"A file with this name doesn't exist: {op.path}")
                else:
                    prefix = op.path.rstrip("/") + "/"
                    doomed = [p for p in files if p.startswith(prefix)]
                    if not doomed:
                        raise EntryNotFound(f"A folder with this name doesn't exist: {op.path}")
                    for p in doomed:
                        del files[p]
            digest = hashlib.sha1(f"parent {head}\nsummary {title}\n\n{description}\n".encode())
            for path in sorted(files):
                digest.update(f"{files[path].oid} {path}\n".encode())
            commit = Commit(digest.hexdigest(), head, title, time.time(), files)
            repo.commits.setdefault(commit.oid, commit)
            repo.branches[branch] = commit.oid
            self._save()
        self._changed(repo, "update", "repo.content")
        return repo.commits[commit.oid]

    # -- persistence -------------------------------------------------------------------------------------
    def _save(self) -> None:
        def entry(e: Entry) -> list:
            return [e.size, e.oid, e.lfs.sha256 if e.lfs else None, e.lfs.pointer_size if e.lfs else None]

        state = [
            {
                "type": r.repo_type,
                "id": r.repo_id,
                "private": r.private,
                "gated": r.gated,
                "created": r.created,
                "branches": r.branches,
                "commits": [
                    [c.oid, c.parent, c.title, c.created, {p: entry(e) for p, e in c.files.items()}]
                    for c in r.commits.values()
                ],
            }
            for r in self._repos.values()
        ]
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"version": 1, "repos": state}, f)
        os.replace(tmp, self.root / "state.json")

    def _load(self) -> None:
        path = self.root / "state.json"
        if not path.exists():
            return
        for r in json.loads(path.read_text())["repos"]:
            repo = Repo(r["type"], r["id"], r["private"], r["gated"], r["created"], r["branches"])
            for oid, parent, title, created, files in r["commits"]:
                entries = {
                    p: Entry(s, blob, LfsInfo(sha, ps) if sha else None) for p, (s, blob, sha, ps) in files.items()
                }
                repo.commits[oid] = Commit(oid, parent, title, created, entries)
            self._repos[(repo.repo_type, repo.repo_id)] = repo
