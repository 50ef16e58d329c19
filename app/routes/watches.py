"""Watch-rule routes: create, read, list, change, delete, events. Scoped to the caller's own rules."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status

from app import watches
from app.auth import CallerDep
from app.db import SessionDep
from app.models import Watch
from app.responses import AUTH_ERRORS, BODY_ERRORS, Message
from app.watch_schemas import WatchCreate, WatchEventOut, WatchOut, WatchPatch

router = APIRouter(
    prefix="/watches",
    tags=["watches"],
    responses=AUTH_ERRORS,
)
NOT_FOUND = {404: {"model": Message, "description": "no such rule (or it belongs to another owner)"}}


def _owned(session: SessionDep, owner: str, watch_id: uuid.UUID) -> Watch:
    watch = watches.get(session, owner, watch_id)
    if watch is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "watch rule not found")
    return watch


@router.post("", status_code=status.HTTP_201_CREATED, response_model=WatchOut, responses=BODY_ERRORS)
def create_watch(body: WatchCreate, session: SessionDep, caller: CallerDep, response: Response) -> WatchOut:
    """A rule that compresses new releases of the given authors with each template (see README)."""
    watch, subscription = watches.create(session, caller, body)
    response.headers["Location"] = f"/watches/{watch.id}"
    secret = subscription.secret if subscription is not None and body.callback.secret is None else None
    return WatchOut.of(watch, subscription, callback_secret=secret)


@router.get("", response_model=list[WatchOut])
def list_watches(session: SessionDep, caller: CallerDep) -> list[WatchOut]:
    """The caller's rules, newest first."""
    return [WatchOut.of(w, watches.callback_of(session, w)) for w in watches.list_for(session, caller.owner)]


@router.get("/{watch_id}", response_model=WatchOut, responses=NOT_FOUND)
def read_watch(watch_id: uuid.UUID, session: SessionDep, caller: CallerDep) -> WatchOut:
    watch = _owned(session, caller.owner, watch_id)
    return WatchOut.of(watch, watches.callback_of(session, watch))


@router.patch("/{watch_id}", response_model=WatchOut, responses=NOT_FOUND | BODY_ERRORS)
def change_watch(watch_id: uuid.UUID, patch: WatchPatch, session: SessionDep, caller: CallerDep) -> WatchOut:
    """Change some fields (e.g. `{"paused": true}`); templates are validated like a job body."""
    watch = _owned(session, caller.owner, watch_id)
    try:
        watch = watches.update(session, watch, patch)
    except ValueError as err:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, [{"loc": ["body"], "msg": str(err), "type": "value_error"}]
        ) from err
    return WatchOut.of(watch, watches.callback_of(session, watch))


@router.delete("/{watch_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
def delete_watch(watch_id: uuid.UUID, session: SessionDep, caller: CallerDep) -> Response:
    """Remove the rule and its events; jobs it created stay."""
    watches.delete(session, _owned(session, caller.owner, watch_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{watch_id}/events", response_model=list[WatchEventOut], responses=NOT_FOUND)
def watch_events(
    watch_id: uuid.UUID, session: SessionDep, caller: CallerDep, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> list[WatchEventOut]:
    """What the rule saw and did, newest first: releases detected, skipped (with the reason), jobs created."""
    watch = _owned(session, caller.owner, watch_id)
    return [WatchEventOut.of(e) for e in watches.events(session, watch, limit)]
