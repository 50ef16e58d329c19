"""Liveness (process up) and readiness (database and broker reachable)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from sqlalchemy import text

from app.db import SessionDep
from app.settings import get_settings

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"description": "the database or the broker is unreachable (each check says which)"}},
)
def readyz(session: SessionDep, response: Response) -> dict[str, str]:
    checks = {}
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as err:  # report, do not crash the probe
        checks["database"] = f"error: {type(err).__name__}"
    try:
        ping_broker()
        checks["broker"] = "ok"
    except Exception as err:
        checks["broker"] = f"error: {type(err).__name__}"
    if any(v != "ok" for v in checks.values()):
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return checks


def ping_broker() -> None:
    """Raise unless the broker answers within `broker_timeout_s` (a hung Redis must not hang the probe)."""
    settings = get_settings()
    if settings.broker_url.startswith("filesystem://"):
        settings.broker_data_dir.mkdir(parents=True, exist_ok=True)  # what the folder transport does itself
        return
    import redis

    timeout = settings.broker_timeout_s / 2  # connect, then PING: the whole probe stays within the bound
    client = redis.Redis.from_url(settings.broker_url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        client.ping()
    finally:
        client.close()
