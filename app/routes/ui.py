"""Dashboard routes (`/ui`): sign in, jobs, a job (live), a model's quality and speed against size, watches.

Server-rendered Jinja2 pages with one small script (`static/ui.js`) for live progress over the same
Server-Sent Events the API streams, so there is no front-end build and nothing is fetched from outside.
Pages read through the same owner-scoped functions as the API: another owner's job is a 404 here too.
Every state change (sign out, cancel) is a POST carrying the session's CSRF token.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Form, Header, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from app import job_events, jobs, watches
from app.auth import Caller
from app.db import SessionDep
from app.models import Job, JobStatus
from app.ui import plots, views
from app.ui import session as ui_session

router = APIRouter(prefix="/ui", include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).resolve().parents[1] / "ui" / "templates"))
PAGE = 100


def _signed_in(session: SessionDep, request: Request) -> Caller:
    caller = ui_session.caller(session, request)
    if caller is None:
        raise HTTPException(status.HTTP_303_SEE_OTHER, headers={"Location": "/ui/login"})
    return caller


def _page(request: Request, name: str, caller: Caller | None, **context: object) -> HTMLResponse:
    context |= {"owner": caller.owner if caller else None, "csrf": ui_session.csrf_token(request)}
    response = templates.TemplateResponse(request, name, context)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
    return response


def _check_csrf(request: Request, token: str | None) -> None:
    if not ui_session.csrf_ok(request, token):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token: reload the page")


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> HTMLResponse:
    return _page(request, "login.html", None)


@router.post("/login")
def login(request: Request, session: SessionDep, token: Annotated[str, Form()]) -> Response:
    value = ui_session.sign_in(session, token.strip())
    if value is None:
        page = _page(request, "login.html", None, error="That token is not valid (or was revoked).")
        page.status_code = status.HTTP_401_UNAUTHORIZED
        return page
    response = RedirectResponse("/ui", status.HTTP_303_SEE_OTHER)
    ui_session.set_cookie(response, value)
    return response


@router.post("/logout")
def logout(request: Request, csrf: Annotated[str | None, Form()] = None) -> Response:
    _check_csrf(request, csrf)
    response = RedirectResponse("/ui/login", status.HTTP_303_SEE_OTHER)
    ui_session.clear_cookie(response)
    return response


@router.get("", response_class=HTMLResponse)
def jobs_page(
    request: Request,
    session: SessionDep,
    status_: Annotated[str | None, Query(alias="status")] = None,
    model: str | None = None,
    method: str | None = None,
) -> HTMLResponse:
    caller = _signed_in(session, request)
    wanted = JobStatus(status_) if status_ in {s.value for s in JobStatus} else None
    rows, _ = jobs.list_jobs(session, caller.owner, wanted, model or None, PAGE, None, method or None)
    shown = [views.job_view(job) for job in rows]
    return _page(
        request,
        "jobs.html",
        caller,
        rows=shown,
        statuses=[s.value for s in JobStatus],
        status=wanted.value if wanted else None,
        model=model,
        method=method,
    )


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: uuid.UUID, request: Request, session: SessionDep) -> HTMLResponse:
    caller = _signed_in(session, request)
    job = jobs.get_job(session, caller.owner, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "job not found")
    return _page(request, "job.html", caller, job=views.job_detail(session, job))


@router.post("/jobs/{job_id}/cancel")
def cancel(
    job_id: uuid.UUID, request: Request, session: SessionDep, csrf: Annotated[str | None, Form()] = None
) -> Response:
    caller = _signed_in(session, request)
    _check_csrf(request, csrf)
    job = jobs.get_job(session, caller.owner, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "job not found")
    try:
        jobs.cancel(session, job)
    except jobs.CancelRefused as err:
        raise HTTPException(status.HTTP_409_CONFLICT, str(err)) from err
    return RedirectResponse(f"/ui/jobs/{job_id}", status.HTTP_303_SEE_OTHER)


@router.get("/jobs/{job_id}/events")
async def job_events_page(
    job_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    last_event_id: Annotated[int | None, Header(ge=0)] = None,  # EventSource sends it when it reconnects
) -> StreamingResponse:
    """The API's event stream, for the signed-in owner (EventSource cannot send a bearer token)."""
    caller = await run_in_threadpool(_signed_in, session, request)
    if await run_in_threadpool(jobs.get_job, session, caller.owner, job_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "job not found")
    await run_in_threadpool(session.close)
    return job_events.streaming_response(job_id, last_event_id or 0, request)


@router.get("/models/{model:path}", response_class=HTMLResponse)
def model_page(model: str, request: Request, session: SessionDep) -> HTMLResponse:
    caller = _signed_in(session, request)
    rows = list(
        session.scalars(
            select(Job).where(Job.owner == caller.owner, Job.model == model).order_by(Job.created_at).limit(1000)
        )
    )
    quality = plots.svg(plots.quality_points(rows), "perplexity (lower is better)", "quality-plot")
    speed = plots.svg(plots.speed_points(rows), "measured speed-up (×)", "speed-plot")
    return _page(request, "model.html", caller, model=model, quality=quality, speed=speed)


@router.get("/watches", response_class=HTMLResponse)
def watches_page(request: Request, session: SessionDep) -> HTMLResponse:
    caller = _signed_in(session, request)
    rules = [{"rule": w, "events": watches.events(session, w, 20)} for w in watches.list_for(session, caller.owner)]
    return _page(request, "watches.html", caller, watches=rules)
