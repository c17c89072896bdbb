"""What the dashboard shows: approvals, MLflow and Airflow data, gathered for one user.

Every read tolerates a dead backend: the problem comes back as a message next to empty data.
Pages and JSON endpoints use the same functions, so both show the same thing.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import HTTPException, status
from fastapi.concurrency import run_in_threadpool

from airflow_provider_hlml.plugins import card_links, delivery_status, views
from airflow_provider_hlml.plugins.airflow_data import pipeline_figures, pipeline_runs
from airflow_provider_hlml.plugins.approvals_client import (
    ApprovalsClient,
    ApprovalsRequestError,
    ApprovalsUnavailable,
    DelegateKeyMissing,
)
from airflow_provider_hlml.plugins.auth import Identity, can_edit_dag, can_read_dag, readable_dag_ids
from airflow_provider_hlml.plugins.mlflow_client import MLflowReader, MLflowTarget, MLflowUnavailable
from airflow_provider_hlml.plugins.routes.schemas import BackendStatus
from airflow_provider_hlml.plugins.settings import DashboardSettings, airflow_base_path

EMBEDDED_APPROVALS_BASE = "http://hlml-embedded-approvals"

Approvals = tuple[list[dict[str, Any]], dict[str, Any] | None, str | None]
MLflowData = tuple[dict[str, Any] | None, MLflowTarget | None, str | None]


class DashboardData:
    """Reads approvals, MLflow and Airflow data for one app; every read tolerates a dead backend.

    :param settings: the dashboard settings.
    :param embedded_approvals: the built-in approvals app, reached in-process when no
        ``humanlayer`` connection names another backend.
    """

    #: Seconds an MLflow read is reused: MLflow data is the same for every user, and several tabs
    #: (and every auto-refresh) read it.
    MLFLOW_CACHE_SECONDS = 10.0
    #: Seconds a card's MLflow look-ups may take (a page of cards waits for them).
    LINK_LOOKUP_TIMEOUT = 5.0
    #: Seconds the approvals backend's attestation keys are reused (a revoked key shows within it).
    KEYS_CACHE_SECONDS = 60.0

    def __init__(self, settings: DashboardSettings, embedded_approvals: Any | None = None) -> None:
        self.settings = settings
        self.embedded_approvals = embedded_approvals
        self.base_path = airflow_base_path()
        self._mlflow_cache: tuple[float, MLflowTarget, dict[str, Any]] | None = None
        self._mlflow_lock = asyncio.Lock()
        self._keys_cache: tuple[float, Any] | None = None
        self.link_lookups = card_links.MLflowLookups()
        self.delivery_lookups = delivery_status.DeliveryLookups()

    def _approvals_endpoint(self) -> tuple[str, float] | None:
        """(base URL, timeout) of the ``humanlayer`` connection, read by the hook's parser."""
        from airflow.exceptions import AirflowNotFoundException
        from airflow.models.connection import Connection

        from airflow_provider_hlml.hooks.humanlayer import (
            HumanLayerConnectionError,
            connection_base_url,
            connection_timeout,
        )

        conn_id = self.settings.humanlayer_conn_id
        try:
            conn = Connection.get_connection_from_secrets(conn_id)
        except AirflowNotFoundException:
            return None
        base_url = connection_base_url(conn)
        if base_url is None:
            return None
        try:
            timeout = connection_timeout(conn_id, conn.extra_dejson)
        except HumanLayerConnectionError as exc:
            raise ApprovalsUnavailable(str(exc)) from None
        return base_url, min(self.settings.http_timeout, timeout)

    async def approvals_client(self) -> ApprovalsClient:
        import httpx

        endpoint = await run_in_threadpool(self._approvals_endpoint)
        if endpoint is not None:
            base_url, timeout = endpoint
            return ApprovalsClient(base_url, self.settings.delegate_key, timeout=timeout)
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
    ) -> Approvals:
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

    async def mlflow(self) -> MLflowData:
        try:
            target = await run_in_threadpool(MLflowTarget.from_connection, self.settings.mlflow_conn_id)
        except MLflowUnavailable as exc:
            return None, None, str(exc)
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

    async def attestation_keys(self) -> Any | None:
        """The approvals backend's attestation keys (a ``KeySet``), reused for
        :attr:`KEYS_CACHE_SECONDS`; None when it cannot say (down, no such route, no delegate key)."""
        from airflow_provider_hlml.gate.attestation import KeySet

        cached = self._keys_cache
        if cached is not None and time.monotonic() - cached[0] < self.KEYS_CACHE_SECONDS:
            return cached[1]
        try:
            client = await self.approvals_client()
            document = await client.attestation_keys()
            keys = KeySet.from_document(document) if document is not None else None
        except (ApprovalsUnavailable, ApprovalsRequestError, DelegateKeyMissing, ValueError):
            return None
        self._keys_cache = (time.monotonic(), keys)
        return keys

    async def everything(self, user: Any) -> tuple[Approvals, list[dict[str, Any]], MLflowData]:
        """Approvals, pipeline runs and MLflow data at once."""
        return await asyncio.gather(self.visible_approvals(user), self.runs(user), self.mlflow())

    async def links_for(self, calls: list[dict[str, Any]]) -> card_links.DashboardLinks:
        """The links of the cards of ``calls``: Airflow paths, and MLflow URLs for what MLflow
        knows of their runs and model versions (none while MLflow is down or not configured)."""
        links = card_links.DashboardLinks(airflow_base_path=self.base_path)
        runs, versions = card_links.wanted_lookups(calls)
        if not runs and not versions:
            return links
        try:
            target = await run_in_threadpool(MLflowTarget.from_connection, self.settings.mlflow_conn_id)
        except MLflowUnavailable:
            return links
        if target is None:
            return links
        reader = MLflowReader(target, timeout=min(self.settings.http_timeout, self.LINK_LOOKUP_TIMEOUT))
        found = await self.link_lookups.resolve(reader, runs, versions)
        if found is None:
            return links
        return card_links.DashboardLinks(airflow_base_path=self.base_path, mlflow=target, lookups=found)

    async def with_cards(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``items`` each with its reviewer's card (:func:`views.attach_card`), links included."""
        links = await self.links_for([item["call"] for item in items])
        for item in items:
            views.attach_card(item, card_links.card_for(item["call"], links))
        return items

    async def with_deliveries(
        self, items: list[dict[str, Any]], client: ApprovalsClient | None = None
    ) -> list[dict[str, Any]]:
        """``items`` each with ``deliveries``, the summary of where it was delivered
        (:func:`delivery_status.summarize`), from one round of look-ups for them all; None when
        the backend cannot say (no such route, down, too slow) or does not know the request.

        :param client: the backend's client, when the caller has one already.
        """
        for item in items:
            item["deliveries"] = None
        call_ids = [item["call_id"] for item in items if isinstance(item.get("call_id"), str)]
        if not call_ids:
            return items
        if client is None:
            try:
                client = await self.approvals_client()
            except (ApprovalsUnavailable, DelegateKeyMissing):
                return items
        found = await self.delivery_lookups.fetch(client, call_ids)
        if not found:
            return items
        for item in items:
            item["deliveries"] = delivery_status.summarize(found.get(item["call_id"]))
        return items

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


def filter_items(
    items: list[dict[str, Any]], *, status_filter: str, fn: str | None, dag_id: str | None, q: str | None
) -> list[dict[str, Any]]:
    """The approval items matching the filters of the Approvals tab."""
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


async def overview(data: DashboardData, user: Any) -> dict[str, Any]:
    """Key figures and recent activity (the Overview tab)."""
    (items, metrics, approvals_problem), runs, (ml, _target, mlflow_problem) = await data.everything(user)
    figures = {
        **views.approval_figures(items, metrics),
        **pipeline_figures(runs),
        "production_models": views.production_models(ml["models"]) if ml else None,
        "registered_models": len(ml["models"]) if ml else None,
    }
    return {
        "figures": figures,
        "recent_activity": views.recent_activity(items, runs),
        "backends": BackendStatus.of(approvals_problem, mlflow_problem),
    }


async def approvals(
    data: DashboardData, user: Any, status_filter: str, fn: str | None, dag_id: str | None, q: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str | None]:
    """(the selected items with the user's right to decide, every visible item, problem message)."""
    items, _metrics, problem = await data.visible_approvals(user)
    selected = filter_items(items, status_filter=status_filter, fn=fn, dag_id=dag_id, q=q)
    await asyncio.gather(
        data.with_permissions(user, selected), data.with_cards(selected), data.with_deliveries(selected)
    )
    return selected, items, problem


async def approval_detail(data: DashboardData, user: Any, call_id: str) -> dict[str, Any]:
    """One request the user may read with their right to decide it, its card, where it was
    delivered and its audit trail (empty when the backend does not keep one)."""
    client, item = await load_call(data, user, call_id)

    async def audit() -> list[dict[str, Any]]:
        try:
            return await client.audit(call_id)
        except (ApprovalsUnavailable, ApprovalsRequestError):
            return []

    _permissions, _cards, _deliveries, events = await asyncio.gather(
        data.with_permissions(user, [item]),
        data.with_cards([item]),
        data.with_deliveries([item], client),
        audit(),
    )
    return {**item, "audit": events}


async def load_call(data: DashboardData, user: Any, call_id: str) -> tuple[ApprovalsClient, dict[str, Any]]:
    """The client and one request the user may read; 404 for a request of a DAG they cannot read."""
    not_found = HTTPException(status.HTTP_404_NOT_FOUND, f"Approval request {call_id!r} not found")
    try:
        client = await data.approvals_client()
        call = await client.get_call(call_id)
    except (DelegateKeyMissing, ApprovalsUnavailable) as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
    except ApprovalsRequestError as exc:
        if exc.status_code == 404:
            raise not_found from exc
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, exc.message) from exc
    item = views.normalize_call(call, airflow_base_path=data.base_path)
    if not await run_in_threadpool(can_read_dag, user, item["dag_id"]):
        # Same answer as a missing call: do not reveal requests of DAGs the user cannot read.
        raise not_found
    return client, item


async def experiments(data: DashboardData, user: Any) -> dict[str, Any]:
    """MLflow experiments, models and pipeline runs (the Experiments tab), and the state of every
    protected alias (the alias guard's view, verified here with the approvals backend's keys)."""
    (ml, target, problem), runs, keys = await asyncio.gather(
        data.mlflow(), data.runs(user), data.attestation_keys()
    )
    models = ml["models"] if ml else []
    return {
        "experiments": ml["experiments"] if ml else [],
        "models": models,
        "guarded_aliases": views.guarded_aliases(models, data.settings.protected_aliases, keys),
        "pipeline_runs": runs[:50],
        "mlflow_ui_url": target.ui_url if target else None,
        "backends": BackendStatus.of(None, problem),
    }


async def analytics(data: DashboardData, user: Any) -> dict[str, Any]:
    """Series behind the Analytics charts."""
    (items, _m, approvals_problem), runs, (ml, _t, mlflow_problem) = await data.everything(user)
    labels, minutes = views.response_time_series(items)
    day_labels, stacks = views.daily_decision_counts(items)
    model_decisions = views.daily_model_decisions(items)
    run_labels, durations = views.pipeline_duration_series(runs)
    model_series = []
    for model in (ml["models"] if ml else [])[:6]:
        m_labels, m_series = views.model_metric_series(model)
        model_series.append({"name": model["name"], "labels": m_labels, "series": m_series})
    return {
        "response_minutes": {"labels": labels, "series": {"response (min)": minutes}},
        "daily_decisions": {"labels": day_labels, "series": stacks},
        "model_decisions": model_decisions,
        "pipeline_duration_minutes": {"labels": run_labels, "series": durations},
        "model_metrics": model_series,
        "backends": BackendStatus.of(approvals_problem, mlflow_problem),
    }
