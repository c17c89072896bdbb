"""Webhook receiver in the Airflow API server: ``POST /hlml/webhooks/humanlayer``.

A standalone approvals service (``hlml-approvals serve --webhook-url ...``) posts here when a
request is decided, and the waiting gate is handed the decision at once (:mod:`.wake`) instead of
when its trigger next reports. The body is HumanLayer's webhook shape (``{"type", "event"}``, or
the bare function call).

The route has no Airflow login (a service calls it); what it trusts instead:

- with ``[hlml] webhook_secret`` set, only fresh bodies signed with it are taken as they are:
  ``X-HLML-Request-Timestamp`` (Unix seconds, within :data:`REPLAY_WINDOW_SECONDS` of this
  server's clock) and ``X-HLML-Signature: v1=<hex>``, the HMAC-SHA256 of
  ``v1:{timestamp}:{raw body}``, as the approvals service sends with
  ``HLML_APPROVALS_WEBHOOK_SECRET``; anything else is refused with 401;
- without a secret, the body only names the request: it is read again from the approvals backend
  with the dashboard's delegate key, and that answer is what the gate gets.

The body is read at most :data:`MAX_BODY_BYTES` far (a larger declared or streamed body is
answered 413 at once), and hostile content (strings with NUL or lone surrogates, deep nesting,
non-finite numbers, a malformed ``call_id``) is refused with 4xx before anything else sees it.

Either way the gate's own policy (approvers, self-approval) is applied again before anything
reaches Airflow, and a request no gate waits on changes nothing. A decision whose gate is still
running (about to park) is answered 503 with ``Retry-After``: the service's outbox delivers it
again until it is acknowledged.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from airflow_provider_hlml.plugins.approvals_client import (
    ApprovalsRequestError,
    ApprovalsUnavailable,
    DelegateKeyMissing,
)

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_048_576
#: Deepest JSON nesting accepted (a function call with a validation report needs about eight).
MAX_JSON_DEPTH = 64
#: The approvals service's rule for a call id, and no control characters.
CALL_ID = re.compile(r"[^/\s?#%\\\x00-\x1f\x7f]{1,256}")


class BodyRefused(Exception):
    """The request body is not acceptable; ``status_code`` and ``message`` say why."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def _error(code: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "code": code}}, status_code=code)


async def read_limited_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """
    The request body, read only as far as ``limit`` bytes.

    A declared ``Content-Length`` over the limit is refused before reading anything; a streamed
    body is refused as soon as it passes the limit, so a huge request costs no memory.

    :raises BodyRefused: 413 past the limit, 400 for a malformed ``Content-Length``.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isascii() or not declared.isdigit():
            raise BodyRefused(status.HTTP_400_BAD_REQUEST, "Content-Length: not a number")
        if int(declared) > limit:
            raise BodyRefused(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, f"body: larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyRefused(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, f"body: larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_body(raw: bytes) -> Any:
    """
    The JSON of a webhook body, refused when it holds anything the gate or a database would choke on.

    :raises BodyRefused: 422 for non-JSON (including ``NaN``/``Infinity`` and invalid UTF-8),
        nesting deeper than :data:`MAX_JSON_DEPTH`, and strings with NUL or lone surrogates.
    """
    try:
        payload = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise BodyRefused(status.HTTP_422_UNPROCESSABLE_ENTITY, "body: not JSON") from None
    problem = _hostile_content(payload, "body", 0)
    if problem:
        raise BodyRefused(status.HTTP_422_UNPROCESSABLE_ENTITY, problem)
    return payload


def _bad_string(value: str) -> bool:
    if "\x00" in value:
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, from a "\ud800" escape
        return True
    return False


def _hostile_content(value: Any, where: str, depth: int) -> str | None:
    if depth > MAX_JSON_DEPTH:
        return f"body: nested deeper than {MAX_JSON_DEPTH} levels"
    if isinstance(value, str):
        return f"{where}: NUL or a lone surrogate in a string" if _bad_string(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            problem = (
                f"{where}: NUL or a lone surrogate in a key"
                if _bad_string(key)
                else _hostile_content(item, f"{where}.{key}"[:200], depth + 1)
            )
            if problem:
                return problem
    elif isinstance(value, list):
        for index, item in enumerate(value):
            problem = _hostile_content(item, f"{where}[{index}]"[:200], depth + 1)
            if problem:
                return problem
    return None


def _unwrap(payload: Any) -> tuple[str | None, Any]:
    """``(type, object)`` of a webhook body: HumanLayer's envelope or the bare object."""
    if isinstance(payload, dict) and "event" in payload and isinstance(payload.get("type"), str):
        return payload["type"], payload["event"]
    return None, payload


def create_webhook_app(data: Any, secret: str = "", mlflow_secret: str = "") -> FastAPI:
    """
    The receiver app: ``/humanlayer`` here, ``/mlflow`` (:mod:`.mlflow_webhook`, the alias guard).

    :param data: the dashboard's :class:`~airflow_provider_hlml.plugins.app.DashboardData`, used to
        read a request again when bodies are not signed.
    :param secret: ``[hlml] webhook_secret``.
    :param mlflow_secret: ``[hlml] mlflow_webhook_secret`` ("" refuses every MLflow delivery).
    """
    from pydantic import ValidationError

    from airflow_provider_hlml.approvals.webhooks import (
        HUMAN_CONTACT_COMPLETED,
        SIGNATURE_HEADER,
        TIMESTAMP_HEADER,
        signature_problem,
    )
    from airflow_provider_hlml.plugins.wake import NOT_YET, wake_gate

    # No trailing-slash redirects: Starlette would build their Location from the Host header.
    app = FastAPI(
        title="HLML webhooks", docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False
    )

    @app.post("/humanlayer")
    async def humanlayer_webhook(request: Request) -> JSONResponse:
        try:
            raw = await read_limited_body(request)
            if secret:
                problem = signature_problem(
                    secret, raw, request.headers.get(SIGNATURE_HEADER), request.headers.get(TIMESTAMP_HEADER)
                )
                if problem:
                    raise BodyRefused(status.HTTP_401_UNAUTHORIZED, problem)
            payload = parse_body(raw)
        except BodyRefused as exc:
            return _error(exc.status_code, exc.message)
        event_type, body = _unwrap(payload)
        if event_type == HUMAN_CONTACT_COMPLETED:
            return JSONResponse({"outcome": "ignored", "detail": "human contacts do not gate tasks"})
        call_id = body.get("call_id") if isinstance(body, dict) else None
        if call_id is None or call_id == "":
            return _error(status.HTTP_422_UNPROCESSABLE_ENTITY, "event.call_id: missing")
        if not isinstance(call_id, str) or not CALL_ID.fullmatch(call_id) or call_id in (".", ".."):
            return _error(
                status.HTTP_422_UNPROCESSABLE_ENTITY,
                "event.call_id: not 1-256 characters without whitespace, control characters or / ? # % \\ "
                "(nor . or ..)",
            )
        if not secret:
            try:
                client = await data.approvals_client()
                body = await client.get_call(call_id)
            except ApprovalsRequestError as exc:
                return _error(
                    exc.status_code if exc.status_code == 404 else 422, f"event.call_id: {exc.message}"
                )
            except (ApprovalsUnavailable, DelegateKeyMissing) as exc:
                # The gate still learns of the decision through its own trigger.
                return JSONResponse(
                    {"call_id": call_id, "outcome": "unverified", "detail": str(exc)},
                    status_code=status.HTTP_202_ACCEPTED,
                )
        try:
            outcome = await run_in_threadpool(wake_gate, body)
            log.info(
                "Webhook for approval request %s (%s): %s",
                call_id,
                "signed" if secret else "read again",
                outcome,
            )
        except ValidationError as exc:
            fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors()[:5])
            return _error(
                status.HTTP_422_UNPROCESSABLE_ENTITY, f"event: not a HumanLayer function call ({fields})"
            )
        if outcome == NOT_YET:
            # The gate's task is about to park: not acknowledged, so the service delivers again.
            return JSONResponse(
                {"call_id": call_id, "outcome": outcome},
                status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                headers={"Retry-After": "2"},
            )
        return JSONResponse({"call_id": call_id, "outcome": outcome})

    from airflow_provider_hlml.plugins.mlflow_webhook import add_mlflow_route

    add_mlflow_route(app, mlflow_secret)
    return app
