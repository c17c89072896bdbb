"""The ``hlml`` Airflow plugin: the dashboard and the built-in approvals service in the API server.

Registered through the ``airflow.plugins`` entry point. Every Airflow process loads plugins
(scheduler, triggerer, ``airflow dags list``), but only the API server mounts ``fastapi_apps``:
the apps are therefore built on first access of that attribute, so importing this module stays
cheap and nothing opens a database or imports FastAPI elsewhere.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from typing import Any

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_hlml import settings as hlml_settings
from airflow_provider_hlml.listeners.workflow_logging import workflow_logging_listener
from airflow_provider_hlml.plugins.settings import (
    APPROVALS_SUBPATH,
    DASHBOARD_PREFIX,
    WEBHOOKS_SUBPATH,
    airflow_base_path,
)
from airflow_provider_hlml.utils.http import redact_url

log = logging.getLogger(__name__)


@functools.cache
def build_fastapi_apps() -> tuple[dict[str, Any], ...]:
    """The apps Airflow mounts: the approvals service (when enabled) first, then the dashboard.

    The approvals service is listed first so its longer prefix wins over ``/hlml``.
    """
    from airflow_provider_hlml.plugins.app import DashboardData, create_dashboard_app
    from airflow_provider_hlml.plugins.settings import DashboardSettings
    from airflow_provider_hlml.plugins.webhooks import create_webhook_app

    settings = DashboardSettings.from_airflow_conf()
    apps: list[dict[str, Any]] = []
    approvals_app = (
        build_embedded_approvals(settings.approvals_database_url) if settings.approvals_enabled else None
    )
    if approvals_app is not None:
        from airflow_provider_hlml.plugins.wake import wake_listener

        # Decisions recorded here reach the waiting gate at once, not at the triggerer's next turn.
        approvals_app.state.approvals.publisher.add_listener(wake_listener)
        apps.append(
            {
                "app": approvals_app,
                "url_prefix": DASHBOARD_PREFIX + APPROVALS_SUBPATH,
                "name": "HLML approvals service",
            }
        )
    start_reconciler()
    apps.append(
        {
            "app": create_webhook_app(
                DashboardData(settings, embedded_approvals=approvals_app),
                settings.webhook_secret,
                settings.mlflow_webhook_secret,
            ),
            "url_prefix": DASHBOARD_PREFIX + WEBHOOKS_SUBPATH,
            "name": "HLML webhooks",
        }
    )
    apps.append(
        {
            "app": create_dashboard_app(settings, embedded_approvals=approvals_app),
            "url_prefix": DASHBOARD_PREFIX,
            "name": "HLML dashboard",
        }
    )
    return tuple(apps)


@functools.cache
def start_reconciler() -> Any:
    """Start this API server's reconciliation of parked gates (:class:`~.wake.Reconciler`), once."""
    from airflow_provider_hlml.plugins.wake import Reconciler

    reconciler = Reconciler(hlml_settings.reconcile_interval())
    reconciler.start()
    return reconciler


def build_embedded_approvals(database_url: str) -> Any | None:
    """The built-in approvals service on ``database_url``, migrated; None (logged) when it cannot start.

    A broken approvals database must not take the Airflow API server down with it: the
    dashboard then shows the backend as unavailable.
    """
    from tenacity import retry, stop_after_attempt, wait_fixed

    from airflow_provider_hlml.approvals import ApprovalsSettings, create_app
    from airflow_provider_hlml.approvals.db import migrate

    # Several API server workers may start at once; one that loses the race finds the schema done.
    migrate_with_retry = retry(stop=stop_after_attempt(3), wait=wait_fixed(1), reraise=True)(migrate)
    try:
        migrate_with_retry(database_url)
        settings = ApprovalsSettings(database_url=database_url, prefix="", migrate_on_start=False)
        return create_app(settings.model_copy(update=embedded_urls(os.environ)))
    except Exception:
        log.exception("The built-in approvals service could not start on %s", redact_url(database_url))
        return None


class _LazyFastAPIApps:
    """Class attribute that builds the apps when Airflow first reads ``fastapi_apps``."""

    def __get__(self, obj: object, objtype: type | None = None) -> list[dict[str, Any]]:
        return list(build_fastapi_apps())


def _external_views() -> list[dict[str, Any]]:
    base = airflow_base_path()
    return [
        {
            "name": "ML Approvals",
            "href": f"{base}{DASHBOARD_PREFIX}/",
            "url_route": "hlml",
            "destination": "nav",
            "nav_top_level": True,
            "icon": f"{base}{DASHBOARD_PREFIX}/static/icon.svg",
        }
    ]


def plugin_listeners() -> list[Any]:
    """The workflow-logging listener, unless ``[hlml] workflow_logging_enabled`` is off.

    Off means not registered at all: Airflow then calls nothing of ours when runs finish, and
    features that Airflow allows only without listeners (``end_from_trigger`` operators) work.
    """
    if not hlml_settings.workflow_logging_enabled():
        return []
    return [workflow_logging_listener]


class HlmlPlugin(AirflowPlugin):
    """Dashboard of human-gated ML pipelines inside the Airflow UI (``/hlml``).

    Adds a top-level "ML Approvals" entry to the Airflow navigation that shows the dashboard in
    the Airflow page, mounts the built-in approvals service at ``/hlml/humanlayer/v1`` when
    ``[hlml] approvals_enabled`` is true, receives approvals webhooks at
    ``/hlml/webhooks/humanlayer`` and MLflow registry webhooks (the alias guard) at
    ``/hlml/webhooks/mlflow``.
    """

    name = "hlml"
    fastapi_apps = _LazyFastAPIApps()
    external_views = _external_views()
    listeners: list[Any] = plugin_listeners()


def embedded_urls(environ: Mapping[str, str]) -> dict[str, str]:
    """Where reviewers reach the mounted service and the Airflow UI, from ``[api] base_url``: the
    defaults of ``HLML_APPROVALS_PUBLIC_URL`` (one-click links) and ``HLML_APPROVALS_AIRFLOW_URL``
    (links in messages) when they are not set."""
    from airflow.configuration import conf

    base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
    if not base.startswith(("http://", "https://")):
        return {}
    urls = {
        "public_url": base + DASHBOARD_PREFIX + APPROVALS_SUBPATH,
        "airflow_url": base,
    }
    return {k: v for k, v in urls.items() if f"HLML_APPROVALS_{k.upper()}" not in environ}
