"""The dashboard FastAPI app mounted by :class:`~airflow_provider_hlml.plugins.plugin.HlmlPlugin`.

Every route depends on :func:`~airflow_provider_hlml.plugins.auth.require_user` (Airflow does not
authenticate plugin apps). Pages (:mod:`.routes.pages`) are server-rendered Jinja2 with inline SVG
charts; the JSON endpoints under ``/api`` (:mod:`.routes.api`) feed the same data
(:mod:`.routes.data`) and are described by the app's OpenAPI document.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI

from airflow_provider_hlml.plugins.auth import require_user
from airflow_provider_hlml.plugins.routes import api, pages
from airflow_provider_hlml.plugins.routes.data import EMBEDDED_APPROVALS_BASE, DashboardData
from airflow_provider_hlml.plugins.settings import DashboardSettings

__all__ = ["EMBEDDED_APPROVALS_BASE", "DashboardData", "create_dashboard_app"]


def create_dashboard_app(
    settings: DashboardSettings | None = None, *, embedded_approvals: Any | None = None
) -> FastAPI:
    """Build the dashboard app.

    :param settings: dashboard settings (default: read from ``[hlml]``).
    :param embedded_approvals: the built-in approvals app, when mounted in the same server.
    """
    app = FastAPI(
        title="HLML dashboard",
        description="Approvals, experiments and analytics of human-gated ML pipelines. "
        "Every endpoint needs an authenticated Airflow user (JWT bearer or the UI's session cookie).",
        version="1",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(require_user)],
        # No trailing-slash redirects: Starlette would build their Location from the Host header.
        redirect_slashes=False,
    )
    app.state.data = DashboardData(settings or DashboardSettings.from_airflow_conf(), embedded_approvals)
    app.include_router(api.router)
    app.include_router(pages.router)
    return app
