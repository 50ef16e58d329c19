"""Remove server paths from the messages a job records (they reach the job's owner through the API).

An engine or library error names the files it failed on with their full paths: the worker's job folder,
the home folder, the Hub cache. Those say nothing useful to the owner and describe the server's layout,
so every recorded message keeps only the last component of each absolute path (`model.safetensors`).
"""

from __future__ import annotations

import re
from pathlib import Path

from app.settings import get_settings

# An absolute (or ~ / ./ relative) path: not preceded by a word character, ':' or '/', so URLs
# (`http://host/api/...`, `hf://datasets/...`) and repo ids (`ns/name`) are left alone.
_PATH = re.compile(r"(?<![\w.:/~-])(?:~|\.{1,2})?/(?:[^\s/'\"()\[\],:;]+/)*([^\s/'\"()\[\],:;]+)")


def scrub_paths(message: str) -> str:
    """`message` with each server path reduced to its file name."""
    work = Path(get_settings().work_dir)
    if not work.is_absolute():  # `work/<job>/...` as configured: make it look absolute, so _PATH takes it
        relative = re.escape(str(work).removeprefix("./"))
        message = re.sub(rf"(?<![\w/.-])(?:\./)?{relative}/", "/", message)
    return _PATH.sub(r"\1", message)
