"""Hub inputs: ids and revisions checked as the Hub does, revisions with `/`, retried downloads, calibration
files read with the caller's token, and broken checkpoints refused as `invalid_model` without server paths.

Everything runs against the local Hub through the real `huggingface_hub` client; faults are counters
("the next N GETs fail"), so no test depends on timing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from slimkit import CalibrationSpec, CompressionRequest, compress
from slimkit.calibration import read_text
from slimkit.errors import (
    GatedOrUnauthorized,
    HubUnavailable,
    InvalidArgument,
    InvalidModel,
    ModelNotFound,
    RevisionNotFound,
)
from slimkit.hubio import revision_problem
from slimkit.loading import download, load_source

from .conftest import save_tiny

BODY = {"model": "tester/tiny-llama", "method": "intraslice", "target": {"ratio": 0.3}}
FAST = {"attempts": 3, "retry_base_s": 0.01}
BAD_REVISIONS = ["a..b", "main\n", " main", "/main", "main/", "ma in", "x\x00y", "a~1", "x:y", "feature//x", ".hidden"]
GOOD_REVISIONS = ["main", "feature/x", "refs/pr/1", "v1.0", "0123456789abcdef0123456789abcdef01234567"]


@pytest.fixture(scope="module")
def branchy(local_hub, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A model whose `main`, `feature/x` and `refs/pr/1` hold different checkpoints; their commit ids."""
    repo = "tester/branchy"
    return {
        ref: local_hub.seed(repo, save_tiny("llama_gqa", tmp_path_factory.mktemp("branchy"), seed=i), branch=ref)
        for i, ref in enumerate(["main", "feature/x", "refs/pr/1"])
    }


# -- item 4: revisions with '/', malformed revisions ----------------------------------------------------------
def test_revisions_with_a_slash_resolve_end_to_end(local_hub, branchy: dict[str, str], tmp_path: Path) -> None:
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi()
    for ref, oid in branchy.items():
        assert api.model_info("tester/branchy", revision=ref).sha == oid
    assert len(set(branchy.values())) == 3
    path, sha = download("tester/branchy", "feature/x", local_dir=tmp_path / "fx")
    assert sha == branchy["feature/x"] and (path / "model.safetensors").is_file()
    config = hf_hub_download("tester/branchy", "config.json", revision="refs/pr/1")
    assert json.loads(Path(config).read_text())["model_type"] == "llama"
    api.create_branch("tester/branchy", branch="release/2", revision=branchy["feature/x"])
    assert api.model_info("tester/branchy", revision="release/2").sha == branchy["feature/x"]
    source = load_source("tester/branchy", "refs/pr/1")
    assert source.revision == branchy["refs/pr/1"]


@pytest.mark.parametrize("revision", BAD_REVISIONS)
def test_malformed_revision_is_revision_not_found_without_asking(local_hub, branchy, revision: str) -> None:
    before = len(local_hub.requests)
    with pytest.raises(RevisionNotFound, match="not a valid branch"):
        download("tester/branchy", revision)
    assert len(local_hub.requests) == before


def test_unknown_branch_with_a_slash_is_revision_not_found(branchy) -> None:
    with pytest.raises(RevisionNotFound):
        download("tester/branchy", "no/such-branch", **FAST)


def test_engine_and_api_agree_on_revision_names() -> None:
    from app.schemas import revision_problem as api_problem

    for revision in [*BAD_REVISIONS, "@", "x.lock", "a@{1}", "a.", "x" * 201]:
        assert revision_problem(revision) is not None, revision
        assert api_problem(revision) is not None or len(revision) > 200, revision
    for revision in GOOD_REVISIONS:
        assert revision_problem(revision) is None and api_problem(revision) is None, revision


# -- item 9: downloads are retried ----------------------------------------------------------------------------
def test_transient_5xx_on_info_and_files_are_retried(local_hub, hub_faults, branchy, tmp_path: Path) -> None:
    hub_faults.fail_info = 2
    hub_faults.fail_downloads = 2
    path, sha = download("tester/branchy", "main", local_dir=tmp_path / "m", **FAST)
    assert sha == branchy["main"] and (path / "model.safetensors").is_file()
    assert hub_faults.info_calls == 3 and hub_faults.fail_downloads == 0


def test_permanent_5xx_is_hub_unavailable_after_the_tries(hub_faults, branchy, tmp_path: Path, caplog) -> None:
    hub_faults.fail_all_downloads = True
    with caplog.at_level(logging.WARNING, logger="slimkit.hubio"), pytest.raises(HubUnavailable, match="HTTP 500"):
        download("tester/branchy", "main", local_dir=tmp_path / "m", **FAST)
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert [r.getMessage().split("(try ")[1][:3] for r in retries] == ["1/3", "2/3"]


def test_4xx_is_not_retried(hub_faults, branchy) -> None:
    with pytest.raises(ModelNotFound):
        download("tester/no-such-model", "main", **FAST)
    assert hub_faults.info_calls == 1


def test_worker_download_uses_the_retry_settings(hub_faults, branchy, tmp_path: Path, monkeypatch) -> None:
    from app.settings import get_settings
    from worker.hub import fetch_source
    from worker.pipeline import classify

    monkeypatch.setenv("SLIMKIT_HUB_DOWNLOAD_ATTEMPTS", "3")
    monkeypatch.setenv("SLIMKIT_HUB_RETRY_BASE_S", "0.01")
    get_settings.cache_clear()
    try:
        hub_faults.fail_downloads = 2
        assert fetch_source("tester/branchy", "main", tmp_path / "ok").sha == branchy["main"]
        hub_faults.fail_all_downloads = True
        with pytest.raises(HubUnavailable) as err:
            fetch_source("tester/branchy", "main", tmp_path / "down")
        assert classify(err.value).error_code == "hub_unavailable"
        hub_faults.fail_all_downloads = False
        hub_faults.fail_info = 3  # all three tries of the metadata call
        with pytest.raises(HubUnavailable):
            fetch_source("tester/branchy", "main", tmp_path / "info")
        assert hub_faults.info_calls == 1 + 1 + 3
    finally:
        get_settings.cache_clear()


# -- item 10: calibration from Hub datasets -------------------------------------------------------------------
@pytest.fixture(scope="module")
def private_calib(local_hub, tmp_path_factory: pytest.TempPathFactory) -> str:
    data = tmp_path_factory.mktemp("private-calib")
    (data / "calib.txt").write_text("Private calibration text about compression. " * 300)
    (data / "blob.txt").write_bytes(b"text then \x00\x01\x02 binary")
    (data / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (data / "rows.jsonl").write_text('{"text": "one"}\nnot json\n')
    local_hub.seed("tester/private-calib", data, repo_type="dataset", private=True)
    return "hf://datasets/tester/private-calib"


def test_calibration_file_is_read_with_the_callers_token(local_hub, private_calib, monkeypatch) -> None:
    monkeypatch.delenv("HF_TOKEN")  # only the token passed in may open the private dataset
    assert read_text(f"{private_calib}/calib.txt", token=local_hub.token).startswith("Private calibration")
    with pytest.raises(GatedOrUnauthorized):
        read_text(f"{private_calib}/calib.txt")
    with pytest.raises(GatedOrUnauthorized):
        read_text(f"{private_calib}/calib.txt", token="wrong-token")


def test_compress_sends_its_token_for_calibration(
    local_hub, private_calib, branchy, tmp_path: Path, monkeypatch
) -> None:
    token = local_hub.token
    source = load_source("tester/branchy", "main")  # downloaded while the suite's HF_TOKEN is still set
    monkeypatch.delenv("HF_TOKEN")
    spec = CalibrationSpec(text=f"{private_calib}/calib.txt", samples=2, seq_len=16)
    request = CompressionRequest(model=str(source.path), ratio=0.3, calibration=spec, evaluation=None, device="cpu")
    result = compress(request, tmp_path / "out", token=token, show_progress=False)
    assert result.record["calibration"]["text"] == spec.text


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("blob.txt", "not UTF-8"),
        ("latin1.txt", "not UTF-8"),
        ("rows.jsonl", "line 2 is not JSON"),
        ("nope.txt", "not found"),
    ],
)
def test_bad_calibration_files_are_invalid_argument(local_hub, private_calib, name: str, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        read_text(f"{private_calib}/{name}", token=local_hub.token)


def test_oversized_calibration_file_is_refused_before_download(local_hub, hub_faults, private_calib) -> None:
    with pytest.raises(InvalidArgument, match="cap"):
        read_text(f"{private_calib}/calib.txt", token=local_hub.token, max_bytes=1000)
    assert hub_faults.download_calls == 0


def test_calibration_download_5xx_is_retried(local_hub, hub_faults, tmp_path: Path) -> None:
    from slimkit.calibration import hub_text_file

    data = tmp_path / "fresh"
    data.mkdir()
    (data / "c.txt").write_text("fresh text " * 50)
    (data / "d.txt").write_text("never served " * 50)
    local_hub.seed("tester/fresh-calib", data, repo_type="dataset")
    hub_faults.fail_all_downloads = True
    with pytest.raises(HubUnavailable):
        hub_text_file("hf://datasets/tester/fresh-calib/d.txt", local_hub.token, 10**6, attempts=3, base_s=0.01)
    assert hub_faults.download_calls == 3
    hub_faults.fail_all_downloads = False
    hub_faults.fail_downloads = 1  # one failure: the default back-off (2 s) then success
    assert read_text("hf://datasets/tester/fresh-calib/c.txt", token=local_hub.token).startswith("fresh text")
    assert hub_faults.fail_downloads == 0


# -- item 11: broken checkpoints ------------------------------------------------------------------------------
def _tiny(tmp_path: Path) -> Path:
    return save_tiny("llama_gqa", tmp_path / "model")


@pytest.mark.parametrize(
    "patch",
    [
        {"hidden_size": 10**9},
        {"intermediate_size": 10**9},
        {"hidden_size": -128},
        {"num_attention_heads": 7},
        {"num_key_value_heads": 3},
        {"num_hidden_layers": 1000},
        {"vocab_size": 0},
    ],
)
def test_absurd_config_is_invalid_model(tmp_path: Path, patch: dict) -> None:
    model = _tiny(tmp_path)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | patch))
    with pytest.raises(InvalidModel) as err:
        load_source(str(model))
    assert err.value.code == "invalid_model" and str(tmp_path) not in err.value.message


@pytest.mark.parametrize("damage", ["truncate", "garbage", "short_data", "bad_json"])
def test_corrupt_checkpoint_is_invalid_model(tmp_path: Path, damage: str) -> None:
    model = _tiny(tmp_path)
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + b"\x00" * 64)
    elif damage == "short_data":
        weights.write_bytes(data[:-16])
    else:
        (model / "config.json").write_text("{broken")
    with pytest.raises(InvalidModel) as err:
        load_source(str(model))
    assert str(tmp_path) not in err.value.message


def test_classify_records_invalid_model_and_scrubs_server_paths(tmp_path: Path) -> None:
    from app.settings import get_settings
    from worker.pipeline import classify

    model = _tiny(tmp_path)
    (model / "model.safetensors").write_bytes(b"\xff" * 32)
    with pytest.raises(InvalidModel) as err:
        load_source(str(model))
    outcome = classify(err.value)
    assert outcome.error_code == "invalid_model" and "model.safetensors" in (outcome.message or "")
    work = Path(get_settings().work_dir).resolve()
    leaked = [
        KeyError(f"{work}/0b1d/source/model.safetensors"),
        OSError(f"[Errno 2] No such file or directory: '{Path.home()}/.cache/huggingface/hub/x.json'"),
        RuntimeError(f"cannot open {tmp_path}/job/out/config.json (see http://127.0.0.1:8900/api/models/a/b)"),
        InvalidArgument(f"{work}/job/calibration.txt: empty"),
    ]
    for error in leaked:
        message = classify(error).message or ""
        assert str(work) not in message and str(Path.home()) not in message and str(tmp_path) not in message
        assert "http://127.0.0.1:8900/api/models/a/b" in message or "http" not in str(error)


# -- item 4: the API refuses bad ids and revisions ------------------------------------------------------------
@pytest.fixture
def client(db) -> TestClient:
    from app.main import create_app

    return TestClient(create_app())


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


BAD_IDS = [
    "ns/name\n",
    "ns/a..b",
    "ns/a--b",
    "ns/name.git",
    "ns/-name",
    "ns/name-",
    "ns/.name",
    "ns/name.",
    "a" * 97 + "/x",
]
BAD_IDS += ["ns/" + "b" * 97, "ns/name/extra", "name", "ns/na me", "ns/café"]


@pytest.mark.parametrize("repo", BAD_IDS)
def test_bad_model_and_output_ids_are_422(client: TestClient, make_token, repo: str) -> None:
    token = make_token()
    r = client.post("/jobs", json=BODY | {"model": repo}, headers=auth(token))
    assert r.status_code == 422 and any(e["loc"] == ["body", "model"] for e in r.json()["detail"]), r.text
    r = client.post("/jobs", json=BODY | {"output": {"repo_id": repo}}, headers=auth(token))
    assert r.status_code == 422 and any(e["loc"] == ["body", "output", "repo_id"] for e in r.json()["detail"]), r.text


@pytest.mark.parametrize("revision", BAD_REVISIONS)
def test_bad_revisions_are_422(client: TestClient, make_token, revision: str) -> None:
    r = client.post("/jobs", json=BODY | {"revision": revision}, headers=auth(make_token()))
    assert r.status_code == 422 and any(e["loc"] == ["body", "revision"] for e in r.json()["detail"]), r.text


def test_submit_resolves_branches_with_a_slash(client: TestClient, make_token, branchy) -> None:
    token = make_token()
    for ref in ("feature/x", "refs/pr/1"):
        r = client.post("/jobs", json=BODY | {"model": "tester/branchy", "revision": ref}, headers=auth(token))
        assert r.status_code == 202, r.text
        assert r.json()["revision_sha"] == branchy[ref] and r.json()["error"] is None
    r = client.post("/jobs", json=BODY | {"model": "tester/branchy", "revision": "no/such"}, headers=auth(token))
    assert r.status_code == 202 and r.json()["error"]["code"] == "revision_not_found", r.text
