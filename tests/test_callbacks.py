"""Signed callbacks: the signature (Standard Webhooks' own test vector), URL and secret rules, the API's
once-only secret, outbox rows written with the state change, and delivery with retries to a real receiver."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from app.callbacks import new_secret, secret_problem, sign, url_problem
from tests.callback_receiver import CallbackReceiver
from tests.test_api import BODY, auth, hub_models  # noqa: F401 (fixture)


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    # The example in the Standard Webhooks specification's reference libraries.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_secret_rules() -> None:
    assert secret_problem(new_secret()) is None
    assert new_secret() != new_secret()
    assert secret_problem("whsec_" + "A" * 8) is not None  # too short (6 bytes)
    assert secret_problem("whsec_not base64!") is not None


@pytest.fixture
def production(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from app.settings import get_settings

    monkeypatch.setenv("SLIMKIT_ENVIRONMENT", "production")
    monkeypatch.setenv("SLIMKIT_DATABASE_URL", "postgresql+psycopg://x@127.0.0.1/x")
    monkeypatch.setenv("SLIMKIT_TOKEN_PEPPER", "p" * 32)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/hook",  # not https
        "https://127.0.0.1/hook",
        "https://10.1.2.3/hook",
        "https://192.168.0.10/hook",
        "https://169.254.169.254/latest/meta-data",  # cloud metadata
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",  # IPv4-mapped loopback
        "https://0.0.0.0/hook",
        "https://user:pw@93.184.216.34/hook",
        "ftp://93.184.216.34/x",
        "https:///nohost",
    ],
)
def test_production_refuses_urls_that_probe_the_network(production: None, url: str) -> None:
    assert url_problem(url, resolve=False) is not None


def test_production_accepts_a_public_https_address(production: None) -> None:
    assert url_problem("https://93.184.216.34/hook", resolve=False) is None


def test_development_allows_a_local_receiver() -> None:
    assert url_problem("http://127.0.0.1:8080/hook") is None
    assert url_problem("file:///etc/passwd") is not None


@pytest.fixture
def client(db, hub_models) -> TestClient:  # noqa: F811 (hub_models is the imported fixture)
    from app.main import create_app

    return TestClient(create_app())


def deliveries(db) -> list:
    from app.models import CallbackDelivery

    db.expire_all()
    return list(db.scalars(select(CallbackDelivery).order_by(CallbackDelivery.created_at)))


def test_the_generated_secret_is_shown_once_and_never_stored_in_the_request(client: TestClient, make_token) -> None:
    headers = auth(make_token()) | {"Idempotency-Key": f"cb-{uuid.uuid4().hex}"}
    body = BODY | {"callback": {"url": "http://127.0.0.1:9/hook"}}
    first = client.post("/jobs", json=body, headers=headers)
    assert first.status_code == 202, first.text
    secret = first.json()["callback_secret"]
    assert secret.startswith("whsec_") and secret_problem(secret) is None
    assert first.json()["request"]["callback"] == {"url": "http://127.0.0.1:9/hook", "stage_events": False}
    again = client.get(f"/jobs/{first.json()['id']}", headers=headers)
    replay = client.post("/jobs", json=body, headers=headers)
    assert replay.json()["id"] == first.json()["id"]
    for r in (again, replay):
        assert r.json()["callback_secret"] is None and secret not in r.text
    own = new_secret()
    chosen = client.post("/jobs", json=body | {"callback": {"url": "http://127.0.0.1:9/h", "secret": own}},
                         headers=auth(make_token()))  # fmt: skip
    assert chosen.status_code == 202 and chosen.json()["callback_secret"] is None and own not in chosen.text


@pytest.mark.parametrize(
    ("callback", "loc"),
    [
        ({"url": "ftp://host/x"}, ["body", "callback", "url"]),
        ({"url": "http://127.0.0.1/x", "secret": "whsec_short"}, ["body", "callback", "secret"]),
        ({}, ["body", "callback", "url"]),
    ],
)
def test_bad_callbacks_are_422_naming_the_field(client: TestClient, make_token, callback: dict, loc: list) -> None:
    r = client.post("/jobs", json=BODY | {"callback": callback}, headers=auth(make_token()))
    assert r.status_code == 422 and any(e["loc"] == loc for e in r.json()["detail"]), r.text


def test_cancelling_a_queued_job_writes_its_event_in_the_same_transaction(client: TestClient, make_token, db) -> None:
    headers = auth(make_token())
    job = client.post("/jobs", json=BODY | {"callback": {"url": "http://127.0.0.1:9/hook"}}, headers=headers).json()
    assert deliveries(db) == []  # nothing happened yet
    client.post(f"/jobs/{job['id']}/cancel", headers=headers)
    client.post(f"/jobs/{job['id']}/cancel", headers=headers)  # idempotent: still one event
    (event,) = deliveries(db)
    assert event.event_type == "job.cancelled" and event.id.startswith("msg_")
    assert event.payload["type"] == "job.cancelled" and event.payload["data"]["id"] == job["id"]
    assert event.payload["data"]["status"] == "cancelled" and "secret" not in str(
        event.payload
    )  # the job as GET shows it, no secret field


def test_delivery_signs_retries_and_keeps_the_webhook_id(client: TestClient, make_token, db, monkeypatch) -> None:
    from app.models import CallbackDelivery
    from worker.deliveries import deliver_due

    receiver = CallbackReceiver(status=500).start()
    try:
        headers = auth(make_token())
        body = BODY | {"callback": {"url": receiver.url}}
        created = client.post("/jobs", json=body, headers=headers).json()
        secret = created["callback_secret"]
        client.post(f"/jobs/{created['id']}/cancel", headers=headers)
        assert deliver_due() == {"delivered": 0, "retried": 1, "abandoned": 0}  # the receiver said 500
        assert deliver_due()["retried"] == 0  # not due again yet (back-off)
        (row,) = deliveries(db)
        assert row.attempts == 1 and "HTTP 500" in row.last_error and row.delivered_at is None
        receiver.status = 200
        db.execute(update(CallbackDelivery).values(next_attempt_at=row.next_attempt_at - timedelta(hours=2)))
        db.commit()
        assert deliver_due() == {"delivered": 1, "retried": 0, "abandoned": 0}
        assert deliver_due() == {"delivered": 0, "retried": 0, "abandoned": 0}  # delivered once
        first, second = receiver.received
        assert first.headers["webhook-id"] == second.headers["webhook-id"] == row.id
        assert first.signed_by(secret) and second.signed_by(secret) and not second.signed_by(new_secret())
        assert second.event["type"] == "job.cancelled" and second.event["data"]["id"] == created["id"]
    finally:
        receiver.stop()


def test_an_unreachable_receiver_is_abandoned_after_the_last_attempt(
    client: TestClient, make_token, db, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.models import CallbackDelivery
    from app.settings import get_settings
    from worker.deliveries import deliver_due

    monkeypatch.setenv("SLIMKIT_CALLBACK_MAX_ATTEMPTS", "2")
    get_settings.cache_clear()
    try:
        receiver = CallbackReceiver().start()
        receiver.stop()  # the port is known and closed: connections are refused
        headers = auth(make_token())
        job = client.post("/jobs", json=BODY | {"callback": {"url": receiver.url}}, headers=headers).json()
        client.post(f"/jobs/{job['id']}/cancel", headers=headers)
        assert deliver_due()["retried"] == 1
        db.execute(update(CallbackDelivery).values(next_attempt_at=CallbackDelivery.created_at))
        db.commit()
        assert deliver_due()["abandoned"] == 1
        (row,) = deliveries(db)
        assert row.abandoned_at is not None and row.attempts == 2 and "could not reach" in row.last_error
    finally:
        get_settings.cache_clear()
