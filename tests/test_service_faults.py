"""The API's promises under attack and under faults, with real parts: Postgres and Redis behind a TCP proxy
that cuts or hangs the link (tests/netfaults.py), and the local Hub with injected latency.

- outputs go only where the caller may write (allow-list, never the source, never a repo we did not create);
- request bodies are capped and large inputs never echoed; inline calibration text is stored once;
- a hung broker never holds up a submission, and nothing accepted is lost;
- a database outage is a 503 with Retry-After, and a worker's writes wait it out;
- a slow Hub does not starve unrelated requests;
- a cancel is never accepted when it would not be honoured; transient failures can be re-submitted.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import save_tiny
from tests.hub_fixtures import LocalHub, serve
from tests.netfaults import FaultyProxy, faulty_proxy
from tests.service_fixtures import reset_app_caches

BODY = {"model": "tester/src", "method": "intraslice", "target": {"ratio": 0.3}}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def seeded(local_hub: LocalHub, tmp_path_factory: pytest.TempPathFactory) -> LocalHub:
    folder = save_tiny("llama_gqa", tmp_path_factory.mktemp("src"))
    local_hub.seed("tester/src", folder)
    local_hub.seed("bob/x", folder)
    local_hub.seed("mallory/preexisting", folder)
    return local_hub


@pytest.fixture
def client(db, seeded: LocalHub) -> TestClient:
    from app.main import create_app

    return TestClient(create_app())


def repo_error(response: httpx.Response) -> str:
    detail = response.json()["detail"]
    assert detail[0]["loc"] == ["body", "output", "repo_id"], detail
    return detail[0]["msg"]


# --- where outputs may go --------------------------------------------------------------------------------------


def test_outputs_only_where_the_owner_may_write(client: TestClient, make_token, seeded: LocalHub) -> None:
    from sqlalchemy import update

    from app.db import session_factory
    from app.models import Job, JobStatus
    from worker.claim import mark_output

    mallory = auth(make_token("mallory"))
    from huggingface_hub import HfApi

    source_main = HfApi().model_info("tester/src").sha

    other = client.post("/jobs", json=BODY | {"output": {"repo_id": "bob/x"}}, headers=mallory)
    assert other.status_code == 403 and "may not push to 'bob/x'" in repo_error(other)
    source = client.post("/jobs", json=BODY | {"output": {"repo_id": "Tester/SRC"}}, headers=mallory)
    assert source.status_code == 422 and "source model" in repo_error(source)
    taken = client.post("/jobs", json=BODY | {"output": {"repo_id": "mallory/preexisting"}}, headers=mallory)
    assert taken.status_code == 422 and "not created by this service" in repo_error(taken)

    first = client.post("/jobs", json=BODY, headers=mallory)
    assert first.status_code == 202, first.text
    name = "mallory/src-intraslice-30"
    assert first.json()["request"]["output"]["repo_id"] == name
    explicit = {"output": {"repo_id": name, "overwrite": True}}
    busy = client.post("/jobs", json=BODY | explicit, headers=mallory)  # the first job may still write it
    assert busy.status_code == 409 and "still writing" in repo_error(busy)
    mark_output(name, "mallory", created=True, pushed=True)  # what the worker records around its push
    with session_factory()() as session:  # ... and the first job finished
        session.execute(update(Job).where(Job.id == uuid.UUID(first.json()["id"])).values(status=JobStatus.succeeded))
        session.commit()
    again = client.post("/jobs", json=BODY, headers=mallory)  # the same recipe again: the next free name
    assert again.status_code == 202 and again.json()["request"]["output"]["repo_id"] == name + "-v2"
    no_update = client.post("/jobs", json=BODY | {"output": {"repo_id": name}}, headers=mallory)
    assert no_update.status_code == 422 and "output.overwrite" in repo_error(no_update)
    update_it = client.post("/jobs", json=BODY | explicit, headers=mallory)
    assert update_it.status_code == 202, update_it.text
    # Nobody else can take over that name, even with overwrite.
    bob = auth(make_token("bob"))
    stolen = {"output": {"repo_id": name, "overwrite": True}}
    assert client.post("/jobs", json=BODY | stolen, headers=bob).status_code == 403
    # Nothing reached the Hub: the source's main is where it was.
    assert HfApi().model_info("tester/src").sha == source_main


def test_token_allow_list_replaces_the_default(client: TestClient, db) -> None:
    from app.auth import create_token

    token = auth(create_token(db, "ci-bot", output_patterns=["acme/{owner}-*", "acme-public/*"]))
    ok = client.post("/jobs", json=BODY | {"output": {"repo_id": "acme/ci-bot-small"}}, headers=token)
    assert ok.status_code == 202, ok.text
    assert client.post("/jobs", json=BODY | {"output": {"repo_id": "acme-public/x"}}, headers=token).status_code == 202
    own = client.post("/jobs", json=BODY | {"output": {"repo_id": "ci-bot/x"}}, headers=token)
    assert own.status_code == 403 and "acme/ci-bot-*" in repo_error(own)


def test_deployment_namespace_prefixes_the_owner(client: TestClient, make_token, monkeypatch) -> None:
    from app.settings import get_settings

    monkeypatch.setenv("SLIMKIT_HUB_NAMESPACE", "slimkit-out")
    get_settings.cache_clear()
    try:
        alice = auth(make_token("alice"))
        r = client.post("/jobs", json=BODY, headers=alice)
        assert (
            r.status_code == 202 and r.json()["request"]["output"]["repo_id"] == "slimkit-out/alice-src-intraslice-30"
        )
        mine = client.post("/jobs", json=BODY | {"output": {"repo_id": "slimkit-out/alice-v2"}}, headers=alice)
        assert mine.status_code == 202
        theirs = client.post("/jobs", json=BODY | {"output": {"repo_id": "slimkit-out/bob-v2"}}, headers=alice)
        assert theirs.status_code == 403
    finally:
        get_settings.cache_clear()


def test_owner_names_cannot_widen_the_allow_list(db) -> None:
    from app.auth import create_token
    from app.outputs import OutputRefused, allowed_patterns, check_allowed

    for bad in ("*", "a/b", "al ice", "", "x" * 65):
        with pytest.raises(ValueError, match="owner"):
            create_token(db, bad)
    assert allowed_patterns("a[b]", None) == ["a[[]b]/*"]  # glob characters are literal
    with pytest.raises(OutputRefused):
        check_allowed("ab/x", "a?", ["{owner}/*"], "t/src")


def test_a_failed_push_can_be_resubmitted_into_the_same_repo(client: TestClient, make_token) -> None:
    """The worker created the default-named repo, then every upload failed: the same key and body submit a
    fresh job for the same (ours, still empty) repo instead of moving on to -v2 or asking for overwrite."""
    from worker.claim import claim, enter_push, finish, mark_output

    headers = auth(make_token("carol")) | {"Idempotency-Key": "push-retry"}
    first = client.post("/jobs", json=BODY, headers=headers).json()
    repo_id = first["request"]["output"]["repo_id"]
    assert repo_id == "carol/src-intraslice-30"
    assert claim(first["id"], "w/1") and enter_push(first["id"], "w/1")
    mark_output(repo_id, "carol", created=True)  # what the worker records right before creating the repo
    from app.models import JobStatus

    assert finish(first["id"], "w/1", JobStatus.failed, "hub_push_failed", "uploading failed after 4 tries")
    again = client.post("/jobs", json=BODY, headers=headers)
    assert again.status_code == 202 and again.json()["id"] != first["id"], again.text
    assert again.json()["request"]["output"]["repo_id"] == repo_id


# --- request limits -----------------------------------------------------------------------------------------------


def test_large_bodies_are_refused_and_never_echoed(client: TestClient, make_token) -> None:
    headers = auth(make_token())
    huge = json.dumps(BODY | {"calibration": {"text": "x" * (9 * 1024 * 1024)}})
    r = client.post("/jobs", content=huge, headers=headers | {"Content-Type": "application/json"})
    assert r.status_code == 413 and len(r.content) < 200

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        yield huge.encode()[: 1 << 20]
        for _ in range(9):
            yield b" " * (1 << 20)

    streamed = client.post("/jobs", content=chunks(), headers=headers | {"Content-Type": "application/json"})
    assert streamed.status_code == 413
    bad = client.post("/jobs", json=BODY | {"model": "n/" + "a" * 500_000}, headers=headers)
    assert bad.status_code == 422 and len(bad.content) < 2000
    assert bad.json()["detail"][0]["loc"] == ["body", "model"]


def test_inline_calibration_text_is_stored_once_by_hash(client: TestClient, make_token, db) -> None:
    from sqlalchemy import func, select

    from app.models import CalibrationText

    headers = auth(make_token())
    text = "A calibration paragraph about structured pruning. " * 6000  # ~300 KB
    body = BODY | {"calibration": {"dataset": None, "text": text}}
    ids = [client.post("/jobs", json=body | {"target": {"ratio": r}}, headers=headers).json()["id"] for r in (0.2, 0.3)]
    listing = client.get("/jobs", headers=headers)
    assert len(listing.content) < 20_000
    for job_id in ids:
        calibration = client.get(f"/jobs/{job_id}", headers=headers).json()["request"]["calibration"]
        assert "text" not in calibration and calibration["text_chars"] == len(text)
    assert db.scalar(select(func.count()).select_from(CalibrationText)) == 1


# --- cancel and re-submission ----------------------------------------------------------------------------------


def test_cancel_is_refused_once_the_push_started(client: TestClient, make_token) -> None:
    from worker.claim import claim, enter_push

    headers = auth(make_token())
    pushing = client.post("/jobs", json=BODY | {"output": {"repo_id": "alice/a"}}, headers=headers).json()["id"]
    assert claim(pushing, "w/1") and enter_push(pushing, "w/1")
    refused = client.post(f"/jobs/{pushing}/cancel", headers=headers)
    assert refused.status_code == 409 and "pushing" in refused.json()["detail"]
    assert client.get(f"/jobs/{pushing}", headers=headers).json()["cancel_requested"] is False

    stopping = client.post("/jobs", json=BODY | {"output": {"repo_id": "alice/b"}}, headers=headers).json()["id"]
    assert claim(stopping, "w/2")
    accepted = client.post(f"/jobs/{stopping}/cancel", headers=headers)
    assert accepted.status_code == 200 and accepted.json()["cancel_requested"] is True
    assert not enter_push(stopping, "w/2")  # the accepted cancel wins: nothing is pushed


def test_transient_failures_can_be_resubmitted_with_the_same_key(client: TestClient, make_token, db) -> None:
    from sqlalchemy import update

    from app.models import Job, JobStatus

    headers = auth(make_token()) | {"Idempotency-Key": "nightly-1"}
    first = client.post("/jobs", json=BODY, headers=headers).json()["id"]
    db.execute(
        update(Job)
        .where(Job.id == uuid.UUID(first))
        .values(status=JobStatus.failed, error_code="hub_unavailable", error_message="Hub down")
    )
    db.commit()
    second = client.post("/jobs", json=BODY, headers=headers)
    assert second.status_code == 202 and second.json()["id"] != first and second.json()["status"] == "queued"
    assert client.get(f"/jobs/{first}", headers=headers).json()["status"] == "failed"  # history kept
    db.execute(
        update(Job)
        .where(Job.id == uuid.UUID(second.json()["id"]))
        .values(status=JobStatus.failed, error_code="unsupported_architecture", error_message="no")
    )
    db.commit()
    replay = client.post("/jobs", json=BODY, headers=headers)  # a permanent failure replays as it is
    assert replay.json()["id"] == second.json()["id"] and replay.json()["status"] == "failed"


# --- broker and database faults -------------------------------------------------------------------------------


def test_a_hung_broker_does_not_hold_up_submissions(client: TestClient, make_token, monkeypatch) -> None:
    """Submit and readiness answer within their bound while Redis hangs; the accepted job is published later."""
    from app.settings import get_settings
    from tests.service_fixtures import BROKER_URL
    from worker.outbox import publish_pending

    headers = auth(make_token())
    port = int(BROKER_URL.rsplit(":", 1)[1].split("/")[0])
    with faulty_proxy(port) as proxy:
        proxied = proxy.url_for(BROKER_URL)
        monkeypatch.setenv("SLIMKIT_BROKER_URL", proxied)
        monkeypatch.setenv("SLIMKIT_BROKER_TIMEOUT_S", "1")
        get_settings.cache_clear()
        proxy.set("hang")
        start = time.monotonic()
        r = client.post("/jobs", json=BODY | {"output": {"push": False}}, headers=headers)
        assert r.status_code == 202 and time.monotonic() - start < 5  # TestClient waits for the publish too
        start = time.monotonic()
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["broker"].startswith("error")
        assert time.monotonic() - start < 5
        job = client.get(f"/jobs/{r.json()['id']}", headers=headers).json()
        assert job["status"] == "queued"
        proxy.set("up")
        time.sleep(5.5)  # past the publisher's short back-off after a broker failure
        assert publish_pending() == [r.json()["id"]]
    get_settings.cache_clear()


@pytest.fixture
def proxied_database(database_url: str, monkeypatch) -> Iterator[FaultyProxy]:
    port = int(database_url.rsplit(":", 1)[1].split("/")[0])
    with faulty_proxy(port) as proxy:
        monkeypatch.setenv("SLIMKIT_DATABASE_URL", proxy.url_for(database_url))
        reset_app_caches()
        yield proxy
        proxy.set("up")
        from app.db import get_engine

        get_engine().dispose()
    reset_app_caches()


def test_database_outage_is_503_and_a_worker_waits_it_out(
    client: TestClient, make_token, proxied_database: FaultyProxy
) -> None:
    from worker.claim import claim, load, set_progress

    headers = auth(make_token())
    job_id = client.post("/jobs", json=BODY | {"output": {"push": False}}, headers=headers).json()["id"]
    assert claim(job_id, "w/1")
    proxied_database.set("down")
    start = time.monotonic()
    for path in ("/jobs", f"/jobs/{job_id}"):
        r = client.get(path, headers=headers)
        assert r.status_code == 503 and r.headers["Retry-After"] and "database" in r.json()["detail"]
    r = client.post("/jobs", json=BODY, headers=headers)
    assert r.status_code == 503 and r.json()["detail"]
    assert time.monotonic() - start < 20

    written: list[bool] = []
    writer = threading.Thread(target=lambda: written.append(set_progress(job_id, "w/1", "compress", 3, 8)))
    writer.start()
    time.sleep(4)
    assert writer.is_alive() and not written  # waiting out the outage, not failing
    proxied_database.set("up")
    writer.join(timeout=30)
    assert written == [True]
    job = load(job_id)
    assert job.progress["layer"] == 3 and job.attempts == 1 and job.status.value == "running"


def test_a_slow_hub_does_not_starve_other_requests(db, make_token, seeded: LocalHub, hub_faults) -> None:
    """20 submissions wait ~3 s on each Hub call; reads made meanwhile stay fast (no DB connection is held)."""
    from app.main import create_app

    headers = auth(make_token())
    done: list[int] = []
    with serve(create_app(), _free_port()) as url, httpx.Client(base_url=url, timeout=60) as http:
        job_id = http.post("/jobs", json=BODY | {"output": {"push": False}}, headers=headers).json()["id"]
        hub_faults.delay_s, hub_faults.delay_match = 3.0, "/api/models/"

        def submit(i: int) -> None:
            body = BODY | {"target": {"ratio": round(0.1 + i / 100, 2)}}
            done.append(http.post("/jobs", json=body, headers=headers).status_code)

        posts = [threading.Thread(target=submit, args=(i,)) for i in range(20)]
        for t in posts:
            t.start()
        time.sleep(1)  # every submission is now inside a Hub call
        latencies = []
        for _ in range(5):
            start = time.monotonic()
            assert http.get(f"/jobs/{job_id}", headers=headers).status_code == 200
            latencies.append(time.monotonic() - start)
        in_flight = 20 - len(done)
        for t in posts:
            t.join(timeout=120)
    print(f"reads during 20 slow submissions: {[round(x, 3) for x in latencies]} s; {in_flight} still in flight")
    assert in_flight > 0, "the submissions finished before the reads: the test measured nothing"
    assert max(latencies) < 2.0, latencies
    assert done == [202] * 20


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_module_paths_are_real(tmp_path: Path) -> None:
    """Guard: the proxy really forwards (a broken proxy would make the fault tests vacuous)."""
    import redis

    from tests.service_fixtures import BROKER_URL

    port = int(BROKER_URL.rsplit(":", 1)[1].split("/")[0])
    with faulty_proxy(port) as proxy:
        client = redis.Redis.from_url(proxy.url_for(BROKER_URL), socket_timeout=1)
        assert client.ping()
        proxy.set("hang")
        with pytest.raises(redis.exceptions.TimeoutError):
            redis.Redis.from_url(proxy.url_for(BROKER_URL), socket_timeout=1).ping()
        proxy.set("down")
        with pytest.raises(redis.exceptions.ConnectionError):
            redis.Redis.from_url(proxy.url_for(BROKER_URL), socket_timeout=1).ping()
