"""Release detection in process: the readiness gate, events, exactly-once jobs, the webhook route, the poller.

Real Postgres and the real `huggingface_hub` client against the local Hub; the watcher's functions are
called directly (the Celery worker and beat drive the same functions in tests/test_watch_e2e.py).
"""

from __future__ import annotations

import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as T
from fastapi.testclient import TestClient
from huggingface_hub import HfApi
from sqlalchemy import func, select

from tests.conftest import VOCAB, make_tokenizer, save_tiny
from tests.hub_fixtures import LocalHub
from tests.test_api import auth

TEMPLATES = [
    {"method": "intraslice", "target": {"ratio": 0.3}, "output": {"push": False}},
    {"method": "flattengpt", "target": {"ratio": 0.2}, "output": {"push": False}},
]
SECRET = "s3cret-of-the-hub-webhook"


@pytest.fixture
def client(db, monkeypatch) -> TestClient:
    from app.main import create_app
    from app.settings import get_settings

    monkeypatch.setenv("SLIMKIT_HUB_WEBHOOK_SECRET", SECRET)
    get_settings.cache_clear()
    yield TestClient(create_app())
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checkpoints: a tiny Llama, the same sharded (index + 2 shards) and without its last shard, a GPT-2."""
    root = tmp_path_factory.mktemp("releases")
    tiny = save_tiny("llama_gqa", root / "tiny")
    sharded = root / "sharded"
    T.AutoModelForCausalLM.from_pretrained(tiny).save_pretrained(sharded, max_shard_size="600KB")
    make_tokenizer().save_pretrained(sharded)
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) >= 2 and (sharded / "model.safetensors.index.json").exists()
    partial = root / "partial"
    shutil.copytree(sharded, partial)
    shards_partial = sorted(partial.glob("model-*.safetensors"))
    shards_partial[-1].unlink()
    gpt2 = root / "gpt2"
    torch.manual_seed(0)
    T.GPT2LMHeadModel(T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2)).save_pretrained(gpt2)
    return {"tiny": tiny, "sharded": sharded, "partial": partial, "gpt2": gpt2}


@pytest.fixture
def org() -> str:
    return f"org{uuid.uuid4().hex[:8]}"  # a fresh Hub namespace per test: listings see only its repos


def make_rule(client: TestClient, headers: dict[str, str], org: str, **fields: Any) -> dict[str, Any]:
    body = {"authors": [org], "templates": TEMPLATES, "quiet_period_s": 0} | fields
    r = client.post("/watches", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


def consider(repo_id: str, source: str = "poller") -> float | None:
    from app.db import session_factory
    from worker import watcher

    with session_factory()() as session:
        return watcher.consider(session, HfApi(), repo_id, source)


def events(client: TestClient, headers: dict[str, str], rule: dict[str, Any]) -> list[dict[str, Any]]:
    return list(reversed(client.get(f"/watches/{rule['id']}/events", headers=headers).json()))  # oldest first


def count_jobs(db) -> int:
    from app.models import Job

    n = db.scalar(select(func.count()).select_from(Job))
    db.commit()
    return n


def test_new_release_makes_one_job_per_template_exactly_once(client, make_token, local_hub: LocalHub, folders, org):
    headers = auth(make_token(org))
    rule = make_rule(client, headers, org)
    repo = f"{org}/Tiny-1"
    sha = local_hub.seed(repo, folders["tiny"])
    assert consider(repo, "webhook") is None
    for source in ("poller", "webhook", "poller"):  # seen again by both paths: nothing new
        consider(repo, source)
    log = events(client, headers, rule)
    assert [e["kind"] for e in log] == ["detected", "jobs_created"]
    assert all(e["revision_sha"] == sha and e["source"] == "webhook" for e in log)
    job_ids = log[1]["job_ids"]
    assert len(job_ids) == 2
    jobs = [client.get(f"/jobs/{j}", headers=headers).json() for j in job_ids]
    assert [j["method"] for j in jobs] == ["intraslice", "flattengpt"]
    assert all(j["model"] == repo and j["revision"] == sha and j["revision_sha"] == sha for j in jobs)
    assert all(j["watch_id"] == rule["id"] and j["watch_event_id"] == log[0]["id"] for j in jobs)
    listed = client.get("/jobs", headers=headers).json()["data"]
    assert sorted(j["id"] for j in listed) == sorted(job_ids)  # the rule owner's jobs, like hand-made ones


def test_racing_processes_create_each_job_once(client, make_token, local_hub: LocalHub, folders, org, db):
    headers = auth(make_token(org))
    make_rule(client, headers, org)
    repo = f"{org}/Tiny-race"
    local_hub.seed(repo, folders["tiny"])
    errors: list[BaseException] = []

    def run(source: str) -> None:
        try:
            consider(repo, source)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=run, args=(s,)) for s in ("webhook", "poller", "webhook", "poller")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert count_jobs(db) == 2


def test_half_uploaded_repo_waits_until_every_shard_is_there(client, make_token, local_hub, folders, org, db):
    headers = auth(make_token(org))
    rule = make_rule(client, headers, org)
    repo = f"{org}/Sharded-1"
    local_hub.seed(repo, folders["partial"])
    assert consider(repo) == float("inf")  # nothing to wait for but the next look
    consider(repo)
    log = events(client, headers, rule)
    assert [e["kind"] for e in log] == ["detected", "skipped"]  # once, however often it is looked at
    assert log[1]["reason"].startswith("still uploading: the safetensors index names shards not in the repo")
    assert count_jobs(db) == 0
    sha = local_hub.seed(repo, folders["sharded"], message="the last shard")
    assert consider(repo) is None
    log = events(client, headers, rule)
    assert [e["kind"] for e in log][2:] == ["detected", "jobs_created"] and log[-1]["revision_sha"] == sha
    assert count_jobs(db) == 2


def test_quiet_period_holds_a_fresh_commit(client, make_token, local_hub, folders, org, db):
    headers = auth(make_token(org))
    rule = make_rule(client, headers, org, quiet_period_s=3600)
    repo = f"{org}/Tiny-fresh"
    local_hub.seed(repo, folders["tiny"])
    wait = consider(repo)
    assert wait is not None and 3500 < wait <= 3600
    (_, skipped) = events(client, headers, rule)
    assert "quiet period (3600 s)" in skipped["reason"] and count_jobs(db) == 0


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("gpt2", "unsupported architecture: model_type 'gpt2' is not supported"),
        ("pickle", "no safetensors weights"),
        ("small", "outside the size range"),
        ("arch", "architecture 'llama' is not in the rule's list (qwen2)"),
        ("compressed", "already a compressed model"),
    ],
)
def test_releases_a_rule_cannot_run_are_skipped_with_the_reason(
    client, make_token, local_hub, folders, org, db, tmp_path, case, reason
):
    headers = auth(make_token(org))
    fields = {"min_params": 10**9} if case == "small" else {"architectures": ["qwen2"]} if case == "arch" else {}
    rule = make_rule(client, headers, org, **fields)
    folder = folders["gpt2"] if case == "gpt2" else folders["tiny"]
    if case == "pickle":
        folder = tmp_path / "pickle"
        folder.mkdir()
        shutil.copy(folders["tiny"] / "config.json", folder)
        torch.save({"w": torch.zeros(2)}, folder / "pytorch_model.bin")
    if case == "compressed":  # someone's slimkit output (our own outputs are not even looked at)
        folder = tmp_path / "compressed"
        shutil.copytree(folders["tiny"], folder)
        (folder / "compression.json").write_text("{}")
    repo = f"{org}/Model-{case}"
    local_hub.seed(repo, folder)
    assert consider(repo) is None
    log = events(client, headers, rule)
    assert [e["kind"] for e in log] == ["detected", "skipped"] and log[1]["reason"].startswith(reason), log
    assert count_jobs(db) == 0


def test_old_repos_and_new_commits_follow_the_rule(client, make_token, local_hub, folders, org, db, tmp_path):
    repo = f"{org}/Tiny-old"
    local_hub.seed(repo, folders["tiny"])  # before any rule: an author's back catalogue is not taken
    headers = auth(make_token(org))
    once = make_rule(client, headers, org, name="once")
    consider(repo)
    assert count_jobs(db) == 0 and events(client, headers, once) == []
    fresh = f"{org}/Tiny-new"
    local_hub.seed(fresh, folders["tiny"])
    every = make_rule(client, headers, org, name="every", new_commits=True, templates=TEMPLATES[:1])
    consider(fresh)
    assert count_jobs(db) == 2  # `once` took it; `every` was created after the repo's first commit
    changed = tmp_path / "changed"
    shutil.copytree(folders["tiny"], changed)
    (changed / "README.md").write_text("a new commit\n")
    sha = local_hub.seed(fresh, changed)
    consider(fresh)
    consider(fresh)
    assert count_jobs(db) == 3  # only `every` takes the new commit, once
    assert [e["kind"] for e in events(client, headers, once)] == ["detected", "jobs_created"]
    assert [(e["kind"], e["revision_sha"]) for e in events(client, headers, every)] == [
        ("detected", sha),
        ("jobs_created", sha),
    ]


def test_paused_rule_and_revoked_token(client, make_token, local_hub, folders, org, db):
    from app.models import ApiToken, utcnow

    headers = auth(make_token(org))
    rule = make_rule(client, headers, org)
    client.patch(f"/watches/{rule['id']}", json={"paused": True}, headers=headers)
    repo = f"{org}/Tiny-paused"
    local_hub.seed(repo, folders["tiny"])
    consider(repo)
    assert count_jobs(db) == 0 and events(client, headers, rule) == []
    client.patch(f"/watches/{rule['id']}", json={"paused": False}, headers=headers)
    for token in db.scalars(select(ApiToken).where(ApiToken.owner == org)):
        token.revoked_at = utcnow()
    db.commit()
    consider(repo)
    assert count_jobs(db) == 0
    from worker.watcher import rules_for  # the rule is there, its owner's token is not

    assert [r.id for r in rules_for(db, repo)] == [uuid.UUID(rule["id"])]


def test_webhook_route_authenticates_and_records(client, make_token, local_hub, folders, org, db):
    from app.models import HubNotification

    headers = auth(make_token(org))
    make_rule(client, headers, org)
    payload = {
        "event": {"action": "update", "scope": "repo.content"},
        "repo": {"type": "model", "name": f"{org}/Tiny-hook", "headSha": "a" * 40},
    }
    for bad in ({}, {"X-Webhook-Secret": "wrong"}, {"X-Webhook-Secret": SECRET + "x"}):
        assert client.post("/hooks/hub", json=payload, headers=bad).status_code == 401
    assert db.scalar(select(func.count()).select_from(HubNotification)) == 0
    good = {"X-Webhook-Secret": SECRET}
    r = client.post("/hooks/hub", json=payload, headers=good)
    assert r.status_code == 202 and r.json() == {"recorded": True, "reason": None}
    other = payload | {"repo": {"type": "model", "name": "someone-else/x"}}
    assert client.post("/hooks/hub", json=other, headers=good).json()["recorded"] is False
    dataset = payload | {"repo": {"type": "dataset", "name": f"{org}/data"}}
    assert client.post("/hooks/hub", json=dataset, headers=good).json()["recorded"] is False
    assert client.post("/hooks/hub", content=b"{not json", headers=good).status_code == 400
    (note,) = db.scalars(select(HubNotification)).all()
    assert (note.repo_id, note.head_sha, note.processed_at) == (f"{org}/Tiny-hook", "a" * 40, None)
    db.commit()

    from worker import watch_tasks  # the repo does not exist (yet): processed, nothing created

    assert watch_tasks.process_due(db, HfApi()) == 1
    db.refresh(note)
    assert note.processed_at is not None and count_jobs(db) == 0


def test_webhooks_disabled_without_a_secret(db) -> None:
    from app.main import create_app

    r = TestClient(create_app()).post("/hooks/hub", json={}, headers={"X-Webhook-Secret": "x"})
    assert r.status_code == 404


def test_poller_lists_watched_authors_newest_first(client, make_token, local_hub, folders, org, db):
    from worker import watch_tasks

    headers = auth(make_token(org))
    rule = make_rule(client, headers, org, name_pattern="Tiny-*")
    for name in ("Tiny-a", "Other-b", "Tiny-c"):
        local_hub.seed(f"{org}/{name}", folders["tiny"])
    listed = [m.id for m in HfApi().list_models(author=org, sort="last_modified", limit=10)]
    assert listed == [f"{org}/Tiny-c", f"{org}/Other-b", f"{org}/Tiny-a"]
    assert watch_tasks.poll(db, HfApi()) == 2
    assert sorted(e["repo_id"] for e in events(client, headers, rule) if e["kind"] == "jobs_created") == [
        f"{org}/Tiny-a",
        f"{org}/Tiny-c",
    ]
    assert count_jobs(db) == 4
    watch_tasks.poll(db, HfApi())
    assert count_jobs(db) == 4


def test_notification_of_a_taken_release_is_settled_without_new_jobs(client, make_token, local_hub, folders, org, db):
    from app.models import HubNotification
    from worker import watch_tasks

    headers = auth(make_token(org))
    make_rule(client, headers, org)
    repo = f"{org}/Tiny-again"
    local_hub.seed(repo, folders["tiny"])
    consider(repo)
    assert count_jobs(db) == 2
    payload = {"event": {"action": "update", "scope": "repo.content"}, "repo": {"type": "model", "name": repo}}
    for _ in range(2):  # announced twice
        assert client.post("/hooks/hub", json=payload, headers={"X-Webhook-Secret": SECRET}).json()["recorded"]
    assert watch_tasks.process_due(db, HfApi()) == 1  # one repo, looked at once
    pending = db.scalars(select(HubNotification).where(HubNotification.processed_at.is_(None))).all()
    db.commit()
    assert pending == [] and count_jobs(db) == 2
