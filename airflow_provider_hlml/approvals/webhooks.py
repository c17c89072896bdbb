"""Tell subscribers when a request is settled: outgoing webhooks and in-process listeners.

A waiting Airflow gate finds a decision by reading the request; a webhook lets Airflow hear of it
at once instead. When a function call is decided or cancelled (or a human contact answered or
cancelled), the service POSTs HumanLayer's webhook body to every configured URL::

    {"is_test": false, "type": "function_call.completed", "event": {...the FunctionCall...}}

(``human_contact.completed`` with the HumanContact for human contacts), signed when a secret is
set: ``X-HLML-Request-Timestamp`` holds the Unix time of the delivery attempt and
``X-HLML-Signature: v1=<hex>`` the HMAC-SHA256 under the secret of ``v1:{timestamp}:{raw body}``
(the scheme of Slack's ``v0``). A receiver refuses a timestamp more than
:data:`REPLAY_WINDOW_SECONDS` away from its clock, so a captured body cannot be replayed later.

Both kinds go through the delivery outbox, not through this module: the delivery worker plans one
``webhook`` notice per URL for every request settled in the last ``webhook_window_seconds`` (the
request rows are the durable record, so decisions made while no service ran, or with the CLI,
are notified too) and POSTs it with
:class:`~airflow_provider_hlml.approvals.channels.webhook.WebhookChannel`, at least once, until
the receiver answers 2xx (``webhook_attempts``, audited like every delivery). Receivers must
therefore be idempotent. :class:`Publisher` only calls in-process listeners (the Airflow plugin,
when the service is mounted in the API server) on a small pool and wakes the delivery worker, so
a receiver that is up hears of a decision within milliseconds.
"""

from __future__ import annotations

import hashlib
import hmac
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
    """Hands settled requests to in-process listeners and wakes the webhook outbox.

    :param urls: the configured webhook URLs (the delivery worker POSTs to them; listed here so
        :attr:`active` tells whether decisions are pushed anywhere).
    :param wake: called on every publish: wakes the delivery worker that POSTs to ``urls``.
    """

    def __init__(self, urls: Sequence[str] = (), wake: Callable[[], Any] | None = None) -> None:
        self.urls = [u for u in urls if u]
        self.wake = wake
        self._listeners: list[Listener] = []
        self._pool: ThreadPoolExecutor | None = None

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(type, body)`` (on the background pool) for every completed request."""
        self._listeners.append(listener)

    @property
    def active(self) -> bool:
        """Whether settled requests are pushed anywhere (webhook URLs or in-process listeners)."""
        return bool(self.urls or self._listeners)

    def publish(self, event_type: str, body: dict[str, Any]) -> list[Future[None]]:
        """Queue the listeners' calls for one settled request and wake the webhook outbox;
        returns at once (the futures of the listeners' calls)."""
        if self.urls and self.wake is not None:
            self.wake()
        if not self._listeners:
            return []
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hlml-approvals-listeners")
        return [
            self._pool.submit(self._call_listener, listener, event_type, body) for listener in self._listeners
        ]

    def _call_listener(self, listener: Listener, event_type: str, body: dict[str, Any]) -> None:
        try:
            listener(event_type, body)
        except Exception:
            log.exception("A listener of %s failed for %s", event_type, body.get("call_id"))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
