"""Git LFS upload routes: the batch API, single-part and multipart PUTs, and verify.

On the real Hub the batch API hands out pre-signed S3 URLs, and the client PUTs to them *without* its Hub
token. Here the URLs point back at this server under `/_lfs/`, carry an HMAC signature instead of a token,
and are exempt from bearer auth, so the client's exact code path (including its retry on 5xx) is exercised.
Objects are hashed while streamed to disk and published only if their SHA-256 matches.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from localhub.context import HubState, base_url, find_repo, hub_of
from localhub.storage import HubError

router = APIRouter()
LFS_MEDIA_TYPE = "application/vnd.git-lfs+json"
_HEX = re.compile(r"[0-9a-f]{8,64}")


class BadSignature(HubError):
    status = 403


def _check(hub: HubState, oid: str, size: int, uid: str, sig: str) -> None:
    if not _HEX.fullmatch(uid) or not hmac.compare_digest(sig, hub.sign(oid, str(size), uid)):
        raise BadSignature("invalid or expired LFS upload URL")


async def _drain(request: Request) -> None:
    """Read the body a failing request was sent with, so the connection stays usable for the retry."""
    async for _ in request.stream():
        pass


def _injected_failure() -> JSONResponse:
    return JSONResponse({"error": "injected fault: LFS upload failed"}, status_code=500)


@router.post("/{ns}/{name}.git/info/lfs/objects/batch")
@router.post("/datasets/{ns}/{name}.git/info/lfs/objects/batch")
async def lfs_batch(request: Request, ns: str, name: str) -> JSONResponse:
    """Tell the client, per object, whether it is already stored (no `actions`) or where to upload it."""
    hub = hub_of(request)
    repo_type = "dataset" if request.url.path.startswith("/datasets/") else "model"
    find_repo(request, repo_type, ns, name)
    body = await request.json()
    if body.get("operation") != "upload":
        raise HubError("localhub only implements the LFS upload operation")
    base, chunk = base_url(request), hub.multipart_chunk_size
    objects: list[dict[str, Any]] = []
    for obj in body.get("objects", []):
        oid, size = obj.get("oid"), obj.get("size")
        if not (isinstance(oid, str) and re.fullmatch(r"[0-9a-f]{64}", oid) and isinstance(size, int) and size >= 0):
            bad_size = size if isinstance(size, int) else -1
            objects.append({"oid": str(oid), "size": bad_size, "error": {"code": 422, "message": "invalid object"}})
            continue
        if hub.storage.lfs_size(oid) == size:
            objects.append({"oid": oid, "size": size})  # no actions: already stored
            continue
        uid = secrets.token_hex(8)
        query = f"size={size}&uid={uid}&sig={hub.sign(oid, str(size), uid)}"
        if chunk and size > chunk:
            parts = {str(i): f"{base}/_lfs/{oid}/part/{i}?{query}" for i in range(1, math.ceil(size / chunk) + 1)}
            upload = {"href": f"{base}/_lfs/{oid}/complete?{query}", "header": {"chunk_size": str(chunk), **parts}}
        else:
            upload = {"href": f"{base}/_lfs/{oid}?{query}"}
        actions = {"upload": upload, "verify": {"href": f"{base}/_lfs_verify"}}
        objects.append({"oid": oid, "size": size, "authenticated": True, "actions": actions})
    transfer = "multipart" if chunk else "basic"
    return JSONResponse({"transfer": transfer, "objects": objects}, media_type=LFS_MEDIA_TYPE)


@router.put("/_lfs/{oid}")
async def lfs_put(request: Request, oid: str, size: int, uid: str, sig: str) -> Response:
    """Single-part upload of a whole object."""
    hub = hub_of(request)
    _check(hub, oid, size, uid, sig)
    if hub.faults.on_lfs_put():
        await _drain(request)
        return _injected_failure()
    upload = hub.storage.begin_lfs(oid)
    try:
        async for chunk in request.stream():
            upload.write(chunk)
        upload.finish(size)
    except BaseException:
        upload.abort()
        raise
    return Response(status_code=200, headers={"ETag": f'"{oid}"'})


def _part_path(hub: HubState, uid: str, number: int) -> Path:
    return hub.storage.root / "tmp" / f"part-{uid}-{number}"


@router.put("/_lfs/{oid}/part/{number}")
async def lfs_put_part(request: Request, oid: str, number: int, size: int, uid: str, sig: str) -> Response:
    """One part of a multipart upload; its ETag (SHA-1 of the part) must come back in the completion call."""
    hub = hub_of(request)
    _check(hub, oid, size, uid, sig)
    if hub.faults.on_lfs_put():
        await _drain(request)
        return _injected_failure()
    digest = hashlib.sha1()
    path = _part_path(hub, uid, number)
    with path.open("wb") as f:
        async for chunk in request.stream():
            f.write(chunk)
            digest.update(chunk)
    return Response(status_code=200, headers={"ETag": f'"{digest.hexdigest()}"'})


def _assemble(hub: HubState, oid: str, size: int, uid: str, parts: list[dict[str, Any]]) -> None:
    paths = [_part_path(hub, uid, i) for i in range(1, len(parts) + 1)]
    for i, (part, path) in enumerate(zip(parts, paths, strict=True), start=1):
        if part.get("partNumber") != i or not path.exists():
            raise HubError(f"multipart completion: part {i} is missing")
        if str(part.get("etag", "")).strip('"') != hashlib.sha1(path.read_bytes()).hexdigest():
            raise HubError(f"multipart completion: wrong etag for part {i}")
    upload = hub.storage.begin_lfs(oid)
    try:
        for path in paths:
            upload.write(path.read_bytes())
        upload.finish(size)
    except BaseException:
        upload.abort()
        raise
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


@router.post("/_lfs/{oid}/complete")
async def lfs_complete(request: Request, oid: str, size: int, uid: str, sig: str) -> JSONResponse:
    """Concatenate the parts in order and publish the object if its hash matches."""
    hub = hub_of(request)
    _check(hub, oid, size, uid, sig)
    body = await request.json()
    if body.get("oid") != oid or not isinstance(body.get("parts"), list):
        raise HubError("malformed multipart completion")
    await run_in_threadpool(_assemble, hub, oid, size, uid, body["parts"])
    return JSONResponse({"success": True})


@router.post("/_lfs_verify")
async def lfs_verify(request: Request) -> JSONResponse:
    body = await request.json()
    if hub_of(request).storage.lfs_size(str(body.get("oid", ""))) != body.get("size"):
        return JSONResponse({"error": "object not found or of another size"}, status_code=404)
    return JSONResponse({"success": True})
