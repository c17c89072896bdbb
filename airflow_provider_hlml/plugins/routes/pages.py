"""The dashboard's server-rendered pages, its static files and its OpenAPI document."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, Response

from airflow_provider_hlml.plugins.routes import data as gather
from airflow_provider_hlml.plugins.routes.deps import CurrentUser, Data, Page
from airflow_provider_hlml.plugins.routes.schemas import BackendStatus, StatusFilter

STATIC_DIR = Path(__file__).parent.parent / "static"
STATIC_FILES = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
async def overview_page(page: Page, user: CurrentUser, data: Data) -> HTMLResponse:
    return page.render("overview.html", "overview", **await gather.overview(data, user))


@router.get("/approvals", response_class=HTMLResponse)
async def approvals_page(
    page: Page,
    user: CurrentUser,
    data: Data,
    status_filter: Annotated[StatusFilter, Query(alias="status")] = "pending",
    fn: Annotated[str | None, Query(max_length=200)] = None,
    dag_id: Annotated[str | None, Query(max_length=250)] = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
) -> HTMLResponse:
    selected, everything, problem = await gather.approvals(
        data, user, status_filter, fn or None, dag_id or None, q or None
    )
    return page.render(
        "approvals.html",
        "approvals",
        items=selected,
        filters={"status": status_filter, "fn": fn or "", "dag_id": dag_id or "", "q": q or ""},
        fns=sorted({i["fn"] for i in everything if i["fn"]}),
        dag_ids=sorted({i["dag_id"] for i in everything if i["dag_id"]}),
        pending_count=sum(1 for i in everything if i["status"] == "pending"),
        backends=BackendStatus.of(problem, None),
    )


@router.get("/experiments", response_class=HTMLResponse)
async def experiments_page(page: Page, user: CurrentUser, data: Data) -> HTMLResponse:
    return page.render("experiments.html", "experiments", **await gather.experiments(data, user))


@router.get("/analytics", response_class=HTMLResponse)
async def analytics_page(page: Page, user: CurrentUser, data: Data) -> HTMLResponse:
    return page.render("analytics.html", "analytics", **await gather.analytics(data, user))


@router.get("/static/{name}")
async def static_file(name: str, user: CurrentUser) -> Response:
    if name not in STATIC_FILES:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Not found")
    content = (STATIC_DIR / name).read_bytes()
    return Response(content, media_type=STATIC_FILES[name], headers={"Cache-Control": "private, max-age=300"})


@router.get("/openapi.json")
async def openapi_document(request: Request, user: CurrentUser) -> JSONResponse:
    return JSONResponse(request.app.openapi())
