"""Tell subscribers when a request is settled: outgoing webhooks and in-process listeners.

A waiting Airflow gate finds a decision by reading the request; a webhook lets Airflow hear of it
at once instead. When a function call is decided or cancelled (or a human contact answered), the
service POSTs HumanLayer's webhook body to every configured URL::

    {"is_test": false, "type": "function_call.completed", "event": {...the FunctionCall...}}

signed with HMAC-SHA256 of the raw body in ``X-HLML-Signature: sha256=<hex>`` when a secret is
set. Deliveries run on a small background pool, off the reviewer's request: a slow or failing
receiver delays nothing and loses no decision (the gate still reads the request itself); each
delivery is retried a few times with backoff, then logged and dropped.

In-process listeners (the Airflow plugin, when the service is mounted in the API server) receive
the same ``(type, body)`` on the same pool.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)

FUNCTION_CALL_COMPLETED = "function_call.completed"
HUMAN_CONTACT_COMPLETED = "human_contact.completed"
SIGNATURE_HEADER = "X-HLML-Signature"

Listener = Callable[[str, dict[str, Any]], Any]


def signature(secret: str, body: bytes) -> str:
    """The ``X-HLML-Signature`` value of ``body``: ``sha256=`` and the hex HMAC-SHA256 with ``secret``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the signature of ``body`` under ``secret`` (constant-time compare)."""
    return bool(header) and hmac.compare_digest(signature(secret, body), str(header))


class Publisher:
    """Delivers ``completed`` notifications to webhook URLs and in-process listeners.

    :param urls: webhook URLs.
    :param secret: HMAC secret for ``X-HLML-Signature``; unsigned when empty.
    :param timeout: seconds per delivery attempt.
    :param attempts: delivery attempts per URL before giving up.
    """

    def __init__(
        self, urls: Sequence[str] = (), secret: str | None = None, timeout: float = 5.0, attempts: int = 3
    ) -> None:
        self.urls = [u for u in urls if u]
        self._secret = secret or None
        self._timeout = timeout
        self._attempts = max(1, attempts)
        self._listeners: list[Listener] = []
        self._pool: ThreadPoolExecutor | None = None
        self._client: Any = None

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(type, body)`` (on the background pool) for every completed request."""
        self._listeners.append(listener)

    @property
    def active(self) -> bool:
        return bool(self.urls or self._listeners)

    def publish(self, event_type: str, body: dict[str, Any]) -> list[Future[None]]:
        """Queue the notifications of one settled request; returns at once."""
        if not self.active:
            return []
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hlml-approvals-webhooks")
        futures = [
            self._pool.submit(self._call_listener, listener, event_type, body) for listener in self._listeners
        ]
        if self.urls:
            payload = json.dumps({"is_test": False, "type": event_type, "event": body}, default=str).encode()
            futures += [self._pool.submit(self._deliver, url, payload) for url in self.urls]
        return futures

    def _call_listener(self, listener: Listener, event_type: str, body: dict[str, Any]) -> None:
        try:
            listener(event_type, body)
        except Exception:
            log.exception("A listener of %s failed for %s", event_type, body.get("call_id"))

    def _deliver(self, url: str, payload: bytes) -> None:
        import httpx
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

        if self._client is None:
            self._client = httpx.Client(timeout=self._timeout)
        headers = {"Content-Type": "application/json"}
        if self._secret:
            headers[SIGNATURE_HEADER] = signature(self._secret, payload)

        def post() -> None:
            resp = self._client.post(url, content=payload, headers=headers)
            if resp.status_code >= 500 or resp.status_code == 429:
                raise _RetryableDelivery(f"{url} answered {resp.status_code}")
            if resp.status_code >= 400:
                log.warning("Webhook %s refused the notification: HTTP %s", url, resp.status_code)

        try:
            for attempt in Retrying(
                retry=retry_if_exception_type((httpx.HTTPError, _RetryableDelivery)),
                stop=stop_after_attempt(self._attempts),
                wait=wait_exponential(multiplier=0.2, max=2.0),
                reraise=True,
            ):
                with attempt:
                    post()
        except (httpx.HTTPError, _RetryableDelivery) as exc:
            log.warning("Webhook %s not delivered after %d attempts: %s", url, self._attempts, exc)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._client is not None:
            self._client.close()
            self._client = None


class _RetryableDelivery(Exception):
    """The receiver answered 5xx or 429."""
