"""Fixtures for the job service: a fresh Postgres database per test session, built through migrations.

The database server is the machine's real Postgres (127.0.0.1:5432, trust auth). Each session creates its
own database `slimkit_<random>` (so parallel runs do not collide), migrates it with `alembic upgrade
head` — never `create_all` — and drops it at the end. Tables are emptied between tests; worker
subprocesses see the same committed rows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[1]
ADMIN_URL = os.environ.get("SLIMKIT_TEST_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# A Redis database of its own for the test broker, emptied at session start (queues of other runs are not ours).
BROKER_URL = os.environ.get("SLIMKIT_TEST_BROKER_URL", "redis://127.0.0.1:6379/13")


def alembic_config(url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def reset_app_caches() -> None:
    from app.db import get_engine, session_factory
    from app.settings import get_settings

    get_settings.cache_clear()
    get_engine.cache_clear()
    session_factory.cache_clear()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    name = f"slimkit_{uuid.uuid4().hex[:10]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    previous = os.environ.get("SLIMKIT_DATABASE_URL")
    os.environ["SLIMKIT_DATABASE_URL"] = url
    os.environ["SLIMKIT_BROKER_URL"] = BROKER_URL
    import redis

    redis.Redis.from_url(BROKER_URL).flushdb()
    reset_app_caches()
    command.upgrade(alembic_config(url), "head")
    try:
        yield url
    finally:
        from app.db import get_engine

        get_engine().dispose()
        if previous is None:
            os.environ.pop("SLIMKIT_DATABASE_URL", None)
        else:
            os.environ["SLIMKIT_DATABASE_URL"] = previous
        reset_app_caches()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def db(database_url: str) -> Iterator[Session]:
    """A session on the test database; every table is emptied after the test."""
    from app.db import session_factory

    with session_factory()() as session:
        yield session
    with session_factory()() as session:
        session.execute(text("DELETE FROM watch"))  # its events, sightings and releases cascade
        session.execute(text("DELETE FROM hub_notification"))
        session.execute(text("DELETE FROM callback_delivery"))
        session.execute(text("DELETE FROM job"))
        session.execute(text("DELETE FROM callback_subscription"))
        session.execute(text("DELETE FROM api_token"))
        session.commit()


@pytest.fixture
def make_token(db: Session):
    """make_token(owner) -> a fresh bearer token for that owner."""
    from app.auth import create_token

    def make(owner: str = "alice") -> str:
        return create_token(db, owner, name="test")

    return make
