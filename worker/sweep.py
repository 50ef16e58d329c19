"""The worker's housekeeping thread: the outbox dispatcher and the stale-job sweep, without Celery beat.

Beat would be one more process to deploy and keep single; everything here is idempotent (conditional
UPDATEs, duplicate messages are no-op claims), so each worker's main process simply runs it from a daemon
thread: every `dispatch_interval_s` it publishes accepted jobs whose message is not sent yet
(`worker.outbox`) and sends due callbacks (`worker.deliveries`), and every `lease_s / 2` it re-queues jobs
of dead workers and re-publishes messages the broker lost. It lives in the main process, not the pool
children, so it keeps running while a child is busy with a long job — or after a child was killed, which is
when it matters.

After this process itself failed to reach the database, lease expiry waits one lease period: the workers
could not renew their leases during the outage either, and must not be taken for dead because of it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from celery.signals import worker_ready, worker_shutdown

from app.db import database_unavailable
from app.settings import get_settings
from worker import deliveries, outbox
from worker.claim import requeue_stale

log = logging.getLogger(__name__)

_stop = threading.Event()
_thread: threading.Thread | None = None
_last_db_error = float("-inf")  # time.monotonic() of the last failed database call of this thread


def _guard(action: str, fn: Callable[[], object]) -> None:
    global _last_db_error
    try:
        fn()
    except Exception as err:
        if database_unavailable(err):
            _last_db_error = time.monotonic()
            log.warning("%s: database unavailable (%s); retrying next period", action, type(err).__name__)
        else:
            log.exception("%s failed; retrying next period", action)


def dispatch_once() -> None:
    """Publish unpublished queued jobs and send due callbacks; errors are logged and retried next period."""
    _guard("dispatch", outbox.publish_pending)
    _guard("callbacks", deliveries.deliver_due)


def sweep_once() -> None:
    """Recover jobs of dead workers and lost messages; errors are logged and the next period tries again."""
    if time.monotonic() - _last_db_error < get_settings().lease_s:
        log.info("sweep: the database was unreachable less than one lease ago; no lease is expired yet")
    else:
        _guard("stale-job sweep", requeue_stale)
    _guard("lost-message check", outbox.republish_lost)
    dispatch_once()


def _loop(dispatch_s: float, sweep_s: float) -> None:
    next_sweep = time.monotonic() + sweep_s
    while not _stop.wait(dispatch_s):
        if time.monotonic() >= next_sweep:
            sweep_once()
            next_sweep = time.monotonic() + sweep_s
        else:
            dispatch_once()


def start(interval_s: float | None = None) -> threading.Thread:
    """Sweep now, then every `interval_s` (default lease_s / 2), dispatching in between; idempotent."""
    global _thread
    if _thread is not None and _thread.is_alive():
        return _thread
    settings = get_settings()
    sweep_s = interval_s if interval_s is not None else max(1.0, settings.lease_s / 2)
    dispatch_s = min(sweep_s, max(0.2, settings.dispatch_interval_s))
    _stop.clear()
    sweep_once()
    _thread = threading.Thread(target=_loop, args=(dispatch_s, sweep_s), name="slimkit-sweep", daemon=True)
    _thread.start()
    log.info("dispatching every %.1f s, sweeping every %.0f s", dispatch_s, sweep_s)
    return _thread


def stop() -> None:
    _stop.set()


@worker_ready.connect
def _on_worker_ready(**_: object) -> None:
    start()


@worker_shutdown.connect
def _on_worker_shutdown(**_: object) -> None:
    stop()
