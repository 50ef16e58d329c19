"""Incoming webhooks: `POST /hooks/hub`, the Hugging Face Hub's repo notifications for watch rules."""

from __future__ import annotations

import json
import logging
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Header, HTTPException, Request, status
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from app import hub_hooks
from app.db import SessionDep
from app.responses import Message
from app.settings import get_settings

log = logging.getLogger(__name__)
router = APIRouter(prefix="/hooks", tags=["hooks"])
MAX_PAYLOAD_BYTES = 256 * 1024  # Hub payloads are a few kB


class HookAck(BaseModel):
    recorded: bool = Field(description="whether the notification was kept for the watcher")
    reason: str | None = Field(None, description="why it was not: not a model repo change, or no rule watches it")


@router.post(
    "/hub",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=HookAck,
    responses={
        400: {"model": Message, "description": "the body is not JSON"},
        401: {"model": Message, "description": "missing or wrong `X-Webhook-Secret`; nothing was recorded"},
        404: {"model": Message, "description": "no webhook secret is configured (SLIMKIT_HUB_WEBHOOK_SECRET)"},
        413: {"model": Message, "description": "payload larger than 256 kB"},
    },
)
async def hub_webhook(
    request: Request,
    session: SessionDep,
    background: BackgroundTasks,
    x_webhook_secret: Annotated[str | None, Header()] = None,
) -> HookAck:
    """Register this URL as a Hub webhook (with the same secret) watching the orgs your rules watch.

    The payload is recorded and the answer returns at once; the watcher task reads the repo, applies the
    readiness gate and creates the jobs. Without webhooks the poller finds the same releases, later.
    """
    if get_settings().hub_webhook_secret is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Hub webhooks are not enabled on this deployment")
    if not hub_hooks.secret_matches(x_webhook_secret):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong X-Webhook-Secret")
    body = await request.body()
    if len(body) > MAX_PAYLOAD_BYTES:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, "payload larger than 256 kB")
    try:
        payload = json.loads(body)
    except ValueError as err:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "the body is not JSON") from err
    change = hub_hooks.repo_change(payload)
    if change is None:
        return HookAck(recorded=False, reason="not a change of a model repo")
    # The database calls are synchronous: off the event loop, like a plain `def` route's.
    if not await run_in_threadpool(hub_hooks.watched, session, change.repo_id):
        return HookAck(recorded=False, reason="no active rule watches this author")
    await run_in_threadpool(hub_hooks.record, session, change)
    background.add_task(nudge_watcher)
    return HookAck(recorded=True)


def nudge_watcher() -> None:
    """Best effort, after the response: ask the watcher to look now instead of at its next period."""
    from worker.outbox import send_watch_nudge  # Celery only; the API image has no engine

    try:
        send_watch_nudge()
    except Exception as err:  # broker down: the notification is in the database; the next beat processes it
        log.warning("watcher not nudged (%s); the next poll period processes the notification", type(err).__name__)
