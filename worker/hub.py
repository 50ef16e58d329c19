"""Hub I/O of a job: resolve the revision, download a safetensors-only snapshot, push the result.

Everything goes through `huggingface_hub` with the deployment's token (`Settings.hub_write_token()`), passed
per call and never logged or stored; when none is configured the library's own default (HF_TOKEN, a cached
login) applies. The endpoint is the library's (HF_ENDPOINT, read when `huggingface_hub` is imported).

Hub failures become job error codes here, so the pipeline only sees `SlimError`s with a `.code`. Pushes
and downloads are retried with exponential back-off on 5xx / 429 / connection errors (the client itself
does not retry a 5xx): an upload of a finished model is worth a few tries, and a retried `upload_folder`
skips LFS objects the server already has; a download is tried `hub_download_attempts` times (a retried
snapshot skips the files it already has) before the job fails with `hub_unavailable`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from app.settings import get_settings
from slimkit.errors import SlimError
from slimkit.hubio import describe, retryable, status_of
from slimkit.loading import download

log = logging.getLogger(__name__)
T = TypeVar("T")


class HubPushFailed(SlimError):
    code = "hub_push_failed"


class OutputConflict(SlimError):
    """The output repo exists but was not created by this service for the job's owner."""

    code = "output_conflict"


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


def fetch_source(model: str, revision: str, dest: Path) -> Snapshot:
    """Resolve `revision` and download that commit's safetensors snapshot into `dest` (the engine's coded errors:
    model_not_found, revision_not_found, gated_or_unauthorized, no_safetensors, hub_unavailable after retries)."""
    settings = get_settings()
    path, sha = download(
        model,
        revision,
        token=settings.hub_write_token(),
        local_dir=dest,
        attempts=max(1, settings.hub_download_attempts),
        retry_base_s=settings.hub_retry_base_s,
    )
    return Snapshot(path, sha)


def with_backoff(action: Callable[[], T], what: str, attempts: int, base_s: float) -> T:
    """Run `action`, retrying retryable Hub errors with delays base, 2·base, 4·base, …; else HubPushFailed."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as err:
            if isinstance(err, SlimError):  # already a job outcome (e.g. output_conflict)
                raise
            if not retryable(err):
                raise HubPushFailed(f"{what} failed and was not retried: {describe(err)}") from err
            if attempt == attempts:
                raise HubPushFailed(f"{what} failed after {attempts} tries: {describe(err)}") from err
            delay = base_s * 2 ** (attempt - 1)
            log.warning("%s failed (try %d/%d: %s); retrying in %.2f s", what, attempt, attempts, describe(err), delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def push_folder(
    folder: Path,
    repo_id: str,
    private: bool,
    commit_message: str,
    ours: bool = True,
    before_create: Callable[[], object] | None = None,
    on_conflict: Callable[[], object] | None = None,
) -> Pushed:
    """Create the repo if needed and upload `folder` as one commit, retrying transient failures.

    ours: the service created this repo for the job's owner before (it may be written again). Otherwise the
    repo must not exist yet: a repo that appeared on the Hub since submit is someone else's, and nothing is
    pushed (`output_conflict`) — unless it is the one our own earlier try just created (its answer was lost).
    `before_create` records that the service is creating the repo (so a worker killed right after creating it
    knows on its next attempt that the repo is ours); `on_conflict` takes that back when the Hub says the
    name is someone else's.
    """
    settings = get_settings()
    api = _api()
    tried = False

    def create() -> Any:
        nonlocal tried
        if ours:
            return api.create_repo(repo_id, private=private, exist_ok=True)
        try:
            return api.create_repo(repo_id, private=private, exist_ok=False)
        except HfHubHTTPError as err:
            if status_of(err) != 409:
                raise
            if tried:
                return None  # our previous try created it, and only its answer was lost
            if on_conflict is not None:
                on_conflict()
            raise OutputConflict(
                f"{repo_id} was created on the Hub by someone else after the job was accepted; nothing "
                "was pushed (submit again with another output.repo_id)"
            ) from err
        finally:
            tried = True

    def upload() -> Any:
        return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)

    attempts, base = max(1, settings.hub_push_attempts), settings.hub_retry_base_s
    if not ours and before_create is not None:
        before_create()
    with_backoff(create, f"creating {repo_id}", attempts, base)
    info = with_backoff(upload, f"uploading to {repo_id}", attempts, base)
    return Pushed(repo_id=repo_id, commit=info.oid, url=f"{api.endpoint.rstrip('/')}/{repo_id}/tree/{info.oid}")
