"""Fixtures of the fault drills: one set of real servers per session, a worker per lease, a `Drill` helper.

- `drill_infra` (session): its own Redis and Postgres (migrated with alembic), the API as a uvicorn
  subprocess, and `worker(lease_s)` — the running worker when its lease matches, else a fresh one (one
  worker at a time, so a drill knows which process runs its job). All stopped by PID at the end.
- `drill` (function): a `Drill` (tests/drills/drill.py) bound to those servers and the local Hub, with its
  Hub faults reset before and after.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import save_tiny
from tests.drills.drill import Drill
from tests.drills.harness import (
    ApiProcess,
    PostgresServer,
    RedisServer,
    WorkerProcess,
    find_binary,
    service_env,
)
from tests.hub_fixtures import LocalHub

# Short, so a dead worker's job is re-queued within seconds (sweep every lease / 2), yet long enough that a
# starved heartbeat on a loaded 2-core machine does not make a healthy job look dead.
LEASE_S = 12
HUB_WEBHOOK_SECRET = "drill-hub-webhook-secret"


@dataclass
class DrillInfra:
    workdir: Path
    redis: RedisServer
    postgres: PostgresServer
    database_url: str
    api: ApiProcess
    hub: LocalHub
    model_dir: Path
    current: WorkerProcess | None = field(default=None)

    def worker(self, lease_s: int = LEASE_S, queues: str = "gpu") -> WorkerProcess:
        """The one worker, started (or restarted) with this lease and these queues; Hub retries fast, HF
        timeouts long (a drill holds downloads on the Hub for longer than the client's 10 s default)."""
        current = self.current
        if current is not None and current.alive() and (current.lease_s, current.queues) == (lease_s, queues):
            return current
        self.stop_worker()
        home = self.workdir / f"worker-{uuid.uuid4().hex[:6]}"
        env = service_env(
            self.database_url,
            self.redis.url(),
            self.hub.token,
            SLIMKIT_WORK_DIR=str(home / "work"),
            SLIMKIT_LEASE_S=str(lease_s),
            SLIMKIT_HUB_PUSH_ATTEMPTS="3",
            SLIMKIT_HUB_RETRY_BASE_S="0.05",
            SLIMKIT_TORCH_THREADS="1",
            HF_HOME=str(home / "hf"),
            HF_HUB_CACHE=str(home / "hf" / "hub"),
            HF_HUB_DOWNLOAD_TIMEOUT="300",
            HF_HUB_ETAG_TIMEOUT="300",
        )
        self.current = WorkerProcess(env, self.workdir, lease_s, queues)
        self.current.start()
        return self.current

    def stop_worker(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None


@pytest.fixture(scope="session")
def drill_infra(local_hub: LocalHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DrillInfra]:
    missing = [name for name in ("redis-server", "initdb", "pg_ctl") if find_binary(name) is None]
    if missing:
        pytest.skip(f"fault drills need {', '.join(missing)} on this machine")
    workdir = tmp_path_factory.mktemp("drills")
    model_dir = save_tiny("llama_gqa", workdir / "model")
    redis = RedisServer(workdir / "redis")
    postgres = PostgresServer()
    api: ApiProcess | None = None
    infra: DrillInfra | None = None
    try:
        redis.start()
        postgres.start()
        url = postgres.create_database(f"drill_{uuid.uuid4().hex[:8]}")
        api_env = service_env(url, redis.url(), local_hub.token, SLIMKIT_HUB_WEBHOOK_SECRET=HUB_WEBHOOK_SECRET)
        api = ApiProcess(api_env, workdir)
        api.start()
        infra = DrillInfra(workdir, redis, postgres, url, api, local_hub, model_dir)
        yield infra
    finally:
        if infra is not None:
            infra.stop_worker()
        if api is not None:
            api.stop()
        redis.stop()
        postgres.destroy()
        shutil.rmtree(workdir / "model", ignore_errors=True)


@pytest.fixture
def drill(drill_infra: DrillInfra, request: pytest.FixtureRequest) -> Iterator[Drill]:
    hub = drill_infra.hub
    hub.faults.reset()
    helper = Drill(drill_infra, name=request.node.name)
    try:
        yield helper
    finally:
        hub.faults.reset()
        helper.close()
        # Leave the servers as the next drill expects them, whatever this one broke.
        if drill_infra.redis.proc is None:
            drill_infra.redis.start()
        else:
            drill_infra.redis.resume()
        if drill_infra.postgres.pid() is None:
            drill_infra.postgres.start()
