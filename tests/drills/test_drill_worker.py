"""Worker drill: the pool child running a job is SIGKILLed (the host's OOM killer, a crashed driver).

A worker death is an attempt: the job is re-queued when its lease expires and runs again from the start,
exactly once more, and pushes once.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from app.models import JobStatus
from tests.drills.drill import Drill
from tests.drills.test_drill_broker import running_in

pytestmark = pytest.mark.drill


def parent_of(pid: int) -> int:
    # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after its closing paren.
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_worker_sigkill_mid_job_reruns_once(drill: Drill) -> None:
    worker = drill.infra.worker()
    source = drill.source()
    repo_id = f"alice/sigkill-{drill.tag}"
    drill.hold_downloads(source, 5)  # a known moment inside the job, whatever the machine's load
    job_id = drill.submit(source, repo_id)
    running = drill.wait_job(job_id, running_in("download"), timeout=120)
    assert running.status == JobStatus.running and running.worker, drill.logs()
    child = int(running.worker.rsplit("/", 1)[1])
    assert worker.proc is not None and parent_of(child) == worker.proc.pid, "not our worker's pool child"
    os.kill(child, signal.SIGKILL)
    drill.infra.hub.faults.delay_s = 0  # the re-run downloads at full speed

    done = drill.wait_finished(job_id, timeout=240)
    drill.assert_outcome(done, JobStatus.succeeded, attempts=2, pushes=1, repo_id=repo_id)
    log = worker.log_text()
    assert log.count(f"job {job_id} claimed") == 2 and log.count(f"job {job_id} succeeded") == 1, drill.logs()
