"""Broker drills: Redis restarted under a running job, and Redis hung (SIGSTOP) under the API.

The restart drill is issue 12 item 5: a broker outage of at least 60 s must not restart, fail or duplicate a
running job, nor consume one of its attempts. The job is held in `download` by the Hub for longer than the
outage, so it is provably running from before Redis stops until after Redis is back, whatever the load
of the machine (a slower machine only makes the hold longer, never shorter).
"""

from __future__ import annotations

import os
import time

import pytest

from app.models import JobStatus
from tests.drills.drill import Drill

pytestmark = pytest.mark.drill

# The outage of the restart drill; >= 60 s is the contract, shorter values are for trying the drill out.
BROKER_OUTAGE_S = float(os.environ.get("SLIMKIT_DRILL_BROKER_OUTAGE_S", "65"))
BROKER_HANG_S = float(os.environ.get("SLIMKIT_DRILL_BROKER_HANG_S", "30"))
API_BOUND_S = 2.0  # POST /jobs and GET /readyz answer within this, whatever the broker does


def running_in(stage: str):
    return lambda j: (j.status == JobStatus.running and j.stage == stage) or j.status.finished


@pytest.mark.slow_drill
def test_broker_restart_leaves_a_running_job_alone(drill: Drill) -> None:
    worker = drill.infra.worker()
    redis = drill.infra.redis
    source = drill.source()
    repo_id = f"alice/restart-{drill.tag}"
    drill.hold_downloads(source, BROKER_OUTAGE_S + 20)
    job_id = drill.submit(source, repo_id)
    before = drill.wait_job(job_id, running_in("download"), timeout=120)
    assert before.status == JobStatus.running, drill.logs()

    redis.stop()
    stopped = time.monotonic()
    try:
        while time.monotonic() - stopped < BROKER_OUTAGE_S:
            job = drill.job(job_id)  # the database is up: the job must stay running on the same worker
            assert job.status == JobStatus.running and job.worker == before.worker, drill.logs()
            time.sleep(1)
    finally:
        redis.start()
    after = drill.job(job_id)
    # Precondition of the drill, not luck: the Hub still holds the download, so the job spans the outage.
    assert after.status == JobStatus.running and after.stage == "download", drill.logs()
    assert after.worker == before.worker and after.attempts == 1, drill.logs()
    drill.infra.hub.faults.delay_s = 0  # let the rest of the job run at full speed

    done = drill.wait_finished(job_id, timeout=240)
    drill.assert_outcome(done, JobStatus.succeeded, attempts=1, pushes=1, repo_id=repo_id)
    log = worker.log_text()
    assert "Connection to broker lost" in log, "the worker never saw the outage: the drill tested nothing"
    assert log.count(f"job {job_id} claimed") == 1 and log.count(f"job {job_id} succeeded") == 1, drill.logs()
    assert "Couldn't ack" not in log and "Terminating it instead" not in log, drill.logs(80)
    # The late ack went out after the reconnection: Redis (append-only, so it kept the message across the
    # restart) no longer holds the job's message as unacknowledged, so it is never redelivered.
    deadline = time.monotonic() + 30
    while redis.client().hlen("unacked"):
        assert time.monotonic() < deadline, f"message still unacked: {redis.client().hkeys('unacked')}"
        time.sleep(0.5)

    # The worker consumes again: a job submitted after the outage runs to the end.
    second_repo = f"alice/after-restart-{drill.tag}"
    second = drill.wait_finished(drill.submit(source, second_repo), timeout=240)
    drill.assert_outcome(second, JobStatus.succeeded, attempts=1, pushes=1, repo_id=second_repo)


def test_broker_hang_api_answers_and_the_job_is_not_lost(drill: Drill) -> None:
    drill.infra.worker()
    redis = drill.infra.redis
    source = drill.source()
    repo_id = f"alice/hang-{drill.tag}"
    drill.main_sha(source)  # warm the API's path to the Hub: the bound is about the broker
    redis.pause()
    hung = time.monotonic()
    try:
        posted, post_s, post_err = drill.timed(
            lambda: drill.post_job(source, output={"repo_id": repo_id}, timeout=API_BOUND_S + 8)
        )
        ready, ready_s, ready_err = drill.timed(lambda: drill.http.get("/readyz", timeout=API_BOUND_S + 8))
        time.sleep(max(0.0, BROKER_HANG_S - (time.monotonic() - hung)))
    finally:
        redis.resume()

    assert posted is not None, f"POST /jobs gave no answer in {post_s:.1f} s ({post_err})\n{drill.logs()}"
    assert posted.status_code == 202 and post_s <= API_BOUND_S, (posted.status_code, post_s, posted.text)
    job_id = posted.json()["id"]
    done = drill.wait_finished(job_id, timeout=240)  # accepted while the broker hung: enqueued once it is back
    drill.assert_outcome(done, JobStatus.succeeded, attempts=1, pushes=1, repo_id=repo_id)
    assert drill.job_rows(source) == 1

    assert ready is not None, f"GET /readyz gave no answer in {ready_s:.1f} s ({ready_err})"
    assert ready.status_code == 503 and ready_s <= API_BOUND_S, (ready.status_code, ready_s, ready.text)
    checks = ready.json()
    assert checks["database"] == "ok" and checks["broker"] != "ok", checks
