"""The webhook channel: a settled request's HumanLayer webhook body, POSTed to one URL.

A ``decision`` notice (:attr:`~.base.Notice.payload`: ``{"is_test": false, "type":
"function_call.completed", "event": {...}}``, the request as it is when the notice is sent) goes to
one configured URL, signed per attempt with
:func:`~airflow_provider_hlml.approvals.webhooks.signed_headers` when a secret is set. A 2xx answer
acknowledges it; 5xx, 429, 408 and network errors are worth another attempt later; any other
answer (a 4xx, a redirect) will not change by itself and is not retried. The secret never appears
in an error.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from airflow_provider_hlml.approvals.channels.base import DeliveryFailed, Notice, Recipient, Sent
from airflow_provider_hlml.approvals.webhooks import signed_headers

if TYPE_CHECKING:
    import httpx

__all__ = ["RETRYABLE_STATUSES", "WebhookChannel"]

#: Answers after which the same POST may succeed later (besides every 5xx).
RETRYABLE_STATUSES = frozenset({408, 429})


class WebhookChannel:
    """POSTs ``decision`` notices to the recipient's URL.

    :param secret: HMAC secret of ``X-HLML-Signature`` / ``X-HLML-Request-Timestamp``; unsigned
        when empty.
    :param timeout: seconds one POST may take.
    """

    name = "webhook"

    def __init__(self, secret: str | None = None, timeout: float = 10.0) -> None:
        self._secret = secret or None
        self._timeout = timeout
        self._client: httpx.Client | None = None

    def _http(self) -> httpx.Client:
        if self._client is None:
            import httpx

            self._client = httpx.Client(timeout=self._timeout, follow_redirects=False)
        return self._client

    def send(self, recipient: Recipient, notice: Notice) -> Sent:
        """POST ``notice.payload`` to ``recipient.address``; raise :class:`DeliveryFailed` unless
        the receiver answered 2xx."""
        import httpx

        if notice.payload is None:
            raise DeliveryFailed("a webhook notice needs a payload", retryable=False)
        body = json.dumps(notice.payload, default=str, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
        if self._secret:
            # Signed per attempt: a retry hours later carries a fresh timestamp.
            headers.update(signed_headers(self._secret, body))
        try:
            resp = self._http().post(recipient.address, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"webhook not reached: {type(exc).__name__}: {exc}"[:500]) from None
        if 200 <= resp.status_code < 300:
            return Sent()
        retryable = resp.status_code >= 500 or resp.status_code in RETRYABLE_STATUSES
        raise DeliveryFailed(f"the webhook answered HTTP {resp.status_code}", retryable=retryable)

    def update(self, recipient: Recipient, ref: str, notice: Notice) -> Sent | None:
        """A POST cannot be taken back: nothing to update."""
        return None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
