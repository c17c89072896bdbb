"""The dashboard FastAPI app mounted by :class:`~airflow_provider_hlml.plugins.plugin.HlmlPlugin`.

Every route depends on :func:`~airflow_provider_hlml.plugins.auth.require_user` (Airflow does not
authenticate plugin apps). Pages are server-rendered Jinja2 with inline SVG charts; the JSON
endpoints under ``/api`` feed the same data and are described by the app's OpenAPI document.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, Field

from airflow_provider_hlml.plugins import charts, views
from airflow_provider_hlml.plugins.airflow_data import pipeline_figures, pipeline_runs
from airflow_provider_hlml.plugins.approvals_client import (
    ApprovalsClient,
    ApprovalsRequestError,
    ApprovalsUnavailable,
    DelegateKeyMissing,
)
from airflow_provider_hlml.plugins.auth import (
    CurrentUser,
    Identity,
    can_edit_dag,
    can_read_dag,
    readable_dag_ids,
    require_same_origin,
    require_user,
)
from airflow_provider_hlml.plugins.links import safe_link
from airflow_provider_hlml.plugins.mlflow_client import MLflowReader, MLflowTarget, MLflowUnavailable
from airflow_provider_hlml.plugins.settings import DashboardSettings, airflow_base_path

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
STATIC_FILES = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
EMBEDDED_APPROVALS_BASE = "http://hlml-embedded-approvals"


# -- JSON models (documented in the app's OpenAPI) ---------------------------------------------------


class BackendStatus(BaseModel):
    """Reachability of the dashboard's data sources."""

    approvals_ok: bool
    approvals_message: str | None = None
    mlflow_ok: bool
    mlflow_message: str | None = None


class Overview(BaseModel):
    """Key figures and recent activity."""

    figures: dict[str, Any]
    recent_activity: list[dict[str, Any]]
    backends: BackendStatus


class ApprovalItem(BaseModel):
    """One approval request with the caller's right to decide it."""

    call_id: str
    status: str
    subject: str | None = None
    fn: str | None = None
    approval_type: str | None = None
    urgency: str | None = None
    body: str = ""
    context: dict[str, Any] = Field(default_factory=dict)
    options: list[Any] = Field(default_factory=list)
    reject_options: list[dict[str, Any]] = Field(default_factory=list)
    requested_at: str | None = None
    responded_at: str | None = None
    response_seconds: float | None = None
    comment: str | None = None
    reject_option_name: str | None = None
    responded_by: str | None = None
    approvers: list[str] = Field(default_factory=list)
    requester: str | None = None
    dag_id: str | None = None
    dag_run_id: str | None = None
    task_id: str | None = None
    ti_url: str | None = None
    can_decide: bool = False
    decide_blocked_reason: str | None = None


class ApprovalList(BaseModel):
    """Approval requests visible to the caller."""

    items: list[ApprovalItem]
    total: int
    backends: BackendStatus


class ApprovalDetail(ApprovalItem):
    """One approval request with its audit trail."""

    audit: list[dict[str, Any]] = Field(default_factory=list)


class DecisionBody(BaseModel):
    """A reviewer's decision on a pending request."""

    approved: bool
    comment: str | None = Field(default=None, max_length=4000)
    reject_option: str | None = Field(default=None, max_length=200)


class DecisionResult(BaseModel):
    """The request after the decision."""

    call_id: str
    status: str
    responded_by: str | None = None
    comment: str | None = None


class Experiments(BaseModel):
    """MLflow experiments with recent runs, and registered models."""

    experiments: list[dict[str, Any]]
    models: list[dict[str, Any]]
    pipeline_runs: list[dict[str, Any]]
    mlflow_ui_url: str | None = None
    backends: BackendStatus


class Analytics(BaseModel):
    """Series behind the Analytics charts."""

    response_minutes: dict[str, Any]
    daily_decisions: dict[str, Any]
    pipeline_duration_minutes: dict[str, Any]
    model_metrics: list[dict[str, Any]]
    backends: BackendStatus


# -- data gathering ---------------------------------------------------------------------------------


class DashboardData:
    """Reads approvals, MLflow and Airflow data for one app; every read tolerates a dead backend.

    :param settings: the dashboard settings.
    :param embedded_approvals: the built-in approvals app, reached in-process when no
        ``humanlayer`` connection names another backend.
    """

    #: Seconds an MLflow read is reused: MLflow data is the same for every user, and several tabs
    #: (and every auto-refresh) read it.
    MLFLOW_CACHE_SECONDS = 10.0

    def __init__(self, settings: DashboardSettings, embedded_approvals: Any | None = None) -> None:
        self.settings = settings
        self.embedded_approvals = embedded_approvals
        self.base_path = airflow_base_path()
        self._mlflow_cache: tuple[float, MLflowTarget, dict[str, Any]] | None = None
        self._mlflow_lock = asyncio.Lock()

    def _approvals_base_url(self) -> str | None:
        from airflow.exceptions import AirflowNotFoundException
        from airflow.models.connection import Connection

        try:
            conn = Connection.get_connection_from_secrets(self.settings.humanlayer_conn_id)
        except AirflowNotFoundException:
            return None
        host = (conn.host or "").strip()
        return host.rstrip("/") or None

    async def approvals_client(self) -> ApprovalsClient:
        import httpx

        base_url = await run_in_threadpool(self._approvals_base_url)
        if base_url:
            return ApprovalsClient(base_url, self.settings.delegate_key, timeout=self.settings.http_timeout)
        if self.embedded_approvals is not None:
            return ApprovalsClient(
                EMBEDDED_APPROVALS_BASE,
                self.settings.delegate_key,
                timeout=self.settings.http_timeout,
                transport=httpx.ASGITransport(app=self.embedded_approvals),
            )
        raise ApprovalsUnavailable(
            f"no approvals backend: connection {self.settings.humanlayer_conn_id!r} does not exist "
            "and [hlml] approvals_enabled is off"
        )

    async def visible_approvals(
        self, user: Any, *, status_filter: str | None = None, limit: int = 300
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None, str | None]:
        """(calls the user may read, service metrics, problem message)."""
        try:
            client = await self.approvals_client()
            wanted = None if status_filter in (None, "all", "decided") else status_filter
            raw, metrics = await asyncio.gather(
                client.list_calls(status=wanted, limit=limit), client.metrics()
            )
        except (ApprovalsUnavailable, ApprovalsRequestError, DelegateKeyMissing) as exc:
            return [], None, str(exc)
        readable = await run_in_threadpool(readable_dag_ids, user)
        may_read_unowned = await run_in_threadpool(can_read_dag, user, None)
        items = []
        for call in raw:
            item = views.normalize_call(call, airflow_base_path=self.base_path)
            if (item["dag_id"] in readable) if item["dag_id"] else may_read_unowned:
                items.append(item)
        return items, metrics, None

    async def runs(self, user: Any) -> list[dict[str, Any]]:
        readable = await run_in_threadpool(readable_dag_ids, user)
        return await run_in_threadpool(pipeline_runs, readable, base_path=self.base_path)

    async def mlflow(self) -> tuple[dict[str, Any] | None, MLflowTarget | None, str | None]:
        target = await run_in_threadpool(MLflowTarget.from_connection, self.settings.mlflow_conn_id)
        if target is None:
            return None, None, f"MLflow connection {self.settings.mlflow_conn_id!r} is not configured"
        async with self._mlflow_lock:
            cached = self._mlflow_cache
            if cached and cached[1] == target and time.monotonic() - cached[0] < self.MLFLOW_CACHE_SECONDS:
                return cached[2], target, None
            try:
                data = await MLflowReader(target, timeout=self.settings.http_timeout).overview()
            except MLflowUnavailable as exc:
                self._mlflow_cache = None
                return None, target, str(exc)
            self._mlflow_cache = (time.monotonic(), target, data)
        return data, target, None

    async def with_permissions(self, user: Any, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        identity = Identity.of(user)
        edit_cache: dict[str | None, bool] = {}
        for item in items:
            dag_id = item["dag_id"]
            if dag_id not in edit_cache:
                edit_cache[dag_id] = await run_in_threadpool(can_edit_dag, user, dag_id)
            reason = views.decision_block_reason(item, identity, may_edit_dag=edit_cache[dag_id])
            item["can_decide"] = reason is None
            item["decide_blocked_reason"] = reason
        return items


def _backends(approvals_problem: str | None, mlflow_problem: str | None) -> BackendStatus:
    return BackendStatus(
        approvals_ok=approvals_problem is None,
        approvals_message=approvals_problem,
        mlflow_ok=mlflow_problem is None,
        mlflow_message=mlflow_problem,
    )


def _filter_items(
    items: list[dict[str, Any]], *, status_filter: str, fn: str | None, dag_id: str | None, q: str | None
) -> list[dict[str, Any]]:
    out = []
    for item in items:
        if status_filter == "decided" and item["status"] == "pending":
            continue
        if status_filter in views.ALL_STATUSES and item["status"] != status_filter:
            continue
        if fn and item["fn"] != fn:
            continue
        if dag_id and item["dag_id"] != dag_id:
            continue
        if q and q.casefold() not in f"{item['subject']} {item['body']} {item['call_id']}".casefold():
            continue
        out.append(item)
    return out


StatusFilter = Literal["all", "pending", "decided", "approved", "rejected", "expired", "cancelled"]


def create_dashboard_app(
    settings: DashboardSettings | None = None, *, embedded_approvals: Any | None = None
) -> FastAPI:
    """Build the dashboard app.

    :param settings: dashboard settings (default: read from ``[hlml]``).
    :param embedded_approvals: the built-in approvals app, when mounted in the same server.
    """
    settings = settings or DashboardSettings.from_airflow_conf()
    data = DashboardData(settings, embedded_approvals)
    templates = Environment(
        loader=FileSystemLoader(str(HERE / "templates")),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    templates.globals.update(charts=charts)
    templates.filters["pct"] = lambda v: "-" if v is None else f"{100 * float(v):.0f}%"
    templates.filters["duration"] = _format_duration
    templates.filters["safe_link"] = safe_link

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
    app.state.data = data

    def render(request: Request, template: str, user: Any, tab: str, **context: Any) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        html = templates.get_template(template).render(
            root=root,
            tab=tab,
            user=Identity.of(user),
            refresh_seconds=settings.refresh_seconds,
            airflow_base=data.base_path,
            **context,
        )
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    api = APIRouter(prefix="/api", tags=["dashboard"])

    @api.get("/overview", response_model=Overview, summary="Key figures and recent activity")
    async def overview_json(user: CurrentUser) -> Overview:
        return Overview(**await _overview(user))

    async def _overview(user: Any) -> dict[str, Any]:
        (items, metrics, approvals_problem), runs, (ml, _target, mlflow_problem) = await asyncio.gather(
            data.visible_approvals(user), data.runs(user), data.mlflow()
        )
        figures = {
            **views.approval_figures(items, metrics),
            **pipeline_figures(runs),
            "production_models": views.production_models(ml["models"]) if ml else None,
            "registered_models": len(ml["models"]) if ml else None,
        }
        return {
            "figures": figures,
            "recent_activity": views.recent_activity(items, runs),
            "backends": _backends(approvals_problem, mlflow_problem),
        }

    async def _approvals(
        user: Any, status_filter: str, fn: str | None, dag_id: str | None, q: str | None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str | None]:
        items, _metrics, problem = await data.visible_approvals(user)
        selected = _filter_items(items, status_filter=status_filter, fn=fn, dag_id=dag_id, q=q)
        await data.with_permissions(user, selected)
        return selected, items, problem

    @api.get("/approvals", response_model=ApprovalList, summary="Approval requests the user may see")
    async def approvals_json(
        user: CurrentUser,
        status_filter: Annotated[StatusFilter, Query(alias="status")] = "all",
        fn: Annotated[str | None, Query(max_length=200)] = None,
        dag_id: Annotated[str | None, Query(max_length=250)] = None,
        q: Annotated[str | None, Query(max_length=200)] = None,
    ) -> ApprovalList:
        selected, _all, problem = await _approvals(user, status_filter, fn, dag_id, q)
        return ApprovalList(
            items=[ApprovalItem(**i) for i in selected],
            total=len(selected),
            backends=_backends(problem, None),
        )

    async def _load_call(user: Any, call_id: str) -> tuple[ApprovalsClient, dict[str, Any]]:
        try:
            client = await data.approvals_client()
            call = await client.get_call(call_id)
        except DelegateKeyMissing as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
        except ApprovalsUnavailable as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
        except ApprovalsRequestError as exc:
            if exc.status_code == 404:
                raise HTTPException(
                    status.HTTP_404_NOT_FOUND, f"Approval request {call_id!r} not found"
                ) from exc
            raise HTTPException(status.HTTP_502_BAD_GATEWAY, exc.message) from exc
        item = views.normalize_call(call, airflow_base_path=data.base_path)
        if not await run_in_threadpool(can_read_dag, user, item["dag_id"]):
            # Same answer as a missing call: do not reveal requests of DAGs the user cannot read.
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"Approval request {call_id!r} not found")
        return client, item

    @api.get(
        "/approvals/{call_id}",
        response_model=ApprovalDetail,
        summary="One approval request with its audit trail",
    )
    async def approval_json(user: CurrentUser, call_id: str) -> ApprovalDetail:
        client, item = await _load_call(user, call_id)
        await data.with_permissions(user, [item])
        try:
            audit = await client.audit(call_id)
        except (ApprovalsUnavailable, ApprovalsRequestError):
            audit = []
        return ApprovalDetail(**item, audit=audit)

    @api.post(
        "/approvals/{call_id}/decision",
        response_model=DecisionResult,
        summary="Approve or reject a pending request as the logged-in user",
        dependencies=[Depends(require_same_origin)],
        responses={403: {"description": "Not allowed to decide"}, 409: {"description": "Already decided"}},
    )
    async def decide(user: CurrentUser, call_id: str, body: DecisionBody) -> DecisionResult:
        client, item = await _load_call(user, call_id)
        identity = Identity.of(user)
        may_edit = await run_in_threadpool(can_edit_dag, user, item["dag_id"])
        reason = views.decision_block_reason(item, identity, may_edit_dag=may_edit)
        if reason is not None:
            code = status.HTTP_409_CONFLICT if item["status"] != "pending" else status.HTTP_403_FORBIDDEN
            raise HTTPException(code, reason)
        comment = (body.comment or "").strip() or None
        if not body.approved and comment is None:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, "comment: a rejection needs a comment")
        valid_options = {o["name"] for o in item["reject_options"]}
        if body.reject_option and (body.approved or body.reject_option not in valid_options):
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_ENTITY,
                f"reject_option: {body.reject_option!r} is not one of {sorted(valid_options)} for a rejection",
            )
        try:
            result = await client.respond(
                call_id,
                approved=body.approved,
                comment=comment,
                reject_option_name=body.reject_option,
                requested_at=item["requested_at"],
                user_info=identity.user_info(),
            )
        except ApprovalsUnavailable as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
        except ApprovalsRequestError as exc:
            code = exc.status_code if exc.status_code in (403, 404, 409, 422) else status.HTTP_502_BAD_GATEWAY
            raise HTTPException(code, f"approvals service: {exc.message}") from exc
        log.info("Approval %s %s by %s", call_id, "approved" if body.approved else "rejected", identity.name)
        decided = views.normalize_call(result, airflow_base_path=data.base_path) if result else item
        return DecisionResult(
            call_id=call_id,
            status=decided["status"] if result else ("approved" if body.approved else "rejected"),
            responded_by=decided.get("responded_by") or identity.name,
            comment=comment,
        )

    async def _experiments(user: Any) -> dict[str, Any]:
        (ml, target, problem), runs = await asyncio.gather(data.mlflow(), data.runs(user))
        return {
            "experiments": ml["experiments"] if ml else [],
            "models": ml["models"] if ml else [],
            "pipeline_runs": runs[:50],
            "mlflow_ui_url": target.ui_url if target else None,
            "backends": _backends(None, problem),
        }

    @api.get("/experiments", response_model=Experiments, summary="MLflow experiments, runs and models")
    async def experiments_json(user: CurrentUser) -> Experiments:
        return Experiments(**await _experiments(user))

    async def _analytics(user: Any) -> dict[str, Any]:
        (items, _m, approvals_problem), runs, (ml, _t, mlflow_problem) = await asyncio.gather(
            data.visible_approvals(user), data.runs(user), data.mlflow()
        )
        labels, minutes = views.response_time_series(items)
        day_labels, stacks = views.daily_decision_counts(items)
        run_labels, durations = views.pipeline_duration_series(runs)
        model_series = []
        for model in (ml["models"] if ml else [])[:6]:
            m_labels, m_series = views.model_metric_series(model)
            model_series.append({"name": model["name"], "labels": m_labels, "series": m_series})
        return {
            "response_minutes": {"labels": labels, "series": {"response (min)": minutes}},
            "daily_decisions": {"labels": day_labels, "series": stacks},
            "pipeline_duration_minutes": {"labels": run_labels, "series": durations},
            "model_metrics": model_series,
            "backends": _backends(approvals_problem, mlflow_problem),
        }

    @api.get("/analytics", response_model=Analytics, summary="Series behind the Analytics charts")
    async def analytics_json(user: CurrentUser) -> Analytics:
        return Analytics(**await _analytics(user))

    app.include_router(api)

    # -- pages ------------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def overview_page(request: Request, user: CurrentUser) -> HTMLResponse:
        return render(request, "overview.html", user, "overview", **await _overview(user))

    @app.get("/approvals", response_class=HTMLResponse, include_in_schema=False)
    async def approvals_page(
        request: Request,
        user: CurrentUser,
        status_filter: Annotated[StatusFilter, Query(alias="status")] = "pending",
        fn: Annotated[str | None, Query(max_length=200)] = None,
        dag_id: Annotated[str | None, Query(max_length=250)] = None,
        q: Annotated[str | None, Query(max_length=200)] = None,
    ) -> HTMLResponse:
        selected, everything, problem = await _approvals(
            user, status_filter, fn or None, dag_id or None, q or None
        )
        return render(
            request,
            "approvals.html",
            user,
            "approvals",
            items=selected,
            filters={"status": status_filter, "fn": fn or "", "dag_id": dag_id or "", "q": q or ""},
            fns=sorted({i["fn"] for i in everything if i["fn"]}),
            dag_ids=sorted({i["dag_id"] for i in everything if i["dag_id"]}),
            pending_count=sum(1 for i in everything if i["status"] == "pending"),
            backends=_backends(problem, None),
        )

    @app.get("/experiments", response_class=HTMLResponse, include_in_schema=False)
    async def experiments_page(request: Request, user: CurrentUser) -> HTMLResponse:
        return render(request, "experiments.html", user, "experiments", **await _experiments(user))

    @app.get("/analytics", response_class=HTMLResponse, include_in_schema=False)
    async def analytics_page(request: Request, user: CurrentUser) -> HTMLResponse:
        return render(request, "analytics.html", user, "analytics", **await _analytics(user))

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str, user: CurrentUser) -> Response:
        if name not in STATIC_FILES:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "Not found")
        content = (HERE / "static" / name).read_bytes()
        return Response(
            content, media_type=STATIC_FILES[name], headers={"Cache-Control": "private, max-age=300"}
        )

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_document(user: CurrentUser) -> JSONResponse:
        return JSONResponse(app.openapi())

    return app


def _format_duration(seconds: Any) -> str:
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
