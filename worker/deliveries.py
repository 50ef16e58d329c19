"""The callback dispatcher: send due events from the outbox (`app.callbacks`), retrying with back-off.

Runs in every worker's housekeeping thread (`worker.sweep`), next to the job dispatcher. A row is claimed
with a conditional UPDATE that pushes its `next_attempt_at` past the send timeout, so two workers never send
the same attempt, and a worker that dies mid-send leaves it to be retried. Each attempt is signed afresh
(new `webhook-timestamp`) under the same `webhook-id`. A 2xx answer delivers; anything else (an error
status, a timeout, a refused connection, a URL that now resolves somewhere forbidden) schedules the next
attempt after base · 2^(attempt−1) seconds (capped), until `callback_max_attempts`, after which the row is
marked abandoned with its last error. Redirects are not followed (a redirect could point anywhere).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import timedelta

import httpx
from sqlalchemy import select, update

from app.callbacks import sign, url_problem
from app.db import session_factory
from app.models import CallbackDelivery, CallbackSubscription
from app.settings import get_settings
from worker.claim import db_now

log = logging.getLogger(__name__)
BATCH = 20


def backoff_s(attempts: int) -> float:
    """Seconds before the attempt after `attempts` failed ones."""
    settings = get_settings()
    return min(settings.callback_retry_base_s * 2 ** (attempts - 1), settings.callback_retry_max_s)


def attempt(msg_id: str, url: str, secret: str, payload: dict) -> str | None:
    """POST one signed event; None when the receiver took it (2xx), else why not."""
    if problem := url_problem(url):
        return f"url {problem}"
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "slimkit-callbacks",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }
    try:
        answer = httpx.post(url, content=body, headers=headers, timeout=get_settings().callback_timeout_s)
    except httpx.HTTPError as err:
        return f"{type(err).__name__}: could not reach the receiver"
    if 200 <= answer.status_code < 300:
        return None
    return f"the receiver answered HTTP {answer.status_code}"


def deliver_due() -> dict[str, int]:
    """Send every due event once; returns counts of delivered, retried and abandoned events."""
    settings = get_settings()
    counts = {"delivered": 0, "retried": 0, "abandoned": 0}
    with session_factory()() as session:
        now = db_now(session)
        due = session.execute(
            select(CallbackDelivery.id, CallbackDelivery.next_attempt_at)
            .where(
                CallbackDelivery.delivered_at.is_(None),
                CallbackDelivery.abandoned_at.is_(None),
                CallbackDelivery.next_attempt_at <= now,
            )
            .order_by(CallbackDelivery.next_attempt_at)
            .limit(BATCH)
        ).all()
        session.commit()
        for msg_id, seen in due:
            hold = now + timedelta(seconds=settings.callback_timeout_s + 30)
            claimed = session.execute(
                update(CallbackDelivery)
                .where(CallbackDelivery.id == msg_id, CallbackDelivery.next_attempt_at == seen)
                .values(next_attempt_at=hold)
            )
            session.commit()
            if claimed.rowcount != 1:
                continue  # another worker took this attempt
            row = session.execute(
                select(
                    CallbackDelivery.payload,
                    CallbackDelivery.attempts,
                    CallbackSubscription.url,
                    CallbackSubscription.secret,
                )
                .join(CallbackSubscription, CallbackSubscription.id == CallbackDelivery.subscription_id)
                .where(CallbackDelivery.id == msg_id)
            ).one()
            session.commit()  # no transaction stays open while the receiver answers
            error = attempt(msg_id, row.url, row.secret, row.payload)
            tries = row.attempts + 1
            done_at = db_now(session)
            values: dict = {"attempts": tries, "last_error": error}
            if error is None:
                values["delivered_at"] = done_at
                counts["delivered"] += 1
            elif tries >= settings.callback_max_attempts:
                values["abandoned_at"] = done_at
                counts["abandoned"] += 1
                log.warning("callback %s abandoned after %d attempts: %s", msg_id, tries, error)
            else:
                values["next_attempt_at"] = done_at + timedelta(seconds=backoff_s(tries))
                counts["retried"] += 1
                log.info("callback %s attempt %d failed (%s); retrying", msg_id, tries, error)
            session.execute(update(CallbackDelivery).where(CallbackDelivery.id == msg_id).values(**values))
            session.commit()
    return counts
