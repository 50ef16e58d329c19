"""The Celery task and the worker-process hooks.

`run_job` is the whole contract with the broker: claim the job in the database (a redelivered or
duplicated message finds it no longer queued and returns), heartbeat the lease from a side thread while the
pipeline runs, and record the outcome. It is never auto-retried: a compression that failed (an OOM above
all) fails the same way again, and recovery from a dead worker is the sweep's business (`worker.sweep`).

Torch and the engine are imported inside the task, in the pool child: the prefork parent must not
initialise torch's thread pools (or CUDA) before it forks.
"""

from __future__ import annotations

import logging
import os
import threading

from celery.signals import worker_init, worker_process_init

from app.settings import get_settings
from worker import sweep  # noqa: F401  (connects the sweep to worker start-up)
from worker.celery_app import RUN_JOB, celery_app
from worker.claim import claim, finish, heartbeat

log = logging.getLogger(__name__)

_concurrency = 1  # set in the parent by `worker_init`, inherited by the forked children


@worker_init.connect
def _remember_concurrency(sender: object = None, **_: object) -> None:
    global _concurrency
    _concurrency = max(1, int(getattr(sender, "concurrency", 1) or 1))


@worker_process_init.connect
def _init_child(**_: object) -> None:
    """In each pool child: a fresh database pool (never share the parent's sockets) and sane torch threads."""
    from app.db import get_engine

    get_engine().dispose(close=False)
    import torch
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # download/upload bars are noise in a worker log; progress goes to the job row

    threads = get_settings().torch_threads or max(1, len(os.sched_getaffinity(0)) // _concurrency)
    torch.set_num_threads(threads)
    log.info("worker process %d: torch uses %d threads", os.getpid(), threads)


def _heartbeat(job_id: str, worker: str, stop: threading.Event) -> None:
    """Renew the lease every lease_s / 3 while the job runs, so a long stage is not mistaken for a dead one."""
    interval = max(0.5, get_settings().lease_s / 3)
    while not stop.wait(interval):
        try:
            if not heartbeat(job_id, worker):
                return  # finished, or no longer ours: the pipeline finds out at its next write
        except Exception as err:  # database blip: the next beat tries again
            log.warning("heartbeat of job %s failed: %s", job_id, err)


@celery_app.task(name=RUN_JOB, bind=True, acks_late=True, ignore_result=True, max_retries=0)
def run_job(self, job_id: str) -> str:
    """Run one job if it is still queued; returns what happened (for the worker log)."""
    worker = f"{self.request.hostname or 'worker'}/{os.getpid()}"
    # Imported before the claim: the first import (engine, transformers) can outlast a short lease on a
    # loaded machine, and a claimed job has no heartbeat until the thread below starts.
    from worker.pipeline import execute

    if not claim(job_id, worker):
        log.info("job %s is not queued (duplicate or redelivered message, or cancelled); skipped", job_id)
        return "skipped"
    log.info("job %s claimed by %s", job_id, worker)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(job_id, worker, stop), name=f"heartbeat-{job_id}", daemon=True)
    beat.start()
    try:
        outcome = execute(job_id, worker)
    finally:
        stop.set()
        beat.join(timeout=5)
    if outcome is None:
        return "lost"
    if not finish(job_id, worker, outcome.status, outcome.error_code, outcome.message, outcome.result):
        log.warning("job %s: finished as %s but no longer held by %s; not recorded", job_id, outcome.status, worker)
        return "lost"
    log.info("job %s %s%s", job_id, outcome.status.value, f" ({outcome.error_code})" if outcome.error_code else "")
    return outcome.status.value
