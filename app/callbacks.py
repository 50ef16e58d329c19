"""Signed callbacks (the Standard Webhooks scheme): subscriptions, URL checks, signing, and the outbox rows.

A job may name a callback URL; on its terminal state (and, if asked, on every stage change) the service
POSTs a JSON event to it:

    {"type": "job.succeeded", "timestamp": "2026-12-04T10:00:00Z", "data": <the job, as GET /jobs/{id}>}

with the headers `webhook-id` (msg_…, the same on every retry: receivers drop duplicates),
`webhook-timestamp` (Unix seconds of this attempt) and `webhook-signature`
("v1," + base64 HMAC-SHA256 over "{id}.{timestamp}.{body}" with the subscription's secret, whose key is the
base64 part of `whsec_…`). The event row is written in the same transaction as the state change that caused
it (`enqueue_job_event`), and sent by the workers' dispatcher (`worker.deliveries`), so no crash between
the two loses it.

URLs: https outside development; in production none that resolves to a loopback, private, link-local,
reserved or multicast address — checked at submit and again before every delivery (a DNS answer can change),
so a callback cannot be used to probe the deployment's own network.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import socket
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import CallbackDelivery, CallbackSubscription, Job
from app.settings import get_settings

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A Standard Webhooks secret: whsec_ + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_problem(secret: str) -> str | None:
    """Why a caller-supplied secret is unusable, or None (whsec_ + base64 of 24–64 bytes)."""
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except ValueError:
        return "must be whsec_ followed by base64"
    if not 24 <= len(key) <= 64:
        return "must encode 24 to 64 random bytes"
    return None


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for one attempt."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _blocked(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def url_problem(url: str, resolve: bool = True) -> str | None:
    """Why the service must not POST to `url`, or None. `resolve`: look the host up (production only)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a valid URL"
    production = get_settings().environment == "production"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "must be an http(s) URL with a host"
    if production and parts.scheme != "https":
        return "must use https"
    if parts.username or parts.password:
        return "must not carry credentials (sign requests with the secret instead)"
    if not production:
        return None
    host = parts.hostname
    try:
        addresses = [host] if _is_ip(host) else []
        if not addresses and resolve:
            addresses = [info[4][0] for info in socket.getaddrinfo(host, port or 443, proto=socket.IPPROTO_TCP)]
    except OSError:
        return "has a host name that does not resolve"
    if any(_blocked(a) for a in addresses):
        return "points at a loopback, private, link-local or reserved address"
    return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def subscribe(session: Session, owner: str, url: str, secret: str | None, stage_events: bool) -> CallbackSubscription:
    """A new subscription (added to the session); its secret is generated unless the caller chose one."""
    subscription = CallbackSubscription(
        id=uuid.uuid4(), owner=owner, url=url, secret=secret or new_secret(), stage_events=stage_events
    )
    session.add(subscription)
    return subscription


def enqueue_job_event(session: Session, job_id: uuid.UUID | str, stage: str | None = None) -> bool:
    """Write the job's event into the outbox, in the caller's transaction; False when it has no callback.

    Terminal states give `job.<status>` once per job (unique dedupe key); `stage` gives `job.stage` for a
    subscription that asked for stage changes. The payload is the job as the API shows it, frozen now.
    """
    from app.responses import JobOut  # imported late: app.responses is not needed by the worker's import chain

    session.flush()
    job = session.get(Job, uuid.UUID(str(job_id)), populate_existing=True)
    if job is None or job.callback_id is None:
        return False
    if stage is not None:
        subscription = session.get(CallbackSubscription, job.callback_id)
        if subscription is None or not subscription.stage_events:
            return False
        event, dedupe = "job.stage", f"{job.id}:stage:{stage}:{job.attempts}"  # a re-run passes them again
    elif job.status.finished:
        event, dedupe = f"job.{job.status.value}", f"{job.id}:terminal"
    else:
        return False
    seen = select(CallbackDelivery.id).where(
        CallbackDelivery.subscription_id == job.callback_id, CallbackDelivery.dedupe_key == dedupe
    )
    if session.scalar(seen) is not None:  # e.g. a retried transaction whose first commit did land
        return False
    now = datetime.now(UTC)
    payload: dict[str, Any] = {
        "type": event,
        "timestamp": now.isoformat().replace("+00:00", "Z"),
        "data": JobOut.of(job).model_dump(mode="json", exclude={"callback_secret"}),
    }
    session.add(
        CallbackDelivery(
            id=f"msg_{uuid.uuid4().hex}",
            subscription_id=job.callback_id,
            job_id=job.id,
            event_type=event,
            dedupe_key=dedupe,
            payload=payload,
            attempts=0,
            next_attempt_at=now,
        )
    )
    return True
