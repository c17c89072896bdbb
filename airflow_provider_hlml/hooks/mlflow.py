"""MLflow hook: an ``MlflowClient`` for one Airflow connection, without process-wide side effects.

Credentials
    MLflow reads credentials from process-wide environment variables (``MLFLOW_TRACKING_USERNAME``
    / ``_PASSWORD`` / ``_TOKEN``). Setting them would hand one connection's secret to every other
    piece of code in the process. Instead this module registers one MLflow *request header
    provider* that is active only inside :meth:`MLflowHook.authenticated` (a ``ContextVar``, so
    other threads and other hooks never see it) and adds the connection's ``Authorization``
    header to the requests made there. Every call through :attr:`MLflowHook.client` runs inside
    that scope.

HTTP timeout and retries
    MLflow retries a failed request ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` times (default 7, with
    exponential backoff: about four minutes against a server that is down) and waits up to
    ``MLFLOW_HTTP_REQUEST_TIMEOUT`` seconds (default 120) per request. The connection's extras
    ``timeout`` and ``max_retries`` set them for this connection's calls only (environment
    variables set for the duration of each call and restored afterwards); when absent, MLflow's
    own settings apply. :meth:`MLflowHook.test_connection` always answers within about 10 s.

Fluent API
    ``mlflow.start_run()`` & co. use the process-global tracking URI. :meth:`MLflowHook.fluent`
    sets it (and the registry URI) for the duration of a block, under a process lock, and then
    restores the previous values and environment exactly.

Registry
    Promotion and rollback work on the model registry lives here (:meth:`MLflowHook.alias_holder`,
    :meth:`~MLflowHook.set_alias_with_tags`, :meth:`~MLflowHook.alias_rollback_target`,
    :meth:`~MLflowHook.tag_rollback`, ...), with the tag names of :mod:`airflow_provider_hlml.audit`;
    ``ModelPromoteOperator`` adds the Airflow side (the approval binding, failing the task).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import math
import os
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit, urlunsplit

from airflow.exceptions import AirflowException, AirflowNotFoundException
from airflow.sdk import BaseHook

from airflow_provider_hlml import audit
from airflow_provider_hlml.utils.http import redact_url

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient


class MLflowConnectionError(AirflowException):
    """The MLflow connection is missing, unreachable or refuses the credentials."""


class RegistryStateError(AirflowException):
    """The model registry is not in a state the requested change can start from."""


# The Authorization header value of the hook whose ``authenticated()`` block is running.
_ACTIVE_AUTH: contextvars.ContextVar[str | None] = contextvars.ContextVar("hlml_mlflow_auth", default=None)
_PROVIDER_LOCK = threading.Lock()
_provider_registered = False
# MLflow's HTTP settings, read by ``mlflow.utils.rest_utils.http_request`` on every request.
ENV_TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT"
ENV_MAX_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
ENV_BACKOFF_FACTOR = "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"
#: ``test_connection`` (the connection form's "Test" button) waits at most this per request ...
TEST_CONNECTION_TIMEOUT = 4
#: ... and retries this often, without backoff: two attempts stay under 10 s even when the host
#: drops packets instead of refusing the connection.
TEST_CONNECTION_MAX_RETRIES = 1
# MLflow refuses more retries than this (``_MLFLOW_HTTP_REQUEST_MAX_RETRIES_LIMIT``).
_MAX_RETRIES_LIMIT = 10
# The fluent API's tracking URI is process-global: one ``fluent()`` block at a time.
_FLUENT_LOCK = threading.RLock()
# Promotions of one model in this process, one at a time (the file lock covers other processes).
_PROMOTION_LOCK = threading.Lock()
# What the registry answers for an alias that is not set.
_NO_ALIAS_ERRORS = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")
# Process state of MLflow's fluent API that ``fluent()`` sets aside and restores.
_FLUENT_ENV_VARS = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_RUN_ID",
)


class _ConnectionAuthHeaderProvider:
    """MLflow request-header provider adding the active hook's credentials (and nothing else)."""

    def in_context(self) -> bool:
        return _ACTIVE_AUTH.get() is not None

    def request_headers(self) -> dict[str, str]:
        value = _ACTIVE_AUTH.get()
        return {"Authorization": value} if value else {}


def _register_auth_header_provider() -> None:
    global _provider_registered
    if _provider_registered:
        return
    with _PROVIDER_LOCK:
        if _provider_registered:
            return
        from mlflow.tracking.request_header.registry import _request_header_provider_registry

        _request_header_provider_registry.register(_ConnectionAuthHeaderProvider)
        _provider_registered = True


#: ``uri`` without any ``user:password@`` part, safe for messages (one redactor: :mod:`.utils.http`).
redact_uri = redact_url


@dataclass(frozen=True)
class HttpLimits:
    """
    Per-request timeout and retry count of MLflow's HTTP client; ``None`` keeps MLflow's setting.

    :param timeout: seconds per request (``MLFLOW_HTTP_REQUEST_TIMEOUT``).
    :param max_retries: retries after a failed request (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``).
    :param backoff_factor: exponential backoff factor (``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR``).
    """

    timeout: int | None = None
    max_retries: int | None = None
    backoff_factor: int | None = None

    def environment(self) -> dict[str, str]:
        """The MLflow environment variables these limits set."""
        values = {
            ENV_TIMEOUT: self.timeout,
            ENV_MAX_RETRIES: self.max_retries,
            ENV_BACKOFF_FACTOR: self.backoff_factor,
        }
        return {key: str(value) for key, value in values.items() if value is not None}


@contextlib.contextmanager
def _scoped_environment(values: dict[str, str]) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` for the block and restore what was there before."""
    if not values:
        yield
        return
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass(frozen=True)
class MLflowConnectionSettings:
    """What a connection (or the ``MLFLOW_TRACKING_URI`` fallback) resolves to."""

    conn_id: str
    tracking_uri: str
    registry_uri: str | None
    ui_url: str | None
    authorization: str | None
    from_env: bool
    http_limits: HttpLimits = HttpLimits()


def _mask(secret: str | None) -> None:
    if not secret:
        return
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # pragma: no cover - older task SDKs
        from airflow.sdk.execution_time.secrets_masker import mask_secret  # type: ignore[no-redef]
    mask_secret(secret)


def _connection_extra(conn: Any, key: str) -> Any:
    extra = conn.extra_dejson or {}
    value = extra.get(key, extra.get(f"extra__mlflow__{key}"))
    return value if value not in ("", None) else None


def _http_limits_of(conn: Any, conn_id: str) -> HttpLimits:
    """The extras ``timeout`` (seconds, rounded up) and ``max_retries`` (0-10), checked."""
    timeout_raw = _connection_extra(conn, "timeout")
    retries_raw = _connection_extra(conn, "max_retries")
    timeout = retries = None
    if timeout_raw is not None:
        try:
            seconds = float(timeout_raw)
        except (TypeError, ValueError):
            seconds = math.nan
        if not seconds > 0 or math.isinf(seconds):
            raise MLflowConnectionError(
                f"MLflow connection {conn_id!r}: extra 'timeout' must be a positive number of seconds, "
                f"got {timeout_raw!r}."
            )
        timeout = max(1, math.ceil(seconds))  # MLflow reads an integer
    if retries_raw is not None:
        try:
            retries = int(str(retries_raw))
        except ValueError:
            retries = -1
        if not 0 <= retries <= _MAX_RETRIES_LIMIT:
            raise MLflowConnectionError(
                f"MLflow connection {conn_id!r}: extra 'max_retries' must be a whole number from 0 "
                f"to {_MAX_RETRIES_LIMIT}, got {retries_raw!r}."
            )
    return HttpLimits(timeout=timeout, max_retries=retries)


def _tracking_uri_of(conn: Any) -> str:
    host = (conn.host or "").strip()
    if not host:
        return ""
    if "://" in host or host.startswith("databricks") or host.startswith("file:"):
        uri = host
    else:
        scheme = _connection_extra(conn, "scheme") or conn.schema or "http"
        uri = f"{scheme}://{host}"
    if conn.port and urlsplit(uri).port is None and urlsplit(uri).scheme in ("http", "https"):
        parts = urlsplit(uri)
        uri = urlunsplit(parts._replace(netloc=f"{parts.netloc}:{conn.port}"))
    return uri.rstrip("/")


def mlflow_connection_settings(conn: Any, conn_id: str) -> MLflowConnectionSettings:
    """
    Parse one ``mlflow`` connection: the one reading of its host, credentials and extras (also
    the legacy ``extra__mlflow__*`` keys) that the hook and the dashboard share. Secrets are
    registered with Airflow's masker.

    :param conn: the Airflow connection.
    :param conn_id: its id, named in errors.
    :raises MLflowConnectionError: when it has no host or an invalid ``timeout`` / ``max_retries``.
    """
    from airflow_provider_hlml.utils.http import authorization_header

    tracking_uri = _tracking_uri_of(conn)
    if not tracking_uri:
        raise MLflowConnectionError(
            f"MLflow connection {conn_id!r} has no host: set it to the tracking URI "
            "(e.g. http://mlflow:5000)."
        )
    token = _connection_extra(conn, "token")
    authorization = authorization_header(conn.login, conn.password, token)
    for secret in (conn.password, token, authorization):
        _mask(secret)
    return MLflowConnectionSettings(
        conn_id=conn_id,
        tracking_uri=tracking_uri,
        registry_uri=_connection_extra(conn, "registry_uri"),
        ui_url=_connection_extra(conn, "ui_url"),
        authorization=authorization,
        from_env=False,
        http_limits=_http_limits_of(conn, conn_id),
    )


def _is_unreachable(exc: BaseException) -> bool:
    text = str(exc)
    markers = (
        "Max retries exceeded",
        "Failed to establish a new connection",
        "Connection refused",
        "Name or service not known",
        "Temporary failure in name resolution",
        "Read timed out",
        "Connection aborted",
    )
    if any(m in text for m in markers):
        return True
    try:
        import requests
    except ImportError:  # pragma: no cover
        return False
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _network_cause(exc: BaseException) -> str:
    """The name of the network error behind ``exc`` (``ConnectionError``, ``ReadTimeout``, ...)."""
    import requests

    name = type(exc).__name__
    cause: BaseException | None = exc
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, requests.exceptions.RequestException):
            name = type(cause).__name__
        cause = cause.__cause__ or cause.__context__
    return name


def _http_status(exc: BaseException) -> int | None:
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        text = str(exc)
        for code in (401, 403):
            if f"error code {code}" in text:
                return code
        if exc.error_code in ("UNAUTHENTICATED",):
            return 401
        if exc.error_code in ("PERMISSION_DENIED",):
            return 403
    return None


class _AuthenticatedClient:
    """Proxy running every ``MlflowClient`` method inside the hook's credential scope."""

    def __init__(self, client: MlflowClient, hook: MLflowHook) -> None:
        self._client = client
        self._hook = hook

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr) or name.startswith("__"):
            return attr
        hook = self._hook

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            return hook.call(attr, *args, **kwargs)

        return call


class MLflowHook(BaseHook):
    """
    Talk to an MLflow tracking server and model registry through an Airflow connection.

    The connection (type ``mlflow``) holds the tracking URI in *host*, optional basic-auth
    credentials in *login* / *password*, and in *extra*: ``registry_uri``, ``ui_url`` (base URL
    of the MLflow UI for links), ``token`` (bearer token), ``timeout`` (seconds per HTTP request)
    and ``max_retries`` (retries of a failed request, 0-10). Without ``timeout`` / ``max_retries``
    MLflow's ``MLFLOW_HTTP_REQUEST_TIMEOUT`` (120 s) and ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (7,
    with backoff: minutes against a server that is down) apply to task work;
    :meth:`test_connection` always uses at most 4 s and one retry. When the connection does not
    exist, ``MLFLOW_TRACKING_URI`` is used (with MLflow's own environment variables).

    :param mlflow_conn_id: id of the MLflow connection.
    """

    conn_name_attr = "mlflow_conn_id"
    default_conn_name = "mlflow_default"
    conn_type = "mlflow"
    hook_name = "MLflow"

    def __init__(self, mlflow_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mlflow_conn_id = mlflow_conn_id
        # Set by ``test_connection`` for its bounded probe; else the connection's limits apply.
        self._limits_override: HttpLimits | None = None

    # -- connection ---------------------------------------------------------------------------
    @cached_property
    def settings(self) -> MLflowConnectionSettings:
        """The resolved connection; secrets are registered with Airflow's masker on first use."""
        try:
            conn = self.get_connection(self.mlflow_conn_id)
        except AirflowNotFoundException:
            env_uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
            if not env_uri:
                raise MLflowConnectionError(
                    f"MLflow connection {self.mlflow_conn_id!r} is not defined and MLFLOW_TRACKING_URI "
                    "is not set: create the connection (type 'mlflow', host = tracking URI, e.g. "
                    "http://mlflow:5000) or set MLFLOW_TRACKING_URI."
                ) from None
            return MLflowConnectionSettings(
                conn_id=self.mlflow_conn_id,
                tracking_uri=env_uri,
                registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or None,
                ui_url=None,
                authorization=None,
                from_env=True,
            )
        return mlflow_connection_settings(conn, self.mlflow_conn_id)

    @property
    def tracking_uri(self) -> str:
        return self.settings.tracking_uri

    @property
    def registry_uri(self) -> str:
        return self.settings.registry_uri or self.settings.tracking_uri

    def describe(self) -> str:
        """``connection 'id' (uri)`` for messages; never includes credentials."""
        source = " from MLFLOW_TRACKING_URI" if self.settings.from_env else ""
        return f"MLflow connection {self.mlflow_conn_id!r}{source} ({redact_uri(self.tracking_uri)})"

    # -- clients and scopes -------------------------------------------------------------------
    @cached_property
    def client(self) -> MlflowClient:
        """An ``MlflowClient`` for this connection; each call carries the connection's credentials."""
        from mlflow.tracking import MlflowClient

        _register_auth_header_provider()
        settings = self.settings
        raw = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=self.registry_uri)
        return cast("MlflowClient", _AuthenticatedClient(raw, self))

    def get_conn(self) -> MlflowClient:
        return self.client

    @contextlib.contextmanager
    def authenticated(self) -> Iterator[None]:
        """
        Send this connection's credentials with every MLflow request made in this context, with
        the connection's timeout / retries (if configured) as MLflow's HTTP settings.
        """
        _register_auth_header_provider()
        limits = self._limits_override or self.settings.http_limits
        token = _ACTIVE_AUTH.set(self.settings.authorization)
        try:
            with _scoped_environment(limits.environment()):
                yield
        finally:
            _ACTIVE_AUTH.reset(token)

    @contextlib.contextmanager
    def fluent(self) -> Iterator[None]:
        """
        Point MLflow's fluent API (``mlflow.start_run``, ``mlflow.log_*``) at this connection.

        Holds a process lock for the block, sets aside the process's active experiment, and
        restores the previous tracking / registry URIs, experiment and their environment
        variables afterwards, so nothing leaks in or out.
        """
        import mlflow
        from mlflow.tracking import fluent as fluent_api
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        with _FLUENT_LOCK, self.authenticated():
            saved_tracking = tracking_utils._tracking_uri
            saved_registry = registry_utils._registry_uri
            # An experiment chosen earlier in this process (mlflow.set_experiment) belongs to other
            # code and would make MLflow refuse to resume runs of another experiment.
            saved_experiment = fluent_api._active_experiment_id
            saved_env = {k: os.environ.get(k) for k in _FLUENT_ENV_VARS}
            try:
                for key in _FLUENT_ENV_VARS:
                    os.environ.pop(key, None)
                fluent_api._active_experiment_id = None
                mlflow.set_tracking_uri(self.tracking_uri)
                mlflow.set_registry_uri(self.registry_uri)
                yield
            finally:
                tracking_utils._tracking_uri = saved_tracking
                registry_utils._registry_uri = saved_registry
                fluent_api._active_experiment_id = saved_experiment
                for key, value in saved_env.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
                with contextlib.suppress(Exception):
                    from mlflow.tracing.provider import reset

                    reset()

    def translate_error(self, exc: BaseException) -> BaseException:
        """An actionable error naming the connection for unreachable / 401 / 403; else ``exc``."""
        if isinstance(exc, MLflowConnectionError):
            return exc
        status = _http_status(exc)
        if status == 401:
            return MLflowConnectionError(
                f"{self.describe()} refused the credentials (HTTP 401): check the connection's "
                "login/password or token."
            )
        if status == 403:
            return MLflowConnectionError(
                f"{self.describe()}: permission denied (HTTP 403) for this user on that resource."
            )
        if _is_unreachable(exc):
            return MLflowConnectionError(self._unreachable_message(exc))
        return exc

    def _unreachable_message(self, exc: BaseException) -> str:
        """What failed, how long MLflow tried, and which setting controls that."""
        from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT

        override = self._limits_override
        limits = override or self.settings.http_limits
        timeout = limits.timeout if limits.timeout is not None else MLFLOW_HTTP_REQUEST_TIMEOUT.get()
        retries = (
            limits.max_retries if limits.max_retries is not None else MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()
        )
        tried = f"{retries + 1} attempt{'s' if retries else ''} of up to {timeout} s each"
        if override is not None:
            control = (
                "the connection test always answers within about 10 s; tasks use the connection's "
                f"extras 'timeout' and 'max_retries', else {ENV_TIMEOUT} and {ENV_MAX_RETRIES}"
            )
        else:
            configured = self.settings.http_limits
            control = "retries: the connection's extra 'max_retries'" + (
                ""
                if configured.max_retries is not None
                else f" (not set: {ENV_MAX_RETRIES}={retries} applies)"
            )
            control += "; per-request timeout: extra 'timeout'" + (
                "" if configured.timeout is not None else f" (not set: {ENV_TIMEOUT}={timeout} applies)"
            )
        return (
            f"{self.describe()} is unreachable ({_network_cause(exc)} after {tried}). Check the host "
            f"and port of the connection and that the MLflow server runs. {control[:1].upper()}{control[1:]}."
        )

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` (e.g. a fluent MLflow function) with credentials and error translation."""
        with self.authenticated():
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                translated = self.translate_error(exc)
                if translated is exc:
                    raise
                raise translated from None

    # -- operations ---------------------------------------------------------------------------
    def test_connection(self) -> tuple[bool, str]:
        """
        Search one experiment to check reachability and credentials, within about 10 s.

        Waits at most ``TEST_CONNECTION_TIMEOUT`` s per request (less if the connection's
        ``timeout`` is smaller) with one retry and no backoff, whatever MLflow's settings.
        """
        try:
            configured = self.settings.http_limits
        except Exception as exc:
            return False, str(exc)
        timeout = min(configured.timeout or TEST_CONNECTION_TIMEOUT, TEST_CONNECTION_TIMEOUT)
        retries = min(
            TEST_CONNECTION_MAX_RETRIES if configured.max_retries is None else configured.max_retries,
            TEST_CONNECTION_MAX_RETRIES,
        )
        self._limits_override = HttpLimits(timeout=timeout, max_retries=retries, backoff_factor=0)
        try:
            self.client.search_experiments(max_results=1)
        except Exception as exc:
            return False, str(self.translate_error(exc))
        finally:
            self._limits_override = None
        return True, f"Connected to {self.describe()}."

    def get_or_create_experiment(
        self, name: str, description: str | None = None, tags: dict[str, Any] | None = None
    ) -> str:
        """
        The id of experiment ``name``, created with ``description`` and ``tags`` if missing.

        :param name: experiment name.
        :param description: shown in the MLflow UI (tag ``mlflow.note.content``).
        :param tags: experiment tags set on creation.
        """
        from mlflow.exceptions import MlflowException

        if not name or not str(name).strip():
            raise ValueError("experiment_name must be a non-empty string")
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                raise MLflowConnectionError(
                    f"MLflow experiment {name!r} on {self.describe()} is deleted: restore it "
                    "(mlflow experiments restore) or use another experiment_name."
                )
            return str(experiment.experiment_id)
        all_tags = {k: str(v) for k, v in (tags or {}).items()}
        if description:
            all_tags["mlflow.note.content"] = description
        try:
            return str(self.client.create_experiment(name, tags=all_tags or None))
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            # Created by a concurrent task between our read and our create.
            experiment = self.client.get_experiment_by_name(name)
            assert experiment is not None
            return str(experiment.experiment_id)

    def ui_base_url(self) -> str | None:
        """Base URL of the MLflow UI, or ``None`` when the tracking URI is not HTTP."""
        base = self.settings.ui_url or self.tracking_uri
        if not base.startswith(("http://", "https://")):
            return None
        return redact_uri(base).rstrip("/")

    def ui_url_for_run(self, experiment_id: str, run_id: str) -> str | None:
        """The MLflow UI page of a run."""
        base = self.ui_base_url()
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}" if base else None

    def ui_url_for_model_version(self, name: str, version: str | int) -> str | None:
        """The MLflow UI page of a registered model version."""
        from urllib.parse import quote

        base = self.ui_base_url()
        return f"{base}/#/models/{quote(name, safe='')}/versions/{version}" if base else None

    def compare_model_versions(self, name: str, v1: str | int, v2: str | int) -> dict[str, Any]:
        """
        Metrics and params of two registered versions side by side (for approval context).

        :return: ``{"model_name", "versions": {v: {"run_id", "aliases", "tags", "source"}},
            "metrics": {metric: {v1, v2, "delta"}}, "params": {param: {v1, v2}},
            "changed_params": [...]}``; ``delta`` is ``v2 - v1``.
        """
        a, b = str(v1), str(v2)
        versions: dict[str, Any] = {}
        metrics: dict[str, dict[str, Any]] = {}
        params: dict[str, dict[str, Any]] = {}
        for label in (a, b):
            mv = self.client.get_model_version(name, label)
            run_metrics: dict[str, Any] = {}
            run_params: dict[str, Any] = {}
            if mv.run_id:
                run = self.client.get_run(mv.run_id)
                run_metrics = dict(run.data.metrics)
                run_params = dict(run.data.params)
            versions[label] = {
                "run_id": mv.run_id,
                "aliases": list(getattr(mv, "aliases", []) or []),
                "tags": dict(mv.tags or {}),
                "source": mv.source,
            }
            for key, value in run_metrics.items():
                metrics.setdefault(key, {a: None, b: None})[label] = value
            for key, value in run_params.items():
                params.setdefault(key, {a: None, b: None})[label] = value
        for row in metrics.values():
            row["delta"] = (
                row[b] - row[a]
                if isinstance(row[a], int | float) and isinstance(row[b], int | float)
                else None
            )
        changed = sorted(k for k, row in params.items() if row[a] != row[b])
        return {
            "model_name": name,
            "versions": versions,
            "metrics": dict(sorted(metrics.items())),
            "params": dict(sorted(params.items())),
            "changed_params": changed,
        }

    # -- registry: versions, aliases, promotion and rollback tags ----------------------------
    def run_authors(self, run_id: str) -> list[tuple[str, str]]:
        """Who authored the model of run ``run_id``: ``(identity, why)`` pairs.

        MLflow's ``mlflow.user`` (who ran the training) and the Airflow user who triggered the
        training's DAG run (:data:`~airflow_provider_hlml.audit.AIRFLOW_TRIGGERED_BY`).
        """
        tags = self.call(self.client.get_run, run_id).data.tags
        authors: list[tuple[str, str]] = []
        if tags.get(audit.MLFLOW_USER):
            authors.append((tags[audit.MLFLOW_USER], "trained this model (mlflow.user of its MLflow run)"))
        if tags.get(audit.AIRFLOW_TRIGGERED_BY):
            authors.append((tags[audit.AIRFLOW_TRIGGERED_BY], "started the training of this model"))
        return authors

    def live_run(self, run_id: str) -> Any | None:
        """Run ``run_id``, or ``None`` when it does not exist or is deleted."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                return None
            raise
        return None if run.info.lifecycle_stage == "deleted" else run

    def logged_validation_report(self, run_id: str) -> dict[str, Any] | None:
        """The ``validation_report.json`` that ``MLflowValidateOperator`` logged on its run ``run_id``
        (``None`` when the run has no such artifact)."""
        import json

        name = "validation_report.json"
        if name not in {item.path for item in self.client.list_artifacts(run_id)}:
            return None
        with tempfile.TemporaryDirectory(prefix="hlml-report-") as tmp:
            path = self.client.download_artifacts(run_id, name, tmp)
            report = json.loads(Path(path).read_text(encoding="utf-8"))
        return report if isinstance(report, dict) else None

    def review_facts_now(self, mv: ModelVersion, shown: Mapping[str, Any]) -> dict[str, Any]:
        """
        The facts of :func:`~airflow_provider_hlml.gate.digest.review_facts` as MLflow tells them
        now, for registered version ``mv``, about what a reviewer was shown.

        - ``model_name``, ``model_version``, ``mlflow_run_id``: of ``mv`` (``mv.run_id``).
        - ``metrics`` (the names shown): with a ``validation_run_id`` shown, the latest values
          on that validation run, under the name each
          :class:`~airflow_provider_hlml.contracts.MetricCheck` gives as ``mlflow_metric`` (what
          ``MLflowValidateOperator`` logs there through ``mlflow.models.evaluate``); otherwise the
          latest values on the training run ``mv.run_id`` under the names shown (what
          ``MLflowTrainOperator`` logs). A metric that is not logged (any more) is ``None``.
        - ``validation_run_id``: the id shown while that run exists, ``None`` once it is gone
          (deleted), and then its metrics are ``None`` too.
        - ``passed``: the validation run's ``hlml.validation_passed`` tag.
        - ``champion_version``: from the ``validation_report.json`` the validation run logged
          (MLflow keeps no other record of the version compared against).

        Facts MLflow cannot tell are left out, and callers compare only the facts returned:
        ``passed`` and ``champion_version`` without a validation run, or when it has no such
        tag / report (a context not made by ``MLflowValidateOperator``).

        :param mv: the version about to be promoted.
        :param shown: the context the reviewers were shown (a ``ValidationReport`` or a
            ``TrainResult``, as the gate sent it).
        :return: facts with the keys of ``review_facts`` (``metrics`` only when shown).
        """
        from airflow_provider_hlml.gate.digest import review_facts

        now: dict[str, Any] = {
            "model_name": mv.name,
            "model_version": str(mv.version),
            "mlflow_run_id": mv.run_id,
        }
        raw_metrics = shown.get("metrics")
        shown_metrics: Mapping[str, Any] = raw_metrics if isinstance(raw_metrics, Mapping) else {}
        validation_run_id = shown.get("validation_run_id")
        if validation_run_id:
            run = self.live_run(str(validation_run_id))
            now["validation_run_id"] = validation_run_id if run is not None else None
            names = {
                name: str(row.get("mlflow_metric") or name) if isinstance(row, Mapping) else str(name)
                for name, row in shown_metrics.items()
            }
            if run is not None:
                passed = (run.data.tags or {}).get(audit.VALIDATION_PASSED)
                if "passed" in shown and passed in ("true", "false"):
                    now["passed"] = passed == "true"
                if "champion_version" in shown:
                    report = self.logged_validation_report(run.info.run_id)
                    if report is not None and "champion_version" in report:
                        now["champion_version"] = report["champion_version"]
        else:
            run = self.live_run(mv.run_id) if mv.run_id else None
            names = {name: str(name) for name in shown_metrics}
        if isinstance(raw_metrics, Mapping):
            logged = dict(run.data.metrics) if run is not None else {}
            now["metrics"] = {name: logged.get(names[name]) for name in shown_metrics}
        facts = review_facts(now)
        assert facts is not None  # ``now`` always names the model
        return facts

    def find_model_version(self, name: str, run_id: str) -> ModelVersion | None:
        """The newest version of ``name`` registered from run ``run_id``, or ``None``."""
        found = self.client.search_model_versions(
            f"name = {quote_filter_value(name)} and run_id = {quote_filter_value(run_id)}",
            order_by=["version_number DESC"],
        )
        return found[0] if found else None

    def alias_holder(self, name: str, alias: str) -> ModelVersion | None:
        """The version of ``name`` holding ``alias``, or ``None`` when the alias is not set."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if exc.error_code in _NO_ALIAS_ERRORS:
                return None
            raise

    def tag_model_version(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        """Set ``tags`` on version ``version`` of ``name``."""
        for key, value in tags.items():
            self.client.set_model_version_tag(name, version, key, value)

    @contextlib.contextmanager
    def promotion_lock(self, model_name: str) -> Iterator[None]:
        """
        Serialise promotions of one model on this host: a thread lock plus an ``fcntl`` file lock.

        MLflow has no compare-and-set on aliases; across hosts, run promotions of one model in an
        Airflow pool with one slot (``ModelPromoteOperator`` reports a lost race either way).
        """
        digest = hashlib.sha256(f"{self.registry_uri}\0{model_name}".encode()).hexdigest()[:24]
        path = Path(tempfile.gettempdir()) / f"hlml-promote-{digest}.lock"
        with _PROMOTION_LOCK, open(path, "a+") as handle:
            try:
                import fcntl
            except ImportError:  # pragma: no cover - non-POSIX
                yield
                return
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def set_alias_with_tags(self, name: str, version: str, alias: str, tags: Mapping[str, str]) -> str:
        """
        Move ``alias`` of ``name`` to ``version`` after tagging the version with ``tags``, the
        alias (:data:`~airflow_provider_hlml.audit.PROMOTED_ALIAS`) and the version that held it
        before (:func:`~airflow_provider_hlml.audit.previous_holder_tag`).

        :return: the previous holder (``audit.NO_PREVIOUS_VERSION`` when there was none). When
            ``version`` already holds the alias (a retry), the previous holder it recorded then.
        """
        holder = self.alias_holder(name, alias)
        previous_tag = audit.previous_holder_tag(alias)
        if holder is not None and str(holder.version) == version:
            previous = (holder.tags or {}).get(previous_tag, audit.NO_PREVIOUS_VERSION)
        else:
            previous = str(holder.version) if holder is not None else audit.NO_PREVIOUS_VERSION
        self.tag_model_version(name, version, {**tags, previous_tag: previous, audit.PROMOTED_ALIAS: alias})
        self.client.set_registered_model_alias(name, alias, version)
        return previous

    def set_stage_with_tags(
        self, name: str, version: str, stage: str, tags: Mapping[str, str], *, archive_existing_versions: bool
    ) -> str:
        """
        Legacy: move ``version`` to registry ``stage`` after tagging it with ``tags``, the stage and
        the versions that held it before (:func:`~airflow_provider_hlml.audit.previous_stage_holder_tag`).

        :return: the previous holders, comma-separated (``""`` for none).
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            holders = [str(v.version) for v in self.client.get_latest_versions(name, stages=[stage])]
            previous = ",".join(v for v in holders if v != version)
            self.tag_model_version(
                name,
                version,
                {**tags, audit.previous_stage_holder_tag(stage): previous, audit.PROMOTED_STAGE: stage},
            )
            self.client.transition_model_version_stage(
                name, version, stage, archive_existing_versions=archive_existing_versions
            )
        return previous

    def alias_rollback_target(self, name: str, alias: str) -> tuple[str, str]:
        """
        ``(current holder, version to restore)`` of ``alias``, from the current holder's
        :func:`~airflow_provider_hlml.audit.previous_holder_tag` (``""``: remove the alias).

        :raises RegistryStateError: the alias is not set, or its holder has no such tag.
        """
        holder = self.alias_holder(name, alias)
        if holder is None:
            raise RegistryStateError(f"@{alias} of {name!r} is not set: nothing to roll back")
        current = str(holder.version)
        tag = audit.previous_holder_tag(alias)
        if tag not in (holder.tags or {}):
            raise RegistryStateError(
                f"{name!r} v{current} holds @{alias} but has no {tag!r} tag (not promoted by "
                "ModelPromoteOperator): cannot tell which version to restore"
            )
        return current, holder.tags[tag]

    def stage_rollback_target(self, name: str, stage: str) -> tuple[str, str]:
        """
        Legacy: ``(current holder, comma-separated versions to restore)`` of registry ``stage``.

        :raises RegistryStateError: nothing is in the stage, or its holder has no previous tag.
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            holders = self.client.get_latest_versions(name, stages=[stage])
        if not holders:
            raise RegistryStateError(f"no version of {name!r} is in stage {stage}: nothing to roll back")
        current_mv = holders[0]
        current = str(current_mv.version)
        tag = audit.previous_stage_holder_tag(stage)
        if tag not in (current_mv.tags or {}):
            raise RegistryStateError(
                f"{name!r} v{current} in {stage} has no {tag!r} tag: cannot tell which version to restore"
            )
        return current, current_mv.tags[tag]

    def restore_alias(self, name: str, alias: str, previous: str) -> None:
        """Point ``alias`` back at ``previous``, or remove it when ``previous`` is empty."""
        if previous:
            self.client.set_registered_model_alias(name, alias, previous)
        else:
            self.client.delete_registered_model_alias(name, alias)

    def restore_stage(self, name: str, stage: str, current: str, previous: str) -> None:
        """Legacy: move the ``previous`` versions (comma-separated) back to ``stage``, archive ``current``."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            for old in filter(None, previous.split(",")):
                self.client.transition_model_version_stage(name, old, stage, archive_existing_versions=False)
            self.client.transition_model_version_stage(name, current, "Archived")

    def tag_rollback(self, name: str, version: str, restored: str, *, by_run_id: str, at: str) -> None:
        """Record on ``version`` that a rollback (in DAG run ``by_run_id``) replaced it by ``restored``."""
        self.tag_model_version(
            name,
            version,
            {
                audit.ROLLED_BACK_AT: at,
                audit.ROLLED_BACK_TO: restored or "none",
                audit.ROLLED_BACK_BY_RUN_ID: by_run_id,
            },
        )


def quote_filter_value(value: str) -> str:
    """A string literal for an MLflow search filter."""
    return f'"{value}"' if "'" in value else f"'{value}'"
