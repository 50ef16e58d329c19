"""The Celery application shared by the API (which only enqueues) and the workers.

Postgres is the source of truth, so no result backend is configured. Messages are acknowledged late and
rejected when a worker process dies, so a crash re-delivers the job; the conditional claim in the database
makes a re-delivered or duplicated message a no-op when the job is already running or finished.

A broker outage does not touch a running job. The job's progress, lease and outcome live in Postgres, so
the pool child keeps computing while the worker's main process reconnects (forever, with back-off). Its
message stays unacknowledged meanwhile: with the Redis transport the late ack after the outage opens a new
connection and removes the message from Redis's `unacked` set; if the ack itself falls into an outage, the
message stays there and Redis hands it out again after `visibility_timeout_s`, where `claim` finds the job
no longer queued and drops it. Cancelling late-acked tasks on connection loss (Celery's
`worker_cancel_long_running_tasks_on_connection_loss`) would instead kill every running job at each Redis
blip and cost it an attempt, so it is off.
"""

from __future__ import annotations

import warnings

from celery import Celery
from celery.exceptions import CPendingDeprecationWarning

from app.settings import get_settings

RUN_JOB = "worker.tasks.run_job"
# Release detection (watch rules) runs on a queue of its own: a poll must never wait behind a compression.
RECONCILE_WATCHES = "worker.watch_tasks.reconcile"  # Celery beat, every `watch_poll_s`
PROCESS_HUB_NOTIFICATIONS = "worker.watch_tasks.process_notifications"  # nudged by POST /hooks/hub
# Redis sockets: a hung broker (stopped process, dropped route) must surface as an error the consumer
# reconnects from, not block the worker's main process (its sweep publishes, its acks) forever. The
# consumer's BRPOP returns within 1 s, so 10 s never cuts a healthy reply.
BROKER_SOCKET_TIMEOUT_S = 10.0
BROKER_CONNECT_TIMEOUT_S = 5.0
BROKER_HEALTH_CHECK_S = 10  # kombu's liveness check of the long-lived BRPOP / pub-sub connections

# Celery warns at every connection loss that the default of the setting below will change in 6.0; the
# setting is explicit here, so the warning is only noise in the worker log during a broker outage.
warnings.filterwarnings("ignore", category=CPendingDeprecationWarning, message=r"(?s).*cancels all currently")


def make_celery() -> Celery:
    settings = get_settings()
    app = Celery("slimkit", broker=settings.broker_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.gpu_queue,
        task_routes={
            RUN_JOB: {"queue": settings.gpu_queue},
            RECONCILE_WATCHES: {"queue": settings.control_queue},
            PROCESS_HUB_NOTIFICATIONS: {"queue": settings.control_queue},
        },
        beat_schedule=beat_schedule(),
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_max_retries=None,  # a worker that gave up would strand its running job's message
        broker_transport_options=transport_options(),
        # Keep running late-acked tasks when the broker connection drops (see the module docstring).
        # broker_heartbeat is not set: it is AMQP-only; Redis liveness is `health_check_interval` below.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        include=["worker.tasks", "worker.watch_tasks"],
    )
    return app


def beat_schedule() -> dict[str, dict[str, object]]:
    """The reconciling poller: one run per period; a run not started within the period is dropped (the next
    one does the same work), so a stopped watcher does not find a backlog of identical polls."""
    period = get_settings().watch_poll_s
    if period <= 0:
        return {}
    return {"reconcile-watches": {"task": RECONCILE_WATCHES, "schedule": period, "options": {"expires": period}}}


def transport_options() -> dict[str, object]:
    """Redis: a visibility timeout above the longest job and bounded sockets. Folder broker: its folders."""
    settings = get_settings()
    if not settings.broker_url.startswith("filesystem://"):
        return {
            "visibility_timeout": settings.visibility_timeout_s,
            "socket_timeout": BROKER_SOCKET_TIMEOUT_S,
            "socket_connect_timeout": BROKER_CONNECT_TIMEOUT_S,
            "socket_keepalive": True,
            "health_check_interval": BROKER_HEALTH_CHECK_S,
        }
    folders = {name: settings.broker_data_dir / name for name in ("queue", "processed", "control")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(folders["queue"]),
        "data_folder_out": str(folders["queue"]),
        "processed_folder": str(folders["processed"]),
        "control_folder": str(folders["control"]),  # else kombu writes ./control in the working directory
        "store_processed": False,
    }


celery_app = make_celery()


def enqueue(job_id: str) -> None:
    """Send the job's message (task id = job id, so duplicates are recognisable in broker tools)."""
    celery_app.send_task(RUN_JOB, args=[job_id], task_id=job_id, queue=get_settings().gpu_queue)
