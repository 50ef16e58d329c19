"""Namespace drill: a token of owner `mallory` tries to push into someone else's namespace and over the
source model itself. Both are refused at submit, naming `output.repo_id`, and the source is untouched.
"""

from __future__ import annotations

import pytest

from app.models import JobStatus
from tests.drills.drill import Drill

pytestmark = pytest.mark.drill


def test_namespace_attack_is_refused_at_submit(drill: Drill) -> None:
    from huggingface_hub import HfApi

    drill.infra.worker()
    source = drill.source("victim")
    before = drill.main_sha(source)
    foreign = f"bob/x-{drill.tag}"
    answers = {
        target: drill.post_job(source, owner="mallory", output={"repo_id": target}) for target in (foreign, source)
    }
    # A job accepted by mistake is left to run, so that the damage it would do shows in the checks below.
    for response in answers.values():
        if response.status_code == 202:
            job = drill.wait_finished(response.json()["id"])
            assert job.status in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)

    assert drill.main_sha(source) == before, "the source model's main was replaced"
    assert not drill.pushes(source) and not HfApi(token=drill.infra.hub.token).repo_exists(foreign)
    for target, response in answers.items():
        assert response.status_code in (403, 422), f"{target}: {response.status_code} {response.text[:300]}"
        assert "repo_id" in response.text and "output" in response.text, response.text[:300]
