"""Service settings, read from ``HLML_APPROVALS_*`` environment variables."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///hlml-approvals.db"


class ApprovalsSettings(BaseSettings):
    """Configuration of the approvals service.

    :param database_url: SQLAlchemy URL; a SQLite file by default, ``postgresql://...`` for PostgreSQL.
    :param prefix: path prefix of the HumanLayer-compatible API.
    :param max_body_bytes: request bodies above this size are answered with 413.
    :param max_wait_seconds: upper bound of the long-poll ``?wait=`` parameter.
    :param recheck_interval: seconds between checks for changes made by other processes
        (a second server worker or the CLI writing to the database directly).
    :param auth_cache_seconds: how long a verified API key is trusted without a database read.
    :param inline_reads: run single-row status reads on the event loop (default: only for SQLite,
        where such a read is shorter than a hand-off to a worker thread).
    :param migrate_on_start: run the Alembic migrations when the app is created.
    :param webhook_urls: comma-separated URLs notified when a request is decided or cancelled
        (HumanLayer's ``function_call.completed`` / ``human_contact.completed`` bodies), e.g. the
        Airflow API server's ``/hlml/api/webhooks/humanlayer`` so waiting gates resume at once.
    :param webhook_secret: HMAC-SHA256 secret signing each webhook body (``X-HLML-Signature``).
    :param host: address ``serve`` binds to.
    :param port: port ``serve`` listens on.
    """

    model_config = SettingsConfigDict(env_prefix="HLML_APPROVALS_", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    prefix: str = "/humanlayer/v1"
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_wait_seconds: float = Field(default=30.0, gt=0, le=300)
    recheck_interval: float = Field(default=0.5, gt=0, le=10)
    auth_cache_seconds: float = Field(default=5.0, ge=0)
    inline_reads: bool | None = None
    migrate_on_start: bool = False
    webhook_urls: str = ""
    webhook_secret: SecretStr | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    db_pool_size: int = Field(default=20, ge=1)

    @property
    def webhook_url_list(self) -> list[str]:
        """``webhook_urls`` split on commas and whitespace."""
        return [u for u in self.webhook_urls.replace(",", " ").split() if u]
