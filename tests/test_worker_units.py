"""Worker parts without a Celery worker: claim transitions (Postgres and SQLite), the sweep, the model card,
the fresh-process reload check, the Hub I/O against the local Hub, and the error classification."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
import torch
import yaml
from sqlalchemy import update

from tests.conftest import save_tiny
from tests.hub_fixtures import LocalHub
from tests.service_fixtures import BROKER_URL, alembic_config, reset_app_caches

# --- database transitions -----------------------------------------------------------------------------------


@pytest.fixture(params=["postgres", "sqlite"])
def backend(request: pytest.FixtureRequest, database_url: str, tmp_path: Path, monkeypatch) -> Iterator[str]:
    """The claim functions on each dialect: the session's Postgres, or a migrated SQLite file."""
    from alembic import command

    if request.param == "postgres":
        yield request.param
    else:
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
        monkeypatch.setenv("SLIMKIT_DATABASE_URL", url)
        reset_app_caches()
        command.upgrade(alembic_config(url), "head")
        yield request.param
        from app.db import get_engine

        get_engine().dispose()
        monkeypatch.setenv("SLIMKIT_DATABASE_URL", database_url)
        reset_app_caches()
    from sqlalchemy import text

    from app.db import session_factory

    with session_factory()() as session:
        session.execute(text("DELETE FROM job"))
        session.commit()


def new_job(status: str = "queued", **values) -> str:
    from app.db import session_factory
    from app.models import Job, JobStatus

    job = Job(
        owner="alice",
        model="tester/tiny",
        method="intraslice",
        request={"model": "tester/tiny", "target": {"ratio": 0.3}},
        request_hash="0" * 64,
        status=JobStatus(status),
        **values,
    )
    with session_factory()() as session:
        session.add(job)
        session.commit()
        return str(job.id)


def row(job_id: str):
    from worker.claim import load

    return load(job_id)


def expire(job_id: str, **values) -> None:
    from app.db import session_factory
    from app.models import Job, utcnow

    with session_factory()() as session:
        past = utcnow() - timedelta(seconds=60)
        if session.get_bind().dialect.name == "sqlite":
            past = past.replace(tzinfo=None)
        session.execute(update(Job).where(Job.id == uuid.UUID(job_id)).values(lease_until=past, **values))
        session.commit()


def test_claim_is_once_only(backend: str) -> None:
    from app.models import JobStatus
    from app.responses import utc
    from worker.claim import claim

    job_id = new_job()
    assert claim(job_id, "w1/1")
    job = row(job_id)
    assert job.status == JobStatus.running and job.worker == "w1/1" and job.attempts == 1
    assert job.started_at is not None
    assert timedelta(seconds=250) < utc(job.lease_until) - utc(job.started_at) <= timedelta(seconds=300)
    # A duplicated or redelivered message: nothing changes.
    assert not claim(job_id, "w2/2")
    again = row(job_id)
    assert again.worker == "w1/1" and again.attempts == 1 and again.started_at == job.started_at
    assert not claim(new_job("cancelled"), "w1/1")
    assert not claim(str(uuid.uuid4()), "w1/1")


def test_writes_are_fenced_by_the_holder(backend: str) -> None:
    from app.models import JobStatus
    from worker.claim import claim, finish, heartbeat, record_stage_time, set_progress

    job_id = new_job()
    assert claim(job_id, "w1/1")
    assert not heartbeat(job_id, "w2/2") and not set_progress(job_id, "w2/2", "compress", 1, 4, 0.25)
    assert not finish(job_id, "w2/2", JobStatus.succeeded)
    assert heartbeat(job_id, "w1/1")
    assert set_progress(job_id, "w1/1", "compress", 1, 4, 0.25)
    assert record_stage_time(job_id, "w1/1", "download", 1.23456) and record_stage_time(job_id, "w1/1", "push", 2)
    job = row(job_id)
    assert job.stage == "compress" and job.progress == {"stage": "compress", "layer": 1, "layers": 4, "fraction": 0.25}
    assert job.stage_timings == {"download": 1.235, "push": 2}
    assert finish(job_id, "w1/1", JobStatus.failed, "out_of_memory", "use fewer samples")
    done = row(job_id)
    assert done.status == JobStatus.failed and done.error_code == "out_of_memory" and done.finished_at is not None
    assert done.lease_until is None
    assert not heartbeat(job_id, "w1/1") and not finish(job_id, "w1/1", JobStatus.succeeded)
    with pytest.raises(ValueError):
        finish(job_id, "w1/1", JobStatus.running)


def test_cancel_request_is_seen_by_the_worker(backend: str) -> None:
    from app import jobs
    from app.db import session_factory
    from app.models import Job, JobStatus
    from worker.claim import cancel_requested, claim

    job_id = new_job()
    assert claim(job_id, "w1/1") and not cancel_requested(job_id)
    with session_factory()() as session:
        jobs.cancel(session, session.get(Job, uuid.UUID(job_id)))
    assert cancel_requested(job_id) and row(job_id).status == JobStatus.running  # the worker decides when


def test_sweep_recovers_stale_jobs(backend: str, monkeypatch) -> None:
    from app.models import JobStatus
    from app.settings import get_settings
    from worker.claim import claim, requeue_stale
    from worker.outbox import publish_pending

    broker = redis.Redis.from_url(BROKER_URL)
    broker.delete("gpu")
    monkeypatch.setenv("SLIMKIT_LEASE_S", "2")  # the grace after a recent database restart is one lease
    get_settings.cache_clear()
    dead, cancelled, doomed, alive = (new_job() for _ in range(4))
    for job_id in (dead, cancelled, doomed, alive):
        assert claim(job_id, "w1/1")
    expire(dead)
    expire(cancelled, cancel_requested_at=row(cancelled).started_at)
    expire(doomed, attempts=3)

    done = requeue_stale()
    assert done["requeued"] == [dead] and done["cancelled"] == [cancelled] and done["failed"] == [doomed]
    requeued = row(dead)
    assert requeued.status == JobStatus.queued and requeued.attempts == 1 and requeued.worker is None
    assert requeued.enqueued_at is None  # its message goes out through the outbox, once
    assert row(cancelled).status == JobStatus.cancelled
    assert row(doomed).status == JobStatus.failed and row(doomed).error_code == "internal_error"
    assert row(alive).status == JobStatus.running
    assert publish_pending() == [dead] and publish_pending() == []
    queued_ids = {json.loads(m)["headers"]["id"] for m in broker.lrange("gpu", 0, -1)}
    assert queued_ids == {dead}
    # Swept jobs are not swept again at once; the re-queued one can be claimed again.
    assert not any(requeue_stale().values())
    assert claim(dead, "w3/3") and row(dead).attempts == 2
    broker.delete("gpu")
    get_settings.cache_clear()


def test_outbox_publishes_once_and_republishes_only_lost_messages(backend: str, monkeypatch) -> None:
    """A message waiting behind a long job is never re-sent; one the broker lost is re-sent exactly once."""
    from app.settings import get_settings
    from worker.outbox import publish_one, publish_pending, republish_lost

    broker = redis.Redis.from_url(BROKER_URL)
    broker.delete("gpu", "unacked")
    monkeypatch.setenv("SLIMKIT_STALE_QUEUED_S", "0")
    get_settings.cache_clear()
    waiting, lost = new_job(), new_job()
    assert publish_pending() == [waiting, lost]
    assert not publish_one(waiting)  # already published: a second dispatcher does not send it again
    messages = broker.lrange("gpu", 0, -1)
    assert len(messages) == 2
    # The broker loses one message (e.g. restarted without persistence); the other one is still waiting.
    for raw in messages:
        if json.loads(raw)["headers"]["id"] == lost:
            broker.lrem("gpu", 1, raw)
    assert republish_lost() == [lost] and publish_pending() == [lost]
    for _ in range(3):  # swept again and again while they wait: never duplicated
        assert republish_lost() == [] and publish_pending() == []
    ids = [json.loads(m)["headers"]["id"] for m in broker.lrange("gpu", 0, -1)]
    assert sorted(ids) == sorted([waiting, lost])
    # A delivered, unacknowledged message (a worker holds it) counts as present too.
    raw = broker.rpop("gpu")
    broker.hset("unacked", "tag", json.dumps([json.loads(raw), "", "gpu"]))
    assert republish_lost() == []
    broker.delete("gpu", "unacked")
    get_settings.cache_clear()


# --- a compressed tiny model: card and reload check ---------------------------------------------------------


@pytest.fixture(scope="module")
def compressed(tmp_path_factory: pytest.TempPathFactory):
    from slimkit import CalibrationSpec, CompressionRequest, EvalSpec, compress

    root = tmp_path_factory.mktemp("compressed")
    request = CompressionRequest(
        model=str(save_tiny("llama_gqa", root / "source")),
        ratio=0.3,
        calibration=CalibrationSpec(samples=4, seq_len=32),
        evaluation=EvalSpec(seq_len=32, max_tokens=256),
        verify=False,
    )
    return compress(request, root / "out", show_progress=False)


def test_card_front_matter_and_body(compressed, monkeypatch) -> None:
    from huggingface_hub import ModelCard

    from slimkit.card import render

    record = json.loads((compressed.out_dir / "compression.json").read_text())
    text = render(record, "tester/tiny-llama", "a" * 40, "alice/tiny-llama-intraslice-30", hub_url="http://hub")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta == {
        "base_model": "tester/tiny-llama",
        "tags": ["pruned", "intraslice"],
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
    }
    assert ModelCard(text).data.base_model == "tester/tiny-llama"
    assert record["recipe_sha256"] in text and '"method": "intraslice"' in text
    assert f"{record['metrics']['perplexity_after']:.3f}" in text and "wikitext2_test" in text
    assert "trust_remote_code=True" in text and record["format"] == "slim"
    assert "[tester/tiny-llama](http://hub/tester/tiny-llama) at commit `" + "a" * 40 in text
    assert "4 samples of 32 tokens" in text
    no_eval = render({**record, "metrics": {}, "format": "stock"}, "t/m", None, "a/b", "inline text")
    assert "not measured" in no_eval and "trust_remote_code" not in no_eval and "from inline text" in no_eval


def test_card_reports_recovery(compressed) -> None:
    from slimkit.card import render

    record = json.loads((compressed.out_dir / "compression.json").read_text())
    recipe = record["recipe"] | {"recovery": {"mode": "lora", "temperature": 2.0, "lr": 1e-3, "text": "mixed"}}
    recovery = {"tokens": 65536, "wall_s": 321.0, "perplexity_before": 40.5, "perplexity_after": 31.25, "kept": True}
    text = render({**record, "recipe": recipe, "recovery": recovery}, "t/m", None, "a/b")
    assert "## Recovery" in text and "| Training tokens | 65,536 |" in text and "| Wall time | 321 s |" in text
    assert "| Perplexity after recovery | 31.250 |" in text and "kept: held-out perplexity improved" in text
    assert "lora training, KL at temperature 2.0" in text and "`mixed`" in text
    worse = render({**record, "recipe": recipe, "recovery": recovery | {"kept": False}}, "t/m", None, "a/b")
    assert "**discarded**" in worse
    assert "## Recovery" not in render(record, "t/m", None, "a/b")


def test_recovery_body_becomes_the_engine_spec() -> None:
    from slimkit import RecoverySpec
    from worker.pipeline import recovery_spec

    assert recovery_spec(None) is None
    spec = recovery_spec({"tokens": 4096, "dataset": "wikitext2_valid", "mode": "lora", "lr": None})
    assert spec == RecoverySpec(tokens=4096, text="wikitext2_valid", mode="lora")
    spec.validate()


def test_recovery_progress_carries_tokens_and_loss(backend: str) -> None:
    from worker.claim import claim
    from worker.pipeline import Tracker

    job_id = new_job()
    assert claim(job_id, "w1/1")
    tracker = Tracker(job_id, "w1/1", min_interval_s=3600)
    tracker.engine_metric("loss", 1.2345678)
    tracker.engine_progress("recover", 512, 2048)
    assert row(job_id).progress == {
        "stage": "recover",
        "layer": None,
        "layers": None,
        "fraction": 0.25,
        "tokens": 512,
        "tokens_total": 2048,
        "loss": 1.234568,
    }
    tracker.engine_metric("loss", 0.5)
    tracker.engine_progress("recover", 1024, 2048)  # throttled: within the interval
    assert row(job_id).progress["tokens"] == 512
    tracker.engine_progress("recover", 2048, 2048)  # the last step is always written
    assert row(job_id).progress["tokens"] == 2048 and row(job_id).progress["loss"] == 0.5


def test_reload_check_in_a_fresh_process(compressed, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from slimkit.errors import ReloadMismatch
    from worker.reload_check import check_in_fresh_process, save_reference

    reference = tmp_path / "ref.safetensors"
    save_reference(compressed.model, compressed.out_dir, reference)
    report = check_in_fresh_process(compressed.out_dir, reference, timeout_s=120)
    assert report["format"] == "slim" and report["max_abs_diff"] <= report["tolerance"]
    assert report["generated_tokens"] >= 1
    # Logits that the checkpoint does not reproduce.
    tensors = load_file(str(reference))
    save_file({"input_ids": tensors["input_ids"], "logits": tensors["logits"] + 1.0}, str(tmp_path / "bad.st"))
    with pytest.raises(ReloadMismatch, match="does not reproduce"):
        check_in_fresh_process(compressed.out_dir, tmp_path / "bad.st", timeout_s=120)
    # A folder that does not load at all (its modeling file is missing).
    broken = tmp_path / "broken"
    shutil.copytree(compressed.out_dir, broken)
    (broken / "modeling_slim.py").unlink()
    with pytest.raises(ReloadMismatch, match="does not load"):
        check_in_fresh_process(broken, reference, timeout_s=120)


# --- Hub I/O against the local Hub --------------------------------------------------------------------------


@pytest.fixture
def hub_settings(local_hub: LocalHub, monkeypatch) -> Iterator[None]:
    from app.settings import get_settings

    monkeypatch.setenv("SLIMKIT_HUB_TOKEN", local_hub.token or "")
    monkeypatch.setenv("SLIMKIT_HUB_PUSH_ATTEMPTS", "3")
    monkeypatch.setenv("SLIMKIT_HUB_RETRY_BASE_S", "0.01")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny("llama_gqa", tmp_path_factory.mktemp("hub_source") / "tiny")


def test_fetch_source_and_its_failures(local_hub: LocalHub, hub_settings, tiny_source: Path, tmp_path: Path) -> None:
    from slimkit.errors import GatedOrUnauthorized, ModelNotFound, NoSafetensors, RevisionNotFound
    from worker.hub import fetch_source

    repo = f"tester/src-{uuid.uuid4().hex[:8]}"
    mixed = shutil.copytree(tiny_source, tmp_path / "mixed")
    (mixed / "pytorch_model.bin").write_bytes(b"a pickle: never downloaded, even next to safetensors")
    sha = local_hub.seed(repo, mixed)
    snap = fetch_source(repo, "main", tmp_path / "a")
    assert snap.sha == sha and (snap.path / "model.safetensors").is_file() and (snap.path / "config.json").is_file()
    assert not (snap.path / "pytorch_model.bin").exists()
    with pytest.raises(ModelNotFound):
        fetch_source(f"tester/missing-{uuid.uuid4().hex[:8]}", "main", tmp_path / "b")
    with pytest.raises(RevisionNotFound):
        fetch_source(repo, "no-such-branch", tmp_path / "c")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((tiny_source / "config.json").read_text())
    torch.save({"w": torch.zeros(2)}, pickled / "pytorch_model.bin")
    pickle_repo = f"tester/pickle-{uuid.uuid4().hex[:8]}"
    local_hub.seed(pickle_repo, pickled)
    before = len(local_hub.requests)
    with pytest.raises(NoSafetensors, match=r"pytorch_model\.bin"):
        fetch_source(pickle_repo, "main", tmp_path / "d")
    assert not any("/resolve/" in r for r in local_hub.requests[before:])  # refused before any download
    gated = f"tester/gated-{uuid.uuid4().hex[:8]}"
    local_hub.seed(gated, tiny_source, gated=True)
    with pytest.raises(GatedOrUnauthorized):
        fetch_source(gated, "main", tmp_path / "e")


def test_push_retries_5xx_then_gives_up(local_hub: LocalHub, hub_settings, hub_faults, tiny_source: Path) -> None:
    from huggingface_hub import HfApi

    from worker.hub import HubPushFailed, push_folder

    repo = f"tester/push-{uuid.uuid4().hex[:8]}"
    hub_faults.fail_commits = 2
    pushed = push_folder(tiny_source, repo, private=True, commit_message="test push")
    assert hub_faults.commit_calls == 3 and pushed.repo_id == repo
    info = HfApi().model_info(repo)
    assert info.sha == pushed.commit and "model.safetensors" in {s.rfilename for s in info.siblings}
    assert pushed.url.endswith(f"/{repo}/tree/{pushed.commit}")
    hub_faults.reset()
    hub_faults.fail_all_commits = True
    with pytest.raises(HubPushFailed, match="after 3 tries") as err:
        push_folder(tiny_source, f"{repo}-b", private=True, commit_message="a permanent outage")
    assert err.value.code == "hub_push_failed" and hub_faults.commit_calls == 3


# --- naming and error classification ------------------------------------------------------------------------


def test_default_repo_id(monkeypatch) -> None:
    from app.outputs import default_repo_id, target_label
    from app.schemas import repo_id_problem
    from app.settings import get_settings

    assert default_repo_id("HuggingFaceTB/SmolLM2-135M", "intraslice", target_label({"ratio": 0.3}), "alice") == (
        "alice/SmolLM2-135M-intraslice-30"
    )
    assert default_repo_id("t/m", "wanda-sp", target_label({"ratio": 0.255}), "bob@").endswith("/m-wanda-sp-25.5")
    assert default_repo_id("t/m", "intraslice", target_label({"speedup": 1.5}), "bob").endswith("/m-intraslice-x1.5")
    long = default_repo_id("t/" + "x" * 96, "intraslice-nocomp", "50", "a" * 150)
    assert repo_id_problem(long) is None, long
    monkeypatch.setenv("SLIMKIT_HUB_NAMESPACE", "acme")  # a deployment namespace: the owner becomes a prefix
    get_settings.cache_clear()
    try:
        named = default_repo_id("t/m", "intraslice", "30", "alice")
        assert named == "acme/alice-m-intraslice-30" and repo_id_problem(named) is None
        assert repo_id_problem(default_repo_id("t/" + "y" * 96, "shortgpt", "x1.5", "b" * 150)) is None
    finally:
        get_settings.cache_clear()


def test_errors_become_job_codes() -> None:
    from app.models import JobStatus
    from slimkit.errors import Cancelled, UnsupportedArchitecture
    from worker.pipeline import classify

    oom = classify(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert oom.error_code == "out_of_memory" and "calibration.samples" in oom.message and "bigger GPU" in oom.message
    assert classify(RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate: out of memory")).error_code == (
        "out_of_memory"
    )
    assert classify(UnsupportedArchitecture("gpt2")).error_code == "unsupported_architecture"
    assert classify(Cancelled("stop")).status == JobStatus.cancelled
    internal = classify(KeyError("weight"))
    assert internal.error_code == "internal_error" and internal.message.startswith("KeyError")
