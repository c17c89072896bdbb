"""MLflow registry webhook receiver in the Airflow API server: ``POST /hlml/webhooks/mlflow``.

The MLflow server posts here when a registered model's alias is set or deleted (a webhook made
with :func:`~airflow_provider_hlml.operators.alias_guard.register_mlflow_webhook`); for a
protected alias, the alias guard (:mod:`airflow_provider_hlml.operators.alias_guard`) checks the
version now holding it in a worker thread after the answer is sent.

The route has no Airflow login (MLflow calls it); it trusts only deliveries signed with
``[hlml] mlflow_webhook_secret`` as MLflow signs them (``mlflow/webhooks/delivery.py``):
``X-MLflow-Signature: v1,<base64 HMAC-SHA256>`` over ``"{delivery id}.{timestamp}.{raw body}"``
with ``X-MLflow-Delivery-Id`` and ``X-MLflow-Timestamp`` (Unix seconds, within
:data:`REPLAY_WINDOW_SECONDS` of this server's clock). Anything else is refused with 401 before
the body is parsed, and without a secret every delivery is refused: an unsigned alias event could
only make the guard check again, but it is not trusted either. A delivery id seen in the replay
window is acknowledged and not acted on twice. The body is read at most
:data:`~airflow_provider_hlml.plugins.webhooks.MAX_BODY_BYTES` far and hostile JSON is refused
as on the HumanLayer route.

Why here and not in the approvals service: the API server has the MLflow connection, Airflow's
notifiers and ``[hlml]`` configuration, and works whichever approvals backend holds the keys;
the approvals service imports no Airflow and knows no MLflow.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from airflow_provider_hlml.plugins.webhooks import BodyRefused, parse_body, read_limited_body

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
REPLAY_WINDOW_SECONDS = 300
ALIAS_ENTITY = "model_version_alias"
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_DELIVERY_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: Bounds of a model name / alias / version taken from a delivery.
_MAX_NAME = 256


def mlflow_signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The ``X-MLflow-Signature`` value MLflow sends for ``body`` (``v1,<base64>``)."""
    signed = delivery_id.encode() + b"." + timestamp.encode() + b"." + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def mlflow_signature_problem(
    secret: str,
    body: bytes,
    signature: str | None,
    timestamp: str | None,
    delivery_id: str | None,
    *,
    now: float | None = None,
    window: float = REPLAY_WINDOW_SECONDS,
) -> str | None:
    """Why a delivery is not acceptable, or None when it is signed with ``secret`` and fresh."""
    if not secret:
        return "[hlml] mlflow_webhook_secret is not set: MLflow deliveries are not accepted"
    if not signature:
        return f"{SIGNATURE_HEADER}: missing (create the webhook with a secret)"
    if not delivery_id or not _DELIVERY_ID.fullmatch(delivery_id):
        return f"{DELIVERY_ID_HEADER}: missing or malformed"
    if not timestamp or not _TIMESTAMP.fullmatch(timestamp):
        return f"{TIMESTAMP_HEADER}: missing or not Unix seconds"
    skew = int(timestamp) - (time.time() if now is None else now)
    if abs(skew) > window:
        return f"{TIMESTAMP_HEADER}: {abs(skew):.0f} s away from this server's clock, outside the {window:.0f} s window"
    expected = mlflow_signature(secret, delivery_id, timestamp, body)
    if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
        return f"{SIGNATURE_HEADER}: does not match the body"
    return None


class SeenDeliveries:
    """Delivery ids acknowledged in the last ``window`` seconds (bounded)."""

    def __init__(self, window: float = REPLAY_WINDOW_SECONDS, limit: int = 10_000) -> None:
        self.window = window
        self.limit = limit
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, delivery_id: str) -> bool:
        now = time.monotonic()
        with self._lock:
            while self._seen and (
                len(self._seen) >= self.limit or next(iter(self._seen.values())) < now - 2 * self.window
            ):
                self._seen.popitem(last=False)
            if delivery_id in self._seen:
                return False
            self._seen[delivery_id] = now
            return True


def _text(value: Any) -> str | None:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        text = str(value)
        if 0 < len(text) <= _MAX_NAME and text.isprintable():
            return text
    return None


def alias_event(payload: Any) -> tuple[str, str, str] | None:
    """``(action, model, alias)`` of an MLflow alias event; None for any other event."""
    if not isinstance(payload, dict) or payload.get("entity") != ALIAS_ENTITY:
        return None
    action, data = payload.get("action"), payload.get("data")
    if action not in ("created", "deleted") or not isinstance(data, dict):
        return None
    name, alias = _text(data.get("name")), _text(data.get("alias"))
    if name is None or alias is None:
        return None
    return str(action), name, alias


def _run_guard(name: str, alias: str) -> None:
    from airflow_provider_hlml.operators.alias_guard import AliasGuard

    try:
        finding = AliasGuard(source="webhook").check_alias(name, alias)
    except Exception:
        # The reconcile DAG checks it again; MLflow does not redeliver an acknowledged event.
        log.exception("The alias guard could not check @%s of %s", alias, name)
        return
    log.info("MLflow webhook: @%s of %s is %s (%s)", alias, name, finding.verdict, finding.reason)


def add_mlflow_route(
    app: FastAPI,
    secret: str,
    *,
    is_protected: Callable[[str, str], bool] | None = None,
    check: Callable[[str, str], None] = _run_guard,
) -> None:
    """Add ``POST /mlflow`` to the webhook app.

    :param secret: ``[hlml] mlflow_webhook_secret``.
    :param is_protected: whether ``(model, alias)`` is protected; default ``[hlml] protected_aliases``.
    :param check: what runs for a protected alias (in a worker thread, after the answer).
    """
    seen = SeenDeliveries()

    def protected(model: str, alias: str) -> bool:
        if is_protected is not None:
            return is_protected(model, alias)
        from airflow_provider_hlml import settings

        return alias in settings.protected_aliases_of(model)

    async def guard_later(model: str, alias: str) -> None:
        await run_in_threadpool(check, model, alias)

    @app.post("/mlflow")
    async def mlflow_webhook(request: Request) -> JSONResponse:
        try:
            raw = await read_limited_body(request)
            problem = mlflow_signature_problem(
                secret,
                raw,
                request.headers.get(SIGNATURE_HEADER),
                request.headers.get(TIMESTAMP_HEADER),
                request.headers.get(DELIVERY_ID_HEADER),
            )
            if problem:
                raise BodyRefused(status.HTTP_401_UNAUTHORIZED, problem)
            payload = parse_body(raw)
        except BodyRefused as exc:
            return JSONResponse(
                {"error": {"message": exc.message, "code": exc.status_code}}, status_code=exc.status_code
            )
        delivery_id = request.headers[DELIVERY_ID_HEADER]
        event = alias_event(payload)
        if event is None:
            return JSONResponse({"outcome": "ignored", "detail": "not a model version alias event"})
        _action, model, alias = event
        if not await run_in_threadpool(protected, model, alias):
            return JSONResponse({"outcome": "ignored", "detail": f"@{alias} of {model} is not protected"})
        if not seen.first_time(delivery_id):
            return JSONResponse({"outcome": "duplicate", "delivery_id": delivery_id})
        return JSONResponse(
            {"outcome": "checking", "model": model, "alias": alias},
            status_code=status.HTTP_202_ACCEPTED,
            background=BackgroundTask(guard_later, model, alias),
        )
