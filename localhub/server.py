"""A Hub-compatible HTTP server that the real `huggingface_hub` client (with Xet disabled) talks to.

It implements the routes the client calls for create_repo, upload_folder / create_commit, model_info,
list_repo_tree, hf_hub_download / snapshot_download and transformers' from_pretrained / push_to_hub, with the
headers and `X-Error-Code`s the client turns into its exceptions (see infra.md §2.3 and §2.6 for the captured
request sequence). Tests and the offline demo use it because the real Hub is unreachable here, and because
mocks inside the client (httpx2) would skip the very code paths we want exercised.

Revisions may contain `/` (`feature/x`, `refs/pr/1`): the client percent-encodes them into one path segment,
so routing works on the raw path with `%2F` kept inside segments, and each route decodes its revision.
Branches are created with `create_branch` or `seed(..., branch=...)`. Not implemented: Xet, pull requests
(their refs can be seeded), tags.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from localhub import downloads, lfs, listing, webhooks
from localhub.context import KINDS, URL_PREFIX, USER, HubState, base_url, find_repo, hub_of, iso
from localhub.faults import Faults
from localhub.storage import (
    DEFAULT_LFS_THRESHOLD,
    Commit,
    Entry,
    EntryNotFound,
    HubError,
    Operation,
    Repo,
    RepoExists,
    Storage,
    UnknownLfsObject,
    is_lfs,
    lfs_entry,
    valid_path,
)

__all__ = ["Faults", "HubState", "create_app"]
router = APIRouter()


def create_app(
    root: Path | str,
    token: str | None = None,
    lfs_threshold: int = DEFAULT_LFS_THRESHOLD,
    faults: Faults | None = None,
    *,
    multipart_chunk_size: int | None = None,
) -> FastAPI:
    """The app; its state (`app.state.hub`, a `HubState`) is persisted under `root` and survives restarts."""
    hub = HubState(Storage(root), token, lfs_threshold, faults or Faults(), multipart_chunk_size)
    app = FastAPI(title="localhub", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.hub = hub
    hub.storage.listeners.append(webhooks.Sender(hub.webhooks, hub.webhook_log).listener)
    app.add_middleware(_Gate, hub=hub)
    app.add_exception_handler(HubError, _hub_error)  # type: ignore[arg-type]
    app.include_router(router)
    app.include_router(lfs.router)
    app.include_router(downloads.router)
    app.include_router(listing.router)
    app.include_router(webhooks.router)
    return app


class _Gate:
    """Pure-ASGI middleware (no response buffering, so 100 MB downloads stream): delay, auth, request log."""

    def __init__(self, app: ASGIApp, hub: HubState) -> None:
        self.app, self.hub = app, hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        scope = dict(scope, path=_route_path(scope))
        if delay := self.hub.faults.delay_for(path):
            await asyncio.sleep(delay)
        status = [0]

        async def logged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            request = Request(scope)
            public = path.startswith("/_lfs/") or path == "/api/agent-harnesses"
            if self.hub.token is not None and not public and not self.hub.authorized(request):
                # The client reads this message to tell a bad token from a missing one (a plain 401).
                message = "Invalid credentials in Authorization header" if "authorization" in request.headers else ""
                headers = {"X-Error-Message": message} if message else {}
                await JSONResponse({"error": message or "Authentication required"}, 401, headers)(
                    scope, receive, logged_send
                )
                return
            await self.app(scope, receive, logged_send)
        finally:
            self.hub.requests.append(f"{scope['method']} {path} {status[0]}")


def _route_path(scope: Scope) -> str:
    """The path to route on: decoded per segment, but a `/` (or `%`) inside a segment stays escaped.

    Starlette routes on the fully decoded path, where `revision/feature%2Fx` would become two segments and
    match no route; routes receive the still-escaped segment and `unquote` it themselves.
    """
    raw = scope.get("raw_path")
    if not raw:
        return scope["path"]
    segments = raw.decode("latin-1").split("/")
    return "/".join(unquote(seg).replace("%", "%25").replace("/", "%2F") for seg in segments)


async def _hub_error(request: Request, exc: HubError) -> Response:
    headers = {"X-Error-Message": exc.message.splitlines()[0].encode("ascii", "replace").decode()[:300]}
    headers |= exc.headers
    if exc.code:
        headers["X-Error-Code"] = exc.code
    if request.method == "HEAD":
        return Response(status_code=exc.status, headers=headers)
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)


def _repo(request: Request, kind: str, ns: str, name: str) -> Repo:
    return find_repo(request, KINDS.get(kind), ns, name)


def _file_item(path: str, entry: Entry) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "file", "oid": entry.oid, "size": entry.size, "path": path}
    if entry.lfs:
        item["lfs"] = {"oid": entry.lfs.sha256, "size": entry.size, "pointerSize": entry.lfs.pointer_size}
    return item


# -- repos ---------------------------------------------------------------------------------------------------
@router.post("/api/repos/create")
async def create_repo(request: Request) -> JSONResponse:
    body = await request.json()
    repo_type = body.get("type") or "model"
    repo_id = f"{body.get('organization') or USER}/{body.get('name')}"
    private = body.get("visibility") == "private" or body.get("private") is True
    url = f"{base_url(request)}/{URL_PREFIX.get(repo_type, '')}{repo_id}"
    try:
        hub_of(request).storage.create_repo(repo_type, repo_id, private=private)
    except RepoExists as err:  # create_repo(exist_ok=True) reads `url` from this 409 reply too
        return JSONResponse(
            {"error": err.message, "url": url}, status_code=409, headers={"X-Error-Message": err.message}
        )
    return JSONResponse({"url": url, "name": repo_id, "id": repo_id})


@router.delete("/api/repos/delete")
async def delete_repo(request: Request) -> JSONResponse:
    body = await request.json()
    repo_type = body.get("type") or "model"
    repo = find_repo(request, repo_type, body.get("organization") or USER, str(body.get("name")))
    hub_of(request).storage.delete_repo(repo_type, repo.repo_id)
    return JSONResponse({})


@router.put("/api/{kind}/{ns}/{name}/settings")
async def update_settings(request: Request, kind: str, ns: str, name: str) -> JSONResponse:
    repo = _repo(request, kind, ns, name)
    body = await request.json()
    private = {"private": True, "public": False}.get(body.get("visibility")) if "visibility" in body else None
    gated = bool(body["gated"]) if "gated" in body else None
    hub_of(request).storage.update_settings(repo.repo_type, repo.repo_id, private=private, gated=gated)
    return JSONResponse({})


@router.post("/api/validate-yaml")
async def validate_yaml(request: Request) -> JSONResponse:
    """Parse the README front matter like the Hub does, so a broken model card fails the upload early."""
    content = str((await request.json()).get("content", ""))
    errors: list[str] = []
    if content.startswith("---"):
        end = content.find("\n---", 3)
        if end < 0:
            errors.append("metadata block is not closed by ---")
        else:
            import yaml  # transformers depends on PyYAML

            try:
                meta = yaml.safe_load(content[3:end])
                if meta is not None and not isinstance(meta, dict):
                    errors.append("metadata must be a YAML mapping")
            except yaml.YAMLError as err:
                errors.append(f"invalid YAML: {err}")
    status = 400 if errors else 200
    return JSONResponse({"errors": [{"message": e} for e in errors], "warnings": []}, status_code=status)


@router.get("/api/whoami-v2")
async def whoami(request: Request) -> JSONResponse:
    if not hub_of(request).authorized(request):
        return JSONResponse({"error": "Invalid username or password."}, status_code=401)
    auth = {"type": "access_token", "accessToken": {"displayName": "localhub", "role": "write"}}
    return JSONResponse({"type": "user", "id": USER, "name": USER, "fullname": USER, "orgs": [], "auth": auth})


@router.get("/api/agent-harnesses")
async def agent_harnesses() -> JSONResponse:
    """The registry every client process fetches once a day (telemetry); empty, so nothing is detected."""
    return JSONResponse({"standardEnvVars": [], "harnesses": {}})


@router.get("/api/{kind}/{ns}/{name}")
@router.get("/api/{kind}/{ns}/{name}/revision/{rev}")
async def repo_info(request: Request, kind: str, ns: str, name: str, rev: str = "main") -> JSONResponse:
    if hub_of(request).faults.on_info():
        return JSONResponse({"error": "injected fault: repo info failed"}, status_code=500)
    repo = _repo(request, kind, ns, name)
    commit = hub_of(request).storage.resolve(repo, unquote(rev))
    siblings = []
    for path, entry in sorted(commit.files.items()):
        sibling: dict[str, Any] = {"rfilename": path, "size": entry.size, "blobId": entry.oid}
        if entry.lfs:
            sibling["lfs"] = {"sha256": entry.lfs.sha256, "size": entry.size, "pointerSize": entry.lfs.pointer_size}
        siblings.append(sibling)
    info: dict[str, Any] = {
        "_id": hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24],
        "id": repo.repo_id,
        "author": ns,
        "sha": commit.oid,
        "lastModified": iso(commit.created),
        "createdAt": iso(repo.created),
        "private": repo.private,
        "gated": "manual" if repo.gated else False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "siblings": siblings,
    }
    if repo.repo_type == "model":
        info["modelId"] = repo.repo_id
    return JSONResponse(info)


# -- trees ---------------------------------------------------------------------------------------------------
def _tree(commit: Commit, base: str, recursive: bool) -> list[dict[str, Any]]:
    """Entries under `base` (all depths or direct children); folders get a content-derived id like git trees."""
    prefix = f"{base.strip('/')}/" if base.strip("/") else ""
    items: list[dict[str, Any]] = []
    folders: dict[str, Any] = {}  # folder path → its sha1 accumulator
    for path, entry in sorted(commit.files.items()):
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix) :].split("/")
        for depth in range(1, len(parts)):
            folder = prefix + "/".join(parts[:depth])
            if folder not in folders:
                folders[folder] = hashlib.sha1()
                if recursive or depth == 1:
                    items.append({"type": "directory", "path": folder, "size": 0, "oid": folder})
            folders[folder].update(f"{entry.oid} {path}\n".encode())
        if recursive or len(parts) == 1:
            items.append(_file_item(path, entry))
    for item in items:
        if item["type"] == "directory":
            item["oid"] = folders[item["path"]].hexdigest()
    if prefix and not items:
        raise EntryNotFound(f"{base} does not exist at {commit.oid}", {"X-Repo-Commit": commit.oid})
    return items


@router.get("/api/{kind}/{ns}/{name}/tree/{rev}")
@router.get("/api/{kind}/{ns}/{name}/tree/{rev}/{path:path}")
async def list_tree(request: Request, kind: str, ns: str, name: str, rev: str, path: str = "") -> JSONResponse:
    hub = hub_of(request)
    commit = hub.storage.resolve(_repo(request, kind, ns, name), unquote(rev))
    recursive = request.query_params.get("recursive", "false").lower() in ("1", "true")
    items = _tree(commit, unquote(path), recursive)
    start = int(request.query_params.get("cursor", "0"))
    page = items[start : start + hub.tree_page_size]
    headers = {}
    if start + hub.tree_page_size < len(items):
        headers["Link"] = f'<{request.url.include_query_params(cursor=start + hub.tree_page_size)}>; rel="next"'
    return JSONResponse(page, headers=headers)


@router.post("/api/{kind}/{ns}/{name}/paths-info/{rev}")
async def paths_info(request: Request, kind: str, ns: str, name: str, rev: str) -> JSONResponse:
    commit = hub_of(request).storage.resolve(_repo(request, kind, ns, name), unquote(rev))
    wanted = parse_qs((await request.body()).decode()).get("paths", [])
    out = []
    for path in wanted:
        if path in commit.files:
            out.append(_file_item(path, commit.files[path]))
        elif any(p.startswith(path.rstrip("/") + "/") for p in commit.files):
            out.append({"type": "directory", "path": path.rstrip("/"), "size": 0, "oid": hashlib.sha1().hexdigest()})
    return JSONResponse(out)


# -- uploads -------------------------------------------------------------------------------------------------
def _ignored(path: str, gitignore: str) -> bool:
    """A small subset of gitignore: glob lines matched against the path, its name and its parent folders."""
    for line in gitignore.splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith(("#", "!")):
            continue
        pattern = pattern.strip("/")
        names = [path, path.rsplit("/", 1)[-1], *(path.split("/")[:-1])]
        if any(fnmatch.fnmatch(n, pattern) for n in names) or path.startswith(pattern + "/"):
            return True
    return False


@router.post("/api/{kind}/{ns}/{name}/preupload/{rev}")
async def preupload(request: Request, kind: str, ns: str, name: str, rev: str) -> JSONResponse:
    """Classify each file as LFS or regular (the server decides) and give the current oid for no-op detection."""
    hub = hub_of(request)
    commit = hub.storage.resolve(_repo(request, kind, ns, name), unquote(rev))
    body = await request.json()
    gitignore = body.get("gitIgnore")
    if gitignore is None and ".gitignore" in commit.files:
        gitignore = hub.storage.content_path(commit.files[".gitignore"]).read_text(errors="replace")
    out = []
    for f in body.get("files", []):
        path, size = str(f["path"]), int(f["size"])
        mode = "lfs" if is_lfs(path, size, base64.b64decode(f.get("sample") or ""), hub.lfs_threshold) else "regular"
        old = commit.files.get(path)
        oid = None
        if old is not None and (old.lfs is not None) == (mode == "lfs"):
            oid = old.lfs.sha256 if old.lfs else old.oid
        out.append({"path": path, "uploadMode": mode, "shouldIgnore": _ignored(path, gitignore or ""), "oid": oid})
    return JSONResponse({"files": out, "commitOid": commit.oid})


def _apply_commit(hub: HubState, repo: Repo, branch: str, body: bytes) -> Commit:
    header: dict[str, Any] | None = None
    operations: list[Operation] = []
    for line in body.splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        key, value = item.get("key"), item.get("value") or {}
        path = str(value.get("path", "")).rstrip("/") if key != "header" else ""
        if key != "header" and not valid_path(path):
            raise HubError(f"invalid path in commit: {value.get('path')!r}")
        if key == "header":
            header = value
        elif key == "file":
            content = base64.b64decode(value.get("content", "")) if value.get("encoding") == "base64" else None
            if content is None:
                raise HubError(f"{path}: only base64-encoded file content is supported")
            operations.append(Operation("add", path, hub.storage.put_blob(content)))
        elif key == "lfsFile":
            oid, stored = str(value.get("oid", "")), hub.storage.lfs_size(str(value.get("oid", "")))
            if stored is None or value.get("size", stored) != stored:
                raise UnknownLfsObject(f"{path}: LFS object {oid} was not uploaded (or has another size)")
            operations.append(Operation("add", path, lfs_entry(oid, stored)))
        elif key in ("deletedFile", "deletedFolder"):
            operations.append(Operation("delete" if key == "deletedFile" else "delete_folder", path))
        else:
            raise HubError(f"unknown commit operation {key!r}")
    if header is None:
        raise HubError("commit payload has no header line")
    return hub.storage.commit(
        repo,
        branch,
        operations,
        str(header.get("summary") or "commit"),
        str(header.get("description") or ""),
        header.get("parentCommit"),
    )


@router.post("/api/{kind}/{ns}/{name}/commit/{rev}")
async def create_commit(request: Request, kind: str, ns: str, name: str, rev: str) -> JSONResponse:
    hub = hub_of(request)
    body = await request.body()
    if hub.faults.on_commit():
        return JSONResponse({"error": "injected fault: commit failed"}, status_code=500)
    repo = _repo(request, kind, ns, name)
    if request.query_params.get("create_pr"):
        raise HubError("localhub does not implement pull requests (create_pr)")
    commit = await run_in_threadpool(_apply_commit, hub, repo, unquote(rev), body)
    url = f"{base_url(request)}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}/commit/{commit.oid}"
    return JSONResponse({"success": True, "commitOid": commit.oid, "commitUrl": url})


@router.post("/api/{kind}/{ns}/{name}/branch/{branch:path}")
async def create_branch(request: Request, kind: str, ns: str, name: str, branch: str) -> JSONResponse:
    """`HfApi.create_branch`: a new branch at `startingPoint` (default: the head of `main`)."""
    repo = _repo(request, kind, ns, name)
    body = await request.json() if await request.body() else {}
    hub_of(request).storage.create_branch(repo, unquote(branch), str(body.get("startingPoint") or "main"))
    return JSONResponse({})
