"""Settings refuse the single-machine defaults and insecure values in production."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.settings import Settings


def test_production_refuses_embedded_defaults_and_empty_pepper() -> None:
    with pytest.raises(ValidationError) as err:
        Settings(environment="production", database_url="sqlite:///x.db", broker_url="filesystem://", _env_file=None)
    text = str(err.value)
    assert "SLIMKIT_DATABASE_URL must point at Postgres" in text and "SLIMKIT_TOKEN_PEPPER" in text
    assert "SLIMKIT_BROKER_URL must point at Redis" in text


def test_production_accepts_a_real_deployment() -> None:
    s = Settings(
        environment="production",
        database_url="postgres://u:p@db/slimkit",
        broker_url="redis://r:6379/0",
        token_pepper="x" * 32,
        _env_file=None,
    )
    assert s.database_url.startswith("postgresql+psycopg://")


def test_hub_token_comes_from_a_secret_file(tmp_path) -> None:
    secret = tmp_path / "hf_token"
    secret.write_text("hf_secret\n")
    assert Settings(hub_token_file=secret, _env_file=None).hub_write_token() == "hf_secret"
    assert "hf_secret" not in repr(Settings(hub_token="hf_secret", _env_file=None))
