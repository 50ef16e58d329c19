"""`GET /jobs/{id}/events`: Server-Sent Events read from the job_event table (real Postgres), written by the
real state-change functions the API and the worker use; resume with Last-Event-ID; owner scoping."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.test_api import BODY, auth, hub_models  # noqa: F401  (hub_models is a fixture)


@pytest.fixture
def client(db, hub_models) -> TestClient:  # noqa: F811
    from app.main import create_app

    return TestClient(create_app())


def read_events(client: TestClient, job_id: str, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    """Every frame of the stream until it ends: [{id, event, data}]."""
    frames, frame = [], {}
    with client.stream("GET", f"/jobs/{job_id}/events", headers=headers, params=params, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line:
                if "event" in frame:
                    frames.append(frame)
                frame = {}
            elif line.startswith(("id:", "event:", "data:")):
                key, _, value = line.partition(":")
                frame[key] = json.loads(value) if key == "data" else value.strip()
    return frames


def submit(client: TestClient, headers: dict[str, str]) -> str:
    r = client.post("/jobs", json=BODY | {"output": {"push": False}}, headers=headers)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def run_like_a_worker(job_id: str, pause_s: float = 0.0) -> None:
    from app.models import JobStatus
    from worker import claim

    assert claim.claim(job_id, "w1")
    for step in (
        {"stage": "download"},
        {"stage": "compress", "layer": 1, "layers": 2, "fraction": 0.5},
        {"stage": "compress", "layer": 2, "layers": 2, "fraction": 1.0},
    ):
        time.sleep(pause_s)
        assert claim.set_progress(job_id, "w1", **step)
    assert claim.enter_push(job_id, "w1")
    assert claim.finish(job_id, "w1", JobStatus.succeeded, result={"params_after": 123})


def test_history_then_end_and_resume(client: TestClient, make_token) -> None:
    headers = auth(make_token())
    job_id = submit(client, headers)
    run_like_a_worker(job_id)
    frames = read_events(client, job_id, headers)
    kinds = [(f["event"], f["data"]["stage"]) for f in frames]
    assert kinds == [
        ("queued", None),
        ("stage", "starting"),
        ("stage", "download"),
        ("stage", "compress"),
        ("progress", "compress"),
        ("stage", "push"),
        ("terminal", "succeeded"),
    ]
    ids = [int(f["id"]) for f in frames]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert frames[4]["data"]["progress"]["layer"] == 2 and frames[-1]["data"]["result"] == {"params_after": 123}
    resumed = read_events(client, job_id, headers | {"Last-Event-ID": str(ids[3])})
    assert [int(f["id"]) for f in resumed] == ids[4:]
    assert [int(f["id"]) for f in read_events(client, job_id, headers, after=ids[5])] == ids[6:]


def test_live_stream_follows_the_job(client: TestClient, make_token) -> None:
    headers = auth(make_token())
    job_id = submit(client, headers)
    worker = threading.Thread(target=run_like_a_worker, args=(job_id, 0.7))
    worker.start()
    try:
        frames = read_events(client, job_id, headers)  # opened while the job runs; ends with it
    finally:
        worker.join()
    assert frames[0]["event"] == "queued" and frames[-1]["event"] == "terminal"
    assert [f["data"]["stage"] for f in frames if f["event"] == "stage"] == ["starting", "download", "compress", "push"]


def test_cancel_and_scoping(client: TestClient, make_token) -> None:
    alice, bob = auth(make_token("alice")), auth(make_token("bob"))
    job_id = submit(client, alice)
    assert client.get(f"/jobs/{job_id}/events", headers=bob).status_code == 404
    assert client.get(f"/jobs/{uuid.uuid4()}/events", headers=alice).status_code == 404
    assert client.post(f"/jobs/{job_id}/cancel", headers=alice).status_code == 200
    frames = read_events(client, job_id, alice)
    assert [(f["event"], f["data"]["status"]) for f in frames] == [("queued", "queued"), ("terminal", "cancelled")]


def test_a_job_older_than_the_event_log_still_ends(client: TestClient, make_token, db) -> None:
    from sqlalchemy import delete

    from app.models import JobEvent

    headers = auth(make_token())
    job_id = submit(client, headers)
    client.post(f"/jobs/{job_id}/cancel", headers=headers)
    db.execute(delete(JobEvent).where(JobEvent.job_id == uuid.UUID(job_id)))
    db.commit()
    (frame,) = read_events(client, job_id, headers)
    assert frame["event"] == "terminal" and "id" not in frame and frame["data"]["status"] == "cancelled"
