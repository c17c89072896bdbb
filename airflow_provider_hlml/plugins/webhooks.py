"""Webhook receiver in the Airflow API server: ``POST /hlml/webhooks/humanlayer``.

A standalone approvals service (``hlml-approvals serve --webhook-url ...``) posts here when a
request is decided, and the waiting gate is handed the decision at once (:mod:`.wake`) instead of
when its trigger next reports. The body is HumanLayer's webhook shape (``{"type", "event"}``, or
the bare function call).

The route has no Airflow login (a service calls it); what it trusts instead:

- with ``[hlml] webhook_secret`` set, only bodies signed with it (``X-HLML-Signature``, HMAC-SHA256,
  as the approvals service sends with ``HLML_APPROVALS_WEBHOOK_SECRET``) are taken as they are;
  anything else is refused with 401;
- without a secret, the body only names the request: it is read again from the approvals backend
  with the dashboard's delegate key, and that answer is what the gate gets.

Either way the gate's own policy (approvers, self-approval) is applied again before anything
reaches Airflow, and a request no gate waits on changes nothing.
"""

from __future__ import annotations

import json
import logging
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


def _error(code: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "code": code}}, status_code=code)


def _unwrap(payload: Any) -> tuple[str | None, Any]:
    """``(type, object)`` of a webhook body: HumanLayer's envelope or the bare object."""
    if isinstance(payload, dict) and "event" in payload and isinstance(payload.get("type"), str):
        return payload["type"], payload["event"]
    return None, payload


def create_webhook_app(data: Any, secret: str = "") -> FastAPI:
    """
    The receiver app.

    :param data: the dashboard's :class:`~airflow_provider_hlml.plugins.app.DashboardData`, used to
        read a request again when bodies are not signed.
    :param secret: ``[hlml] webhook_secret``.
    """
    from pydantic import ValidationError

    from airflow_provider_hlml.approvals.webhooks import (
        HUMAN_CONTACT_COMPLETED,
        SIGNATURE_HEADER,
        verify_signature,
    )
    from airflow_provider_hlml.plugins.wake import wake_gate

    app = FastAPI(title="HLML webhooks", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/humanlayer")
    async def humanlayer_webhook(request: Request) -> JSONResponse:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return _error(
                status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, f"body: larger than {MAX_BODY_BYTES} bytes"
            )
        if secret and not verify_signature(secret, raw, request.headers.get(SIGNATURE_HEADER)):
            return _error(
                status.HTTP_401_UNAUTHORIZED,
                f"{SIGNATURE_HEADER}: missing or not the HMAC-SHA256 of the body under [hlml] webhook_secret",
            )
        try:
            payload = json.loads(raw)
        except ValueError:
            return _error(status.HTTP_422_UNPROCESSABLE_ENTITY, "body: not JSON")
        event_type, body = _unwrap(payload)
        if event_type == HUMAN_CONTACT_COMPLETED:
            return JSONResponse({"outcome": "ignored", "detail": "human contacts do not gate tasks"})
        call_id = body.get("call_id") if isinstance(body, dict) else None
        if not isinstance(call_id, str) or not call_id:
            return _error(status.HTTP_422_UNPROCESSABLE_ENTITY, "event.call_id: missing")
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
        return JSONResponse({"call_id": call_id, "outcome": outcome})

    return app
