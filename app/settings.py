"""Deployment configuration from the environment (prefix `SLIMKIT_`), validated once at start-up.

Outside `environment=development` the settings refuse the single-machine defaults and insecure values: an
embedded SQLite database, a folder broker, an empty token pepper. The Hub write token is read from
`SLIMKIT_HUB_TOKEN` or from the file named by `SLIMKIT_HUB_TOKEN_FILE` (a mounted secret); it lives only
in process memory — never in job rows, logs or responses.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLIMKIT_", env_file=".env", env_ignore_empty=True, extra="ignore")

    environment: Literal["development", "production"] = "development"
    database_url: str = "sqlite:///./slimkit.db"
    broker_url: str = "redis://127.0.0.1:6379/0"  # or "filesystem://" (single machine, no server)
    broker_data_dir: Path = Path("./work/broker")  # message folder of the filesystem broker
    gpu_queue: str = "gpu"
    control_queue: str = "control"  # release detection (watch rules): light tasks, never behind a compression
    token_pepper: SecretStr = SecretStr("")  # mixed into API-token hashes; required in production
    hub_token: SecretStr | None = None
    hub_token_file: Path | None = None
    work_dir: Path = Path("./work")  # per-job scratch space of the workers (removed after each job)
    retry_after_s: int = 5
    visibility_timeout_s: int = 6 * 3600  # above the longest job, else Redis redelivers a running job
    lease_s: int = 300  # a running job whose worker stopped heart-beating for this long is re-queued
    max_attempts: int = 3  # claims of one job (worker deaths included) before it is failed instead of re-queued
    # A queued job published this long ago whose message is neither waiting in the broker nor delivered to a
    # worker is published again (worker.outbox.republish_lost).
    stale_queued_s: int = 60
    hub_namespace: str | None = None  # namespace of default output repos; None: the job owner's name
    # Where an owner's jobs may push, as glob patterns of repo ids with `{owner}` standing for the owner;
    # None: "<hub_namespace>/<owner>-*" when hub_namespace is set, else "<owner>/*". A token's own
    # `output_patterns` (app.cli create-token --allow-output) replace this default for that token.
    output_patterns: list[str] | None = None
    max_body_bytes: int = 8 * 1024 * 1024  # larger request bodies are refused with 413 before parsing
    broker_timeout_s: float = 2.0  # connect + socket timeout of every broker call made by the API
    dispatch_interval_s: float = 2.0  # how often workers publish accepted jobs whose message is not sent yet
    db_connect_timeout_s: int = 3  # a request fails fast (503) instead of hanging while the database is down
    db_retry_s: float = 180.0  # how long a running job waits out a database outage before giving up
    hub_push_attempts: int = 4  # upload tries on 5xx / connection errors before `hub_push_failed`
    hub_download_attempts: int = 4  # tries of each Hub read (model info, files) on 5xx / connection errors
    hub_retry_base_s: float = 2.0  # first back-off delay, doubled after each failed try
    reload_check_timeout_s: int = 1800  # the fresh-process reload check of the saved checkpoint
    callback_timeout_s: float = 10.0  # one callback POST, connect to last byte
    callback_max_attempts: int = 12  # then the event is abandoned (kept in the outbox with its last error)
    callback_retry_base_s: float = 5.0  # back-off after the first failed attempt, doubled after each
    callback_retry_max_s: float = 3600.0  # back-off cap (12 attempts span about 3 hours)
    hub_webhook_secret: SecretStr | None = None  # POST /hooks/hub answers 404 until set (>= 16 characters)
    watch_poll_s: float = 300.0  # Celery beat period of the reconciling poller (also re-checks waiting releases)
    watch_poll_limit: int = 50  # newest models listed per watched author and poll
    torch_threads: int | None = None  # per worker process; None: the CPUs available / worker concurrency

    @model_validator(mode="after")
    def _refuse_insecure_defaults(self) -> Settings:
        if self.database_url.startswith("postgres://"):
            self.database_url = "postgresql+psycopg://" + self.database_url.removeprefix("postgres://")
        if self.environment == "production":
            problems = []
            if self.database_url.startswith("sqlite"):
                problems.append("SLIMKIT_DATABASE_URL must point at Postgres")
            if self.broker_url.startswith("filesystem"):
                problems.append("SLIMKIT_BROKER_URL must point at Redis")
            if len(self.token_pepper.get_secret_value()) < 16:
                problems.append("SLIMKIT_TOKEN_PEPPER must be set (>= 16 characters)")
            secret = self.hub_webhook_secret
            if secret is not None and len(secret.get_secret_value()) < 16:
                problems.append("SLIMKIT_HUB_WEBHOOK_SECRET must have >= 16 characters")
            if problems:
                raise ValueError("insecure settings for production: " + "; ".join(problems))
        return self

    def hub_write_token(self) -> str | None:
        if self.hub_token is not None:
            return self.hub_token.get_secret_value()
        if self.hub_token_file is not None:
            return self.hub_token_file.read_text().strip() or None
        return None


@lru_cache
def get_settings() -> Settings:
    return Settings()
