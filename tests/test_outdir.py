"""`--out` never deletes or half-writes: foreign folders are refused untouched, an earlier output is replaced only
with `--overwrite`, a failed reload check or a Ctrl-C leaves nothing behind, and outputs get normal modes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import slimkit.api
from slimkit import CalibrationSpec, CompressionRequest, compress
from slimkit.cli import main
from slimkit.errors import InvalidArgument, ReloadMismatch
from slimkit.export import save_compressed
from slimkit.loading import load_source

CALIB = CalibrationSpec(samples=4, seq_len=32)
REPO = Path(__file__).resolve().parents[1]


def request(model: Path, ratio: float = 0.3) -> CompressionRequest:
    return CompressionRequest(model=str(model), ratio=ratio, calibration=CALIB, evaluation=None, device="cpu")


def cli_args(model: Path, out: Path | str, *extra: str) -> list[str]:
    return ["compress", str(model), "--out", str(out), "--samples", "4", "--seq-len", "32", "--no-eval", *extra]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for folders)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def leftovers(parent: Path, name: str) -> list[str]:
    """Anything slimkit might have left next to `name`: the output itself or a hidden temporary sibling."""
    return sorted(p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}."))


@pytest.fixture
def foreign(tmp_path: Path) -> Path:
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("a week of work\n")
    (folder / "config.json").write_text('{"not": "ours"}\n')
    (folder / "sub" / "data.bin").write_bytes(os.urandom(1024))
    return folder


def test_non_empty_foreign_folder_is_refused_untouched(
    tiny_llama_gqa: Path, foreign: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(foreign)
    with pytest.raises(InvalidArgument, match="--out"):
        compress(request(tiny_llama_gqa), foreign, show_progress=False)
    assert main(cli_args(tiny_llama_gqa, foreign, "--overwrite")) == 2
    assert "error [invalid_argument]: --out" in capsys.readouterr().err
    source = load_source(str(tiny_llama_gqa))  # the writer used on its own refuses it too
    with pytest.raises(InvalidArgument, match="not empty"):
        save_compressed(source.model, source, foreign, {"note": "identity"}, overwrite=True)
    assert snapshot(foreign) == before
    assert leftovers(foreign.parent, foreign.name) == [foreign.name]


def test_cwd_source_and_its_parents_are_refused(
    tiny_llama_gqa: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(tiny_llama_gqa)
    for out in (tiny_llama_gqa, tiny_llama_gqa / "sub" / ".."):
        assert main(cli_args(tiny_llama_gqa, out, "--overwrite")) == 2
        assert "is the source model folder" in capsys.readouterr().err
    with pytest.raises(InvalidArgument, match="contains the source model folder"):
        compress(request(tiny_llama_gqa), tiny_llama_gqa.parent, show_progress=False, overwrite=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)  # an empty folder is fine as --out, but not the one we are standing in
    assert main(cli_args(tiny_llama_gqa, ".")) == 2
    assert "--out . is the current directory" in capsys.readouterr().err
    assert main(cli_args(tiny_llama_gqa, tmp_path)) == 2  # a parent of the current directory
    assert "contains the current directory" in capsys.readouterr().err
    assert snapshot(tiny_llama_gqa) == before
    assert list(empty.iterdir()) == []


def test_empty_folder_is_used(tiny_llama_gqa: Path, tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    compress(request(tiny_llama_gqa), out, show_progress=False)
    assert json.loads((out / "compression.json").read_text())["slimkit_version"]
    assert leftovers(tmp_path, "empty") == ["empty"]


def test_earlier_output_needs_overwrite_and_is_replaced(tiny_llama_gqa: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    compress(request(tiny_llama_gqa, ratio=0.3), out, show_progress=False)
    first = snapshot(out)
    with pytest.raises(InvalidArgument, match="--overwrite"):
        compress(request(tiny_llama_gqa, ratio=0.5), out, show_progress=False)
    assert snapshot(out) == first

    (out / "notes.txt").write_text("mine\n")  # an earlier output someone added a file to is theirs now
    with pytest.raises(InvalidArgument, match="not an earlier slimkit output"):
        compress(request(tiny_llama_gqa, ratio=0.5), out, show_progress=False, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine\n"
    (out / "notes.txt").unlink()

    result = compress(request(tiny_llama_gqa, ratio=0.5), out, show_progress=False, overwrite=True)
    record = json.loads((out / "compression.json").read_text())
    assert record["recipe"]["ratio"] == 0.5 == result.record["recipe"]["ratio"]
    assert snapshot(out) != first
    assert leftovers(tmp_path, "out") == ["out"]


def corrupt_before_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    """Perturb one saved weight just before the real reload check reads the folder: a bad save, as found on disk."""
    verify = slimkit.api.verify_reload

    def corrupt_then_verify(model: torch.nn.Module, folder: Path, ids: torch.Tensor) -> float:
        path = Path(folder) / "model.safetensors"
        tensors = load_file(str(path))
        key = next(k for k in sorted(tensors) if k.endswith("down_proj.weight"))
        tensors[key] = tensors[key] + 1.0
        save_file(tensors, str(path), metadata={"format": "pt"})
        return verify(model, folder, ids)

    monkeypatch.setattr(slimkit.api, "verify_reload", corrupt_then_verify)


def test_reload_mismatch_leaves_nothing(tiny_llama_gqa: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    corrupt_before_verify(monkeypatch)
    with pytest.raises(ReloadMismatch):
        compress(request(tiny_llama_gqa), out, show_progress=False)
    assert leftovers(tmp_path, "out") == []


def test_reload_mismatch_keeps_the_earlier_output(
    tiny_llama_gqa: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    compress(request(tiny_llama_gqa), out, show_progress=False)
    first = snapshot(out)
    corrupt_before_verify(monkeypatch)
    with pytest.raises(ReloadMismatch):
        compress(request(tiny_llama_gqa, ratio=0.5), out, show_progress=False, overwrite=True)
    assert snapshot(out) == first
    assert leftovers(tmp_path, "out") == ["out"]


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("umask_022")
def test_output_has_normal_permissions(tiny_llama_gqa: Path, tmp_path: Path) -> None:
    out = tmp_path / "new" / "out"
    compress(request(tiny_llama_gqa), out, show_progress=False)
    assert out.stat().st_mode & 0o777 == 0o755
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert "model.safetensors" in modes and set(modes.values()) == {0o644}, modes


# The real CLI in a subprocess; the reload check is replaced by a pause that says where the run is, so the
# SIGINT lands, deterministically, while the finished output sits in its temporary sibling. Python's own
# Ctrl-C handler is installed explicitly: a test run started as a shell background job inherits SIGINT as
# ignored (POSIX), and Python then installs no handler at all.
DRIVER = """
import signal, sys, time
from pathlib import Path
import slimkit.api
from slimkit.cli import main

signal.signal(signal.SIGINT, signal.default_int_handler)

def pause(model, folder, ids, tol=1e-3):
    Path(sys.argv[1]).write_text(str(folder))
    time.sleep(600)

slimkit.api.verify_reload = pause
sys.exit(main(sys.argv[2:]))
"""


def test_ctrl_c_exits_130_with_one_line_and_leaves_nothing(tiny_llama_gqa: Path, tmp_path: Path) -> None:
    out, marker = tmp_path / "out", tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(marker), *cli_args(tiny_llama_gqa, out), "--device", "cpu"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 600
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), proc.communicate(timeout=60)
        staged = Path(marker.read_text())
        assert staged.name == "out" and staged.parent.name.startswith(".out.tmp-")
        assert (staged / "model.safetensors").is_file() and not out.exists()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    message = f"interrupted; nothing was written to {out}"
    assert stderr.splitlines()[-1] == message and stderr.count("interrupted") == 1, stderr
    assert "saved to" not in stdout
    assert leftovers(tmp_path, "out") == []
