"""The periodic stale-job sweep, run by every worker without Celery beat.

Beat would be one more process to deploy and keep single; the sweep is idempotent (conditional UPDATEs,
duplicate messages are no-op claims), so each worker's main process simply runs it at start and then every
`lease_s / 2` seconds from a daemon thread. It lives in the main process, not the pool children, so it keeps
running while a child is busy with a long job — or after a child was killed, which is when it matters.
"""

from __future__ import annotations

import logging
import threading

from celery.signals import worker_ready, worker_shutdown

from app.settings import get_settings
from worker.claim import requeue_stale

log = logging.getLogger(__name__)

_stop = threading.Event()
_thread: threading.Thread | None = None


def sweep_once() -> None:
    """One sweep; errors (database briefly down) are logged and the next period tries again."""
    try:
        requeue_stale()
    except Exception:
        log.exception("stale-job sweep failed; retrying next period")


def _loop(interval_s: float) -> None:
    while not _stop.wait(interval_s):
        sweep_once()


def start(interval_s: float | None = None) -> threading.Thread:
    """Sweep now, then every `interval_s` (default lease_s / 2) from a daemon thread; idempotent."""
    global _thread
    if _thread is not None and _thread.is_alive():
        return _thread
    interval = interval_s if interval_s is not None else max(1.0, get_settings().lease_s / 2)
    _stop.clear()
    sweep_once()
    _thread = threading.Thread(target=_loop, args=(interval,), name="slimkit-sweep", daemon=True)
    _thread.start()
    log.info("stale-job sweep every %.0f s", interval)
    return _thread


def stop() -> None:
    _stop.set()


@worker_ready.connect
def _on_worker_ready(**_: object) -> None:
    start()


@worker_shutdown.connect
def _on_worker_shutdown(**_: object) -> None:
    stop()
