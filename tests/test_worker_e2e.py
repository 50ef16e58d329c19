"""End to end: the API, a real Celery worker subprocess (prefork, one child) on real Redis, real Postgres,
and the real `huggingface_hub` client against the local Hub.

The worker runs with a 4 s lease, so the sweep (every 2 s) recovers a job whose worker child was killed
within seconds; the push back-off is shortened the same way. Tiny models keep every job to seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as T
from fastapi.testclient import TestClient

from tests.conftest import VOCAB, make_tokenizer, save_tiny
from tests.hub_fixtures import LocalHub
from tests.service_fixtures import BROKER_URL
from tests.test_speedup import save_wide_llama

ROOT = Path(__file__).resolve().parents[1]
LEASE_S = 4
FAST = {  # a job small enough for seconds on two CPU cores
    "calibration": {"samples": 4, "seq_len": 32},
    "evaluation": {"perplexity": True, "max_tokens": 256, "seq_len": 32},
}


@pytest.fixture(scope="module")
def worker(database_url: str, local_hub: LocalHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real worker: `celery -A worker.celery_app worker --pool=prefork -c 1 -Q gpu`, in its own session."""
    from worker.celery_app import celery_app

    assert celery_app.conf.broker_url == BROKER_URL
    work = tmp_path_factory.mktemp("work")
    log_path = work.parent / f"{work.name}-worker.log"
    name = f"test-{uuid.uuid4().hex[:8]}@%h"
    env = {
        **os.environ,
        "SLIMKIT_DATABASE_URL": database_url,
        "SLIMKIT_BROKER_URL": BROKER_URL,
        "SLIMKIT_WORK_DIR": str(work),
        "SLIMKIT_LEASE_S": str(LEASE_S),
        "SLIMKIT_HUB_TOKEN": local_hub.token or "",
        "SLIMKIT_HUB_PUSH_ATTEMPTS": "3",
        "SLIMKIT_HUB_RETRY_BASE_S": "0.05",
        "SLIMKIT_TIMING_MAX_SECONDS": "20",  # a busy machine refuses to time a speed-up quickly
        "PYTHONPATH": str(ROOT),
    }
    env.pop("HF_TOKEN", None)  # the worker must use the deployment token from its settings
    command = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool=prefork", "-c", "1"]
    command += ["-Q", "gpu", "--without-gossip", "--without-mingle", "-l", "info", "-n", name]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    hostname = name.replace("%h", os.uname().nodename)
    try:  # whatever goes wrong from here on, the worker (and its pool child) is stopped: a stray one would
        # consume later tests' messages
        deadline = time.monotonic() + 90
        while not celery_app.control.ping(destination=[hostname], timeout=1):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{log_path.read_text()[-3000:]}")
        yield type("Worker", (), {"proc": proc, "name": hostname, "work": work, "log": log_path, "app": celery_app})
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the worker's process group (its pool children too, even if the parent already died), then KILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.fixture
def client(db, worker) -> TestClient:
    from app.main import create_app

    return TestClient(create_app())


@pytest.fixture
def headers(make_token) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token('alice')}"}


def save_model(path: Path, layers: int = 2, arch: str = "llama") -> Path:
    """A tiny checkpoint; `layers` > 2 makes a job long enough to cancel or crash in the middle."""
    if arch == "gpt2":
        model = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128))
    elif layers == 2:
        return save_tiny("llama_gqa", path)
    else:
        torch.manual_seed(0)
        config = T.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=layers,
            num_attention_heads=8,
            num_key_value_heads=2,
            max_position_embeddings=512,
        )
        model = T.LlamaForCausalLM(config)
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sources(local_hub: LocalHub, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Source repos on the local Hub: a tiny Llama, a deeper one, a GPT-2, a pickle-only and a gated repo."""
    root = tmp_path_factory.mktemp("sources")
    tag = uuid.uuid4().hex[:6]
    repos = {
        "tiny": (f"tester/tiny-llama-{tag}", save_model(root / "tiny")),
        "deep": (f"tester/deep-llama-{tag}", save_model(root / "deep", layers=8)),
        "gpt2": (f"tester/tiny-gpt2-{tag}", save_model(root / "gpt2", arch="gpt2")),
        "wide": (f"tester/wide-llama-{tag}", save_wide_llama(root / "wide")),
    }
    pickled = root / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((root / "tiny" / "config.json").read_text())
    torch.save({"w": torch.zeros(2)}, pickled / "pytorch_model.bin")
    repos["pickle"] = (f"tester/pickle-only-{tag}", pickled)
    for repo_id, folder in repos.values():
        local_hub.seed(repo_id, folder)
    repos["gated"] = (f"tester/gated-{tag}", root / "tiny")
    local_hub.seed(repos["gated"][0], root / "tiny", gated=True)
    return {key: repo_id for key, (repo_id, _) in repos.items()}


def submit(client: TestClient, headers: dict[str, str], model: str, **body: Any) -> dict[str, Any]:
    r = client.post("/jobs", json={"model": model, "target": {"ratio": 0.3}, **FAST, **body}, headers=headers)
    assert r.status_code == 202, r.text
    return r.json()


def wait_for(
    client: TestClient, headers: dict[str, str], job_id: str, done: Callable[[dict], bool], timeout: float = 90
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/jobs/{job_id}", headers=headers).json()
        if done(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']}/{job['stage']} after {timeout} s: {job}")
        time.sleep(0.2)


def finished(job: dict) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")


def queued_row(model: str, revision: str = "main") -> str:
    """A queued job as the API would leave it when the Hub was unreachable at submit (nothing resolved yet)."""
    from app.db import session_factory
    from app.models import Job
    from app.schemas import JobCreate
    from worker.celery_app import enqueue

    body = JobCreate(model=model, revision=revision, target={"ratio": 0.3}, **FAST)
    job = Job(
        owner="alice",
        model=model,
        revision=revision,
        method=body.method,
        request=body.model_dump(mode="json"),
        request_hash=body.fingerprint(),
    )
    with session_factory()() as session:
        session.add(job)
        session.commit()
    enqueue(str(job.id))
    return str(job.id)


def test_job_end_to_end(client: TestClient, headers, worker, sources, local_hub: LocalHub) -> None:
    from huggingface_hub import HfApi, ModelCard

    job = submit(client, headers, sources["tiny"], output={"private": False})
    assert job["status"] == "queued" and job["revision_sha"]
    done = wait_for(client, headers, job["id"], finished)
    assert done["status"] == "succeeded", done["error"]
    result = done["result"]
    name = sources["tiny"].split("/")[1]
    assert result["repo_id"] == f"alice/{name}-intraslice-30" and len(result["revision"]) == 40
    assert result["url"] == f"{local_hub.url}/{result['repo_id']}/tree/{result['revision']}"
    assert result["params_after"]["attention_mlp"] < result["params_before"]["attention_mlp"]
    assert 0.25 < result["ratio_achieved"]["attention_mlp"] < 0.35
    assert result["perplexity_before"] > 0 and result["perplexity_after"] > 0 and result["format"] == "slim"
    assert result["source"] == {"model": sources["tiny"], "revision": job["revision_sha"]}
    assert {"download", "calibrate", "compress", "save", "verify", "push"} <= set(done["stage_timings"])
    assert done["progress"]["stage"] == "push" and done["started_at"] and done["finished_at"]
    assert not (worker.work / job["id"]).exists()

    info = HfApi().model_info(result["repo_id"])
    assert info.sha == result["revision"]
    files = {s.rfilename for s in info.siblings}
    assert {"README.md", "model.safetensors", "config.json", "compression.json", "modeling_slim.py"} <= files
    card = ModelCard.load(result["repo_id"])
    assert card.data.base_model == sources["tiny"] and card.data.tags == ["pruned", "intraslice"]
    assert result["recipe_sha256"] in card.text
    model = T.AutoModelForCausalLM.from_pretrained(result["repo_id"], trust_remote_code=True)
    out = model.generate(torch.tensor([[1, 2, 3, 4]]), max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 9)
    record = json.loads(Path(HfApi().hf_hub_download(result["repo_id"], "compression.json")).read_text())
    assert record["source"]["model"] == sources["tiny"] and str(worker.work) not in json.dumps(record)

    secret = local_hub.token
    assert secret and secret not in worker.log.read_text() and secret not in json.dumps(done)
    assert secret not in card.text


def test_cancel_queued_and_running(client: TestClient, headers, worker, sources, local_hub: LocalHub) -> None:
    from huggingface_hub import HfApi

    slow = {"calibration": {"samples": 96, "seq_len": 128}, "evaluation": {"perplexity": False}}
    running = submit(client, headers, sources["deep"], **slow)
    wait_for(client, headers, running["id"], lambda j: j["stage"] == "compress" or finished(j))
    queued = submit(client, headers, sources["tiny"])
    assert client.post(f"/jobs/{queued['id']}/cancel", headers=headers).json()["status"] == "cancelled"
    r = client.post(f"/jobs/{running['id']}/cancel", headers=headers).json()
    assert r["status"] == "running" and r["cancel_requested"]
    cancelled = wait_for(client, headers, running["id"], finished, timeout=60)
    assert cancelled["status"] == "cancelled" and cancelled["error"] is None and cancelled["result"] is None
    assert not (worker.work / running["id"]).exists()
    name = sources["deep"].split("/")[1]
    assert not HfApi().repo_exists(f"alice/{name}-intraslice-30")
    deadline = time.monotonic() + 30  # the worker takes the cancelled job's message and drops it
    while f"job {queued['id']} is not queued" not in worker.log.read_text():
        assert time.monotonic() < deadline, "the cancelled job's message was never consumed"
        time.sleep(0.2)
    never = client.get(f"/jobs/{queued['id']}", headers=headers).json()
    assert never["status"] == "cancelled" and never["started_at"] is None and never["stage_timings"] is None


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("unknown_repo", "model_not_found"),
        ("bad_revision", "revision_not_found"),
        ("no_safetensors", "no_safetensors"),
        ("gated", "gated_or_unauthorized"),
        ("unsupported_architecture", "unsupported_architecture"),
    ],
)
def test_input_failures_end_with_their_code(client: TestClient, headers, worker, sources, case, code) -> None:
    if case == "unknown_repo":
        assert submit(client, headers, "tester/no-such-model")["error"]["code"] == code  # known at submit
        job_id = queued_row(f"tester/no-such-model-{uuid.uuid4().hex[:6]}")  # and in the worker
    elif case == "bad_revision":
        assert submit(client, headers, sources["tiny"], revision="v9")["error"]["code"] == code
        job_id = queued_row(sources["tiny"], revision="v9")
    else:
        source = {"no_safetensors": "pickle", "gated": "gated", "unsupported_architecture": "gpt2"}[case]
        job_id = submit(client, headers, sources[source])["id"]  # submit resolves it; the worker refuses it
    done = wait_for(client, headers, job_id, finished)
    assert done["status"] == "failed" and done["error"]["code"] == code, done["error"]
    assert done["result"] is None and not (worker.work / job_id).exists()


def test_speedup_job_reports_the_measured_speedup(client: TestClient, headers, worker, sources) -> None:
    from huggingface_hub import ModelCard

    target = {"speedup": 1.2, "workload": {"batch": 4, "prompt_tokens": 128}}
    job = submit(client, headers, sources["wide"], target=target)
    done = wait_for(client, headers, job["id"], finished, timeout=240)
    busy = {"timing_unstable", "speedup_unreachable"}  # real timings on a loaded machine may refuse, by name
    if done["status"] == "failed":
        assert done["error"]["code"] in busy and done["result"] is None, done["error"]
    else:
        assert done["status"] == "succeeded", done["error"]
        speed = done["result"]["speedup"]
        assert speed["target"] == 1.2 and speed["predicted_speedup"] >= 1.2 and speed["measured"] > 0
        assert speed["met"] == (speed["measured"] >= 1.2) and speed["workload"]["batch"] == 4
        assert {"profile", "plan", "measure_speed"} <= set(done["stage_timings"])
        assert done["result"]["repo_id"].endswith("-intraslice-x1.2")
        card = ModelCard.load(done["result"]["repo_id"])
        assert "## Speed" in card.text and f"{speed['measured']:.2f}×" in card.text

    impossible = submit(client, headers, sources["wide"], target=target | {"speedup": 19})
    failed = wait_for(client, headers, impossible["id"], finished, timeout=120)
    assert failed["status"] == "failed" and failed["error"]["code"] in busy, failed["error"]
    if failed["error"]["code"] == "speedup_unreachable":
        assert "best achievable is" in failed["error"]["message"]
    assert "calibrate" not in (failed["stage_timings"] or {})


def test_flattengpt_job_pushes_a_stock_model(client: TestClient, headers, worker, sources) -> None:
    from huggingface_hub import ModelCard

    job = submit(client, headers, sources["deep"], method="flattengpt", target={"ratio": 0.25})
    done = wait_for(client, headers, job["id"], finished, timeout=180)
    assert done["status"] == "succeeded", done["error"]
    result = done["result"]
    assert result["format"] == "stock" and result["repo_id"].endswith("-flattengpt-25")
    assert result["ratio_achieved"]["attention_mlp"] == pytest.approx(0.25)
    card = ModelCard.load(result["repo_id"])
    assert "Depth compression: 8 → 6 decoder layers" in card.text and "trust_remote_code" not in card.text
    model = T.AutoModelForCausalLM.from_pretrained(result["repo_id"])  # stock: no remote code
    assert model.config.num_hidden_layers == 6
    assert model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False).shape == (1, 6)


def test_push_retries_5xx_then_succeeds(client: TestClient, headers, worker, sources, hub_faults) -> None:
    hub_faults.fail_commits = 2
    repo_id = f"alice/retried-{uuid.uuid4().hex[:6]}"
    text = "A calibration text supplied inline with the job. " * 40
    job = submit(client, headers, sources["tiny"], calibration={"text": text, "samples": 4, "seq_len": 32},
                 output={"repo_id": repo_id})  # fmt: skip
    done = wait_for(client, headers, job["id"], finished)
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["repo_id"] == repo_id and hub_faults.commit_calls == 3
    from huggingface_hub import HfApi, ModelCard

    assert "inline text supplied with the job" in ModelCard.load(repo_id).text
    record = json.loads(Path(HfApi().hf_hub_download(repo_id, "compression.json")).read_text())
    assert record["recipe"]["calibration"]["text"].startswith("inline:sha256:")


def test_push_permanent_failure(client: TestClient, headers, worker, sources, hub_faults) -> None:
    hub_faults.fail_all_commits = True
    job = submit(client, headers, sources["tiny"], output={"repo_id": f"alice/doomed-{uuid.uuid4().hex[:6]}"})
    done = wait_for(client, headers, job["id"], finished)
    assert done["status"] == "failed" and done["error"]["code"] == "hub_push_failed"
    assert "after 3 tries" in done["error"]["message"] and hub_faults.commit_calls == 3
    assert not (worker.work / job["id"]).exists()


def test_killed_worker_child_job_completes_once(client: TestClient, headers, worker, sources, local_hub) -> None:
    """SIGKILL of the pool child mid-job: the redelivered message is a no-op claim, the sweep re-queues the
    job when its lease expires, and a new child runs it to the end — one push, two attempts."""
    slow = {"calibration": {"samples": 96, "seq_len": 128}, "evaluation": {"perplexity": False}}
    repo_id = f"alice/crash-{uuid.uuid4().hex[:6]}"
    job = submit(client, headers, sources["deep"], output={"repo_id": repo_id}, **slow)
    wait_for(client, headers, job["id"], lambda j: j["stage"] == "compress" or finished(j))
    stats = worker.app.control.inspect(destination=[worker.name], timeout=5).stats()
    (child,) = stats[worker.name]["pool"]["processes"]
    os.kill(child, signal.SIGKILL)
    done = wait_for(client, headers, job["id"], finished, timeout=120)
    assert done["status"] == "succeeded", done["error"]
    from app.db import session_factory
    from app.models import Job

    with session_factory()() as session:
        assert session.get(Job, uuid.UUID(job["id"])).attempts == 2
    commits = [r for r in local_hub.requests if r.startswith(f"POST /api/models/{repo_id}/commit/")]
    assert len(commits) == 1, commits
    log = worker.log.read_text()
    assert log.count(f"job {job['id']} succeeded") == 1 and f"job {job['id']} is not queued" in log


def test_job_with_recovery_reports_it(client: TestClient, headers, worker, sources) -> None:
    """A depth method with distillation and hidden-state matching (merged groups matched to their last layer)."""
    from huggingface_hub import ModelCard

    recovery = {"tokens": 1024, "seq_len": 64, "batch_size": 4, "hidden_weight": 0.5, "dataset": "wikitext2_valid"}
    job = submit(client, headers, sources["deep"], method="flattengpt", target={"ratio": 0.25}, recovery=recovery)
    done = wait_for(client, headers, job["id"], finished, timeout=240)
    assert done["status"] == "succeeded", done["error"]
    rec = done["result"]["recovery"]
    assert rec["tokens"] == 1024 and rec["steps"] == 4 and isinstance(rec["kept"], bool)
    assert done["result"]["perplexity_after"] == min(rec["perplexity_before"], rec["perplexity_after"])
    assert "recover" in done["stage_timings"]
    card = ModelCard.load(done["result"]["repo_id"])
    assert "## Recovery" in card.text and "| Training tokens | 1,024 |" in card.text
    assert "`wikitext2_valid`" in card.text


def test_transact_job_pushes_a_stock_model(client: TestClient, headers, worker, sources) -> None:
    """TransAct with two shots and training between them: a stock config with fewer heads, no remote code."""
    from huggingface_hub import ModelCard

    transact = {"shots": 2, "recovery_tokens": 512}
    recovery = {"tokens": 256, "seq_len": 64, "batch_size": 4, "dataset": "wikitext2_valid"}
    job = submit(
        client, headers, sources["tiny"], method="transact", target={"ratio": 0.6}, transact=transact, recovery=recovery
    )
    done = wait_for(client, headers, job["id"], finished, timeout=240)
    assert done["status"] == "succeeded", done["error"]
    result = done["result"]
    assert result["format"] == "stock" and result["repo_id"].endswith("-transact-60")
    plan = result["transact"]["plan"]
    assert [shot["shot"] for shot in result["transact"]["shots"]] == [1, 2]
    assert result["kv_cache_bytes_per_token_fp16"]["after"] <= result["kv_cache_bytes_per_token_fp16"]["before"]
    card = ModelCard.load(result["repo_id"])
    assert "TransAct:" in card.text and "Pruned in 2 shot(s), with" in card.text
    assert "trust_remote_code" not in card.text
    model = T.AutoModelForCausalLM.from_pretrained(result["repo_id"])  # stock: no remote code
    source = T.AutoConfig.from_pretrained(sources["tiny"])
    assert model.config.num_key_value_heads == plan["kv_heads"]
    assert model.config.num_attention_heads == plan["kv_heads"] * plan["heads_per_group"]
    assert model.config.intermediate_size == plan["intermediate_size"] < source.intermediate_size
    assert model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False).shape == (1, 6)
    assert {"compress", "recover"} <= set(done["stage_timings"])  # the shots, then the final recovery


def test_callback_is_signed_and_delivered_once(client: TestClient, headers, worker, sources) -> None:
    """The worker's dispatcher POSTs the terminal event (and, asked for, every stage change) to a receiver."""
    from tests.callback_receiver import CallbackReceiver

    receiver = CallbackReceiver().start()
    try:
        callback = {"url": receiver.url, "stage_events": True}
        job = submit(client, headers, sources["tiny"], callback=callback, output={"push": False})
        secret = job["callback_secret"]
        done = wait_for(client, headers, job["id"], finished)
        assert done["status"] == "succeeded", done["error"]
        deadline = time.monotonic() + 30  # the dispatcher runs every 2 s
        while not receiver.events("job.succeeded") and time.monotonic() < deadline:
            time.sleep(0.2)
        (final,) = receiver.events("job.succeeded")
        assert final.signed_by(secret) and final.event["data"]["id"] == job["id"]
        assert final.event["data"]["result"]["params_after"] == done["result"]["params_after"]
        stages = [r.event["data"]["stage"] for r in receiver.events("job.stage")]
        assert {"download", "compress"} <= set(stages) and all(r.signed_by(secret) for r in receiver.received)
        ids = [r.headers["webhook-id"] for r in receiver.received]
        assert len(ids) == len(set(ids))  # one event each, each delivered once
        time.sleep(3)
        assert len(receiver.events("job.succeeded")) == 1
    finally:
        receiver.stop()


def test_events_stream_follows_a_real_job(client: TestClient, headers, worker, sources) -> None:
    """The SSE stream, opened right after submit, carries the real worker's stages and layer progress to the end."""
    from tests.test_job_events import read_events

    job = submit(client, headers, sources["tiny"], output={"push": False})
    frames = read_events(client, job["id"], headers)
    assert frames[0]["event"] == "queued" and frames[-1]["event"] == "terminal"
    final = client.get(f"/jobs/{job['id']}", headers=headers).json()
    assert frames[-1]["data"]["status"] == "succeeded" and frames[-1]["data"]["result"] == final["result"]
    stages = [f["data"]["stage"] for f in frames if f["event"] == "stage"]
    assert stages[0] == "starting" and {"download", "compress"} <= set(stages), stages
    assert any(f["event"] == "progress" and f["data"]["progress"].get("layer") for f in frames)
    ids = [int(f["id"]) for f in frames]
    assert ids == sorted(ids)
