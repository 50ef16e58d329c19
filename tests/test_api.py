"""The job API against real Postgres (schema built by migrations) and a real Redis broker."""

from __future__ import annotations

import uuid

import pytest
import redis
from fastapi.testclient import TestClient

from tests.conftest import save_tiny
from tests.service_fixtures import BROKER_URL

BODY = {"model": "tester/tiny-llama", "method": "intraslice", "target": {"ratio": 0.3}}


@pytest.fixture(scope="module")
def hub_models(local_hub, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The models these tests submit exist on the local Hub, so submissions resolve (whatever ran before)."""
    folder = save_tiny("llama_mha", tmp_path_factory.mktemp("api_model"))
    for repo_id in ("tester/tiny-llama", "tester/m0", "tester/m1"):
        local_hub.seed(repo_id, folder)


@pytest.fixture
def client(db, hub_models) -> TestClient:
    from app.main import create_app

    return TestClient(create_app())


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_requires_a_valid_token(client: TestClient, make_token) -> None:
    assert client.post("/jobs", json=BODY).status_code == 401
    assert client.get("/jobs", headers=auth("slk_nope")).status_code == 401
    assert client.get("/jobs", headers=auth(make_token())).status_code == 200


def test_submit_returns_202_location_and_queues_a_message(client: TestClient, make_token) -> None:
    broker = redis.Redis.from_url(BROKER_URL)
    before = broker.llen("gpu")
    r = client.post("/jobs", json=BODY, headers=auth(make_token()))
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["Location"] == f"/jobs/{job['id']}" and int(r.headers["Retry-After"]) > 0
    assert job["status"] == "queued" and job["revision"] == "main" and job["error"] is None
    assert job["request"]["calibration"]["samples"] == 64  # defaults are part of the stored request
    assert job["request"]["target"]["allocation"] == "uniform"
    assert job["request"]["target"]["head_step"] == 2  # free even head widths for a ratio target
    assert broker.llen("gpu") == before + 1


@pytest.mark.parametrize(
    ("patch", "loc"),
    [
        ({"target": {"ratio": 0.95}}, ["body", "target", "ratio"]),
        ({"target": {"ratio": 0}}, ["body", "target", "ratio"]),
        ({"target": {"speedup": 1.0}}, ["body", "target", "speedup"]),
        ({"target": {"speedup": 1.5, "ratio": 0.3}}, ["body", "target"]),
        ({"target": {}}, ["body", "target"]),
        ({"target": {"ratio": 0.3, "workload": {"batch": 2}}}, ["body", "target"]),
        ({"target": {"speedup": 1.5, "workload": {"batch": 0}}}, ["body", "target", "workload", "batch"]),
        (
            {"target": {"speedup": 1.5, "workload": {"batch": 256, "prompt_tokens": 32768}}},
            ["body", "target", "workload"],
        ),
        ({"method": "magic"}, ["body", "method"]),
        ({"model": "not a repo"}, ["body", "model"]),
        ({"calibration": {"samples": 0}}, ["body", "calibration", "samples"]),
        ({"output": {"repo_id": "no-namespace"}}, ["body", "output", "repo_id"]),
        ({"surprise": 1}, ["body", "surprise"]),
        ({"target": {"ratio": 0.3, "allocation": "magic"}}, ["body", "target", "allocation"]),
        ({"target": {"ratio": 0.3, "head_step": 3}}, ["body", "target", "head_step"]),
        ({"target": {"ratio": 0.3, "head_step": 0}}, ["body", "target", "head_step"]),
        ({"target": {"speedup": 1.5, "head_step": 8}}, ["body", "target"]),
        ({"method": "flattengpt", "target": {"ratio": 0.2, "head_step": 8}}, ["body"]),
        ({"recovery": {"tokens": 0}}, ["body", "recovery", "tokens"]),
        ({"recovery": {}}, ["body", "recovery", "tokens"]),
        ({"recovery": {"tokens": 4096, "dataset": "wikitext2_test"}}, ["body", "recovery", "dataset"]),
        ({"recovery": {"tokens": 4096, "dataset": "my-file.txt"}}, ["body", "recovery", "dataset"]),
        ({"recovery": {"tokens": 4096, "mode": "qlora"}}, ["body", "recovery", "mode"]),
        ({"recovery": {"tokens": 4096, "lr": 2}}, ["body", "recovery", "lr"]),
        ({"recovery": {"tokens": 4096}, "evaluation": {"perplexity": False}}, ["body"]),
        ({"method": "transact", "target": {"speedup": 1.5}}, ["body"]),
        ({"method": "transact", "target": {"ratio": 0.3, "allocation": "global_pca"}}, ["body"]),
        ({"method": "transact", "target": {"ratio": 0.3, "head_step": 8}}, ["body"]),
        ({"method": "transact", "transact": {"shots": 0}}, ["body", "transact", "shots"]),
        ({"method": "transact", "transact": {"recovery_tokens": -1}}, ["body", "transact", "recovery_tokens"]),
        ({"transact": {"shots": 2}}, ["body"]),
    ],
)
def test_bad_input_is_422_naming_the_field(client: TestClient, make_token, patch: dict, loc: list) -> None:
    r = client.post("/jobs", json=BODY | patch, headers=auth(make_token()))
    assert r.status_code == 422
    assert any(err["loc"] == loc for err in r.json()["detail"]), r.json()


def test_speedup_target_is_accepted_with_its_defaults_resolved(client: TestClient, make_token) -> None:
    r = client.post("/jobs", json=BODY | {"target": {"speedup": 1.5}}, headers=auth(make_token()))
    assert r.status_code == 202, r.text
    target = r.json()["request"]["target"]
    assert target == {
        "ratio": None,
        "speedup": 1.5,
        "workload": {"batch": 1, "prompt_tokens": 512, "generated_tokens": 0},
        "allocation": "global_pca",
        "head_step": None,
    }
    both = client.post("/jobs", json=BODY | {"target": {"speedup": 1.5, "ratio": 0.3}}, headers=auth(make_token()))
    assert "exactly one of target.ratio or target.speedup" in both.text


def test_idempotency_key_replays_and_conflicts(client: TestClient, make_token) -> None:
    headers = auth(make_token()) | {"Idempotency-Key": "release-2026-11-23"}
    first = client.post("/jobs", json=BODY, headers=headers)
    again = client.post("/jobs", json=BODY, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    other = client.post("/jobs", json=BODY | {"target": {"ratio": 0.2}}, headers=headers)
    assert other.status_code == 422
    assert other.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert len(client.get("/jobs", headers=headers).json()["data"]) == 1


def test_jobs_are_private_to_their_owner(client: TestClient, make_token) -> None:
    alice, bob = auth(make_token("alice")), auth(make_token("bob"))
    job = client.post("/jobs", json=BODY, headers=alice).json()
    assert client.get(f"/jobs/{job['id']}", headers=bob).status_code == 404
    assert client.post(f"/jobs/{job['id']}/cancel", headers=bob).status_code == 404
    assert client.get("/jobs", headers=bob).json()["data"] == []
    assert client.get(f"/jobs/{job['id']}", headers=alice).status_code == 200
    assert client.get(f"/jobs/{uuid.uuid4()}", headers=alice).status_code == 404


def test_list_filters_and_cursor_pagination(client: TestClient, make_token) -> None:
    headers = auth(make_token())
    ids = [
        client.post("/jobs", json=BODY | {"model": f"tester/m{i % 2}"}, headers=headers).json()["id"] for i in range(5)
    ]
    page1 = client.get("/jobs?limit=2", headers=headers).json()
    page2 = client.get(f"/jobs?limit=2&cursor={page1['next_cursor']}", headers=headers).json()
    page3 = client.get(f"/jobs?limit=2&cursor={page2['next_cursor']}", headers=headers).json()
    seen = [j["id"] for p in (page1, page2, page3) for j in p["data"]]
    assert seen == list(reversed(ids)) and page3["next_cursor"] is None
    m1 = client.get("/jobs?model=tester/m1", headers=headers).json()["data"]
    assert {j["model"] for j in m1} == {"tester/m1"} and len(m1) == 2
    assert client.get("/jobs?status=succeeded", headers=headers).json()["data"] == []
    assert client.get("/jobs?status=bogus", headers=headers).status_code == 422
    assert client.get("/jobs?cursor=%%%", headers=headers).status_code == 422


def test_cancel_queued_job_is_final_and_idempotent(client: TestClient, make_token) -> None:
    headers = auth(make_token())
    job = client.post("/jobs", json=BODY, headers=headers).json()
    first = client.post(f"/jobs/{job['id']}/cancel", headers=headers).json()
    second = client.post(f"/jobs/{job['id']}/cancel", headers=headers).json()
    assert first["status"] == second["status"] == "cancelled"
    assert first["finished_at"] == second["finished_at"]


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"database": "ok", "broker": "ok"}


def test_openapi_documents_the_job_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/cancel", "/healthz", "/readyz"} <= set(paths)


def test_api_method_list_matches_the_engine() -> None:
    from app.schemas import ENGINE_METHODS
    from slimkit.methods import METHODS

    assert set(ENGINE_METHODS) == set(METHODS)


def test_recovery_is_stored_with_its_defaults(client: TestClient, make_token) -> None:
    body = BODY | {"recovery": {"tokens": 65536, "mode": "lora"}}
    r = client.post("/jobs", json=body, headers=auth(make_token()))
    assert r.status_code == 202, r.text
    assert r.json()["request"]["recovery"] == {
        "tokens": 65536,
        "dataset": None,
        "seq_len": 512,
        "batch_size": 4,
        "lr": None,
        "schedule": "cosine",
        "warmup": 0.05,
        "temperature": 1.0,
        "hidden_weight": 0.0,
        "mode": "lora",
        "lora_rank": 16,
        "lora_alpha": 32.0,
    }


def test_transact_job_is_stored_with_its_defaults(client: TestClient, make_token) -> None:
    r = client.post("/jobs", json=BODY | {"method": "transact"}, headers=auth(make_token()))
    assert r.status_code == 202, r.text
    request = r.json()["request"]
    assert request["transact"] == {"shots": 1, "recovery_tokens": 0}  # prune-only unless asked
    assert request["target"]["head_step"] is None  # full-width heads: no head grid
    body = BODY | {"method": "transact", "transact": {"shots": 4, "recovery_tokens": 65536}}
    r = client.post("/jobs", json=body, headers=auth(make_token()))
    assert r.status_code == 202 and r.json()["request"]["transact"] == {"shots": 4, "recovery_tokens": 65536}
