"""Real processes for the fault drills: Redis, Postgres, a Celery worker and the API, each on its own port.

Every process is started by the drill itself and stopped by its PID (never by name), in `finally` blocks,
so a failing drill still cleans up. Each one can be broken the way production breaks:

- `RedisServer`: `stop()` / `start()` on the same port (a restart; the append-only file keeps the queues,
  as in the compose deployment), `pause()` / `resume()` (SIGSTOP / SIGCONT: a hung broker that still
  accepts TCP connections).
- `PostgresServer`: `stop()` (`pg_ctl stop -m fast`) / `start()` on the same port and data directory.
- `WorkerProcess`: the same command as the deployment (prefork, one child); the pool child running a job
  is the PID in the job row's `worker` column, so a drill can SIGKILL exactly that process.
- `ApiProcess`: `python -m uvicorn app.main:app`, the deployed entry point.

Start-up deadlines are generous: the CI machine has two shared cores and importing torch can take a while.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
START_DEADLINE_S = 180.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(
    what: str, ready: Callable[[], bool], deadline_s: float, alive: Callable[[], bool] = lambda: True
) -> None:
    """Poll `ready` until it is true; raise if `alive` turns false or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while not ready():
        if not alive():
            raise RuntimeError(f"{what}: the process exited")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {deadline_s:.0f} s")
        time.sleep(0.2)


def find_binary(name: str) -> str | None:
    """A server binary on PATH, else in the Debian Postgres layout."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return None


def stop_group(proc: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """SIGTERM the process group the drill started (its own session), SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGCONT)  # a paused process cannot act on SIGTERM
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        proc.wait(timeout=10)


class RedisServer:
    """`redis-server` on its own port and directory; restartable on the same port, pausable."""

    def __init__(self, workdir: Path, port: int | None = None, appendonly: bool = True) -> None:
        self.binary = find_binary("redis-server")
        if self.binary is None:
            raise FileNotFoundError("redis-server is not installed")
        self.dir, self.port, self.appendonly = workdir, port or free_port(), appendonly
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0):  # -> redis.Redis (typed loosely: redis-py's generics are noisy)
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, db=db, socket_timeout=2, socket_connect_timeout=2)

    def ping(self) -> bool:
        try:
            return bool(self.client().ping())
        except Exception:
            return False

    def start(self) -> None:
        command = [self.binary or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--dir", str(self.dir), "--save", ""]
        command += ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(
            f"redis on {self.port}", self.ping, 60, alive=lambda: self.proc is not None and self.proc.poll() is None
        )

    def stop(self) -> None:
        """A clean shutdown (SIGTERM): clients see their connections closed."""
        if self.proc is not None:
            stop_group(self.proc)
            self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections (the kernel's backlog) but nothing is answered."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


class PostgresServer:
    """A Postgres cluster of its own (initdb into a temp dir, trust auth), restartable on the same port.

    As root the cluster belongs to the `postgres` user (Postgres refuses to run as root); otherwise to the
    current user. The socket lives in the data directory, so the machine's own server is never touched.
    """

    def __init__(self, port: int | None = None) -> None:
        for name in ("initdb", "pg_ctl"):
            if find_binary(name) is None:
                raise FileNotFoundError(f"{name} is not installed")
        self.port = port or free_port()
        self.base = Path(tempfile.mkdtemp(prefix="slimkit-drill-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "postgres.log"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            import pwd

            account = pwd.getpwnam("postgres")
            os.chown(self.base, account.pw_uid, account.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        command = [*self.as_user, find_binary(tool) or tool, *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "120", "start")

    def stop(self) -> None:
        """`pg_ctl stop -m fast`: open sessions are terminated, new connections refused until `start`."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "120", "stop")

    def pid(self) -> int | None:
        pidfile = self.data / "postmaster.pid"
        try:
            return int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def destroy(self) -> None:
        """Stop the server (by its postmaster PID if pg_ctl cannot) and remove the cluster."""
        pid = self.pid()
        if pid is not None:
            try:
                self.stop()
            except Exception:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGQUIT)  # immediate shutdown of the postmaster we started
        shutil.rmtree(self.base, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """A new database, migrated with `alembic upgrade head` like a deployment; returns its URL."""
        from alembic import command
        from sqlalchemy import create_engine, text

        from tests.service_fixtures import alembic_config

        admin = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        url = self.url(name)
        command.upgrade(alembic_config(url), "head")
        return url


class ServiceProcess:
    """A subprocess in its own session, logging to a file; stopped by its process group."""

    def __init__(self, name: str, command: list[str], env: Mapping[str, str], log: Path) -> None:
        self.name, self.command, self.env, self.log = name, command, dict(env), log
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
            self.proc = None


def service_env(database_url: str, broker_url: str, hub_token: str | None, **extra: str) -> dict[str, str]:
    """The environment of a worker or API process pointed at the drill's own database and broker."""
    env = {
        **os.environ,
        "SLIMKIT_DATABASE_URL": database_url,
        "SLIMKIT_BROKER_URL": broker_url,
        "SLIMKIT_HUB_TOKEN": hub_token or "",
        "PYTHONPATH": str(ROOT),
        **extra,
    }
    env.pop("HF_TOKEN", None)  # services use the deployment token from their settings
    return env


class WorkerProcess(ServiceProcess):
    """`celery -A worker.celery_app worker --pool=prefork -c 1 -Q gpu`, as deployed (`queues="gpu,control"`:
    one worker that also detects releases, the single-host layout)."""

    def __init__(self, env: Mapping[str, str], workdir: Path, lease_s: int, queues: str = "gpu") -> None:
        self.lease_s, self.queues = lease_s, queues
        self.node = f"drill-{uuid.uuid4().hex[:8]}@{os.uname().nodename}"
        command = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool=prefork", "-c", "1"]
        command += ["-Q", queues, "--without-gossip", "--without-mingle", "-l", "info", "-n", self.node]
        super().__init__("worker", command, env, workdir / f"worker-{self.node.split('@')[0]}.log")

    def start(self) -> None:
        self.spawn()
        wait_until(f"worker {self.node}", lambda: " ready." in self.log_text(), START_DEADLINE_S, self.alive)


class BeatProcess(ServiceProcess):
    """`celery -A worker.celery_app beat`: the schedule of the reconciling poller (one per deployment)."""

    def __init__(self, env: Mapping[str, str], workdir: Path) -> None:
        command = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "beat", "-l", "info"]
        command += ["-s", str(workdir / f"beat-{uuid.uuid4().hex[:6]}-schedule")]
        super().__init__("beat", command, env, workdir / "beat.log")

    def start(self) -> None:
        self.spawn()
        wait_until("beat", lambda: "beat: Starting" in self.log_text(), START_DEADLINE_S, self.alive)


class ApiProcess(ServiceProcess):
    """The API as deployed: `python -m uvicorn app.main:app`, one process."""

    def __init__(self, env: Mapping[str, str], workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        command = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(self.port)]
        super().__init__("api", command, env, workdir / "api.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        import httpx

        def healthy() -> bool:
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        self.spawn()
        wait_until(f"api on {self.port}", healthy, START_DEADLINE_S, self.alive)
