"""Where an output folder goes, and how it gets there without ever deleting what slimkit did not write.

- `check_out_dir` refuses, before any work is done: the current directory, the source folder or a parent of
  either; an existing path that is not a folder; a non-empty folder that is not an earlier slimkit output;
  an earlier slimkit output unless `overwrite` is given. An empty folder is fine.
- `staging` builds the output in a hidden sibling, `.NAME.tmp-XXXXXXXX/NAME` (same filesystem, so the final
  rename is atomic; the inner folder keeps the final name, so the modeling code that verification imports from
  it is cached under the same module name as the published folder). The sibling is removed if anything fails or
  the user presses Ctrl-C, so nothing is ever left at `out` but a finished, verified output.
- `publish` re-checks `out` and renames the finished folder into place. An earlier output is renamed aside
  first and removed only once the new one is in place; a foreign folder is never removed.

Folders get the mode `mkdir` gives (0o777 minus the umask) and files the matching 0o666 minus the umask:
`tempfile.mkdtemp` (0o700) and the 0o600 temporary files some writers rename into place would otherwise make
an output unreadable to the rest of a team.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from slimkit.errors import InvalidArgument
from slimkit.tokenizer_files import TOKENIZER_FILES

RECIPE_FILE = "compression.json"
# Every name a slimkit output can contain (weights, configs, our modeling file, the stock tokenizer files);
# a folder holding anything else is not ours to replace.
OUTPUT_NAMES = frozenset(
    {
        RECIPE_FILE,
        "README.md",  # the model card
        "config.json",
        "generation_config.json",
        "modeling_slim.py",
        "model.safetensors.index.json",
        *TOKENIZER_FILES,
    }
)
_SHARD = re.compile(r"^model(-\d{5}-of-\d{5})?\.safetensors$")


def _absolute(path: Path) -> Path:
    """Absolute and lexically normalised (`a/..` folded), so `.name` and `.parent` mean what the user typed."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def is_slimkit_output(folder: Path) -> bool:
    """An earlier output: a `compression.json` written by slimkit and only files a slimkit output contains."""
    try:
        entries = list(folder.iterdir())
        record = json.loads((folder / RECIPE_FILE).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or "slimkit_version" not in record:
        return False
    return all(
        entry.is_file() and not entry.is_symlink() and (entry.name in OUTPUT_NAMES or _SHARD.match(entry.name))
        for entry in entries
    )


def check_out_dir(out_dir: str | Path, overwrite: bool = False, protected: Iterable[Path] = ()) -> None:
    """Refuse an output path that would hide, replace or delete anything slimkit did not write.

    protected: folders the output must be neither equal to nor a parent of (the source model's folder).
    """
    out = _absolute(Path(out_dir))
    real = out.resolve()
    for folder, what in [(Path.cwd(), "the current directory")] + [(p, "the source model folder") for p in protected]:
        folder = folder.resolve()
        if real == folder or real in folder.parents:
            relation = "is" if real == folder else "contains"
            raise InvalidArgument(f"--out {out_dir} {relation} {what}; choose a new folder for the output")
    if out.is_symlink():
        raise InvalidArgument(f"--out {out_dir} is a symbolic link; give the real folder or a new path")
    if not out.exists():
        return
    if not out.is_dir():
        raise InvalidArgument(f"--out {out_dir} exists and is not a folder")
    if not any(out.iterdir()):
        return
    if not is_slimkit_output(out):
        raise InvalidArgument(
            f"--out {out_dir} is not empty and is not an earlier slimkit output; nothing in it was touched. "
            "Choose a new or empty folder"
        )
    if not overwrite:
        raise InvalidArgument(f"--out {out_dir} holds an earlier slimkit output; pass --overwrite to replace it")


@contextmanager
def staging(out_dir: str | Path) -> Iterator[Path]:
    """An empty folder to build the output in; removed on exit unless `publish` moved it into place."""
    out = _absolute(Path(out_dir))
    out.parent.mkdir(parents=True, exist_ok=True)
    sibling = _fresh_sibling(out, "tmp")
    folder = sibling / out.name
    try:
        folder.mkdir()
        yield folder
    finally:
        with _interrupts_held():  # a second Ctrl-C must not leave a half-removed folder behind
            shutil.rmtree(sibling, ignore_errors=True)


def publish(folder: Path, out_dir: str | Path, overwrite: bool = False) -> None:
    """Move a finished output from `staging` to `out_dir`, replacing only an empty folder or an earlier output."""
    out = _absolute(Path(out_dir))
    _normalise_modes(folder)
    with _interrupts_held():  # the swap below is three renames: do not stop between them
        check_out_dir(out, overwrite)  # again: the folder may have changed while the model was compressed
        if not (out.exists() and any(out.iterdir())):
            os.replace(folder, out)  # atomically replaces an empty folder; fails if one appeared with content
            return
        aside = _fresh_sibling(out, "old")
        os.rename(out, aside / out.name)
        try:
            os.rename(folder, out)
        except BaseException:
            os.rename(aside / out.name, out)
            aside.rmdir()
            raise
        shutil.rmtree(aside)


def _fresh_sibling(out: Path, kind: str) -> Path:
    """A new hidden folder next to `out`, created by us (so ours to remove), with mkdir's normal mode."""
    for _ in range(100):
        candidate = out.parent / f".{out.name}.{kind}-{secrets.token_hex(4)}"
        try:
            candidate.mkdir(mode=0o777)
        except FileExistsError:
            continue
        return candidate
    raise InvalidArgument(f"could not create a temporary folder next to {out}")


def _normalise_modes(folder: Path) -> None:
    """Give every folder the mode of `folder` (mkdir's, umask applied) and every file the same minus execute."""
    dir_mode = folder.parent.stat().st_mode & 0o777
    file_mode = dir_mode & 0o666
    folder.chmod(dir_mode)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), dir_mode)
        for name in files:
            os.chmod(os.path.join(root, name), file_mode)


@contextmanager
def _interrupts_held() -> Iterator[None]:
    """Ignore Ctrl-C while a few filesystem steps finish (a rename or the removal of our own temporary folder).

    A Ctrl-C in that window is dropped, not replayed: after `publish` the output is complete and the run is a
    success; during cleanup the run is already being abandoned.
    """
    # Only the main thread may set handlers; None is a handler not installed from Python, which cannot be restored.
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
