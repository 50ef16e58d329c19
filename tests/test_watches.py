"""Watch rules as an API resource: templates validated like job bodies, owner scoping, pause, events."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.test_api import auth

RULE = {
    "authors": ["meta-llama", "acme"],
    "name_pattern": "Llama-*",
    "templates": [
        {"method": "intraslice", "target": {"ratio": 0.3}},
        {"method": "flattengpt", "target": {"ratio": 0.2}},
    ],
}


@pytest.fixture
def client(db) -> TestClient:
    from app.main import create_app

    return TestClient(create_app())


def test_create_resolves_template_defaults_and_shows_the_callback_secret_once(client: TestClient, make_token) -> None:
    headers = auth(make_token())
    r = client.post("/watches", json=RULE | {"callback": {"url": "http://127.0.0.1:9/hook"}}, headers=headers)
    assert r.status_code == 201, r.text
    rule = r.json()
    assert r.headers["location"] == f"/watches/{rule['id']}"
    assert rule["authors"] == ["acme", "meta-llama"] and rule["paused"] is False and rule["quiet_period_s"] == 600
    first, second = rule["templates"]
    assert first["target"]["head_step"] == 2 and first["calibration"]["dataset"] == "mixed"  # what will run
    assert second["method"] == "flattengpt" and second["target"]["head_step"] is None
    assert rule["callback"] == {"url": "http://127.0.0.1:9/hook", "stage_events": False}
    secret = rule["callback_secret"]
    assert secret.startswith("whsec_")
    again = client.get(f"/watches/{rule['id']}", headers=headers)
    assert again.status_code == 200 and again.json()["callback_secret"] is None and secret not in again.text
    assert [w["id"] for w in client.get("/watches", headers=headers).json()] == [rule["id"]]
    assert client.get(f"/watches/{rule['id']}/events", headers=headers).json() == []


@pytest.mark.parametrize(
    ("patch", "loc"),
    [
        ({"templates": [{"target": {"ratio": 0.95}}]}, ["body", "templates", 0, "target", "ratio"]),
        ({"templates": [{"method": "magic", "target": {"ratio": 0.3}}]}, ["body", "templates", 0, "method"]),
        ({"templates": [{"target": {"ratio": 0.3}, "output": {"repo_id": "acme/x"}}]}, ["body", "templates", 0]),
        ({"templates": [{"method": "transact", "target": {"speedup": 1.5}}]}, ["body", "templates", 0]),
        ({"templates": []}, ["body", "templates"]),
        ({"authors": []}, ["body", "authors"]),
        ({"authors": ["not a name"]}, ["body", "authors"]),
        ({"min_params": 10, "max_params": 5}, ["body"]),
        ({"callback": {"url": "ftp://x/y"}}, ["body", "callback", "url"]),
        ({"surprise": 1}, ["body", "surprise"]),
    ],
)
def test_bad_rules_are_422_naming_the_field(client: TestClient, make_token, patch: dict, loc: list) -> None:
    r = client.post("/watches", json=RULE | patch, headers=auth(make_token()))
    assert r.status_code == 422
    assert any(err["loc"] == loc for err in r.json()["detail"]), r.json()


def test_rules_are_private_to_their_owner(client: TestClient, make_token) -> None:
    alice, bob = auth(make_token("alice")), auth(make_token("bob"))
    rule = client.post("/watches", json=RULE, headers=alice).json()
    for method, path in (("get", ""), ("patch", ""), ("delete", ""), ("get", "/events")):
        kwargs = {"json": {"paused": True}} if method == "patch" else {}
        r = getattr(client, method)(f"/watches/{rule['id']}{path}", headers=bob, **kwargs)
        assert r.status_code == 404, (method, path)
    assert client.get("/watches", headers=bob).json() == []
    assert client.get(f"/watches/{rule['id']}", headers=alice).json()["paused"] is False  # untouched


def test_pause_change_and_delete(client: TestClient, make_token) -> None:
    headers = auth(make_token())
    rule = client.post("/watches", json=RULE, headers=headers).json()
    paused = client.patch(f"/watches/{rule['id']}", json={"paused": True, "quiet_period_s": 60}, headers=headers)
    assert paused.status_code == 200 and paused.json()["paused"] is True and paused.json()["quiet_period_s"] == 60
    assert paused.json()["templates"] == rule["templates"]  # fields not in the patch stay
    replaced = client.patch(f"/watches/{rule['id']}", json={"templates": [{"target": {"ratio": 0.4}}]}, headers=headers)
    (template,) = replaced.json()["templates"]
    assert template["target"] == {**rule["templates"][0]["target"], "ratio": 0.4}  # defaults resolved
    assert template["calibration"] == rule["templates"][0]["calibration"]
    bad = client.patch(f"/watches/{rule['id']}", json={"templates": [{"target": {}}]}, headers=headers)
    assert bad.status_code == 422
    crossed = client.patch(f"/watches/{rule['id']}", json={"min_params": 10, "max_params": 1}, headers=headers)
    assert crossed.status_code == 422 and "min_params" in crossed.text
    nulled = client.patch(f"/watches/{rule['id']}", json={"paused": None}, headers=headers)
    assert nulled.status_code == 422
    assert client.delete(f"/watches/{rule['id']}", headers=headers).status_code == 204
    assert client.get(f"/watches/{rule['id']}", headers=headers).status_code == 404
