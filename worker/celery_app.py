"""The Celery application shared by the API (which only enqueues) and the workers.

Postgres is the source of truth, so no result backend is configured. Messages are acknowledged late and
rejected when a worker process dies, so a crash re-delivers the job; the conditional claim in the database
makes a re-delivered or duplicated message a no-op when the job is already running or finished.
"""

from __future__ import annotations

from celery import Celery

from app.settings import get_settings

RUN_JOB = "worker.tasks.run_job"


def make_celery() -> Celery:
    settings = get_settings()
    app = Celery("slimkit", broker=settings.broker_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.gpu_queue,
        task_routes={RUN_JOB: {"queue": settings.gpu_queue}},
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options(),
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
        include=["worker.tasks"],
    )
    return app


def transport_options() -> dict[str, object]:
    """Redis: a visibility timeout above the longest job. Folder broker (embedded default): its folders."""
    settings = get_settings()
    if not settings.broker_url.startswith("filesystem://"):
        return {"visibility_timeout": settings.visibility_timeout_s}
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
