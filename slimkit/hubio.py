"""Reading from the Hub with coded errors, retries and name checks, shared by model loading and calibration.

- `check_revision`: a revision must be a name git would accept for a ref (branches like `feature/x`,
  `refs/pr/1`, tags, 40-hex commits), so that a typo or an injected control character fails as
  `revision_not_found` before any request is sent.
- `with_retries`: the Hub client does not retry a 5xx answer to a file GET or a metadata call, so one
  transient server error would otherwise fail a whole job. 5xx, 429 and transport errors are retried
  with exponential back-off; 4xx answers are final (retrying a 404 or 401 cannot help).
- `hub_errors`: the client's exceptions → the engine's coded errors (after the retries are spent).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from slimkit.errors import GatedOrUnauthorized, HubUnavailable, ModelNotFound, RevisionNotFound

log = logging.getLogger(__name__)
T = TypeVar("T")

DOWNLOAD_ATTEMPTS = 4  # tries of one Hub read before `hub_unavailable`
RETRY_BASE_S = 2.0  # first back-off delay, doubled after each failed try
MAX_REVISION_LENGTH = 200
# Characters git refuses in ref names (besides control characters and whitespace, checked separately).
_REF_FORBIDDEN = set("~^:?*[\\")
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")


def revision_problem(revision: str) -> str | None:
    """Why `revision` cannot name a branch, tag or commit on the Hub (git's ref-name rules), or None."""
    if not revision:
        return "it is empty"
    if len(revision) > MAX_REVISION_LENGTH:
        return f"it is longer than {MAX_REVISION_LENGTH} characters"
    if _CONTROL_OR_SPACE.search(revision):
        return "it contains whitespace or control characters"
    if bad := sorted(_REF_FORBIDDEN.intersection(revision)):
        return f"it contains {' '.join(bad)}"
    if ".." in revision or "@{" in revision or revision == "@":
        return "it contains '..' or '@{'"
    if revision.startswith("/") or revision.endswith(("/", ".")) or "//" in revision:
        return "it starts or ends with '/', ends with '.', or has an empty path component"
    for part in revision.split("/"):
        if part.startswith(".") or part.endswith(".lock"):
            return "a path component starts with '.' or ends with '.lock'"
    return None


def check_revision(model: str, revision: str | None) -> None:
    """Refuse a malformed revision as `revision_not_found` before asking the Hub."""
    if revision is None:
        return
    problem = revision_problem(revision)
    if problem is not None:
        raise RevisionNotFound(f"{model} has no revision {revision!r}: not a valid branch, tag or commit ({problem})")


def status_of(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def retryable(err: BaseException) -> bool:
    """5xx, 429 and transport errors (refused, reset, timed out) are worth another try; 4xx are not."""
    import httpx2  # the Hub client's HTTP library
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if isinstance(err, LocalEntryNotFoundError):  # the client could not reach the Hub and had nothing cached
        return True
    if isinstance(err, HfHubHTTPError):
        status = status_of(err)
        return status is None or status >= 500 or status == 429
    return isinstance(err, httpx2.TransportError | ConnectionError | TimeoutError)


def describe(err: BaseException) -> str:
    """One line naming the error and its HTTP status, without the response body."""
    status = status_of(err)
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}" + (f" (HTTP {status})" if status else "") + (f": {text}" if text else "")


def with_retries(
    action: Callable[[], T], what: str, attempts: int = DOWNLOAD_ATTEMPTS, base_s: float = RETRY_BASE_S
) -> T:
    """Run `action`, retrying retryable errors with delays base, 2·base, 4·base, …; the last error propagates."""
    attempts = max(1, attempts)
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as err:
            if not retryable(err) or attempt == attempts:
                raise
            delay = base_s * 2 ** (attempt - 1)
            log.warning("%s failed (try %d/%d: %s); retrying in %.2f s", what, attempt, attempts, describe(err), delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


@contextmanager
def hub_errors(what: str, revision: str | None, kind: str = "model") -> Iterator[None]:
    """Translate the Hub client's errors about `what` (a repo id) into the engine's coded errors."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except GatedRepoError as err:
        raise GatedOrUnauthorized(f"{what} is gated; accept its terms with the account whose token is used") from err
    except RevisionNotFoundError as err:
        raise RevisionNotFound(f"{what} has no revision {revision!r}") from err
    except RepositoryNotFoundError as err:
        raise ModelNotFound(f"no {kind} {what!r} on the Hub (or it is private to another account)") from err
    except HFValidationError as err:
        raise ModelNotFound(f"{what!r} is not a valid Hub {kind} id: {err}") from err
    except HfHubHTTPError as err:
        status = status_of(err)
        if status in (401, 403):
            raise GatedOrUnauthorized(f"the Hub refused access to {what} (HTTP {status})") from err
        raise HubUnavailable(f"reading {what}@{revision} from the Hub failed: {describe(err)}") from err
    except (httpx2.TransportError, OSError) as err:  # refused, reset, timed out
        raise HubUnavailable(f"the Hub could not be reached for {what}: {describe(err)}") from err
