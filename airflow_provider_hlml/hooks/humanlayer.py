"""Hook for the HumanLayer API: the cloud, or the provider's self-hosted approvals service."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import weakref
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.exceptions import AirflowNotFoundException
from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException

from airflow_provider_hlml.utils.http import error_code, error_detail, redact_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    import aiohttp
    import requests
    from humanlayer import HumanLayer
    from humanlayer.core.models import Escalation, FunctionCall, FunctionCallStatus

    from airflow_provider_hlml.gate.attestation import KeySet
    from airflow_provider_hlml.gate.wire import GateFunctionCall

DEFAULT_TIMEOUT = 30.0
#: ``test_connection`` waits at most this long (the connection form's "Test" answers within 10 s).
TEST_CONNECTION_TIMEOUT = 5.0
ENV_API_BASE = "HUMANLAYER_API_BASE"
ENV_API_KEY = "HUMANLAYER_API_KEY"
ENV_RUN_ID_PREFIX = "HUMANLAYER_RUN_ID_PREFIX"
CLOUD_API_BASE = "https://api.humanlayer.dev/humanlayer/v1"
MAX_LONG_POLL_SECONDS = 30


class HumanLayerError(AirflowException):
    """
    A HumanLayer call failed; the message names the connection and what to check.

    :param message: the full, secret-free message.
    :param conn_id: the Airflow connection id in use.
    :param status_code: the HTTP status, when the server answered (kept as ``http_status``).
    :param code: the ``error.code`` of the server's answer, when it gave one.
    """

    retryable = False

    def __init__(
        self, message: str, *, conn_id: str, status_code: int | None = None, code: str | None = None
    ) -> None:
        super().__init__(_redact(message))
        self.conn_id = conn_id
        self.http_status = status_code
        self.code = code


class HumanLayerConnectionError(HumanLayerError):
    """The connection is missing or incomplete (no base URL or no API key)."""


class HumanLayerAuthError(HumanLayerError):
    """The server refused the API key (401) or the action (403)."""


class HumanLayerNotFoundError(HumanLayerError):
    """The request (or the whole API path) does not exist on the server (404)."""


class HumanLayerConflictError(HumanLayerError):
    """The server already holds a request with this call id (409)."""


class HumanLayerRequestError(HumanLayerError):
    """The server rejected what was sent (another 4xx)."""


class HumanLayerBadResponseError(HumanLayerError):
    """The server answered something that is not the HumanLayer JSON API."""


class HumanLayerUnavailableError(HumanLayerError):
    """The server is unreachable, timed out, overloaded (429) or failing (5xx): worth retrying."""

    retryable = True


def _redact(text: str) -> str:
    from airflow.sdk.log import redact

    return str(redact(text))


@dataclass(frozen=True)
class HumanLayerSettings:
    """
    What the hook needs from a connection (or from the environment).

    :param conn_id: connection id the settings came from (or would have).
    :param base_url: full API base URL, e.g. ``https://api.humanlayer.dev/humanlayer/v1``.
    :param api_key: API key; never printed (``repr=False``).
    :param run_id_prefix: prefix of the HumanLayer ``run_id``.
    :param timeout: HTTP timeout in seconds.
    :param source: ``"connection"`` or ``"environment"``.
    """

    conn_id: str
    base_url: str
    api_key: str = field(repr=False)
    run_id_prefix: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    source: str = "connection"

    @property
    def where(self) -> str:
        if self.source == "environment":
            return f"HumanLayer connection '{self.conn_id}' (not defined; using {ENV_API_BASE}/{ENV_API_KEY}: {redact_url(self.base_url)})"
        return f"HumanLayer connection '{self.conn_id}' ({redact_url(self.base_url)})"


def connection_base_url(conn: Any) -> str | None:
    """
    The API base URL a ``humanlayer`` connection names, or ``None`` when its host is empty.

    The host is the full base URL; a bare host name gets the connection's schema (default
    ``https``) and port. The hook and the dashboard both read connections through this.

    :param conn: an Airflow connection.
    """
    host = (conn.host or "").strip()
    if not host:
        return None
    if "://" not in host:
        scheme = (conn.schema or "https").strip() or "https"
        host = f"{scheme}://{host}"
        if conn.port:
            host = f"{host}:{conn.port}"
    return host.rstrip("/") or None


def connection_timeout(conn_id: str, extra: dict[str, Any]) -> float:
    """
    The ``timeout`` extra of a ``humanlayer`` connection in seconds (``DEFAULT_TIMEOUT`` when unset).

    :param conn_id: the connection id, named in the error.
    :param extra: the connection's extra fields.
    :raises HumanLayerConnectionError: when it is not a positive number.
    """
    timeout_raw = extra.get("timeout")
    try:
        timeout = float(timeout_raw) if timeout_raw not in (None, "") else DEFAULT_TIMEOUT
    except (TypeError, ValueError):
        raise HumanLayerConnectionError(
            f"HumanLayer connection '{conn_id}': extra field 'timeout' must be a number of seconds, "
            f"got {timeout_raw!r}.",
            conn_id=conn_id,
        ) from None
    if timeout <= 0:
        raise HumanLayerConnectionError(
            f"HumanLayer connection '{conn_id}': extra field 'timeout' must be positive, got {timeout}.",
            conn_id=conn_id,
        )
    return timeout


def _settings_from_connection(conn: Any, conn_id: str, extra: dict[str, Any]) -> HumanLayerSettings:
    base_url = (connection_base_url(conn) or os.environ.get(ENV_API_BASE) or CLOUD_API_BASE).rstrip("/")
    api_key = conn.password or os.environ.get(ENV_API_KEY) or ""
    if not api_key:
        raise HumanLayerConnectionError(
            f"HumanLayer connection '{conn_id}' has no API key: set the connection's password "
            f"(API key) field, or {ENV_API_KEY}.",
            conn_id=conn_id,
        )
    return HumanLayerSettings(
        conn_id=conn_id,
        base_url=base_url,
        api_key=api_key,
        run_id_prefix=extra.get("run_id_prefix") or None,
        timeout=connection_timeout(conn_id, extra),
        source="connection",
    )


def _settings_from_environment(conn_id: str) -> HumanLayerSettings:
    api_key = os.environ.get(ENV_API_KEY, "")
    if not api_key:
        raise HumanLayerConnectionError(
            f"HumanLayer connection '{conn_id}' is not defined and {ENV_API_KEY} is not set: create "
            f"the connection (conn type 'humanlayer', host = API base URL, password = API key) or "
            f"export {ENV_API_BASE} and {ENV_API_KEY}.",
            conn_id=conn_id,
        )
    from airflow.sdk.log import mask_secret

    mask_secret(api_key)
    return HumanLayerSettings(
        conn_id=conn_id,
        base_url=(os.environ.get(ENV_API_BASE) or CLOUD_API_BASE).rstrip("/"),
        api_key=api_key,
        run_id_prefix=os.environ.get(ENV_RUN_ID_PREFIX) or None,
        source="environment",
    )


#: The error raised for an HTTP status, and what the message tells the user to check.
_STATUS_ERRORS: dict[int, tuple[type[HumanLayerError], str]] = {
    401: (HumanLayerAuthError, " Check the API key (password) of the connection."),
    403: (HumanLayerAuthError, " The API key is valid but not allowed to do this; check its role."),
    404: (
        HumanLayerNotFoundError,
        " Check the base URL (host) of the connection, or that the request exists.",
    ),
    409: (HumanLayerConflictError, ""),
}
_UNAVAILABLE_HINT = " The server is overloaded or failing; retrying may help."


def _raise_for_status(settings: HumanLayerSettings, method: str, path: str, status: int, body: str) -> None:
    if status < 400:
        return
    detail = error_detail(body)
    suffix = f" ({detail})" if detail else ""
    message = f"{settings.where}: {method} {path} answered {status}{suffix}."
    error_cls: type[HumanLayerError]
    if status == 429 or status >= 500:
        error_cls, hint = HumanLayerUnavailableError, _UNAVAILABLE_HINT
    else:
        error_cls, hint = _STATUS_ERRORS.get(status, (HumanLayerRequestError, ""))
    raise error_cls(message + hint, conn_id=settings.conn_id, status_code=status, code=error_code(body))


def _parse_json(settings: HumanLayerSettings, method: str, path: str, status: int, body: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise HumanLayerBadResponseError(
            f"{settings.where}: {method} {path} answered {status} with a body that is not JSON "
            f"({body.strip()[:80]!r}). Check that the base URL (host) points at the HumanLayer API "
            f"(it usually ends with /humanlayer/v1).",
            conn_id=settings.conn_id,
            status_code=status,
        ) from None


class _SessionPool:
    """
    One pooled ``aiohttp.ClientSession`` per event loop, shared by every trigger in it.

    Users ``acquire`` it and ``release`` it when done; the session closes when the last user of a
    loop releases it, so a trigger ending never closes a session another trigger still reads from.
    """

    def __init__(self) -> None:
        self._entries: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[Any]] = (
            weakref.WeakKeyDictionary()
        )

    async def acquire(self) -> aiohttp.ClientSession:
        import aiohttp

        loop = asyncio.get_running_loop()
        entry = self._entries.get(loop)
        if entry is None or entry[0].closed:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
            entry = [aiohttp.ClientSession(connector=connector, raise_for_status=False), 0]
            self._entries[loop] = entry
        entry[1] += 1
        return entry[0]

    async def release(self) -> None:
        loop = asyncio.get_running_loop()
        entry = self._entries.get(loop)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del self._entries[loop]
            await entry[0].close()

    def users(self) -> int:
        """Users of the running loop's session (0 when none is open)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return 0
        entry = self._entries.get(loop)
        return 0 if entry is None else int(entry[1])

    def session_for_running_loop(self) -> aiohttp.ClientSession | None:
        entry = self._entries.get(asyncio.get_running_loop())
        return None if entry is None else entry[0]


SESSION_POOL = _SessionPool()


class HumanLayerHook(BaseHook):
    """
    Talk to the HumanLayer API (the cloud or the provider's approvals service).

    The connection's host is the full API base URL and its password the API key; extras
    ``run_id_prefix`` and ``timeout`` (seconds). Without a connection the hook falls back to the
    SDK's ``HUMANLAYER_API_BASE`` / ``HUMANLAYER_API_KEY`` environment variables. Synchronous
    methods serve operators; ``a``-prefixed coroutines serve triggers and read through one pooled
    HTTP session per event loop.

    :param humanlayer_conn_id: Airflow connection id of type ``humanlayer``.
    """

    conn_name_attr = "humanlayer_conn_id"
    default_conn_name = "humanlayer_default"
    conn_type = "humanlayer"
    hook_name = "HumanLayer"

    def __init__(self, humanlayer_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.humanlayer_conn_id = humanlayer_conn_id
        self._async_settings: HumanLayerSettings | None = None

    # ----------------------------------------------------------------- settings
    @cached_property
    def settings(self) -> HumanLayerSettings:
        """Settings read from the connection (synchronous access, for workers)."""
        try:
            conn = self.get_connection(self.humanlayer_conn_id)
        except AirflowNotFoundException:
            return _settings_from_environment(self.humanlayer_conn_id)
        return _settings_from_connection(conn, self.humanlayer_conn_id, conn.extra_dejson)

    async def aget_settings(self) -> HumanLayerSettings:
        """Settings read with ``await BaseHook.aget_connection`` (for triggers)."""
        if self._async_settings is None:
            try:
                conn = await BaseHook.aget_connection(self.humanlayer_conn_id)
            except AirflowNotFoundException:
                self._async_settings = _settings_from_environment(self.humanlayer_conn_id)
            else:
                extra = await conn.aextra_dejson() if hasattr(conn, "aextra_dejson") else conn.extra_dejson
                self._async_settings = _settings_from_connection(conn, self.humanlayer_conn_id, extra)
        return self._async_settings

    # ------------------------------------------------------------------- client
    @cached_property
    def client(self) -> HumanLayer:
        """A ``humanlayer.HumanLayer`` with an explicit key and base URL (never the SDK's CLI mode)."""
        from humanlayer import HumanLayer
        from humanlayer.core.cloud import HumanLayerCloudConnection

        settings = self.settings
        connection = HumanLayerCloudConnection(
            api_key=settings.api_key,
            api_base_url=settings.base_url,
            http_timeout_seconds=max(1, round(settings.timeout)),
        )
        return HumanLayer.cloud(connection=connection, run_id=settings.run_id_prefix or None)

    def get_conn(self) -> HumanLayer:
        return self.client

    def _request(self, method: str, path: str, *, json_body: Any = None, expect_json: bool = True) -> Any:
        return self._send(method, path, json_body=json_body, expect_json=expect_json)[1]

    def _send(
        self, method: str, path: str, *, json_body: Any = None, expect_json: bool = True
    ) -> tuple[requests.Response, Any]:
        """``(response, parsed JSON body)`` of a call; raises :class:`HumanLayerError` on failure."""
        import requests

        settings = self.settings
        connection = self.client.backend.connection  # type: ignore[union-attr]
        try:
            resp: requests.Response = connection.request(method, path, json=json_body)
        except requests.Timeout:
            raise HumanLayerUnavailableError(
                f"{settings.where}: {method} {path} timed out after {settings.timeout:g}s. Check that "
                "the server is up, or raise the connection's 'timeout' extra.",
                conn_id=settings.conn_id,
            ) from None
        except requests.RequestException as exc:
            raise HumanLayerUnavailableError(
                f"{settings.where}: cannot reach the server ({type(exc).__name__}). Check the base URL "
                "(host) of the connection and that the server is running.",
                conn_id=settings.conn_id,
            ) from None
        _raise_for_status(settings, method, path, resp.status_code, resp.text)
        if not expect_json:
            return resp, None
        return resp, _parse_json(settings, method, path, resp.status_code, resp.text)

    # --------------------------------------------------------------- sync calls
    def create_function_call(self, call: FunctionCall) -> GateFunctionCall:
        """
        Create an approval request (``POST /function_calls``).

        :param call: the request; ``status`` should be ``None``.
        """
        from airflow_provider_hlml.gate.wire import GateFunctionCall

        data = self._request("POST", "/function_calls", json_body=call.model_dump(mode="json"))
        return GateFunctionCall.model_validate(data)

    def get_function_call(self, call_id: str) -> GateFunctionCall:
        """
        Read one request (``GET /function_calls/{call_id}``).

        :param call_id: HumanLayer call id.
        """
        from airflow_provider_hlml.gate.wire import GateFunctionCall

        return GateFunctionCall.model_validate(self._request("GET", f"/function_calls/{call_id}"))

    def settled_function_calls(self, call_ids: Sequence[str], chunk: int = 5000) -> list[dict[str, Any]]:
        """
        The requests among ``call_ids`` that are decided or cancelled, in one request per
        ``chunk`` ids (``POST /hlml/function_calls/settled`` of the provider's approvals service).

        :param call_ids: HumanLayer call ids.
        :raises HumanLayerError: also when the server has no such route (the HumanLayer cloud).
        """
        from airflow_provider_hlml.gate.wire import SETTLED_PATH

        found: list[dict[str, Any]] = []
        ids = list(dict.fromkeys(call_ids))
        for start in range(0, len(ids), chunk):
            data = self._request("POST", SETTLED_PATH, json_body={"call_ids": ids[start : start + chunk]})
            listed = data.get("function_calls") if isinstance(data, dict) else None
            found += [c for c in listed or [] if isinstance(c, dict)]
        return found

    def get_or_create_function_call(self, call: FunctionCall) -> tuple[GateFunctionCall, bool]:
        """
        Create the request, or return the existing one with ``call.call_id``.

        The approvals service returns an existing request (200, ``Idempotent-Replayed: true``)
        only to the principal that created it and only when its run id and spec are the ones
        sent; anything else is a 409 that names the difference, raised here as
        :class:`HumanLayerConflictError`. A server that answers 409 for any existing id (the
        HumanLayer cloud) gets the request read back instead. Either way the caller must compare
        what comes back with what it sent
        (:func:`~airflow_provider_hlml.gate.wire.spec_differences`).

        :param call: the request to create.
        :return: ``(function_call, created)``.
        """
        from airflow_provider_hlml.gate import wire

        try:
            resp, data = self._send("POST", "/function_calls", json_body=call.model_dump(mode="json"))
        except HumanLayerConflictError as exc:
            if exc.code == wire.CALL_ID_TAKEN:
                raise
            return self.get_function_call(call.call_id), False
        replayed = resp.headers.get(wire.REPLAYED_HEADER, "").lower() == "true"
        return wire.GateFunctionCall.model_validate(data), not replayed

    def respond(
        self, call_id: str, status: FunctionCallStatus, user_info: dict[str, Any] | None = None
    ) -> GateFunctionCall:
        """
        Decide a request (``POST /agent/function_calls/{call_id}/respond``).

        :param call_id: HumanLayer call id.
        :param status: the decision (``approved``, ``comment``, ``reject_option_name``).
        :param user_info: ``{"name", "email"}`` of the person a delegate key acts for.
        """
        from airflow_provider_hlml.gate.wire import GateFunctionCall

        body: dict[str, Any] = status.model_dump(mode="json")
        if user_info is not None:
            body["user_info"] = user_info
        data = self._request("POST", f"/agent/function_calls/{call_id}/respond", json_body=body)
        return GateFunctionCall.model_validate(data)

    def escalate_email(self, call_id: str, escalation: Escalation) -> GateFunctionCall:
        """
        Escalate a request (``POST /agent/function_calls/{call_id}/escalate_email``).

        :param call_id: HumanLayer call id.
        :param escalation: message, additional recipients and channel.
        """
        from airflow_provider_hlml.gate.wire import GateFunctionCall

        data = self._request(
            "POST",
            f"/agent/function_calls/{call_id}/escalate_email",
            json_body=escalation.model_dump(mode="json"),
        )
        return GateFunctionCall.model_validate(data)

    def cancel(self, call_id: str, reason: str = "cancelled", comment: str | None = None) -> GateFunctionCall:
        """
        Cancel a pending request (approvals-service extension, not in the HumanLayer cloud).

        :param call_id: HumanLayer call id.
        :param reason: ``"timeout"``, ``"killed"`` or ``"cancelled"``.
        :param comment: free text recorded in the audit trail.
        """
        from airflow_provider_hlml.gate.wire import GateFunctionCall

        data = self._request(
            "POST",
            f"/agent/function_calls/{call_id}/cancel",
            json_body={"reason": reason, "comment": comment},
        )
        return GateFunctionCall.model_validate(data)

    def decide_by_policy(self, call_id: str) -> GateFunctionCall:
        """
        Have the approvals service record the decision policy's decision a request carries, now
        that its override window has passed (approvals-service extension; 409 when a person
        answered or the window is still open).

        :param call_id: HumanLayer call id.
        """
        from urllib.parse import quote

        from airflow_provider_hlml.gate.wire import AUTO_DECISION_PATH, GateFunctionCall

        data = self._request("POST", AUTO_DECISION_PATH.format(call_id=quote(call_id, safe="")))
        return GateFunctionCall.model_validate(data)

    def get_audit(self, call_id: str) -> list[dict[str, Any]]:
        """
        The audit trail of a request (approvals-service extension).

        :param call_id: HumanLayer call id.
        """
        data = self._request("GET", f"/function_calls/{call_id}/audit")
        return list(data) if isinstance(data, list) else list(data.get("events", []))

    def get_attestation(self, call_id: str) -> str | None:
        """
        The signed statement of a request's decision (approvals-service extension): a DSSE
        envelope, or None while the request is pending, after a cancellation, and for servers
        that sign nothing (the HumanLayer cloud).

        :param call_id: HumanLayer call id.
        """
        try:
            data = self._request("GET", f"/function_calls/{call_id}/attestation")
        except HumanLayerNotFoundError:
            return None
        envelope = data.get("attestation") if isinstance(data, dict) else None
        return envelope if isinstance(envelope, str) else None

    def attestation_keys(self) -> KeySet:
        """The public keys the server signs (and signed) decisions with, with their status."""
        from airflow_provider_hlml.gate.attestation import KEYS_PATH, KeySet

        return KeySet.from_document(self._request("GET", KEYS_PATH))

    def features(self) -> frozenset[str]:
        """What the server supports beyond HumanLayer's API (empty for servers without the route,
        such as the HumanLayer cloud)."""
        from airflow_provider_hlml.gate.wire import FEATURES_PATH

        try:
            data = self._request("GET", FEATURES_PATH)
        except HumanLayerNotFoundError:
            return frozenset()
        listed = data.get("features") if isinstance(data, dict) else None
        return frozenset(str(f) for f in listed) if isinstance(listed, list) else frozenset()

    def health(self) -> dict[str, Any]:
        """
        Check that the server answers and accepts the key.

        Reads ``/healthz`` next to the API root when present, then an unknown request id: a 404
        proves the key was accepted (a wrong key answers 401).
        """
        settings = self.settings
        result: dict[str, Any] = {"base_url": redact_url(settings.base_url), "source": settings.source}
        try:
            self._request("GET", "/function_calls/hlml-connection-test-does-not-exist")
        except HumanLayerNotFoundError as exc:
            result["status"] = "ok"
            result["detail"] = f"server reachable, API key accepted ({exc.http_status} for a probe id)"
            return result
        result["status"] = "ok"
        result["detail"] = "server reachable, API key accepted"
        return result

    def test_connection(self) -> tuple[bool, str]:
        """
        Airflow UI "Test" button: ``(ok, message)`` without any secret in the message.

        Probes with a timeout of at most ``TEST_CONNECTION_TIMEOUT`` seconds (the connection's
        ``timeout`` extra if smaller), so the answer comes within 10 s even from a host that drops
        packets; errors name the connection, its base URL and what to check.
        """
        try:
            settings = self.settings
            probe = type(self)(self.humanlayer_conn_id)
            # A cached_property holds the value in the instance dict: the probe's own, bounded one.
            probe.__dict__["settings"] = replace(
                settings, timeout=min(settings.timeout, TEST_CONNECTION_TIMEOUT)
            )
            info = probe.health()
        except HumanLayerError as exc:
            return False, str(exc)
        except Exception as exc:
            return False, _redact(f"{type(exc).__name__}: {exc}")
        return True, f"{info['detail']} at {info['base_url']}"

    # -------------------------------------------------------------- async calls
    @contextlib.asynccontextmanager
    async def asession_scope(self) -> AsyncIterator[None]:
        """Keep the event loop's pooled session open for the duration of the block (one trigger run)."""
        await SESSION_POOL.acquire()
        try:
            yield
        finally:
            await SESSION_POOL.release()

    async def aget_function_call(self, call_id: str, *, wait: float | None = None) -> GateFunctionCall:
        """
        Read one request through the pooled session, long-polling when ``wait`` is given.

        Servers without long-polling (the cloud) ignore ``?wait=`` and answer at once.

        :param call_id: HumanLayer call id.
        :param wait: seconds the server may hold the answer until the request changes (max 30).
        """
        from airflow_provider_hlml.gate.wire import GateFunctionCall

        params = None
        if wait is not None and wait > 0:
            params = {"wait": f"{min(wait, MAX_LONG_POLL_SECONDS):.3g}"}
        data = await self._arequest("GET", f"/function_calls/{call_id}", params=params, extra_timeout=wait)
        return GateFunctionCall.model_validate(data)

    async def arespond(
        self, call_id: str, status: FunctionCallStatus, user_info: dict[str, Any] | None = None
    ) -> GateFunctionCall:
        """
        Async :meth:`respond`.

        :param call_id: HumanLayer call id.
        :param status: the decision.
        :param user_info: person a delegate key acts for.
        """
        from airflow_provider_hlml.gate.wire import GateFunctionCall

        body: dict[str, Any] = status.model_dump(mode="json")
        if user_info is not None:
            body["user_info"] = user_info
        data = await self._arequest("POST", f"/agent/function_calls/{call_id}/respond", json_body=body)
        return GateFunctionCall.model_validate(data)

    async def acancel(
        self, call_id: str, reason: str = "cancelled", comment: str | None = None
    ) -> GateFunctionCall:
        """
        Async :meth:`cancel`.

        :param call_id: HumanLayer call id.
        :param reason: ``"timeout"``, ``"killed"`` or ``"cancelled"``.
        :param comment: free text recorded in the audit trail.
        """
        from airflow_provider_hlml.gate.wire import GateFunctionCall

        data = await self._arequest(
            "POST",
            f"/agent/function_calls/{call_id}/cancel",
            json_body={"reason": reason, "comment": comment},
        )
        return GateFunctionCall.model_validate(data)

    async def _arequest(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json_body: Any = None,
        extra_timeout: float | None = None,
    ) -> Any:
        import aiohttp

        settings = await self.aget_settings()
        session = await SESSION_POOL.acquire()
        timeout = aiohttp.ClientTimeout(total=settings.timeout + (extra_timeout or 0))
        headers = {"Authorization": f"Bearer {settings.api_key}", "Accept": "application/json"}
        url = f"{settings.base_url}{path}"
        try:
            for attempt in (1, 2):
                try:
                    async with session.request(
                        method, url, params=params, json=json_body, headers=headers, timeout=timeout
                    ) as resp:
                        body = await resp.text()
                        status = resp.status
                    break
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                    # A pooled keep-alive connection the server closed just as it was reused:
                    # a read is safe to send again at once on a fresh connection.
                    if method != "GET" or attempt == 2:
                        raise
        except asyncio.TimeoutError:
            raise HumanLayerUnavailableError(
                f"{settings.where}: {method} {path} timed out after {timeout.total:g}s. Check that the "
                "server is up, or raise the connection's 'timeout' extra.",
                conn_id=settings.conn_id,
            ) from None
        except aiohttp.ClientError as exc:
            raise HumanLayerUnavailableError(
                f"{settings.where}: cannot reach the server ({type(exc).__name__}). Check the base URL "
                "(host) of the connection and that the server is running.",
                conn_id=settings.conn_id,
            ) from None
        finally:
            with contextlib.suppress(Exception):
                await SESSION_POOL.release()
        _raise_for_status(settings, method, path, status, body)
        return _parse_json(settings, method, path, status, body)
