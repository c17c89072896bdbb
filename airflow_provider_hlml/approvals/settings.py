"""Service settings, read from ``HLML_APPROVALS_*`` environment variables."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from airflow_provider_hlml.review.links import safe_link

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
    :param webhook_urls: comma-separated absolute http(s) URLs (at most 320 characters each)
        notified when a request is decided or cancelled (HumanLayer's ``function_call.completed``
        / ``human_contact.completed`` bodies), e.g. the Airflow API server's
        ``/hlml/webhooks/humanlayer`` so waiting gates resume at once. The notifications are an
        outbox (``deliveries`` rows, channel ``webhook``): each is POSTed at least once, retried
        with backoff until the receiver answers 2xx, also when the decision was made while no
        service process ran (with the CLI, or before a restart). Receivers must be idempotent.
    :param webhook_secret: HMAC-SHA256 secret signing each webhook body (``X-HLML-Signature``).
    :param webhook_attempts: POSTs of one notification before it is given up as failed (the
        backoff doubles up to 600 s, so the default 40 keeps trying for about five hours).
    :param webhook_window_seconds: requests settled longer ago than this are never notified: a
        decision made while no delivery worker ran is notified when one next runs within this
        window.
    :param webhook_timeout_seconds: seconds one POST may take.
    :param public_url: the service's API base as reviewers reach it (``http(s)://host/humanlayer/v1``;
        mounted in Airflow: ``{airflow}/hlml/humanlayer/v1``); one-click links start with it (no
        links without it).
    :param signing_key_file: a PEM Ed25519 private key the service signs decisions with (a mounted
        secret); "" = a key the service generates on first start and keeps in its database.
    :param airflow_url: the Airflow UI as reviewers reach it: messages link to the gate's task and
        to the request in the dashboard ("" = no Airflow links).
    :param mlflow_url: the MLflow UI: messages link to the model versions ("" = no MLflow links).
    :param smtp_url: ``smtp://host[:port]`` (plain), ``smtp+starttls://`` or ``smtps://`` (TLS)
        to deliver e-mail through ("" = no e-mail). Credentials only in ``smtp_username`` and
        ``smtp_password``, never in the URL.
    :param smtp_from: the From address of the service's e-mail.
    :param slack_bot_token: a Slack app's bot token (``xoxb-...``) to post requests ("" = no Slack).
    :param slack_signing_secret: the Slack app's signing secret; the interactivity endpoint
        (``{prefix}/hlml/slack/interactions``) refuses everything without it.
    :param slack_api_url: Slack's Web API base (a stand-in's in tests).
    :param slack_channel: the Slack channel requests go to when their contact channel names none.
    :param slack_users: ``{"<slack user id>": "<principal>"}`` (JSON); a Slack user not listed is
        the principal whose e-mail address Slack's ``users.info`` gives.
    :param link_ttl_seconds: how long a one-click link is valid (default: until the request's
        deadline, or ``link_default_ttl_seconds`` when the gate set none).
    :param link_default_ttl_seconds: a one-click link's lifetime when the request has no deadline.
    :param remind_after_seconds: default reminder delay for requests whose gate sets no ladder (0 = off).
    :param escalate_after_seconds: default escalation delay (0 = off).
    :param escalate_to: comma-separated people or ``group:<name>`` the default escalation adds.
    :param repeat_every_seconds: after the last step, remind again this often (0 = off).
    :param max_reminders: reminders per request at most.
    :param alert_to: comma-separated recipients of operational alerts: e-mail addresses, and
        ``slack:<channel>`` for Slack.
    :param alert_pending_seconds: alert when a request is pending longer than this (0 = off).
    :param alert_pending_count: alert when more than this many requests are pending (0 = off).
    :param delivery_interval: seconds between the delivery worker's checks for due work (a new
        request made by this process wakes it at once).
    :param delivery_attempts: sends of one notice (e-mail, Slack) before it is given up as failed
        (webhooks have ``webhook_attempts``).
    :param delivery_concurrency: sends in flight at once per process.
    :param delivery_in_server: whether the server processes deliver (``serve --no-deliver`` turns
        it off, for ``hlml-approvals deliver`` processes of their own).
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
    webhook_attempts: int = Field(default=40, ge=1, le=1000)
    webhook_window_seconds: float = Field(default=86_400, gt=0)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    public_url: str = ""
    signing_key_file: str = ""
    airflow_url: str = ""
    mlflow_url: str = ""
    smtp_url: str = ""
    smtp_username: str = ""
    smtp_password: SecretStr | None = None
    smtp_from: str = "hlml-approvals@localhost"
    slack_bot_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_api_url: str = "https://slack.com/api/"
    slack_channel: str = ""
    slack_users: dict[str, str] = Field(default_factory=dict)
    link_ttl_seconds: float = Field(default=0, ge=0)
    link_default_ttl_seconds: float = Field(default=7 * 86_400, gt=0)
    remind_after_seconds: float = Field(default=0, ge=0)
    escalate_after_seconds: float = Field(default=0, ge=0)
    escalate_to: str = ""
    repeat_every_seconds: float = Field(default=0, ge=0)
    max_reminders: int = Field(default=5, ge=0, le=100)
    alert_to: str = ""
    alert_pending_seconds: float = Field(default=0, ge=0)
    alert_pending_count: int = Field(default=0, ge=0)
    delivery_interval: float = Field(default=1.0, gt=0, le=60)
    delivery_attempts: int = Field(default=8, ge=1, le=100)
    delivery_concurrency: int = Field(default=8, ge=1, le=64)
    delivery_in_server: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    db_pool_size: int = Field(default=20, ge=1)

    @property
    def webhook_url_list(self) -> list[str]:
        """``webhook_urls`` split on commas and whitespace."""
        return [u for u in self.webhook_urls.replace(",", " ").split() if u]

    @property
    def escalate_to_list(self) -> list[str]:
        """``escalate_to`` split on commas and whitespace."""
        return _split(self.escalate_to)

    @property
    def alert_to_list(self) -> list[str]:
        """``alert_to`` split on commas and whitespace."""
        return _split(self.alert_to)

    @property
    def delivers(self) -> bool:
        """Whether any channel (e-mail, Slack, webhook URLs) is configured (the delivery worker
        runs only then)."""
        return bool(self.smtp_url or self.slack_bot_token or self.webhook_url_list)

    @field_validator(
        "smtp_password", "slack_bot_token", "slack_signing_secret", "webhook_secret", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # docker-compose passes an unset variable as "": that is no secret, not an empty one.
        return None if value == "" else value

    @model_validator(mode="after")
    def _check_urls(self) -> ApprovalsSettings:
        for name in ("public_url", "airflow_url", "mlflow_url"):
            value = getattr(self, name)
            if value and (safe_link(value) is None or value.startswith("/")):
                raise ValueError(f"{name} must be an absolute http(s) URL without credentials")
            setattr(self, name, value.rstrip("/"))
        for url in self.webhook_url_list:
            parts = urlsplit(url)
            # 320: what a delivery row's recipient holds (the URL is the notification's recipient).
            if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 320:
                raise ValueError("webhook_urls must be absolute http(s) URLs of at most 320 characters")
        return self


def _split(value: str) -> list[str]:
    return [v for v in value.replace(",", " ").split() if v]
