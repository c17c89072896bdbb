"""HTTP client of the approvals backend (the built-in service or HumanLayer cloud) for the dashboard.

The dashboard speaks the HumanLayer wire format with the ``delegate`` key from
``[hlml] approvals_delegate_key``: it reads requests and answers them *on behalf of* the logged-in
Airflow user (``user_info``), so the same code works against the self-hosted service and the cloud.
The self-hosted extensions (filtered lists, audit, metrics) are used when the backend has them.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from airflow_provider_hlml.utils.http import error_detail, redact_url

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

#: The self-hosted service's delivery status route (under the API prefix) and its id limit.
DELIVERIES_PATH = "/hlml/deliveries"
MAX_DELIVERY_IDS = 200


class ApprovalsUnavailable(RuntimeError):
    """The approvals backend cannot be reached or answered with a server error."""


class ApprovalsRequestError(RuntimeError):
    """The approvals backend refused a request (4xx); ``status_code`` and ``message`` say why."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"approvals backend answered {status_code}: {message}")
        self.status_code = status_code
        self.message = message


class DelegateKeyMissing(RuntimeError):
    """No delegate key is configured, so the dashboard cannot read or decide requests."""


def _segment(value: str) -> str:
    """``value`` as one path segment: a call id can never reach another route of the backend."""
    segment = quote(value, safe="")
    # "." and ".." would be read as dot-segments, moving the request up the path.
    return segment.replace(".", "%2E") if segment in (".", "..") else segment


def _items(body: Any, key: str) -> list[dict[str, Any]]:
    """The objects of a list answer: a bare array, or ``{"items": [...]}`` / ``{key: [...]}``."""
    if isinstance(body, dict):
        body = body.get("items", body.get(key))
    if not isinstance(body, list):
        return []
    return [item for item in body if isinstance(item, dict)]


class ApprovalsClient:
    """Async client for one approvals backend.

    :param base_url: full base URL including ``/humanlayer/v1`` (or the cloud base URL).
    :param api_key: the delegate key.
    :param timeout: seconds per request.
    :param transport: optional httpx transport (used to reach the built-in service in-process).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._timeout = timeout
        self._transport = transport

    async def _request(
        self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None
    ) -> Any:
        if not self._api_key:
            raise DelegateKeyMissing(
                "No approvals delegate key is configured: set [hlml] approvals_delegate_key "
                "(create one with `hlml-approvals keys create --role delegate`)."
            )
        headers = {"Authorization": f"Bearer {self._api_key}"}
        where = f"approvals backend at {redact_url(self.base_url)}"
        try:
            async with httpx.AsyncClient(timeout=self._timeout, transport=self._transport) as client:
                response = await client.request(
                    method, f"{self.base_url}{path}", params=params, json=json, headers=headers
                )
        except httpx.HTTPError as exc:
            raise ApprovalsUnavailable(f"{where} unreachable: {type(exc).__name__}") from exc
        if response.status_code >= 500:
            raise ApprovalsUnavailable(f"{where} answered {response.status_code}")
        if response.status_code >= 400:
            raise ApprovalsRequestError(
                response.status_code, error_detail(response.text) or response.reason_phrase
            )
        try:
            return response.json()
        except ValueError as exc:
            raise ApprovalsUnavailable(f"{where} sent a non-JSON answer") from exc

    async def list_calls(
        self,
        *,
        status: str | None = None,
        fn: str | None = None,
        since: dt.datetime | None = None,
        limit: int = 200,
    ) -> list[dict[str, Any]]:
        """Function calls, newest first, optionally filtered (self-hosted extension).

        A backend without the list extension (the cloud) still lists pending calls.
        """
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if fn:
            params["fn"] = fn
        if since:
            params["since"] = since.isoformat()
        try:
            body = await self._request("GET", "/function_calls", params=params)
        except ApprovalsRequestError as exc:
            if exc.status_code not in (404, 405) or status not in (None, "pending"):
                raise
            body = await self._request("GET", "/agent/function_calls/pending")
        return _items(body, "function_calls")

    async def get_call(self, call_id: str) -> dict[str, Any]:
        body = await self._request("GET", f"/function_calls/{_segment(call_id)}")
        if not isinstance(body, dict):
            raise ApprovalsUnavailable("approvals backend sent a malformed function call")
        return body

    async def audit(self, call_id: str) -> list[dict[str, Any]]:
        try:
            body = await self._request("GET", f"/function_calls/{_segment(call_id)}/audit")
        except ApprovalsRequestError as exc:
            if exc.status_code in (404, 405):
                return []
            raise
        return _items(body, "events")

    async def metrics(self) -> dict[str, Any] | None:
        """The ``/metrics/approvals`` figures, or None when the backend does not offer them."""
        try:
            body = await self._request("GET", "/metrics/approvals")
        except ApprovalsRequestError as exc:
            if exc.status_code in (404, 405):
                return None
            raise
        return body if isinstance(body, dict) else None

    async def attestation_keys(self) -> dict[str, Any] | None:
        """The keys document the backend signs decisions with (``GET /attestation/keys``); None
        when it has none (the cloud, an older service)."""
        from airflow_provider_hlml.gate.attestation import KEYS_PATH

        try:
            body = await self._request("GET", KEYS_PATH)
        except ApprovalsRequestError as exc:
            if exc.status_code in (404, 405):
                return None
            raise
        return body if isinstance(body, dict) else None

    async def deliveries(self, call_ids: Sequence[str]) -> dict[str, Any] | None:
        """Where each of ``call_ids`` was delivered (``GET /hlml/deliveries``, self-hosted
        extension): ``{call_id: [notice, ...]}``, unknown ids absent; None when the backend has
        no such route (the cloud, an older service). At most :data:`MAX_DELIVERY_IDS` ids a call.
        """
        if not call_ids:
            return {}
        try:
            body = await self._request("GET", DELIVERIES_PATH, params={"call_id": list(call_ids)})
        except ApprovalsRequestError as exc:
            if exc.status_code in (404, 405):
                return None
            raise
        if not isinstance(body, dict):
            raise ApprovalsUnavailable("approvals backend sent a malformed deliveries answer")
        return body

    async def respond(
        self,
        call_id: str,
        *,
        approved: bool,
        comment: str | None,
        reject_option_name: str | None,
        requested_at: str | None,
        user_info: Mapping[str, Any],
    ) -> dict[str, Any]:
        """Answer a function call on behalf of ``user_info`` (delegate respond)."""
        body = {
            "requested_at": requested_at,
            "responded_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "approved": approved,
            "comment": comment,
            "reject_option_name": reject_option_name,
            "slack_message_ts": None,
            "user_info": dict(user_info),
        }
        result = await self._request("POST", f"/agent/function_calls/{_segment(call_id)}/respond", json=body)
        return result if isinstance(result, dict) else {}
