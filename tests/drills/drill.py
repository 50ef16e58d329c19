"""`Drill`: what every fault drill does — submit through the real API, watch the job in the database, hold
the job's download on the Hub so a fault lands while it runs, and check the outcome the issue asks for.

The database is read directly (its own engine), not through the API, because several drills break the API's
path on purpose; reads retry through a database outage until their deadline.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.models import Job, JobStatus

if TYPE_CHECKING:
    from tests.drills.conftest import DrillInfra

FAST = {  # seconds of compute on two CPU cores: the drills' time goes into the faults, not the model
    "calibration": {"samples": 4, "seq_len": 32},
    "evaluation": {"perplexity": False},
}
TERMINAL = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})


class Drill:
    def __init__(self, infra: DrillInfra, name: str) -> None:
        self.infra = infra
        words = re.findall(r"[a-z0-9]+", name.split("[")[0].removeprefix("test_").lower())
        self.tag = "-".join([*words[:3], uuid.uuid4().hex[:6]])  # a valid, unique part of a Hub repo id
        self.engine = create_engine(infra.database_url, pool_pre_ping=True, connect_args={"connect_timeout": 3})
        self.http = httpx.Client(base_url=infra.api.url, timeout=30)
        self.tokens: dict[str, str] = {}

    def close(self) -> None:
        self.http.close()
        self.engine.dispose()

    # --- set-up -------------------------------------------------------------------------------------------

    def token(self, owner: str = "alice") -> str:
        """A bearer token made the operator's way (`app.auth.create_token`, stored hashed)."""
        if owner not in self.tokens:
            from app.auth import create_token

            with Session(self.engine) as session:
                self.tokens[owner] = create_token(session, owner, name="drill")
        return self.tokens[owner]

    def headers(self, owner: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(owner)}"}

    def source(self, label: str = "src") -> str:
        """A fresh source repo on the local Hub holding the tiny model (fresh: nothing cached by a worker)."""
        repo_id = f"tester/{label}-{self.tag}"
        self.infra.hub.seed(repo_id, self.infra.model_dir)
        return repo_id

    def hold_downloads(self, repo_id: str, seconds: float) -> None:
        """Every file request for `repo_id` waits `seconds` on the Hub: the job sits in `download`, running."""
        self.infra.hub.faults.delay_match = f"/{repo_id}/resolve/"
        self.infra.hub.faults.delay_s = seconds

    # --- the API ------------------------------------------------------------------------------------------

    def post_job(
        self, model: str, owner: str = "alice", timeout: float = 30, key: str | None = None, **body: Any
    ) -> httpx.Response:
        headers = self.headers(owner) | ({"Idempotency-Key": key} if key else {})
        payload = {"model": model, "target": {"ratio": 0.3}, **FAST, **body}
        return self.http.post("/jobs", json=payload, headers=headers, timeout=timeout)

    def submit(self, model: str, repo_id: str | None = None, owner: str = "alice", **body: Any) -> str:
        """Submit a job (202 expected) pushing to `repo_id` (default: a fresh repo of `owner`); its id."""
        output = {"repo_id": repo_id or f"{owner}/out-{self.tag}-{uuid.uuid4().hex[:4]}"}
        r = self.post_job(model, owner=owner, output=output, **body)
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def timed(self, call: Callable[[], httpx.Response]) -> tuple[httpx.Response | None, float, str]:
        """(response or None, seconds, error) of one API call, so a drill can assert its bound and its answer."""
        start = time.monotonic()
        try:
            return call(), time.monotonic() - start, ""
        except httpx.HTTPError as err:
            return None, time.monotonic() - start, f"{type(err).__name__}: {err}"

    # --- the database -------------------------------------------------------------------------------------

    def job(self, job_id: str) -> Job:
        with Session(self.engine, expire_on_commit=False) as session:
            job = session.get(Job, uuid.UUID(job_id))
            assert job is not None, f"job {job_id} has no row"
            return job

    def wait_job(self, job_id: str, done: Callable[[Job], bool], timeout: float = 180) -> Job:
        """Poll the job row until `done(job)`; database outages are waited out until the deadline."""
        deadline = time.monotonic() + timeout
        last: Job | None = None
        while True:
            try:
                last = self.job(job_id)
                if done(last):
                    return last
            except OperationalError:
                pass
            if time.monotonic() > deadline:
                state = f"{last.status.value}/{last.stage}" if last is not None else "unreadable"
                raise AssertionError(f"job {job_id} still {state} after {timeout:.0f} s\n{self.logs()}")
            time.sleep(0.3)

    def wait_finished(self, job_id: str, timeout: float = 180) -> Job:
        return self.wait_job(job_id, lambda j: j.status in TERMINAL, timeout)

    def job_rows(self, model: str) -> int:
        with Session(self.engine) as session:
            return session.scalar(select(func.count()).select_from(Job).where(Job.model == model)) or 0

    # --- the Hub ------------------------------------------------------------------------------------------

    def pushes(self, repo_id: str) -> list[str]:
        """Successful commit calls into `repo_id` (the Hub's request log): one per pushed output."""
        prefix = f"POST /api/models/{repo_id}/commit/"
        return [r for r in self.infra.hub.requests if r.startswith(prefix) and r.endswith(" 200")]

    def main_sha(self, repo_id: str) -> str:
        from huggingface_hub import HfApi

        return HfApi(token=self.infra.hub.token).model_info(repo_id).sha or ""

    # --- checks -------------------------------------------------------------------------------------------

    def assert_outcome(self, job: Job, status: JobStatus, attempts: int, pushes: int, repo_id: str) -> None:
        """One terminal state (with a code when failed), the attempts the drill allows, at most one push."""
        context = f"job {job.id}: {job.status.value} {job.error_code} {job.error_message}\n{self.logs()}"
        assert job.status == status, context
        assert job.status in TERMINAL and job.finished_at is not None, context
        if job.status == JobStatus.failed:
            assert job.error_code, context
        assert job.attempts == attempts, f"attempts {job.attempts} != {attempts}; {context}"
        assert len(self.pushes(repo_id)) == pushes, f"pushes {self.pushes(repo_id)}; {context}"

    def logs(self, lines: int = 40) -> str:
        """The tails of the worker and API logs, for assertion messages."""
        parts = []
        worker = self.infra.current
        for name, text in (("worker", worker.log_text() if worker else ""), ("api", self.infra.api.log_text())):
            parts.append(f"--- {name} log (tail) ---\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts)
