"""Engine and sessions. Postgres in deployments, SQLite for the single-machine default.

SQLite gets the pragmas a multi-process writer needs (WAL, a busy timeout, enforced foreign keys); the
job claim is a conditional UPDATE, which is atomic on both dialects (no row locks needed).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Annotated, Any

from fastapi import Depends
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from app.settings import get_settings


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    # A bounded connect: while Postgres is down a request fails fast (503) instead of hanging; a short pool
    # timeout keeps a request from queueing behind a starved pool for half a minute.
    timeout = get_settings().db_connect_timeout_s
    return create_engine(url, pool_pre_ping=True, pool_timeout=10, connect_args={"connect_timeout": timeout})


@lru_cache
def get_engine() -> Engine:
    return make_engine(get_settings().database_url)


@lru_cache
def session_factory() -> sessionmaker[Session]:
    return sessionmaker(get_engine(), expire_on_commit=False)


def get_session() -> Iterator[Session]:
    with session_factory()() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def database_unavailable(err: BaseException) -> bool:
    """A lost or refused connection (server restarting, network blip, starved pool), not a bad statement:
    the API answers 503 for it and a running job waits it out."""
    if isinstance(err, OperationalError | InterfaceError | PoolTimeout):
        return True
    return isinstance(err, DBAPIError) and err.connection_invalidated


def insert_ignoring_conflicts(session: Session, model: Any, values: dict[str, Any]) -> bool:
    """INSERT … ON CONFLICT DO NOTHING (Postgres and SQLite); True if this call inserted the row. The database
    decides who was first, so racing processes cannot both think they created it."""
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    key = model.__table__.primary_key.columns.values()[0]
    # RETURNING, not rowcount: drivers may report -1 for an INSERT's rowcount
    result = session.execute(insert(model).values(**values).on_conflict_do_nothing().returning(key))
    return result.first() is not None
