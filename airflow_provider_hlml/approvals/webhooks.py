"""Tell subscribers when a request is settled: outgoing webhooks and in-process listeners.

A waiting Airflow gate finds a decision by reading the request; a webhook lets Airflow hear of it
at once instead. When a function call is decided or cancelled (or a human contact answered), the
service POSTs HumanLayer's webhook body to every configured URL::

    {"is_test": false, "type": "function_call.completed", "event": {...the FunctionCall...}}

signed when a secret is set: ``X-HLML-Request-Timestamp`` holds the Unix time of the delivery
attempt and ``X-HLML-Signature: v1=<hex>`` the HMAC-SHA256 under the secret of
``v1:{timestamp}:{raw body}`` (the scheme of Slack's ``v0``). A receiver refuses a timestamp more
than :data:`REPLAY_WINDOW_SECONDS` away from its clock, so a captured body cannot be replayed
later. Deliveries run on a small background pool, off the reviewer's request: a slow or failing
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
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)

FUNCTION_CALL_COMPLETED = "function_call.completed"
HUMAN_CONTACT_COMPLETED = "human_contact.completed"
SIGNATURE_HEADER = "X-HLML-Signature"
TIMESTAMP_HEADER = "X-HLML-Request-Timestamp"
#: Version of the signed string (``v1:{timestamp}:{body}``) and prefix of the signature value.
SIGNATURE_VERSION = "v1"
#: Seconds a signed delivery stays valid, either side of the receiver's clock.
REPLAY_WINDOW_SECONDS = 300

_TIMESTAMP = re.compile(r"[0-9]{1,12}")

Listener = Callable[[str, dict[str, Any]], Any]


def signature(secret: str, body: bytes, timestamp: int | str) -> str:
    """
    The ``X-HLML-Signature`` value of ``body`` sent at ``timestamp``.

    :param secret: the shared webhook secret.
    :param body: the raw request body.
    :param timestamp: Unix seconds, as sent in ``X-HLML-Request-Timestamp``.
    :return: ``v1=`` and the hex HMAC-SHA256 of ``v1:{timestamp}:{body}`` under ``secret``.
    """
    signed = f"{SIGNATURE_VERSION}:{timestamp}:".encode() + body
    return f"{SIGNATURE_VERSION}=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def signed_headers(secret: str, body: bytes, *, now: float | None = None) -> dict[str, str]:
    """The timestamp and signature headers of a delivery of ``body`` made at ``now`` (default: now)."""
    timestamp = str(int(time.time() if now is None else now))
    return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: signature(secret, body, timestamp)}


def signature_problem(
    secret: str,
    body: bytes,
    signature_header: str | None,
    timestamp_header: str | None,
    *,
    now: float | None = None,
    window: float = REPLAY_WINDOW_SECONDS,
) -> str | None:
    """
    Why a delivery's signature is not acceptable, or None when it is.

    The timestamp must be Unix seconds within ``window`` of ``now`` (either direction); the
    signature is compared in constant time.

    :param secret: the shared webhook secret.
    :param body: the raw request body.
    :param signature_header: the ``X-HLML-Signature`` value received.
    :param timestamp_header: the ``X-HLML-Request-Timestamp`` value received.
    :param now: the receiver's clock (default: now).
    :param window: the replay window in seconds.
    """
    if not signature_header:
        return f"{SIGNATURE_HEADER}: missing (signed deliveries also carry {TIMESTAMP_HEADER})"
    if not timestamp_header or not _TIMESTAMP.fullmatch(timestamp_header):
        return f"{TIMESTAMP_HEADER}: missing or not Unix seconds"
    skew = int(timestamp_header) - (time.time() if now is None else now)
    if abs(skew) > window:
        return (
            f"{TIMESTAMP_HEADER}: {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} this server's "
            f"clock, outside the {window:.0f} s replay window"
        )
    expected = signature(secret, body, timestamp_header).encode()
    # Header values are Latin-1 text; bytes keep compare_digest from refusing non-ASCII input.
    if not hmac.compare_digest(expected, signature_header.encode("utf-8", "replace")):
        return (
            f"{SIGNATURE_HEADER}: not {SIGNATURE_VERSION}= the HMAC-SHA256 of "
            f"'{SIGNATURE_VERSION}:{{timestamp}}:{{body}}' under the webhook secret"
        )
    return None


class Publisher:
    """Delivers ``completed`` notifications to webhook URLs and in-process listeners.

    :param urls: webhook URLs.
    :param secret: HMAC secret of ``X-HLML-Signature`` (with ``X-HLML-Request-Timestamp``);
        unsigned when empty.
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

        def post() -> None:
            headers = {"Content-Type": "application/json"}
            if self._secret:
                # Signed per attempt: a retry after backoff carries a fresh timestamp.
                headers.update(signed_headers(self._secret, payload))
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
