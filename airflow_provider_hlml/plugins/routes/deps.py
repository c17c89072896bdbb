"""Dependencies the dashboard routes share: ``Data`` (the app's :class:`DashboardData`),
``CurrentUser`` (the authenticated Airflow user) and ``Page`` (renders a template for them)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from airflow_provider_hlml.plugins import charts, views
from airflow_provider_hlml.plugins.auth import CurrentUser, Identity
from airflow_provider_hlml.plugins.routes.data import DashboardData
from airflow_provider_hlml.review.links import safe_link

__all__ = ["CurrentUser", "Data", "Page", "PageRenderer", "templates"]

TEMPLATES_DIR = Path(__file__).parent.parent / "templates"


def get_data(request: Request) -> DashboardData:
    """The :class:`DashboardData` of the app serving the request."""
    data: DashboardData = request.app.state.data
    return data


Data = Annotated[DashboardData, Depends(get_data)]


def format_duration(seconds: Any) -> str:
    """``42s``, ``3.5m``, ``2.0h`` or ``1.5d``; ``-`` for no value."""
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


@functools.cache
def templates() -> Environment:
    """The Jinja2 environment of the pages (autoescaped, with the chart helpers and filters)."""
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(charts=charts)
    env.filters["pct"] = lambda v: "-" if v is None else f"{100 * float(v):.0f}%"
    env.filters["duration"] = format_duration
    env.filters["safe_link"] = safe_link
    env.filters["delta"] = views.format_delta
    return env


class PageRenderer:
    """Renders a dashboard page for the user of one request."""

    def __init__(self, request: Request, user: Any, data: DashboardData) -> None:
        self.request = request
        self.user = user
        self.data = data

    def render(self, template: str, tab: str, **context: Any) -> HTMLResponse:
        root = self.request.scope.get("root_path", "").rstrip("/")
        html = (
            templates()
            .get_template(template)
            .render(
                root=root,
                tab=tab,
                user=Identity.of(self.user),
                refresh_seconds=self.data.settings.refresh_seconds,
                airflow_base=self.data.base_path,
                **context,
            )
        )
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})


def get_page(request: Request, user: CurrentUser, data: Data) -> PageRenderer:
    return PageRenderer(request, user, data)


Page = Annotated[PageRenderer, Depends(get_page)]
