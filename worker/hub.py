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
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

from app.settings import get_settings
from slimkit.errors import GatedOrUnauthorized, ModelNotFound, NoSafetensors, RevisionNotFound, SlimError
from slimkit.loading import HUB_PATTERNS, PICKLE_SUFFIXES

log = logging.getLogger(__name__)
T = TypeVar("T")


class HubPushFailed(SlimError):
    code = "hub_push_failed"


class HubUnavailable(SlimError):
    """The Hub could not be reached or answered 5xx while reading the source model (retry the job later)."""

    code = "internal_error"


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


def _read_error(err: Exception, model: str, revision: str) -> SlimError:
    """A Hub read failure as the job error it means (order matters: gated is a kind of not-found)."""
    if isinstance(err, GatedRepoError):
        return GatedOrUnauthorized(f"{model} is gated; the deployment's Hub token has not been granted access")
    if isinstance(err, RevisionNotFoundError):
        return RevisionNotFound(f"{model} has no revision {revision!r} (branch, tag or commit)")
    if isinstance(err, RepositoryNotFoundError):
        return ModelNotFound(f"no model {model!r} on the Hub (or it is private to another account)")
    if isinstance(err, HfHubHTTPError) and _status(err) in (401, 403):
        return GatedOrUnauthorized(f"the Hub refused access to {model} (HTTP {_status(err)})")
    return HubUnavailable(f"reading {model}@{revision} from the Hub failed: {type(err).__name__}: {err}")


def fetch_source(model: str, revision: str, dest: Path) -> Snapshot:
    """Resolve `revision` to a commit and download that commit's safetensors, configs and tokenizer to `dest`.

    The file list is checked first, so a pickle-only repo is refused (`no_safetensors`) before any weights
    are fetched; `allow_patterns` then keeps pickles out of the download even when both kinds are present.
    """
    try:
        info = _api().model_info(model, revision=revision, files_metadata=False)
    except (HfHubHTTPError, httpx2.HTTPError) as err:
        raise _read_error(err, model, revision) from err
    names = [s.rfilename for s in info.siblings or []]
    if not any(n.endswith(".safetensors") for n in names):
        pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
        raise NoSafetensors(
            f"{model}@{info.sha} has no safetensors weights"
            + (f" (only pickle files: {', '.join(pickles[:3])})" if pickles else "")
            + "; pickle checkpoints are never loaded. Push a safetensors conversion and submit again."
        )
    try:
        path = snapshot_download(
            model,
            revision=info.sha,
            allow_patterns=HUB_PATTERNS,
            local_dir=dest,
            token=get_settings().hub_write_token(),
        )
    except (HfHubHTTPError, httpx2.HTTPError) as err:
        raise _read_error(err, model, revision) from err
    return Snapshot(Path(path), info.sha)


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
