"""Watch rules at work: which rules a release concerns, where each stands with it, and its jobs, exactly once.

`consider(repo_id)` is the one entry point, shared by the webhook path and the poller: it reads the repo
on the Hub, and for every active rule that watches it records what it saw and did (`watch_event`):

- *detected* the first time a rule sees a release (a repo at a commit);
- *skipped*, with the reason, when the release cannot or may not be run (still uploading, unsupported
  architecture, no safetensors, outside the size range, output refused) — once per reason, however often
  the release is looked at again (`watch_sighting` holds the last state);
- *jobs_created* with one job per template.

Exactly once: a (rule, repo, commit, template) creates at most one job, ever. Its `watch_release` row is
inserted first (a primary key, so two processes racing — the webhook task and the poller, two pollers —
insert one row), and the job is submitted with an Idempotency-Key derived from that key, so a process
that died between the two, or two that both saw the row without a job, still end with one job. A new
commit of a repo is a new release only if the rule says so (`new_commits`); rules take repos created after
them (and, with `new_commits`, commits made after them), never an author's back catalogue.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import uuid
from datetime import UTC, datetime

from huggingface_hub import HfApi
from huggingface_hub.errors import RepositoryNotFoundError
from sqlalchemy import and_, select, update
from sqlalchemy.orm import Session

from app import jobs
from app.auth import Caller
from app.db import insert_ignoring_conflicts
from app.models import ApiToken, Job, OutputRepo, Watch, WatchEvent, WatchRelease, WatchSighting
from app.outputs import OutputRefused
from app.responses import utc
from app.schemas import JobCreate
from worker import releases
from worker.releases import Release, Verdict

log = logging.getLogger(__name__)


def watches_repo(rule: Watch, repo_id: str) -> bool:
    author, _, name = repo_id.partition("/")
    return not rule.paused and author in rule.authors and fnmatch.fnmatchcase(name, rule.name_pattern)


def rules_for(session: Session, repo_id: str) -> list[Watch]:
    rules = session.scalars(select(Watch).where(~Watch.paused).order_by(Watch.created_at))
    return [rule for rule in rules if watches_repo(rule, repo_id)]


def is_new_for(rule: Watch, release: Release) -> bool:
    """Repos created after the rule; with `new_commits`, also commits made after it."""
    since = utc(rule.created_at)
    if release.created_at is not None and release.created_at >= since:
        return True
    return rule.new_commits and release.last_commit_at >= since


def consider(session: Session, api: HfApi, repo_id: str, source: str, now: datetime | None = None) -> float | None:
    """Apply every rule watching `repo_id` to its head commit. Returns, when some rule is still waiting for
    the upload to finish, the seconds after which looking again can change that (else None)."""
    rules = rules_for(session, repo_id)
    ours = session.get(OutputRepo, repo_id.lower()) is not None  # an output this service writes: never a release
    session.commit()  # no transaction stays open while the Hub is asked
    if not rules or ours:
        return None
    try:
        release = Release.fetch(api, repo_id)
    except RepositoryNotFoundError:  # deleted, renamed or made private since: nothing to take
        log.info("%s is gone (or not visible to this deployment); nothing to consider", repo_id)
        return None
    if release.empty:
        return float("inf")  # created, nothing pushed yet: look again later, record nothing
    now = now or datetime.now(UTC)
    recheck: float | None = None
    for rule in rules:
        if not is_new_for(rule, release) or _superseded(session, rule, release):
            continue
        verdict = _verdict(api, rule, release, now)
        detected = _sight(session, rule, release, source)
        if verdict.state == "ready":
            _take(session, rule, release, detected, source)
        else:
            _record(session, rule, release, verdict.state, verdict.reason, source)
        if verdict.state == "waiting":
            wait = verdict.recheck_in_s if verdict.recheck_in_s is not None else float("inf")
            recheck = wait if recheck is None else min(recheck, wait)
    return recheck


def _superseded(session: Session, rule: Watch, release: Release) -> bool:
    """Without `new_commits`, a repo the rule already took at another commit is done."""
    if rule.new_commits:
        return False
    other = (
        select(WatchRelease.revision_sha)
        .where(WatchRelease.watch_id == rule.id, WatchRelease.repo_id == release.repo_id)
        .where(WatchRelease.revision_sha != release.sha)
    )
    taken = session.scalar(other.limit(1)) is not None
    session.commit()
    return taken


def _verdict(api: HfApi, rule: Watch, release: Release, now: datetime) -> Verdict:
    """The readiness gate, then the rule's filters (architecture, size)."""
    verdict = releases.upload_state(api, release, rule.quiet_period_s, now)
    if verdict.state != "ready":
        return verdict
    kind, unsupported = releases.model_type(api, release)
    if unsupported:
        return Verdict("skipped", unsupported)
    if rule.architectures and kind not in rule.architectures:
        return Verdict("skipped", f"architecture {kind!r} is not in the rule's list ({', '.join(rule.architectures)})")
    if rule.min_params is not None or rule.max_params is not None:
        count = releases.parameter_count(api, release)
        low, high = rule.min_params or 0, rule.max_params
        if count < low or (high is not None and count > high):
            limits = f"{low:,} to {high:,}" if high is not None else f"at least {low:,}"
            return Verdict("skipped", f"outside the size range: {count:,} parameters, the rule takes {limits}")
    return verdict


def _event(session: Session, rule: Watch, release: Release, kind: str, source: str, **fields: object) -> WatchEvent:
    event = WatchEvent(
        id=uuid.uuid4(),
        watch_id=rule.id,
        kind=kind,
        repo_id=release.repo_id,
        revision_sha=release.sha,
        source=source,
        **fields,
    )
    session.add(event)
    return event


def _sight(session: Session, rule: Watch, release: Release, source: str) -> uuid.UUID | None:
    """The rule's sighting of the release, created with its *detected* event the first time; the event id."""
    key = {"watch_id": rule.id, "repo_id": release.repo_id, "revision_sha": release.sha}
    if insert_ignoring_conflicts(session, WatchSighting, {**key, "state": "detected"}):
        event = _event(session, rule, release, "detected", source)
        session.flush()
        session.execute(update(WatchSighting).filter_by(**key).values(detected_event_id=event.id))
    session.commit()
    return session.scalar(select(WatchSighting.detected_event_id).filter_by(**key))


def _record(session: Session, rule: Watch, release: Release, state: str, reason: str | None, source: str) -> bool:
    """Move the sighting to (state, reason) and write a *skipped* event, if it was elsewhere; True if moved."""
    row = (WatchSighting.watch_id == rule.id, WatchSighting.repo_id == release.repo_id)
    same = and_(WatchSighting.state == state, WatchSighting.reason.is_not_distinct_from(reason))
    moved = session.execute(
        update(WatchSighting)
        .where(*row, WatchSighting.revision_sha == release.sha, WatchSighting.state != "taken", ~same)
        .values(state=state, reason=reason)
    )
    if moved.rowcount == 1:
        _event(session, rule, release, "skipped", source, reason=reason)
    session.commit()
    return moved.rowcount == 1


def _take(session: Session, rule: Watch, release: Release, detected: uuid.UUID | None, source: str) -> None:
    """One job per template, exactly once; then the *jobs_created* event, written by whoever finishes first."""
    caller = _caller(session, rule)
    if caller is None:
        _record(session, rule, release, "skipped", "the rule's API token was revoked", source)
        return
    refused: list[str] = []
    for index, template in enumerate(rule.templates):
        key = {"watch_id": rule.id, "repo_id": release.repo_id, "revision_sha": release.sha, "template_index": index}
        insert_ignoring_conflicts(session, WatchRelease, key)
        session.commit()
        if session.scalar(select(WatchRelease.job_id).filter_by(**key)) is not None:
            continue
        try:
            job = _job_for(session, caller, rule, release, index, template, detected)
        except OutputRefused as err:
            refused.append(f"template {index}: output refused: {err.message}")
            continue
        session.execute(
            update(WatchRelease).filter_by(**key).where(WatchRelease.job_id.is_(None)).values(job_id=job.id)
        )
        session.commit()
        _publish(job)
    if refused:
        _record(session, rule, release, "skipped", "; ".join(refused), source)
        return
    job_ids = session.scalars(
        select(WatchRelease.job_id)
        .where(WatchRelease.watch_id == rule.id, WatchRelease.repo_id == release.repo_id)
        .where(WatchRelease.revision_sha == release.sha)
        .order_by(WatchRelease.template_index)
    ).all()
    taken = session.execute(
        update(WatchSighting)
        .where(WatchSighting.watch_id == rule.id, WatchSighting.repo_id == release.repo_id)
        .where(WatchSighting.revision_sha == release.sha, WatchSighting.state != "taken")
        .values(state="taken", reason=None)
    )
    if taken.rowcount == 1:
        event = _event(session, rule, release, "jobs_created", source, job_ids=[str(j) for j in job_ids if j])
        session.execute(
            update(WatchRelease)
            .where(WatchRelease.watch_id == rule.id, WatchRelease.repo_id == release.repo_id)
            .where(WatchRelease.revision_sha == release.sha, WatchRelease.event_id.is_(None))
            .values(event_id=event.id)
        )
        log.info("rule %s: %d job(s) for %s@%s", rule.id, len(job_ids), release.repo_id, release.sha[:12])
    session.commit()


def _publish(job: Job) -> None:
    """Send the new job's message now rather than at the workers' next dispatch (best effort)."""
    from worker.outbox import publish_one

    try:
        publish_one(job.id)
    except Exception as err:  # broker down: the row stays unpublished and a dispatcher sends it
        log.warning("job %s not published now (%s); the dispatcher will", job.id, type(err).__name__)


def _caller(session: Session, rule: Watch) -> Caller | None:
    """The rule's owner as its token defines them (output allow-list included); None once it is revoked."""
    token = session.get(ApiToken, rule.token_id) if rule.token_id else None
    session.commit()
    if token is None or token.revoked_at is not None:
        return None
    return Caller(rule.owner, token.id, token.output_patterns)


def _job_for(
    session: Session,
    caller: Caller,
    rule: Watch,
    release: Release,
    index: int,
    template: dict[str, object],
    detected: uuid.UUID | None,
) -> Job:
    """The template's job for this release: the one already made under its key, or a new one."""
    digest = hashlib.sha256(f"{rule.id}|{release.repo_id}|{release.sha}|{index}".encode()).hexdigest()[:40]
    key = f"watch-{digest}"
    existing = session.scalar(select(Job).where(Job.owner == caller.owner, Job.idempotency_key == key))
    session.commit()
    if existing is not None:  # whatever its state: a failed job is not re-run by the rule
        return existing
    body = JobCreate.model_validate({**template, "model": release.repo_id, "revision": release.sha})
    origin = jobs.JobOrigin(watch_id=rule.id, watch_event_id=detected, callback_id=rule.callback_id)
    try:
        job, _ = jobs.submit(session, caller, body, key, origin)
    except jobs.IdempotencyConflict:  # the rule's templates changed while another process made this job
        session.rollback()
        job = session.scalars(select(Job).where(Job.owner == caller.owner, Job.idempotency_key == key)).one()
        session.commit()
    return job
