"""pytest plugin: a local Hub server that the real `huggingface_hub` client talks to (the real Hub is unreachable).

`tests/conftest.py` picks the port and exports HF_ENDPOINT / HF_HUB_DISABLE_XET / HF_TOKEN / HF_HUB_CACHE at
import time, because huggingface_hub freezes them when it is first imported; the session fixture here then
starts the server on that port, with `HF_TOKEN` as its required token.

Fixtures:
- `local_hub` (session): a `LocalHub` with `.url`, `.root`, `.token`, `.faults`, `.seed(repo_id, folder)`,
  `.state` (the server's mutable `HubState`) and `.requests` (the request log).
- `hub_faults` (function): the hub's `Faults`, reset before and after the test.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import uvicorn
from fastapi import FastAPI

from localhub import Faults, HubState, create_app, seed

LFS_THRESHOLD = 64 * 1024  # small, so tests exercise LFS with small files


@dataclass
class LocalHub:
    url: str
    root: Path
    token: str | None
    faults: Faults
    app: FastAPI

    @property
    def state(self) -> HubState:
        return self.app.state.hub

    @property
    def requests(self) -> list[str]:
        """Every request so far as "METHOD path status", oldest first."""
        return list(self.state.requests)

    def seed(self, repo_id: str, folder: Path | str, **kwargs: Any) -> str:
        """Put `folder` on `main` of `repo_id` (created if needed); kwargs as `localhub.seed`. Returns the commit."""
        return seed(self.app, repo_id, folder, **kwargs)


@contextmanager
def serve(app: FastAPI, port: int) -> Iterator[str]:
    """Run `app` with uvicorn in a daemon thread on 127.0.0.1:`port` until the block ends; yields its URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"localhub:{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"local hub did not start on port {port} (is the port taken?)")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def serve_api() -> Iterator[str]:
    """The slimkit API (a fresh app) over real HTTP on a free port, for clients that need a socket (httpx
    streaming, a browser, the Hub's webhooks)."""
    import socket

    from app.main import create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with serve(create_app(), port) as url:
        yield url


@pytest.fixture(scope="session")
def local_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHub]:
    endpoint = os.environ.get("HF_ENDPOINT", "")
    parsed = urlparse(endpoint)
    if parsed.hostname != "127.0.0.1" or not parsed.port:
        raise pytest.UsageError(f"HF_ENDPOINT={endpoint!r}: tests/conftest.py must set it to the local hub's port")
    from huggingface_hub import constants

    if endpoint != constants.ENDPOINT or not constants.HF_HUB_DISABLE_XET:
        raise pytest.UsageError("huggingface_hub was imported before tests/conftest.py configured the local hub")
    root = tmp_path_factory.mktemp("localhub")
    token = os.environ.get("HF_TOKEN") or None
    faults = Faults()
    app = create_app(root, token=token, lfs_threshold=LFS_THRESHOLD, faults=faults)
    with serve(app, parsed.port) as url:
        yield LocalHub(url=url, root=root, token=token, faults=faults, app=app)


@pytest.fixture
def hub_faults(local_hub: LocalHub) -> Iterator[Faults]:
    local_hub.faults.reset()
    yield local_hub.faults
    local_hub.faults.reset()
