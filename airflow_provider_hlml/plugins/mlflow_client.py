"""Read-only MLflow REST client for the dashboard.

The dashboard reads experiments, runs and registered models over MLflow's documented REST API
with a short timeout instead of through ``mlflow.MlflowClient``, whose retries with backoff would
hold a page for minutes while the tracking server is down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from airflow_provider_hlml.utils.http import authorization_header, redact_url


class MLflowUnavailable(RuntimeError):
    """The MLflow tracking server cannot be reached or answered with an error."""


@dataclass(frozen=True)
class MLflowTarget:
    """Where MLflow lives and how to authenticate.

    :param tracking_uri: ``http(s)://host:port`` of the tracking server.
    :param ui_url: base URL of the MLflow UI used in links (defaults to the tracking URI).
    :param username: basic-auth user, if any.
    :param password: basic-auth password, if any.
    :param token: bearer token, if any.
    :param authorization: the ``Authorization`` header value, when already resolved from a
        connection (else built from the three fields above).
    :param timeout: the connection's ``timeout`` extra in seconds, if it has one.
    """

    tracking_uri: str
    ui_url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    authorization: str | None = field(default=None, repr=False)
    timeout: float | None = None

    @classmethod
    def from_connection(cls, conn_id: str) -> MLflowTarget | None:
        """The target named by an Airflow connection, or None when it does not exist.

        The connection is read by the MLflow hook's parser (legacy ``extra__mlflow__*`` keys,
        ``timeout`` extra, basic auth or token).

        :raises MLflowUnavailable: when the connection is invalid (no host, bad extras).
        """
        from airflow.exceptions import AirflowNotFoundException
        from airflow.models.connection import Connection

        from airflow_provider_hlml.hooks.mlflow import MLflowConnectionError, mlflow_connection_settings

        try:
            conn = Connection.get_connection_from_secrets(conn_id)
        except AirflowNotFoundException:
            return None
        try:
            settings = mlflow_connection_settings(conn, conn_id)
        except MLflowConnectionError as exc:
            raise MLflowUnavailable(str(exc)) from None
        return cls(
            tracking_uri=settings.tracking_uri,
            ui_url=(settings.ui_url or settings.tracking_uri).rstrip("/"),
            username=conn.login or None,
            password=conn.password or None,
            authorization=settings.authorization,
            timeout=settings.http_limits.timeout,
        )

    def authorization_header(self) -> str | None:
        """The ``Authorization`` header value for requests to the tracking server, if any."""
        return self.authorization or authorization_header(self.username, self.password, self.token)

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.ui_url}/#/experiments/{quote(experiment_id)}/runs/{quote(run_id)}"

    def experiment_url(self, experiment_id: str) -> str:
        return f"{self.ui_url}/#/experiments/{quote(experiment_id)}"

    def model_url(self, name: str, version: str | None = None) -> str:
        from airflow_provider_hlml.review.links import mlflow_model_url

        return mlflow_model_url(self.ui_url, name, version)


class MLflowReader:
    """The few MLflow reads the dashboard needs.

    :param target: the tracking server.
    :param timeout: seconds per request.
    """

    def __init__(self, target: MLflowTarget, *, timeout: float = 10.0, concurrency: int = 4) -> None:
        self.target = target
        # A connection's own, shorter timeout wins; the dashboard never waits longer than its own.
        self._timeout = min(timeout, target.timeout) if target.timeout else timeout
        # A tracking server on SQLite answers one request at a time; a burst only queues up.
        self._slots = asyncio.Semaphore(concurrency)

    def _client(self) -> httpx.AsyncClient:
        authorization = self.target.authorization_header()
        return httpx.AsyncClient(
            base_url=f"{self.target.tracking_uri}/api/2.0/mlflow",
            timeout=self._timeout,
            headers={"Authorization": authorization} if authorization else {},
        )

    async def _call(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        *,
        missing: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> dict[str, Any]:
        """One REST call's JSON body; ``{}`` when the server answers one of the ``missing`` codes."""
        where = f"MLflow at {redact_url(self.target.tracking_uri)}"
        try:
            async with self._slots:
                response = await client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise MLflowUnavailable(f"{where} unreachable: {type(exc).__name__}") from exc
        if response.status_code in missing or (response.status_code == 404 and path.startswith("/runs/get")):
            return {}
        if response.status_code >= 400:
            raise MLflowUnavailable(f"{where} answered {response.status_code}")
        try:
            body = response.json()
        except ValueError as exc:
            raise MLflowUnavailable(f"{where} sent a non-JSON answer") from exc
        return body if isinstance(body, dict) else {}

    async def overview(self, *, max_experiments: int = 20, runs_per_experiment: int = 10) -> dict[str, Any]:
        """Experiments with their latest runs, and registered models with versions and aliases."""
        async with self._client() as client:
            experiments_body = await self._call(
                client,
                "POST",
                "/experiments/search",
                json={"max_results": max_experiments, "order_by": ["last_update_time DESC"]},
            )
            experiments = [
                exp
                for exp in experiments_body.get("experiments", [])
                if exp.get("lifecycle_stage", "active") == "active"
            ]
            run_bodies = await asyncio.gather(
                *(
                    self._call(
                        client,
                        "POST",
                        "/runs/search",
                        json={
                            "experiment_ids": [exp["experiment_id"]],
                            "max_results": runs_per_experiment,
                            "order_by": ["attributes.start_time DESC"],
                        },
                    )
                    for exp in experiments
                )
            )
            models_body = await self._call(
                client, "GET", "/registered-models/search", params={"max_results": 100}
            )
            models = models_body.get("registered_models", [])
            version_bodies = await asyncio.gather(
                *(
                    self._call(
                        client,
                        "GET",
                        "/model-versions/search",
                        params={"filter": f"name='{_quote_filter(m['name'])}'", "max_results": 50},
                    )
                    for m in models
                )
            )
            run_ids = {
                v.get("run_id")
                for body in version_bodies
                for v in body.get("model_versions", [])[:20]
                if v.get("run_id")
            }
            version_runs = await asyncio.gather(
                *(self._call(client, "GET", "/runs/get", params={"run_id": rid}) for rid in sorted(run_ids))
            )
        runs_by_id = {body["run"]["info"]["run_id"]: body["run"] for body in version_runs if body.get("run")}
        return {
            "experiments": [
                self._experiment(exp, body.get("runs", []))
                for exp, body in zip(experiments, run_bodies, strict=True)
            ],
            "models": [
                self._model(model, body.get("model_versions", []), runs_by_id)
                for model, body in zip(models, version_bodies, strict=True)
            ],
        }

    async def run_experiments(self, run_ids: Iterable[str]) -> dict[str, str | None]:
        """Each run's experiment id (None for a run MLflow does not know, or a malformed id).

        :raises MLflowUnavailable: when the server cannot be reached or fails.
        """
        wanted = sorted(set(run_ids))
        if not wanted:
            return {}
        async with self._client() as client:
            bodies = await asyncio.gather(
                *(
                    self._call(client, "GET", "/runs/get", params={"run_id": rid}, missing=(400, 404))
                    for rid in wanted
                )
            )
        out: dict[str, str | None] = {}
        for rid, body in zip(wanted, bodies, strict=True):
            info = body.get("run", {}).get("info", {}) if isinstance(body.get("run"), dict) else {}
            experiment = info.get("experiment_id") if isinstance(info, dict) else None
            out[rid] = str(experiment) if experiment not in (None, "") else None
        return out

    async def version_runs(self, versions: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
        """Each registered model version's MLflow run: ``(name, version) -> run_id`` (``""`` for a
        version registered without a run); None for a version that does not exist.

        :raises MLflowUnavailable: when the server cannot be reached or fails.
        """
        wanted = sorted(set(versions))
        if not wanted:
            return {}
        async with self._client() as client:
            bodies = await asyncio.gather(
                *(
                    self._call(
                        client,
                        "GET",
                        "/model-versions/get",
                        params={"name": name, "version": version},
                        missing=(400, 404),
                    )
                    for name, version in wanted
                )
            )
        out: dict[tuple[str, str], str | None] = {}
        for key, body in zip(wanted, bodies, strict=True):
            version = body.get("model_version")
            if isinstance(version, dict):
                out[key] = str(version.get("run_id") or "")
            else:
                out[key] = None
        return out

    def _experiment(self, exp: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
        exp_id = str(exp.get("experiment_id"))
        return {
            "experiment_id": exp_id,
            "name": exp.get("name"),
            "url": self.target.experiment_url(exp_id),
            "last_update_time": exp.get("last_update_time"),
            "runs": [self._run(run) for run in runs],
        }

    def _run(self, run: dict[str, Any]) -> dict[str, Any]:
        info = run.get("info", {})
        data = run.get("data", {})
        tags = {t.get("key"): t.get("value") for t in data.get("tags", [])}
        exp_id = str(info.get("experiment_id"))
        run_id = str(info.get("run_id"))
        return {
            "run_id": run_id,
            "experiment_id": exp_id,
            "run_name": info.get("run_name") or tags.get("mlflow.runName"),
            "status": info.get("status"),
            "start_time": info.get("start_time"),
            "end_time": info.get("end_time"),
            "metrics": {m.get("key"): m.get("value") for m in data.get("metrics", [])},
            "params": {p.get("key"): p.get("value") for p in data.get("params", [])},
            "tags": {k: v for k, v in tags.items() if k and not k.startswith("mlflow.")},
            "url": self.target.run_url(exp_id, run_id),
        }

    def _model(
        self, model: dict[str, Any], versions: list[dict[str, Any]], runs_by_id: dict[str, dict[str, Any]]
    ) -> dict[str, Any]:
        name = str(model.get("name"))
        aliases: dict[str, str] = {a.get("alias"): str(a.get("version")) for a in model.get("aliases", [])}
        by_version: dict[str, list[str]] = {}
        for alias, version in aliases.items():
            by_version.setdefault(version, []).append(alias)
        out_versions = []
        for v in sorted(versions, key=lambda v: int(v.get("version", 0)), reverse=True):
            version = str(v.get("version"))
            run = runs_by_id.get(str(v.get("run_id")))
            out_versions.append(
                {
                    "version": version,
                    "run_id": v.get("run_id"),
                    "source": v.get("source"),
                    "creation_timestamp": v.get("creation_timestamp"),
                    "aliases": sorted(by_version.get(version, [])),
                    "tags": {t.get("key"): t.get("value") for t in v.get("tags", [])},
                    "metrics": {m.get("key"): m.get("value") for m in run.get("data", {}).get("metrics", [])}
                    if run
                    else {},
                    "url": self.target.model_url(name, version),
                    "run_url": self.target.run_url(str(run["info"]["experiment_id"]), str(v.get("run_id")))
                    if run
                    else None,
                }
            )
        return {
            "name": name,
            "url": self.target.model_url(name),
            "aliases": aliases,
            "tags": {t.get("key"): t.get("value") for t in model.get("tags", [])},
            "versions": out_versions,
        }


def _quote_filter(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")
