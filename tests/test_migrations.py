"""Migrations build the whole schema, match the models, and go down and up again, on Postgres and SQLite."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from tests.service_fixtures import ADMIN_URL, alembic_config


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrations.db'}"
        return
    name = f"slimkit_mig_{uuid.uuid4().hex[:8]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_single_head() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1


def test_upgrade_matches_models_then_down_and_up(empty_database: str) -> None:
    cfg = alembic_config(empty_database)
    command.upgrade(cfg, "head")
    command.check(cfg)  # raises if the models and the migrated schema differ (what `alembic check` gates)
    engine = create_engine(empty_database)
    assert {"job", "api_token"} <= set(inspect(engine).get_table_names())
    with engine.begin() as conn:  # server defaults work on this dialect (a literal now() breaks SQLite inserts)
        conn.execute(
            text("INSERT INTO api_token (id, owner, name, token_hash) VALUES (:i, 'o', '', 'h')"),
            {"i": uuid.uuid4().hex if empty_database.startswith("sqlite") else str(uuid.uuid4())},
        )
    command.downgrade(cfg, "base")
    assert "job" not in inspect(engine).get_table_names()
    command.upgrade(cfg, "head")
    engine.dispose()
