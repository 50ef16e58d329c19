"""Hub webhooks, as far as watch rules need them: registration (`HfApi.create_webhook`) and delivery.

`POST /api/settings/webhooks` registers a URL watching users/orgs or single repos for the `repo` domain; on
every repo creation, commit and settings change (including repos put there by `seed`) the server POSTs the
Hub's payload shape — `event.action`/`event.scope`, `repo.type`/`name`/`headSha`, `updatedRefs`, `webhook` —
with the secret verbatim in `X-Webhook-Secret`, like the Hub. Deliveries run in one background thread, in
order, one try each (the Hub's own retries are not modelled: receivers must not depend on them), and are
logged in `HubState.webhook_log` for tests. Registrations live in memory only.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from localhub.context import hub_of
from localhub.storage import Repo

log = logging.getLogger(__name__)
router = APIRouter()


@router.post("/api/settings/webhooks")
async def create_webhook(request: Request) -> JSONResponse:
    body = await request.json()
    hub = hub_of(request)
    if not hub.authorized(request):
        return JSONResponse({"error": "Invalid username or password."}, status_code=401)
    watched = [{"type": str(w.get("type")), "name": str(w.get("name"))} for w in body.get("watched") or []]
    if not watched or not body.get("url"):
        return JSONResponse({"error": "a webhook needs `watched` items and a `url`"}, status_code=400)
    hook = {
        "id": secrets.token_hex(12),
        "url": str(body["url"]),
        "watched": watched,
        "domains": list(body.get("domains") or ["repo", "discussion"]),
        "secret": body.get("secret"),
        "disabled": False,
    }
    hub.webhooks.append(hook)
    return JSONResponse({"webhook": hook})


@router.get("/api/settings/webhooks")
async def list_webhooks(request: Request) -> JSONResponse:
    return JSONResponse(hub_of(request).webhooks)


@router.delete("/api/settings/webhooks/{hook_id}")
async def delete_webhook(request: Request, hook_id: str) -> JSONResponse:
    hub = hub_of(request)
    hub.webhooks[:] = [h for h in hub.webhooks if h["id"] != hook_id]
    return JSONResponse({})


def _watches(hook: dict[str, Any], repo: Repo) -> bool:
    if hook["disabled"] or "repo" not in hook["domains"]:
        return False
    namespace = repo.repo_id.split("/")[0]
    for item in hook["watched"]:
        if item["type"] in ("user", "org") and item["name"] == namespace:
            return True
        if item["type"] == repo.repo_type and item["name"] == repo.repo_id:
            return True
    return False


def payload(hook: dict[str, Any], repo: Repo, action: str, scope: str) -> dict[str, Any]:
    head = repo.branches.get("main")
    body: dict[str, Any] = {
        "event": {"action": action, "scope": scope},
        "repo": {
            "type": repo.repo_type,
            "name": repo.repo_id,
            "id": repo.repo_id,
            "private": repo.private,
            "headSha": head,
        },
        "webhook": {"id": hook["id"], "version": 3},
    }
    if scope == "repo.content" and head is not None:
        parent = repo.commits[head].parent
        body["updatedRefs"] = [{"ref": "refs/heads/main", "oldSha": parent, "newSha": head}]
    return body


class Sender:
    """Delivers payloads in order from one daemon thread; `listener` is what `Storage.listeners` calls."""

    def __init__(self, hooks: list[dict[str, Any]], delivered: list[dict[str, Any]]) -> None:
        self.hooks, self.delivered = hooks, delivered
        self._queue: queue.Queue[tuple[dict[str, Any], dict[str, Any]]] = queue.Queue()
        threading.Thread(target=self._run, name="localhub-webhooks", daemon=True).start()

    def listener(self, repo: Repo, action: str, scope: str) -> None:
        for hook in list(self.hooks):
            if _watches(hook, repo):
                self._queue.put((hook, payload(hook, repo, action, scope)))

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while True:
                hook, body = self._queue.get()
                headers = {"X-Webhook-Secret": hook["secret"]} if hook.get("secret") else {}
                try:
                    status = client.post(hook["url"], json=body, headers=headers).status_code
                except httpx.HTTPError as err:
                    status, body = 0, {**body, "error": type(err).__name__}
                self.delivered.append({"url": hook["url"], "status": status, "payload": body})
                log.info("webhook %s → %s: %s", body["event"], hook["url"], status)
