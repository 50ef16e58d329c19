"""The local Hub against the real client: huggingface_hub 2.4 (Xet disabled) and transformers.

Each test uses its own repo ids because the server is shared by the whole session.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx2
import pytest
import torch
import transformers as T
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from localhub import create_app, seed
from localhub.storage import git_blob_oid
from tests.conftest import save_tiny
from tests.hub_fixtures import LFS_THRESHOLD, LocalHub, serve

README = "---\nlicense: apache-2.0\n---\n# A test repo\n"


def rid(prefix: str) -> str:
    return f"tester/{prefix}-{uuid.uuid4().hex[:8]}"


def make_folder(path: Path) -> Path:
    """README, an LFS-by-suffix safetensors, an LFS-by-size text, an LFS-by-NUL blob and a regular subfolder file."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "README.md").write_text(README)
    (path / "model.safetensors").write_bytes(os.urandom(LFS_THRESHOLD + 12_345))
    (path / "big.txt").write_text("x" * (LFS_THRESHOLD + 1))
    (path / "sub").mkdir(exist_ok=True)
    (path / "sub" / "notes.txt").write_text("hello\n")
    (path / "sub" / "blob.dat").write_bytes(b"ab\0cd")
    (path / "empty.txt").write_bytes(b"")
    return path


def files_of(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(folder).parts
    }


def test_create_repo(local_hub: LocalHub) -> None:
    api = HfApi()
    repo_id = rid("create")
    url = api.create_repo(repo_id)
    assert url.repo_id == repo_id and url.endpoint == local_hub.url
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(repo_id)
    assert err.value.response.status_code == 409
    assert api.create_repo(repo_id, exist_ok=True).repo_id == repo_id
    plain = api.create_repo(f"plain-{uuid.uuid4().hex[:6]}")  # no namespace: the token's user
    assert plain.namespace == "tester"
    data = api.create_repo(repo_id, repo_type="dataset")  # same id, other type: a separate repo
    assert data.repo_type == "dataset" and "/datasets/" in str(data)
    assert api.repo_exists(repo_id) and api.repo_exists(repo_id, repo_type="dataset")
    assert not api.repo_exists(rid("missing"))
    assert api.whoami()["name"] == "tester"


def test_upload_folder_roundtrip(local_hub: LocalHub, hub_faults, tmp_path: Path) -> None:
    api = HfApi()
    repo_id = rid("roundtrip")
    folder = make_folder(tmp_path / "src")
    api.create_repo(repo_id)
    info = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="first")
    assert hub_faults.commit_calls == 1 and hub_faults.lfs_put_calls == 3

    tree = {f.path: f for f in api.list_repo_tree(repo_id, recursive=True)}
    assert set(tree) == {
        "README.md",
        "model.safetensors",
        "big.txt",
        "sub",
        "sub/notes.txt",
        "sub/blob.dat",
        "empty.txt",
    }
    lfs_files = {p for p, f in tree.items() if getattr(f, "lfs", None)}
    assert lfs_files == {"model.safetensors", "big.txt", "sub/blob.dat"}
    assert tree["sub/notes.txt"].blob_id == git_blob_oid(b"hello\n")
    assert tree["model.safetensors"].size == LFS_THRESHOLD + 12_345

    model = api.model_info(repo_id, files_metadata=True)
    assert model.sha == info.oid and model.id == repo_id and model.private is False
    assert {s.rfilename for s in model.siblings} == set(files_of(folder))

    snapshot = Path(snapshot_download(repo_id))
    assert snapshot.name == info.oid
    assert files_of(snapshot) == files_of(folder)
    one = hf_hub_download(repo_id, "sub/notes.txt", force_download=True)
    assert Path(one).read_text() == "hello\n"
    auth = {"Authorization": f"Bearer {local_hub.token}"}
    part = httpx2.get(f"{local_hub.url}/{repo_id}/resolve/main/big.txt", headers={**auth, "Range": "bytes=10-"})
    assert part.status_code == 206 and part.content == b"x" * (LFS_THRESHOLD + 1 - 10)
    head = httpx2.head(f"{local_hub.url}/{repo_id}/resolve/main/model.safetensors", headers=auth)
    sha = tree["model.safetensors"].lfs.sha256
    assert head.headers["X-Linked-Etag"] == head.headers["ETag"] == f'"{sha}"'
    assert head.headers["X-Linked-Size"] == head.headers["Content-Length"] == str(LFS_THRESHOLD + 12_345)
    assert head.headers["X-Repo-Commit"] == info.oid

    # Unchanged re-upload: no PUT, no commit; the client returns the current head.
    again = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="again")
    assert again.oid == info.oid
    assert hub_faults.commit_calls == 1 and hub_faults.lfs_put_calls == 3


def test_revisions_and_deletions(local_hub: LocalHub, tmp_path: Path) -> None:
    api = HfApi()
    repo_id = rid("revs")
    api.create_repo(repo_id)
    v1 = api.upload_file(path_or_fileobj=b"one", path_in_repo="f.txt", repo_id=repo_id).oid
    v2 = api.upload_file(path_or_fileobj=b"two", path_in_repo="f.txt", repo_id=repo_id).oid
    assert v1 != v2
    assert Path(hf_hub_download(repo_id, "f.txt")).read_bytes() == b"two"
    assert Path(hf_hub_download(repo_id, "f.txt", revision=v1)).read_bytes() == b"one"
    assert api.model_info(repo_id, revision=v1).sha == v1

    # parentCommit: stale → 412, current → accepted
    with pytest.raises(HfHubHTTPError) as err:
        api.create_commit(repo_id, [CommitOperationAdd("g.txt", b"g")], commit_message="stale", parent_commit=v1)
    assert err.value.response.status_code == 412
    adds = [CommitOperationAdd("d/a.txt", b"a"), CommitOperationAdd("d/b.txt", b"b")]
    v3 = api.create_commit(repo_id, adds, commit_message="add d", parent_commit=v2).oid
    api.create_commit(repo_id, [CommitOperationDelete("f.txt"), CommitOperationDelete("d/")], commit_message="rm")
    assert api.list_repo_files(repo_id) == []
    assert sorted(api.list_repo_files(repo_id, revision=v3)) == ["d/a.txt", "d/b.txt", "f.txt"]
    with pytest.raises(EntryNotFoundError):
        api.delete_file("nope.txt", repo_id)

    local_hub.state.tree_page_size = 2  # the client follows `Link: rel="next"`
    try:
        assert [f.path for f in api.list_repo_tree(repo_id, revision=v3, recursive=True)] == [
            "d",
            "d/a.txt",
            "d/b.txt",
            "f.txt",
        ]
    finally:
        local_hub.state.tree_page_size = 1000


def test_invalid_model_card_is_refused(local_hub: LocalHub) -> None:
    api = HfApi()
    repo_id = rid("card")
    api.create_repo(repo_id)
    with pytest.raises(ValueError, match="Invalid metadata"):
        api.upload_file(path_or_fileobj=b"---\nlicense: [unclosed\n---\n", path_in_repo="README.md", repo_id=repo_id)
    assert api.list_repo_files(repo_id) == []


def test_client_errors(local_hub: LocalHub, tmp_path: Path) -> None:
    api = HfApi()
    repo_id = rid("errors")
    api.create_repo(repo_id)
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "x.txt", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(repo_id, revision="0" * 40)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(rid("missing"), "x.txt")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(rid("missing"))
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "missing.txt")
    with pytest.raises(RepositoryNotFoundError):  # the Hub hides repos of other types the same way
        hf_hub_download(repo_id, "x.txt", repo_type="dataset")

    gated = rid("gated")
    local_hub.seed(gated, make_folder(tmp_path / "g"), gated=True)
    assert api.repo_exists(gated) and api.model_info(gated).gated == "manual"
    with pytest.raises(GatedRepoError):
        hf_hub_download(gated, "README.md")
    with pytest.raises(GatedRepoError):
        snapshot_download(gated)
    api.update_repo_settings(gated, gated=False)  # the settings route the client uses
    assert Path(hf_hub_download(gated, "README.md")).read_text() == README


def test_token_required(local_hub: LocalHub) -> None:
    assert local_hub.token == os.environ["HF_TOKEN"]
    repo_id = rid("auth")
    HfApi().create_repo(repo_id)
    r = httpx2.get(f"{local_hub.url}/api/models/{repo_id}")
    assert r.status_code == 401
    ok = httpx2.get(f"{local_hub.url}/api/models/{repo_id}", headers={"Authorization": f"Bearer {local_hub.token}"})
    assert ok.status_code == 200 and ok.json()["id"] == repo_id
    # A plain 401 (the client maps it to RepositoryNotFoundError only for https:// endpoints).
    for call in (
        lambda: HfApi(token=False).model_info(repo_id),
        lambda: HfApi(token="wrong").model_info(repo_id),
        lambda: hf_hub_download(repo_id, "x.txt", token=False),
        lambda: HfApi(token=False).create_repo(rid("anon")),
    ):
        with pytest.raises(HfHubHTTPError) as err:
            call()
        assert err.value.response.status_code == 401 and not isinstance(err.value, RepositoryNotFoundError)


def test_private_repos_without_server_token(tmp_path: Path, unused_port: int) -> None:
    """With no server token, any bearer token may see private repos and anonymous callers may not."""
    app = create_app(tmp_path / "hub", token=None)
    with serve(app, unused_port) as url:
        api = HfApi(endpoint=url, token="anything")
        api.create_repo("tester/secret", private=True)
        api.upload_file(path_or_fileobj=b"s", path_in_repo="s.txt", repo_id="tester/secret")
        assert api.model_info("tester/secret").private is True
        assert Path(hf_hub_download("tester/secret", "s.txt", endpoint=url, token="anything", cache_dir=tmp_path / "c"))
        with pytest.raises(RepositoryNotFoundError):
            HfApi(endpoint=url, token=False).model_info("tester/secret")
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download("tester/secret", "s.txt", endpoint=url, token=False, cache_dir=tmp_path / "c2")


def test_transformers_from_pretrained_and_push(local_hub: LocalHub, tmp_path: Path) -> None:
    src = save_tiny("llama_gqa", tmp_path / "src")
    repo_id = rid("tiny-llama")
    local_hub.seed(repo_id, src)
    model = T.AutoModelForCausalLM.from_pretrained(repo_id)
    tokenizer = T.AutoTokenizer.from_pretrained(repo_id)
    reference = T.AutoModelForCausalLM.from_pretrained(src)
    ids = tokenizer("hello world", return_tensors="pt").input_ids
    torch.testing.assert_close(model(ids).logits, reference(ids).logits)

    pushed = rid("tiny-llama-pushed")
    model.push_to_hub(pushed)
    tokenizer.push_to_hub(pushed)
    again = T.AutoModelForCausalLM.from_pretrained(pushed)
    torch.testing.assert_close(again(ids).logits, reference(ids).logits)
    assert "model.safetensors" in HfApi().list_repo_files(pushed)


def test_dataset_file_download(local_hub: LocalHub, tmp_path: Path) -> None:
    repo_id = rid("calib")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "text.txt").write_text("some calibration text\n")
    local_hub.seed(repo_id, tmp_path / "d", repo_type="dataset")
    path = hf_hub_download(repo_id, "text.txt", repo_type="dataset")
    assert Path(path).read_text() == "some calibration text\n"
    from slimkit.calibration import read_text  # the engine's hf://datasets/ source goes through the same route

    assert read_text(f"hf://datasets/{repo_id}/text.txt") == "some calibration text\n"
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo_id, "text.txt")  # a model repo of that id does not exist


def test_commit_failure_injection(local_hub: LocalHub, hub_faults) -> None:
    api = HfApi()
    repo_id = rid("commit-fault")
    api.create_repo(repo_id)
    hub_faults.fail_commits = 1
    with pytest.raises(HfHubHTTPError) as err:  # create_commit does not retry (a lost reply could duplicate it)
        api.upload_file(path_or_fileobj=b"a", path_in_repo="a.txt", repo_id=repo_id)
    assert err.value.response.status_code == 500 and hub_faults.commit_calls == 1
    assert api.list_repo_files(repo_id) == []
    api.upload_file(path_or_fileobj=b"a", path_in_repo="a.txt", repo_id=repo_id)  # the next call goes through
    assert api.list_repo_files(repo_id) == ["a.txt"]

    hub_faults.fail_all_commits = True
    for _ in range(2):
        with pytest.raises(HfHubHTTPError):
            api.upload_file(path_or_fileobj=b"b", path_in_repo="b.txt", repo_id=repo_id)
    assert hub_faults.commit_calls == 4


def test_lfs_put_failure_is_retried(local_hub: LocalHub, hub_faults, tmp_path: Path) -> None:
    api = HfApi()
    repo_id = rid("lfs-fault")
    api.create_repo(repo_id)
    payload = os.urandom(LFS_THRESHOLD + 1)
    hub_faults.fail_lfs_puts = 1
    api.upload_file(path_or_fileobj=payload, path_in_repo="w.safetensors", repo_id=repo_id)
    assert hub_faults.lfs_put_calls == 2  # the client's http_backoff retried the 500
    puts = [r for r in local_hub.requests if r.startswith("PUT /_lfs/")][-2:]
    assert [r.rsplit(" ", 1)[1] for r in puts] == ["500", "200"]
    assert Path(hf_hub_download(repo_id, "w.safetensors")).read_bytes() == payload


def test_multipart_upload(local_hub: LocalHub, hub_faults) -> None:
    api = HfApi()
    repo_id = rid("multipart")
    api.create_repo(repo_id)
    payload = os.urandom(100_000)
    local_hub.state.multipart_chunk_size = 40_000
    try:
        api.upload_file(path_or_fileobj=payload, path_in_repo="w.bin", repo_id=repo_id)
    finally:
        local_hub.state.multipart_chunk_size = None
    assert hub_faults.lfs_put_calls == 3
    assert Path(hf_hub_download(repo_id, "w.bin")).read_bytes() == payload


def test_commit_with_unknown_lfs_object_is_refused(local_hub: LocalHub) -> None:
    repo_id = rid("bad-lfs")
    HfApi().create_repo(repo_id)
    lines = [
        {"key": "header", "value": {"summary": "bad"}},
        {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": "ab" * 32, "size": 3}},
    ]
    r = httpx2.post(
        f"{local_hub.url}/api/models/{repo_id}/commit/main",
        content="\n".join(json.dumps(line) for line in lines),
        headers={"Authorization": f"Bearer {local_hub.token}", "Content-Type": "application/x-ndjson"},
    )
    assert r.status_code == 422
    regular = {
        "key": "file",
        "value": {"path": "r.txt", "content": base64.b64encode(b"r").decode(), "encoding": "base64"},
    }
    r = httpx2.post(
        f"{local_hub.url}/api/models/{repo_id}/commit/main",
        content=json.dumps(lines[0]) + "\n" + json.dumps(regular),
        headers={"Authorization": f"Bearer {local_hub.token}", "Content-Type": "application/x-ndjson"},
    )
    assert r.status_code == 200 and r.json()["commitUrl"].endswith(r.json()["commitOid"])


def test_delay_injection(local_hub: LocalHub, hub_faults) -> None:
    repo_id = rid("slow")
    HfApi().create_repo(repo_id)
    hub_faults.delay_s, hub_faults.delay_match = 0.3, f"/api/models/{repo_id}"
    start = time.monotonic()
    HfApi().model_info(repo_id)
    assert time.monotonic() - start >= 0.3


def test_seed_persists_and_cli_serves(tmp_path: Path, unused_port: int) -> None:
    """A root seeded offline is what `python -m localhub` serves; state survives a restart."""
    root = tmp_path / "root"
    folder = make_folder(tmp_path / "src")
    oid = seed(root, "acme/seeded", folder, lfs_threshold=LFS_THRESHOLD)
    assert seed(root, "acme/seeded", folder, lfs_threshold=LFS_THRESHOLD) == oid  # unchanged: no new commit
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "e.txt").write_text("e")
    cmd = [sys.executable, "-m", "localhub", "--root", str(root), "--port", str(unused_port), "--log-level", "warning"]
    cmd += ["--seed", f"datasets/acme/extra={tmp_path / 'extra'}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{unused_port}"
        for _ in range(300):
            try:
                if httpx2.get(f"{url}/api/whoami-v2", headers={"Authorization": "Bearer t"}).status_code == 200:
                    break
            except httpx2.TransportError:
                time.sleep(0.05)
        snapshot = snapshot_download("acme/seeded", endpoint=url, token="t", cache_dir=tmp_path / "cache")
        assert files_of(Path(snapshot)) == files_of(folder) and Path(snapshot).name == oid
        extra = hf_hub_download("acme/extra", "e.txt", repo_type="dataset", endpoint=url, token="t", cache_dir=tmp_path)
        assert Path(extra).read_text() == "e"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_model_listing_and_webhooks(local_hub: LocalHub, tmp_path: Path) -> None:
    """`list_models(author=, sort=)` newest first (private repos to a token holder); webhooks POST the Hub's
    payload with the secret verbatim, for a watched org's repo creation and commits."""
    from tests.callback_receiver import CallbackReceiver

    org = f"org{uuid.uuid4().hex[:8]}"
    receiver = CallbackReceiver().start()
    api = HfApi(token=local_hub.token)
    hook = api.create_webhook(watched=[{"type": "org", "name": org}], url=receiver.url, secret="hook-secret")
    try:
        (tmp_path / "a.txt").write_text("a")
        first = local_hub.seed(f"{org}/first", tmp_path)
        time.sleep(0.01)
        local_hub.seed(f"{org}/second", tmp_path, private=True)
        local_hub.seed(f"other{org}/x", tmp_path)  # not watched
        listed = list(api.list_models(author=org, sort="last_modified"))
        assert [m.id for m in listed] == [f"{org}/second", f"{org}/first"] and listed[1].sha == first
        assert listed[0].private and listed[1].last_modified <= listed[0].last_modified
        deadline = time.monotonic() + 10
        while len(receiver.received) < 5 and time.monotonic() < deadline:  # 2 creations, 2 commits, 1 setting
            time.sleep(0.05)
        payloads = [json.loads(r.body) for r in receiver.received]
        assert all(r.headers["x-webhook-secret"] == "hook-secret" for r in receiver.received)
        assert {p["repo"]["name"] for p in payloads} == {f"{org}/first", f"{org}/second"}
        pushed = [p for p in payloads if p["event"] == {"action": "update", "scope": "repo.content"}]
        assert {"repo": f"{org}/first", "sha": first} in [
            {"repo": p["repo"]["name"], "sha": p["repo"]["headSha"]} for p in pushed
        ]
        assert {"action": "create", "scope": "repo"} in [p["event"] for p in payloads]
    finally:
        api.delete_webhook(hook.id)
        receiver.stop()
