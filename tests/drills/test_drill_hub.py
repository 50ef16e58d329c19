"""Hub drills: 5xx answers on download and on push are retried; a permanent push failure is reported.

Infrastructure blips on the Hub are retried inside the job (they cost no attempt); a push that never goes
through ends `failed` with `hub_push_failed` and nothing pushed.
"""

from __future__ import annotations

import dataclasses

import pytest

from app.models import JobStatus
from localhub import Faults
from tests.drills.drill import Drill

pytestmark = pytest.mark.drill


def test_hub_download_5xx_is_retried(drill: Drill, hub_faults: Faults) -> None:
    assert "fail_downloads" in {f.name for f in dataclasses.fields(Faults)}, "localhub cannot fail downloads yet"
    drill.infra.worker()
    source = drill.source()
    repo_id = f"alice/dl5xx-{drill.tag}"
    hub_faults.fail_downloads = 2  # set before submitting: the API never GETs files, the worker does at once
    job_id = drill.submit(source, repo_id)
    done = drill.wait_finished(job_id)
    failed = [r for r in drill.infra.hub.requests if f"/{source}/resolve/" in r and r.endswith(" 500")]
    assert len(failed) == 2, f"the fault did not fire as set: {failed}"
    drill.assert_outcome(done, JobStatus.succeeded, attempts=1, pushes=1, repo_id=repo_id)


def test_hub_push_5xx_is_retried(drill: Drill, hub_faults: Faults) -> None:
    drill.infra.worker()
    source = drill.source()
    repo_id = f"alice/push5xx-{drill.tag}"
    hub_faults.fail_commits = 2
    done = drill.wait_finished(drill.submit(source, repo_id))
    drill.assert_outcome(done, JobStatus.succeeded, attempts=1, pushes=1, repo_id=repo_id)
    assert hub_faults.commit_calls == 3


def test_hub_push_down_for_good_fails_the_job_then_resubmits(drill: Drill, hub_faults: Faults) -> None:
    """A push that never goes through fails `hub_push_failed` with nothing pushed; once the Hub is back, the
    same request with the same Idempotency-Key is a fresh job that pushes into the same (already created) repo."""
    drill.infra.worker()
    source = drill.source()
    repo_id = f"alice/pushdown-{drill.tag}"
    body = {"output": {"repo_id": repo_id}}
    hub_faults.fail_all_commits = True
    first = drill.post_job(source, key=f"release-{drill.tag}", **body)
    assert first.status_code == 202, first.text
    done = drill.wait_finished(first.json()["id"])
    drill.assert_outcome(done, JobStatus.failed, attempts=1, pushes=0, repo_id=repo_id)
    assert done.error_code == "hub_push_failed" and hub_faults.commit_calls == 3, done.error_message
    hub_faults.fail_all_commits = False
    again = drill.post_job(source, key=f"release-{drill.tag}", **body)
    assert again.status_code == 202 and again.json()["id"] != first.json()["id"], again.text
    retried = drill.wait_finished(again.json()["id"])
    drill.assert_outcome(retried, JobStatus.succeeded, attempts=1, pushes=1, repo_id=repo_id)
