"""Error responses that every route shares: request size limit, validation errors, database outages.

- Bodies above `Settings.max_body_bytes` are refused with 413 before they are read (by Content-Length, and
  by counting while reading when there is none), so a huge request is never parsed or stored.
- A 422 names the field (`detail[].loc`) but never echoes large inputs back: FastAPI would include every
  invalid value verbatim (a 50 MB string in, a 50 MB error out).
- While the database is unreachable every route answers 503 JSON with Retry-After instead of a plain 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.db import database_unavailable
from app.settings import get_settings

log = logging.getLogger(__name__)
ECHO_LIMIT = 200  # characters of an invalid input value that a 422 may repeat


class BodySizeLimit:
    """ASGI middleware: 413 for request bodies larger than `limit` bytes, checked before and while reading."""

    def __init__(self, app: ASGIApp, limit: int | None = None) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit if self.limit is not None else get_settings().max_body_bytes
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await too_large(limit)(scope, receive, send)
            return
        seen = 0
        started = refused = False

        async def noop_receive() -> Message:
            return {"type": "http.disconnect"}

        async def counted_receive() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                seen += len(message.get("body", b""))
                if seen > limit:  # answer 413 now; the app sees a disconnected client and its answer is dropped
                    refused = True
                    if not started:
                        await too_large(limit)(scope, noop_receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted_receive, tracked_send)


def too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": f"request body larger than {limit} bytes"}, status_code=413)


def _short(value: Any) -> Any:
    text = repr(value)
    return value if len(text) <= ECHO_LIMIT else f"<{type(value).__name__} of {len(text)} characters, not shown>"


async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = []
    for error in exc.errors():
        loc = [_short(part) if isinstance(part, str) else part for part in error.get("loc", ())]  # keys too
        item = {"loc": loc, "msg": error.get("msg", ""), "type": error.get("type", "")}
        if "input" in error:
            item["input"] = _short(error["input"])
        errors.append(item)
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)


async def database_error(_: Request, exc: Exception) -> JSONResponse:
    if not database_unavailable(exc):
        log.exception("database error", exc_info=exc)
        return JSONResponse({"detail": "internal error"}, status_code=500)
    log.warning("database unavailable: %s", type(exc).__name__)
    retry = str(max(get_settings().retry_after_s, 5))
    return JSONResponse(
        {"detail": "the database is unavailable; retry later"}, status_code=503, headers={"Retry-After": retry}
    )


async def method_not_allowed(request: Request, exc: StarletteHTTPException) -> Response:
    """405 with an `Allow` header listing every method of the path (Starlette lists only one route's)."""
    if exc.status_code != 405:
        return await http_exception_handler(request, exc)
    allowed: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.path_regex.match(request.url.path):
            allowed |= route.methods or set()
    return JSONResponse(
        {"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": ", ".join(sorted(allowed))}
    )


def install(app: FastAPI) -> None:
    app.add_middleware(BodySizeLimit)
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, method_not_allowed)  # type: ignore[arg-type]
    app.add_exception_handler(DBAPIError, database_error)
    app.add_exception_handler(PoolTimeout, database_error)
