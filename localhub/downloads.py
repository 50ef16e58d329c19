"""File downloads (`/resolve/`): what `hf_hub_download` / `snapshot_download` fetch, with HEAD for metadata.

Kept apart from the repo API so download faults and headers live in one small place. The revision and the
file path arrive still percent-escaped (see `server._route_path`), so `feature/x` stays one segment.
"""

from __future__ import annotations

from urllib.parse import unquote

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from localhub.context import find_repo, hub_of
from localhub.storage import EntryNotFound, GatedRepo

router = APIRouter()


@router.api_route("/datasets/{ns}/{name}/resolve/{rev}/{path:path}", methods=["GET", "HEAD"])
@router.api_route("/{ns}/{name}/resolve/{rev}/{path:path}", methods=["GET", "HEAD"])
async def resolve(request: Request, ns: str, name: str, rev: str, path: str) -> Response:
    """Serve a file with the headers the client requires (`X-Repo-Commit`, ETag = blob key in its cache)."""
    repo_type = "dataset" if request.url.path.startswith("/datasets/") else "model"
    hub = hub_of(request)
    if request.method == "GET" and hub.faults.on_download():
        return JSONResponse({"error": "injected fault: download failed"}, status_code=500)
    rev, path = unquote(rev), unquote(path)
    repo = find_repo(request, repo_type, ns, name)
    if repo.gated:
        raise GatedRepo(f"Access to {repo_type} {repo.repo_id} is restricted: it is a gated repo.")
    commit = hub.storage.resolve(repo, rev)
    entry = commit.files.get(path)
    if entry is None:
        raise EntryNotFound(f"{path} does not exist at {commit.oid}", {"X-Repo-Commit": commit.oid})
    headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{entry.lfs.sha256 if entry.lfs else entry.oid}"'}
    if entry.lfs:
        headers |= {"X-Linked-Etag": f'"{entry.lfs.sha256}"', "X-Linked-Size": str(entry.size)}
    return FileResponse(hub.storage.content_path(entry), headers=headers, media_type="application/octet-stream")
