"""`slimkit.client` and `slimkit jobs` against the real service: the API served over HTTP (uvicorn), a real
Celery worker subprocess, Postgres, Redis and the local Hub."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from slimkit.cli import main
from slimkit.client import Client, InvalidRequest, NotFound
from tests.hub_fixtures import serve_api
from tests.test_worker_e2e import FAST, sources, worker  # noqa: F401  (fixtures)


@pytest.fixture
def api_url(db, worker) -> Iterator[str]:  # noqa: F811
    with serve_api() as url:
        yield url


def test_submit_follow_events_and_resume(api_url: str, make_token, sources) -> None:  # noqa: F811
    token = make_token("alice")
    with Client(api_url, token) as api:
        with pytest.raises(InvalidRequest) as refused:
            api.submit(sources["tiny"], ratio=0.95)
        assert refused.value.status == 422 and refused.value.loc == ["body", "target", "ratio"]
        with pytest.raises(NotFound):
            api.get("00000000-0000-0000-0000-000000000000")
        body = {"ratio": 0.3, "output": {"push": False}, "idempotency_key": "k-1", **FAST}
        job = api.submit(sources["tiny"], **body)
        assert api.submit(sources["tiny"], **body).id == job.id  # a retried submit is the same job
        seen = []
        done = api.wait(job.id, timeout=180, on_event=seen.append)
        assert done.status == "succeeded" and done.result["params_after"]["total"] > 0
        assert seen[0].kind == "queued" and seen[-1].kind == "terminal"
        assert {"stage", "progress"} <= {e.kind for e in seen}
        middle = seen[len(seen) // 2].id
        assert [e.id for e in api.events(job.id, last_event_id=middle)] == [e.id for e in seen if e.id > middle]
        assert [j.id for j in api.list(page_size=1)] == [job.id]  # pages of one, iterated to the end


def test_cli_submit_list_cancel_and_refusals(api_url: str, make_token, sources, capsys) -> None:  # noqa: F811
    token = make_token("alice")
    base = ["jobs", "--api-url", api_url, "--token", token]
    assert main([*base, "--json", "submit", sources["deep"], "--ratio", "0.3", "--no-push"]) == 0
    job = json.loads(capsys.readouterr().out)
    assert job["status"] == "queued" and job["request"]["output"]["push"] is False
    assert main([*base, "cancel", job["id"]]) == 0
    assert f"job {job['id']}: " in capsys.readouterr().out
    assert main([*base, "--json", "list"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [j["id"] for j in listed] == [job["id"]] and listed[0]["cancel_requested"] is True
    assert main([*base, "watch", job["id"]]) == 1  # it ends cancelled: not a success
    assert "cancelled" in capsys.readouterr().out
    other = ["jobs", "--api-url", api_url, "--token", make_token("bob")]
    assert main([*other, "get", job["id"]]) == 2  # another owner's job does not exist
    assert "404" in capsys.readouterr().err
    assert main([*base, "submit", sources["tiny"], "--ratio", "0.95"]) == 2
    assert "target.ratio" in capsys.readouterr().err
    assert main(["jobs", "--api-url", "http://127.0.0.1:9", "--token", token, "list"]) == 3  # unreachable
