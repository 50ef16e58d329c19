"""The dashboard over HTTP (real Postgres): sign-in cookie, owner scoping, CSRF, the pages' content, plots.
The same flows in a real browser are in tests/test_dashboard_browser.py."""

from __future__ import annotations

import re
import uuid

import pytest
from fastapi.testclient import TestClient

from tests.test_api import BODY, auth, hub_models  # noqa: F401  (hub_models is a fixture)
from tests.test_job_events import run_like_a_worker


@pytest.fixture
def client(db, hub_models) -> TestClient:  # noqa: F811
    from app.main import create_app

    return TestClient(create_app())


def sign_in(client: TestClient, token: str) -> None:
    r = client.post("/ui/login", data={"token": token}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and token not in cookie


def csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)


def finished_job(client: TestClient, headers: dict[str, str], ratio: float, ppl: float, params: int) -> str:
    """A job run through the real state changes, with a result as the worker records one."""
    from app.models import JobStatus
    from worker import claim

    r = client.post("/jobs", json=BODY | {"target": {"ratio": ratio}, "output": {"push": False}}, headers=headers)
    job_id = r.json()["id"]
    assert claim.claim(job_id, "w1") and claim.set_progress(job_id, "w1", "compress", 1, 2, 0.5)
    result = {
        "params_before": {"total": 1_000_000},
        "params_after": {"total": params},
        "perplexity_before": 10.0,
        "perplexity_after": ppl,
        "ratio_achieved": {"attention_mlp": ratio},
    }
    assert claim.finish(job_id, "w1", JobStatus.succeeded, result=result)
    return job_id


def test_sign_in_is_required_and_tokens_are_checked(client: TestClient, make_token) -> None:
    r = client.get("/ui", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    assert client.post("/ui/login", data={"token": "slk_wrong"}).status_code == 401
    client.cookies.set("slimkit_session", "forged.9999999999.00.deadbeef")
    assert client.get("/ui", follow_redirects=False).status_code == 303
    client.cookies.clear()
    sign_in(client, make_token("alice"))
    page = client.get("/ui")
    assert page.status_code == 200 and "alice" in page.text and "Jobs" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_jobs_job_and_model_pages(client: TestClient, make_token) -> None:
    token = make_token("alice")
    headers = auth(token)
    done = [finished_job(client, headers, 0.2, 12.5, 800_000), finished_job(client, headers, 0.3, 15.0, 700_000)]
    running = client.post("/jobs", json=BODY | {"output": {"push": False}}, headers=headers).json()["id"]
    sign_in(client, token)
    page = client.get("/ui").text
    assert all(f'data-job="{j}"' in page for j in [*done, running])
    assert f'data-live="/ui/jobs/{running}/events"' in page and f'data-live="/ui/jobs/{done[0]}/events"' not in page
    assert client.get("/ui", params={"status": "succeeded"}).text.count('class="job succeeded"') == 2
    assert 'class="job ' not in client.get("/ui", params={"method": "flattengpt"}).text
    job = client.get(f"/ui/jobs/{done[0]}").text
    assert "Perplexity" in job and "10.00 → 12.50" in job and "compress" in job and "Cancel job" not in job
    assert 'class="stage"' not in job  # a finished job's stage would only repeat its status
    assert '<span class="stage">succeeded</span>' not in page and '<span class="stage"></span>' in page
    plot = client.get(f"/ui/models/{BODY['model']}").text
    points = re.findall(
        r'class="point ([\w-]+)" data-job="([^"]*)" data-method="[^"]*" data-params="(\d+)" '
        r'data-value="([\d.]+)"',
        plot,
    )
    assert sorted((kind, job_id, int(p), float(v)) for kind, job_id, p, v in points) == sorted(
        [("dense", "", 1_000_000, 10.0), ("intraslice", done[0], 800_000, 12.5), ("intraslice", done[1], 700_000, 15.0)]
    )


def test_cancel_needs_csrf_and_owner(client: TestClient, make_token) -> None:
    alice, bob = make_token("alice"), make_token("bob")
    job_id = client.post("/jobs", json=BODY | {"output": {"push": False}}, headers=auth(alice)).json()["id"]
    sign_in(client, bob)
    assert client.get(f"/ui/jobs/{job_id}").status_code == 404  # another owner's job does not exist
    assert client.get(f"/ui/jobs/{job_id}/events").status_code == 404
    sign_in(client, alice)
    page = client.get(f"/ui/jobs/{job_id}").text
    assert "Cancel job" in page
    assert client.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": "0" * 64}).status_code == 403
    assert client.get(f"/jobs/{job_id}", headers=auth(alice)).json()["status"] == "queued"
    r = client.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": csrf(page)}, follow_redirects=False)
    assert r.status_code == 303 and client.get(f"/jobs/{job_id}", headers=auth(alice)).json()["status"] == "cancelled"
    assert client.get(f"/ui/jobs/{uuid.uuid4()}").status_code == 404


def test_live_events_for_the_signed_in_owner(client: TestClient, make_token) -> None:
    token = make_token("alice")
    job_id = client.post("/jobs", json=BODY | {"output": {"push": False}}, headers=auth(token)).json()["id"]
    run_like_a_worker(job_id)
    sign_in(client, token)
    with client.stream("GET", f"/ui/jobs/{job_id}/events") as r:
        text = "".join(r.iter_text())
    assert text.count("event: stage") == 4 and "event: terminal" in text


def test_sign_out_and_revocation_end_the_session(client: TestClient, make_token, db) -> None:
    from app.auth import list_tokens, revoke_token

    token = make_token("alice")
    sign_in(client, token)
    page = client.get("/ui").text
    assert client.post("/ui/logout", data={}).status_code == 403  # no CSRF token: refused
    assert client.post("/ui/logout", data={"csrf": csrf(page)}, follow_redirects=False).status_code == 303
    assert client.get("/ui", follow_redirects=False).status_code == 303
    sign_in(client, token)
    revoke_token(db, str(list_tokens(db, "alice")[0].id))
    assert client.get("/ui", follow_redirects=False).status_code == 303
