"""Release automation end to end, with every part real: the local Hub sends its webhooks to the API process,
a Celery worker (GPU and control queues) and Celery beat run the watcher, jobs compress and push next to
the source, and the rule's callback receiver gets signed events.

- a half-uploaded repo (the index names a shard not pushed yet) is held, then taken at the commit that
  completes it, after the quiet period; an unsupported architecture is skipped with its reason, no job;
- one job per template, pinned to the commit, pushed into the same org, each callback signed;
- the same release announced again by webhook, seen again by the poller, and after a worker restart
  creates nothing new; a webhook with a wrong secret is refused and records nothing.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as T
from huggingface_hub import HfApi
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import HubNotification, Job, JobStatus, WatchEvent
from tests.callback_receiver import CallbackReceiver
from tests.conftest import VOCAB
from tests.drills.conftest import HUB_WEBHOOK_SECRET
from tests.drills.drill import FAST, Drill
from tests.drills.harness import BeatProcess, service_env

pytestmark = pytest.mark.drill
POLL_S = 2


def releases(model_dir: Path, root: Path) -> dict[str, Path]:
    """The tiny model sharded (index + shards), the same without its last shard, and a GPT-2."""
    sharded = root / "sharded"
    T.AutoModelForCausalLM.from_pretrained(model_dir).save_pretrained(sharded, max_shard_size="600KB")
    for file in model_dir.iterdir():  # the tokenizer files
        if file.is_file() and not file.name.startswith("model") and file.name != "config.json":
            shutil.copy(file, sharded)
    partial = root / "partial"
    shutil.copytree(sharded, partial)
    sorted(partial.glob("model-*.safetensors"))[-1].unlink()
    gpt2 = root / "gpt2"
    torch.manual_seed(0)
    T.GPT2LMHeadModel(T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2)).save_pretrained(gpt2)
    return {"sharded": sharded, "partial": partial, "gpt2": gpt2}


def wait_for(what: str, ready: Callable[[], Any], drill: Drill, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := ready()):
        assert time.monotonic() < deadline, f"{what}: not after {timeout:.0f} s\n{drill.logs()}"
        time.sleep(0.3)
    return value


def test_new_release_is_compressed_once_and_reported(drill: Drill, tmp_path: Path) -> None:
    infra = drill.infra
    org = f"acme-{uuid.uuid4().hex[:8]}"
    folders = releases(infra.model_dir, tmp_path)
    infra.worker(queues="gpu,control")
    beat_env = service_env(infra.database_url, infra.redis.url(), infra.hub.token, SLIMKIT_WATCH_POLL_S=str(POLL_S))
    beat = BeatProcess(beat_env, infra.workdir)
    receiver = CallbackReceiver().start()
    hub = HfApi(token=infra.hub.token)
    hook = hub.create_webhook(
        watched=[{"type": "org", "name": org}], url=f"{infra.api.url}/hooks/hub", secret=HUB_WEBHOOK_SECRET
    )
    try:
        beat.start()
        templates = [{"target": {"ratio": ratio}, **FAST} for ratio in (0.2, 0.3)]
        rule_body = {"authors": [org], "templates": templates, "quiet_period_s": 2, "callback": {"url": receiver.url}}
        r = drill.http.post("/watches", json=rule_body, headers=drill.headers(org))
        assert r.status_code == 201, r.text
        rule, secret = r.json(), r.json()["callback_secret"]

        def events() -> list[dict[str, Any]]:
            got = drill.http.get(f"/watches/{rule['id']}/events", headers=drill.headers(org)).json()
            return list(reversed(got))

        repo, other = f"{org}/Tiny-1", f"{org}/Gpt2-1"
        infra.hub.seed(repo, folders["partial"], message="the first shards")
        infra.hub.seed(other, folders["gpt2"])

        def reason(repo_id: str) -> str:
            skipped = [e["reason"] for e in events() if e["kind"] == "skipped" and e["repo_id"] == repo_id]
            return skipped[-1] if skipped else ""

        unsupported = "unsupported architecture: model_type 'gpt2' is not supported"
        wait_for("GPT-2 skipped", lambda: reason(other).startswith(unsupported), drill)
        assert reason(repo).startswith("still uploading: the safetensors index names shards not in the repo")
        before = events()
        time.sleep(2 * POLL_S)  # polls and re-checks keep happening: nothing is taken, nothing is repeated
        assert drill.job_rows(repo) == 0 and events() == before

        sha = infra.hub.seed(repo, folders["sharded"], message="the last shard")
        created = wait_for("jobs", lambda: [e for e in events() if e["kind"] == "jobs_created"], drill)
        assert created[0]["revision_sha"] == sha and len(created[0]["job_ids"]) == 2
        jobs = [drill.wait_finished(job_id, timeout=300) for job_id in created[0]["job_ids"]]
        for job in jobs:
            assert job.status == JobStatus.succeeded, f"{job.error_code} {job.error_message}\n{drill.logs()}"
            assert job.revision_sha == sha and str(job.watch_id) == rule["id"] and job.owner == org
            output = job.request["output"]["repo_id"]
            assert output.startswith(f"{org}/Tiny-1-intraslice-") and len(drill.pushes(output)) == 1  # next to it
        wait_for("callbacks", lambda: len(receiver.events("job.succeeded")) == 2, drill, timeout=60)
        assert all(r.signed_by(secret) for r in receiver.received)
        assert {r.event["data"]["id"] for r in receiver.events("job.succeeded")} == {str(j.id) for j in jobs}
        delivered = [d for d in infra.hub.state.webhook_log if d["payload"]["repo"]["name"] in (repo, other)]
        assert delivered and all(d["status"] == 202 for d in delivered)  # the Hub's webhooks reached the API

        history = events()
        infra.stop_worker()  # a restart, then the same release announced and polled again
        infra.worker(queues="gpu,control")
        payload = {"event": {"action": "update", "scope": "repo.content"}, "repo": {"type": "model", "name": repo}}
        r = drill.http.post("/hooks/hub", json=payload, headers={"X-Webhook-Secret": HUB_WEBHOOK_SECRET})
        assert r.status_code == 202 and r.json()["recorded"] is True
        bad = drill.http.post("/hooks/hub", json=payload, headers={"X-Webhook-Secret": "guess"})
        assert bad.status_code == 401
        with Session(drill.engine) as session:
            pending = (
                select(func.count())
                .select_from(HubNotification)
                .where(HubNotification.repo_id == repo, HubNotification.processed_at.is_(None))
            )
            rows = select(HubNotification.due_at, HubNotification.attempts, HubNotification.received_at)
            left = lambda: session.execute(rows.where(HubNotification.repo_id == repo)).all()  # noqa: E731
            wait_for(f"notification processed {left()}", lambda: session.scalar(pending) == 0, drill, timeout=90)
            time.sleep(3 * POLL_S)
            assert session.scalar(select(func.count()).select_from(Job).where(Job.model == repo)) == 2
            kinds = session.scalars(select(WatchEvent.kind).where(WatchEvent.repo_id == repo)).all()
            assert kinds.count("jobs_created") == 1 and kinds.count("detected") == 2  # two commits seen
            assert events() == history  # nothing new was recorded
            outputs = session.scalars(select(WatchEvent.repo_id).where(WatchEvent.repo_id.like(f"{repo}-%"))).all()
            assert outputs == []  # the outputs pushed into the watched org are not releases
        time.sleep(2)
        assert len(receiver.events("job.succeeded")) == 2
        assert "reconcile" in beat.log_text()  # beat did schedule the poller
    finally:
        hub.delete_webhook(hook.id)
        beat.stop()
        receiver.stop()
        infra.stop_worker()
