"""Hub I/O of a job: resolve the revision, download a safetensors-only snapshot, push the result.

Everything goes through `huggingface_hub` with the deployment's token (`Settings.hub_write_token()`), passed
per call and never logged or stored; when none is configured the library's own default (HF_TOKEN, a cached
login) applies. The endpoint is the library's (HF_ENDPOINT, read when `huggingface_hub` is imported).

Hub failures become job error codes here, so the pipeline only sees `SlimError`s with a `.code`. Pushes
are retried with exponential back-off on 5xx / 429 / connection errors — an upload of a finished model is
worth a few tries, and a retried `upload_folder` skips LFS objects the server already has; downloads are
not retried here (the client already retries its file transfers, and a failed download costs little).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx2
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from app.settings import get_settings
from slimkit.errors import SlimError
from slimkit.loading import download

log = logging.getLogger(__name__)
T = TypeVar("T")


class HubPushFailed(SlimError):
    code = "hub_push_failed"


@dataclass
class Snapshot:
    path: Path  # local folder with config, safetensors and tokenizer files
    sha: str  # the commit that was downloaded


@dataclass
class Pushed:
    repo_id: str
    commit: str
    url: str  # the repo page (at that commit)


def _api() -> HfApi:
    return HfApi(token=get_settings().hub_write_token())


def endpoint() -> str:
    """The Hub's base URL (for links in the model card)."""
    return _api().endpoint.rstrip("/")


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def fetch_source(model: str, revision: str, dest: Path) -> Snapshot:
    """Resolve `revision` and download that commit's safetensors snapshot into `dest` (the engine's coded errors:
    model_not_found, revision_not_found, gated_or_unauthorized, no_safetensors, hub_unavailable)."""
    path, sha = download(model, revision, token=get_settings().hub_write_token(), local_dir=dest)
    return Snapshot(path, sha)


def retryable(err: BaseException) -> bool:
    """5xx, 429 and transport errors (refused, reset, timed out) are worth another try; 4xx are not."""
    if isinstance(err, HfHubHTTPError):
        status = _status(err)
        return status is None or status >= 500 or status == 429
    return isinstance(err, httpx2.TransportError | ConnectionError | TimeoutError)


def with_backoff(action: Callable[[], T], what: str, attempts: int, base_s: float) -> T:
    """Run `action`, retrying retryable Hub errors with delays base, 2·base, 4·base, …; else HubPushFailed."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as err:
            if not retryable(err):
                raise HubPushFailed(f"{what} failed and was not retried: {_describe(err)}") from err
            if attempt == attempts:
                raise HubPushFailed(f"{what} failed after {attempts} tries: {_describe(err)}") from err
            delay = base_s * 2 ** (attempt - 1)
            log.warning("%s failed (try %d/%d: %s); retrying in %.2f s", what, attempt, attempts, _describe(err), delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _describe(err: BaseException) -> str:
    status = _status(err)
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}" + (f" (HTTP {status})" if status else "") + (f": {text}" if text else "")


def push_folder(folder: Path, repo_id: str, private: bool, commit_message: str) -> Pushed:
    """Create the repo if needed and upload `folder` as one commit, retrying transient failures."""
    settings = get_settings()
    api = _api()

    def create() -> Any:
        return api.create_repo(repo_id, private=private, exist_ok=True)

    def upload() -> Any:
        return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)

    attempts, base = max(1, settings.hub_push_attempts), settings.hub_retry_base_s
    with_backoff(create, f"creating {repo_id}", attempts, base)
    info = with_backoff(upload, f"uploading to {repo_id}", attempts, base)
    return Pushed(repo_id=repo_id, commit=info.oid, url=f"{api.endpoint.rstrip('/')}/{repo_id}/tree/{info.oid}")
