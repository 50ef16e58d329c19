"""Alembic environment: runs migrations on the app's database (or a connection handed in by tests)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, Engine, text

from app.db import make_engine
from app.models import Base
from app.settings import get_settings

config = context.config
target_metadata = Base.metadata
ADVISORY_LOCK = 7_311_846  # serialises concurrent `upgrade head` of API and workers starting together on Postgres


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_server_default=True,
    )
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK})
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    given = config.attributes.get("connection")
    if isinstance(given, Connection):
        run(given)
        return
    engine = (
        given
        if isinstance(given, Engine)
        else make_engine(config.get_main_option("sqlalchemy.url") or get_settings().database_url)
    )
    with engine.connect() as connection:
        run(connection)
        connection.commit()


if context.is_offline_mode():
    context.configure(url=get_settings().database_url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_online()
