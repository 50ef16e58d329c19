"""FastAPI application: `uvicorn app.main:app`. OpenAPI pages at /docs and /redoc (offline), schema at /openapi.json."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app import docs, errors
from app.routes import health, hooks, jobs, ui, watches


def create_app() -> FastAPI:
    app = FastAPI(
        title="slimkit compression service",
        version="0.1.0",
        description="Submit a Hub model and a target; get back a smaller model that loads, pushed to the Hub "
        "with a card that says what was done and what it cost in quality.",
        docs_url=None,  # served by app.docs, without a CDN
        redoc_url=None,
    )
    errors.install(app)
    docs.install(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(watches.router)
    app.include_router(hooks.router)
    app.include_router(ui.router)
    app.mount("/ui/static", StaticFiles(directory=str(Path(__file__).parent / "ui" / "static")), name="ui-static")
    return app


app = create_app()
