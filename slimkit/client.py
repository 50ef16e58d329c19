"""A typed Python client for the slimkit job service (httpx): submit, get, list, cancel, events, wait.

    from slimkit.client import Client

    with Client() as api:  # SLIMKIT_API_URL, SLIMKIT_API_TOKEN (or base_url=, token=)
        job = api.submit("HuggingFaceTB/SmolLM2-135M", ratio=0.3)
        job = api.wait(job.id, on_event=lambda e: print(e.kind, e.data["stage"]))
        print(job.status, job.result["repo_id"] if job.result else job.error)

Every submit carries an Idempotency-Key (generated unless given), so retrying a submit whose answer was lost
never makes a second job. Errors are raised as `ApiError` subclasses carrying the API's status, its error
code (the failing field's `type`, e.g. `idempotency_conflict`, `output_forbidden`) and the field location.
`events` follows the Server-Sent Events stream and resumes from the last event id when the connection
drops; `wait` uses it and falls back to polling if the stream cannot be opened.

This module talks HTTP only: it never imports the service (`app`) or the engine.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


class ApiError(Exception):
    """An answer other than 2xx. `code`: the API's error type (or the HTTP reason); `loc`: the field, if any."""

    def __init__(self, status: int, code: str, message: str, loc: list[Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}" + (f" (at {'.'.join(map(str, loc))})" if loc else ""))
        self.status, self.code, self.message, self.loc = status, code, message, loc


class Unauthorized(ApiError):
    """401: missing, wrong or revoked token."""


class NotFound(ApiError):
    """404: no such job (or another owner's)."""


class Forbidden(ApiError):
    """403: e.g. `output.repo_id` outside the token's allowed patterns."""


class Conflict(ApiError):
    """409: e.g. cancelling a job that is already pushing."""


class InvalidRequest(ApiError):
    """422: a field is invalid; `loc` names it."""


class Unavailable(ApiError):
    """503 (database or broker down): retry later."""


ERRORS: dict[int, type[ApiError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: InvalidRequest,
}


@dataclass(frozen=True)
class Job:
    """A job as `GET /jobs/{id}` shows it; `raw` holds every field."""

    id: str
    status: str
    stage: str | None
    model: str
    method: str
    progress: dict[str, Any] | None
    error: dict[str, Any] | None
    result: dict[str, Any] | None
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def of(cls, data: dict[str, Any]) -> Job:
        keys = ("id", "status", "stage", "model", "method", "progress", "error", "result")
        return cls(**{k: data.get(k) for k in keys}, raw=data)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event of a job: `kind` is queued, stage, progress, cancel_requested or terminal."""

    id: int | None
    kind: str
    data: dict[str, Any]


class Client:
    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        base_url = base_url or os.environ.get("SLIMKIT_API_URL") or "http://127.0.0.1:8000"
        token = token or os.environ.get("SLIMKIT_API_TOKEN")
        if not token:
            raise ValueError("no API token: pass token= or set SLIMKIT_API_TOKEN")
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- jobs --------------------------------------------------------------------------------------------
    def submit(
        self,
        model: str,
        *,
        ratio: float | None = None,
        speedup: float | None = None,
        method: str = "intraslice",
        idempotency_key: str | None = None,
        **body: Any,
    ) -> Job:
        """POST /jobs. `body` takes the other request fields (revision, calibration, output, recovery, …)."""
        target = dict(body.pop("target", {}))
        if ratio is not None:
            target["ratio"] = ratio
        if speedup is not None:
            target["speedup"] = speedup
        payload = {"model": model, "method": method, "target": target, **body}
        headers = {"Idempotency-Key": idempotency_key or f"client-{uuid.uuid4()}"}
        return Job.of(self._call("POST", "/jobs", json=payload, headers=headers))

    def get(self, job_id: str) -> Job:
        return Job.of(self._call("GET", f"/jobs/{job_id}"))

    def list(self, status: str | None = None, model: str | None = None, page_size: int = 50) -> Iterator[Job]:
        """The caller's jobs, newest first, fetched page by page as the iteration goes."""
        params: dict[str, Any] = {"limit": page_size} | {k: v for k, v in (("status", status), ("model", model)) if v}
        while True:
            page = self._call("GET", "/jobs", params=params)
            yield from (Job.of(item) for item in page["data"])
            if not page.get("next_cursor"):
                return
            params["cursor"] = page["next_cursor"]

    def cancel(self, job_id: str) -> Job:
        return Job.of(self._call("POST", f"/jobs/{job_id}/cancel"))

    def events(self, job_id: str, last_event_id: int | None = None, reconnects: int = 5) -> Iterator[Event]:
        """The job's events from the start (or after `last_event_id`) until the terminal one; a dropped
        connection is resumed from the last event received, up to `reconnects` times in a row."""
        failures = 0
        while True:
            headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
            try:
                with self._http.stream("GET", f"/jobs/{job_id}/events", headers=headers, timeout=None) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise _error(response)
                    for event in _parse_sse(response.iter_lines()):
                        failures = 0
                        if event.id is not None:
                            last_event_id = event.id
                        yield event
                        if event.kind == "terminal":
                            return
            except (httpx.TransportError, httpx.RemoteProtocolError):
                failures += 1
                if failures > reconnects:
                    raise
                time.sleep(min(2.0 * failures, 10.0))

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        on_event: Callable[[Event], None] | None = None,
        poll_s: float = 2.0,
    ) -> Job:
        """Block until the job ends (or `timeout` seconds: TimeoutError); `on_event` sees each event."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for event in self.events(job_id):
                if on_event is not None:
                    on_event(event)
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} not finished after {timeout} s")
            return self.get(job_id)
        except (httpx.TransportError, Unavailable):
            pass  # no stream: poll instead
        while True:
            job = self.get(job_id)
            if job.finished:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not finished after {timeout} s")
            time.sleep(poll_s)

    # -- plumbing ----------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise _error(response)
        return response.json()


def _error(response: httpx.Response) -> ApiError:
    """The API's error body → a typed exception (422/403/409 bodies are lists of field errors)."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    code, message, loc = response.reason_phrase.lower().replace(" ", "_") or "error", response.text[:500], None
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = detail[0]
        code, message, loc = str(first.get("type", code)), str(first.get("msg", message)), first.get("loc")
    elif isinstance(detail, str):
        message = detail
    cls = Unavailable if response.status_code == 503 else ERRORS.get(response.status_code, ApiError)
    return cls(response.status_code, code, message, loc)


def _parse_sse(lines: Iterator[str]) -> Iterator[Event]:
    event_id: int | None = None
    kind, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield Event(event_id, kind, json.loads("\n".join(data)))
            event_id, kind, data = None, "message", []
        elif line.startswith(":"):
            continue  # a keep-alive comment
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "id":
                event_id = int(value) if value.isdigit() else None
            elif name == "event":
                kind = value
            elif name == "data":
                data.append(value)
