"""Where a job may push: output repo names, the per-owner allow-list, and reservations of repos we own.

Rules, checked at submit (the worker then creates the repo with `exist_ok=False` unless the service created
it for the same owner before, so a repo that appears on the Hub in between is not written either):
- the repo id must match one of the caller's allowed patterns (the token's own `output_patterns`, else the
  deployment's `Settings.output_patterns`, else "<hub_namespace>/<owner>-*" or "<owner>/*");
- it is never the source model's repo;
- it is never a repo that exists on the Hub unless the service created it for the same owner (an
  `OutputRepo` row), and even then only when the job asks to update its earlier output (`output.overwrite`).
Names are compared case-folded, as the Hub compares them.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.models import Job, OutputRepo
from app.settings import get_settings

log = logging.getLogger(__name__)


@dataclass
class OutputRefused(Exception):
    """The output repo is not allowed for this caller: 403 (not theirs), 409 (another of their jobs is writing
    it) or 422 (not usable: the source, or a repo that exists and is not theirs to update)."""

    status: int
    message: str


def target_label(target: dict[str, Any]) -> str:
    """`30` for a 30 % ratio target, `x1.5` for a 1.5× speed-up target."""
    if target.get("speedup") is not None:
        return f"x{target['speedup']:.3g}"
    return f"{target['ratio'] * 100:.4g}"


def _clean(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", part).strip("-.")


def default_repo_id(model: str, method: str, label: str, owner: str, version: int = 1) -> str:
    """`<owner>/<name>-<method>-<label>`, or `<hub_namespace>/<owner>-<name>-…` in a deployment namespace;
    `-v2`, `-v3`, … appended for later outputs of the same recipe name."""
    namespace = get_settings().hub_namespace
    prefix = "" if namespace is None else f"{_clean(owner) or 'user'}-"
    namespace = _clean(namespace or owner) or "slimkit"
    suffix = f"-{method}-{label}" + (f"-v{version}" if version > 1 else "")
    name = (prefix + model.split("/")[-1])[: 96 - len(suffix)].strip("-.") + suffix
    return f"{namespace[:96]}/{name}"


def allowed_patterns(owner: str, token_patterns: list[str] | None) -> list[str]:
    settings = get_settings()
    if token_patterns:
        patterns = token_patterns
    elif settings.output_patterns:
        patterns = settings.output_patterns
    elif settings.hub_namespace:
        patterns = [f"{settings.hub_namespace}/{{owner}}-*"]
    else:
        patterns = ["{owner}/*"]
    return [p.replace("{owner}", glob.escape(owner)) for p in patterns]  # an owner "*" matches only "*"


def check_allowed(repo_id: str, owner: str, token_patterns: list[str] | None, source: str) -> None:
    """Refuse a repo id outside the caller's allow-list, or the source model itself."""
    key = repo_id.lower()
    if key == source.lower():
        raise OutputRefused(422, "output.repo_id is the source model's repo: outputs never overwrite their source")
    patterns = allowed_patterns(owner, token_patterns)
    if not any(fnmatch.fnmatchcase(key, p.lower()) for p in patterns):
        raise OutputRefused(403, f"this token may not push to {repo_id!r}; allowed: {', '.join(patterns)}")


def reserve(
    session: Session, repo_id: str, owner: str, job_id: uuid.UUID, overwrite: bool, on_hub: bool | None
) -> None:
    """Reserve `repo_id` for `owner` in the current transaction (the caller commits); OutputRefused if not allowed.

    on_hub: whether the repo exists on the Hub now (None: the Hub could not be asked; the worker checks again).
    """
    row = session.get(OutputRepo, repo_id.lower(), with_for_update=True)
    if row is None or (row.owner == owner and row.hub_created_at is None):
        if on_hub:
            raise OutputRefused(
                422, f"{repo_id} already exists on the Hub and was not created by this service for you; pick another"
            )
        if row is None:
            session.add(OutputRepo(repo_key=repo_id.lower(), repo_id=repo_id, owner=owner, job_id=job_id))
            return
    if row.owner != owner:
        raise OutputRefused(403, f"this token may not push to {repo_id!r} (it belongs to another owner)")
    if row.job_id != job_id and writing(session, row):
        raise OutputRefused(409, f"another of your jobs ({row.job_id}) is still writing {repo_id}; pick another name")
    if row.pushed_at is not None and not overwrite:
        raise OutputRefused(
            422, f"{repo_id} already holds an earlier output of yours; set output.overwrite to update it"
        )
    row.job_id = job_id


DEFAULT_VERSIONS = 20  # default names tried (…-30, …-30-v2, …) before asking for an explicit output.repo_id
HUB_CHECKS = 3  # of those, how many may be looked up on the Hub in one submission (each a round trip)


def taken_for(session: Session, candidates: list[str], owner: str) -> dict[str, bool]:
    """Reserved candidate names → whether this owner may take them without asking the Hub (True: the service
    created the repo for them and no output landed in it, e.g. after a failed push; False: taken — another
    owner's, holding an output already, or still being written by another job)."""
    rows = session.scalars(select(OutputRepo).where(OutputRepo.repo_key.in_([c.lower() for c in candidates])))
    return {
        r.repo_key: r.owner == owner and r.pushed_at is None and r.hub_created_at is not None
        for r in rows
        if not (r.owner == owner and r.pushed_at is None and r.hub_created_at is None and not writing(session, r))
    }


def writing(session: Session, row: OutputRepo) -> bool:
    """Whether the job that reserved the repo last may still write it (queued or running)."""
    if row.job_id is None:
        return False
    status = session.scalar(select(Job.status).where(Job.id == row.job_id))
    return status is not None and not status.finished


def first_free(candidates: list[str], reserved: dict[str, bool]) -> tuple[str, bool | None]:
    """The first default name this owner may use (see `taken_for`) that is not someone else's on the Hub."""
    asked = 0
    for name in candidates:
        if asked == HUB_CHECKS:
            break
        if name.lower() in reserved:
            if reserved[name.lower()]:
                return name, None  # ours already, empty: a resubmission after a failed push lands here again
            continue
        on_hub = repo_exists_on_hub(name)
        asked += 1
        if not on_hub:
            return name, on_hub
    raise OutputRefused(422, f"{candidates[0]} and its next versions are all taken; give output.repo_id")


def reservation(session: Session, repo_id: str) -> OutputRepo | None:
    return session.get(OutputRepo, repo_id.lower())


def mark(session: Session, repo_id: str, owner: str, **values: object) -> None:
    """Set `hub_created_at` / `pushed_at` (or clear them with None) on the owner's reservation, and commit."""
    session.execute(
        update(OutputRepo).where(OutputRepo.repo_key == repo_id.lower(), OutputRepo.owner == owner).values(**values)
    )
    session.commit()


def repo_exists_on_hub(repo_id: str) -> bool | None:
    """Whether the repo exists (seen with the deployment's token); None when the Hub cannot be asked."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi(token=get_settings().hub_write_token()).model_info(repo_id, timeout=10)
        return True
    except GatedRepoError:
        return True  # exists, even if this token may not read it
    except RepositoryNotFoundError:
        return False
    except Exception as err:  # unreachable or erroring Hub: the worker checks again right before pushing
        log.warning("could not check whether %s exists on the Hub (%s)", repo_id, type(err).__name__)
        return None
