"""`GET /api/models`: what `HfApi.list_models(author=…, search=…, sort=…, limit=…)` reads.

Newest first for the date sorts (the Hub's default direction), one page holding up to `limit` models (the
Hub pages with `Link` headers; the client stops at `limit` either way). Private repos are listed only to
an authorized caller, as the Hub lists them only to their owners.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from localhub.context import hub_of, iso
from localhub.storage import Repo

router = APIRouter()
SORT_KEYS = {
    "lastModified": lambda repo: repo.commits[repo.branches["main"]].created,
    "createdAt": lambda repo: repo.created,
    "id": lambda repo: repo.repo_id,
}


def _item(repo: Repo) -> dict[str, Any]:
    head = repo.commits[repo.branches["main"]]
    return {
        "_id": repo.repo_id,
        "id": repo.repo_id,
        "modelId": repo.repo_id,
        "author": repo.repo_id.split("/")[0],
        "sha": head.oid,
        "lastModified": iso(head.created),
        "createdAt": iso(repo.created),
        "private": repo.private,
        "gated": "manual" if repo.gated else False,
        "downloads": 0,
        "likes": 0,
        "tags": [],
    }


@router.get("/api/models")
async def list_models(request: Request) -> JSONResponse:
    hub = hub_of(request)
    params = request.query_params
    author, search = params.get("author"), (params.get("search") or "").lower()
    sort = params.get("sort") or "id"
    key = SORT_KEYS.get(sort)
    if key is None:
        return JSONResponse({"error": f"localhub sorts by {', '.join(SORT_KEYS)} only"}, status_code=400)
    authorized = hub.authorized(request)
    repos = [
        repo
        for repo in hub.storage.repos("model")
        if "main" in repo.branches
        and (author is None or repo.repo_id.split("/")[0] == author)
        and search in repo.repo_id.lower()
        and (authorized or not repo.private)
    ]
    repos.sort(key=key, reverse=sort != "id")
    limit = int(params.get("limit") or 1000)
    return JSONResponse([_item(repo) for repo in repos[:limit]])
