"""Dashboard settings: the ``[hlml]`` options the dashboard uses (read through
:mod:`airflow_provider_hlml.settings`) and the paths it is served under."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from airflow.configuration import conf

from airflow_provider_hlml import settings as hlml_settings
from airflow_provider_hlml.utils.http import redact_url

#: Path under the Airflow API server where the dashboard is mounted.
DASHBOARD_PREFIX = "/hlml"
#: Path under the dashboard where the built-in approvals service is mounted.
APPROVALS_SUBPATH = "/humanlayer/v1"
#: Path under the dashboard where approvals webhooks are received.
WEBHOOKS_SUBPATH = "/webhooks"


#: ``url`` without any ``user:password@`` part, for messages and logs.
display_url = redact_url


def airflow_base_path() -> str:
    """Path part of ``[api] base_url`` ("" when Airflow is served at the root)."""
    base_url = conf.get("api", "base_url", fallback="") or ""
    return urlsplit(base_url).path.rstrip("/")


def default_approvals_database_url() -> str:
    """SQLite file next to the Airflow metadata DB when ``[hlml] approvals_database_url`` is empty."""
    home = conf.get("core", "airflow_home", fallback="") or os.environ.get("AIRFLOW_HOME") or "."
    return f"sqlite:///{os.path.join(os.path.abspath(home), 'hlml_approvals.db')}"


@dataclass(frozen=True)
class DashboardSettings:
    """What the dashboard needs to know, resolved once when the app is built.

    :param approvals_enabled: mount the built-in approvals service under ``/hlml/humanlayer/v1``.
    :param approvals_database_url: SQLAlchemy URL of the built-in service's database.
    :param delegate_key: approvals API key with the ``delegate`` role used to read requests and to
        decide on behalf of the logged-in user ("" = deciding is disabled with a clear message).
    :param humanlayer_conn_id: connection naming the approvals backend (self-hosted or cloud).
    :param mlflow_conn_id: connection naming the MLflow tracking server.
    :param refresh_seconds: auto-refresh interval of the pages (0 = off).
    :param http_timeout: seconds the dashboard waits for MLflow or the approvals backend.
    :param webhook_secret: secret signing the webhooks of the approvals service ("" = unsigned
        bodies are verified by reading the request again).
    :param mlflow_webhook_secret: secret signing MLflow's registry webhooks ("" = refused).
    :param protected_aliases: the alias guard's protected aliases by model (``[hlml] protected_aliases``).
    """

    approvals_enabled: bool
    approvals_database_url: str
    delegate_key: str
    humanlayer_conn_id: str
    mlflow_conn_id: str
    refresh_seconds: int
    http_timeout: float = 10.0
    webhook_secret: str = field(default="", repr=False)
    mlflow_webhook_secret: str = field(default="", repr=False)
    protected_aliases: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: {"*": ("champion",)})

    @classmethod
    def from_airflow_conf(cls) -> DashboardSettings:
        return cls(
            approvals_enabled=hlml_settings.approvals_enabled(),
            approvals_database_url=hlml_settings.approvals_database_url() or default_approvals_database_url(),
            delegate_key=hlml_settings.approvals_delegate_key(),
            humanlayer_conn_id=hlml_settings.humanlayer_conn_id(),
            mlflow_conn_id=hlml_settings.mlflow_conn_id(),
            refresh_seconds=hlml_settings.dashboard_refresh_seconds(),
            webhook_secret=hlml_settings.webhook_secret(),
            mlflow_webhook_secret=hlml_settings.mlflow_webhook_secret(),
            protected_aliases=_protected_alias_table(),
        )


def _protected_alias_table() -> dict[str, tuple[str, ...]]:
    """``[hlml] protected_aliases``; a malformed value is logged and the default used, so the
    dashboard still starts (the guard itself refuses to run on it)."""
    try:
        return hlml_settings.protected_alias_table()
    except ValueError as exc:
        logging.getLogger(__name__).error(
            "%s: the dashboard shows @%s only", exc, hlml_settings.DEFAULT_PROTECTED_ALIASES
        )
        return {hlml_settings.ANY_MODEL: (hlml_settings.DEFAULT_PROTECTED_ALIASES,)}
