"""Callback drill: the worker dies (SIGKILL, whole process group) after the job finished but before its
callback got through. The event was committed with the job's final state, so the next worker sends it —
once, under the same webhook-id, signed with the secret the submit returned."""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import CallbackDelivery, JobStatus
from tests.callback_receiver import CallbackReceiver
from tests.drills.drill import Drill

pytestmark = pytest.mark.drill


def test_killed_worker_between_finish_and_callback_still_delivers(drill: Drill) -> None:
    worker = drill.infra.worker()
    receiver = CallbackReceiver().start()
    receiver.stop()  # down while the job runs and finishes: the first attempt is refused
    source = drill.source()
    r = drill.post_job(source, callback={"url": receiver.url}, output={"push": False})
    assert r.status_code == 202, r.text
    job_id, secret = r.json()["id"], r.json()["callback_secret"]
    done = drill.wait_finished(job_id, timeout=240)
    assert done.status == JobStatus.succeeded, drill.logs()

    def row() -> CallbackDelivery | None:
        with Session(drill.engine, expire_on_commit=False) as session:
            query = select(CallbackDelivery).where(CallbackDelivery.job_id == uuid.UUID(job_id))
            return session.scalar(query)

    deadline = time.monotonic() + 60
    while (event := row()) is None or event.attempts < 1:
        assert time.monotonic() < deadline, f"no delivery attempt\n{drill.logs()}"
        time.sleep(0.3)
    assert event.delivered_at is None and "could not reach" in (event.last_error or "")
    assert worker.proc is not None
    os.killpg(worker.proc.pid, signal.SIGKILL)  # the crash: no shutdown hooks, nothing flushed
    worker.proc.wait(timeout=30)

    receiver.start()  # back, on the same port
    try:
        drill.infra.worker()  # a fresh worker process: its dispatcher finds the undelivered event
        deadline = time.monotonic() + 90
        while not receiver.events("job.succeeded"):
            assert time.monotonic() < deadline, f"callback never delivered\n{drill.logs()}"
            time.sleep(0.3)
        time.sleep(3)  # a duplicate would arrive within a dispatch period or two
        (delivered,) = receiver.events("job.succeeded")
        assert delivered.headers["webhook-id"] == event.id and delivered.signed_by(secret)
        assert delivered.event["data"]["id"] == job_id and delivered.event["data"]["status"] == "succeeded"
        final = row()
        assert final is not None and final.delivered_at is not None and final.attempts >= 2
    finally:
        receiver.stop()
