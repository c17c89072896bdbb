"""Where each approval request was delivered (e-mail, Slack) and whether delivery is failing.

The built-in approvals service records every notice it sends (the request, reminders,
escalations, outcome updates, alerts) and reports them at ``GET {prefix}/hlml/deliveries``. The
dashboard asks once per page for the requests it shows (:class:`DeliveryLookups`, ids batched)
and turns each request's notices into a compact line per channel (:func:`summarize`), e.g.
``"E-mail: 3 sent · 1 failed"`` / ``"Slack: sent"``, with every notice listed for the details.

Delivery status only decorates a page: a backend without the route (the HumanLayer cloud, an
older service) answers 404 and the dashboard then shows nothing about delivery; a failing or
slow answer likewise means no delivery info, never an error. Everything the service reports
here (recipients, errors) is text for the templates to escape, never markup.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow_provider_hlml.plugins.approvals_client import (
    MAX_DELIVERY_IDS,
    ApprovalsRequestError,
    ApprovalsUnavailable,
    DelegateKeyMissing,
)

if TYPE_CHECKING:
    from airflow_provider_hlml.plugins.approvals_client import ApprovalsClient

__all__ = ["DeliveryLookups", "batches", "notice_view", "summarize"]

log = logging.getLogger(__name__)

#: How channels are named on the page, in the order the line lists them.
CHANNEL_LABELS = {"email": "E-mail", "slack": "Slack"}
#: What a notice is shown as, in the order a channel's line counts them: ``retrying`` is a
#: ``pending`` notice that was tried already (``attempts > 0``); ``unknown`` a state the dashboard
#: does not know (a newer service).
STATUSES = ("sent", "retrying", "pending", "failed", "skipped", "unknown")
#: Statuses of a notice still to be sent (it has a next attempt).
WAITING_STATUSES = frozenset({"pending", "retrying"})
#: Statuses that make the line a warning.
WARNING_STATUSES = frozenset({"failed", "retrying"})
#: Notices listed per request at most (the newest); the counts cover them all.
MAX_NOTICES = 50
#: Longest recipient, notice name and error shown (the service keeps errors up to 2,000).
MAX_TEXT = 500
#: Longest query string of one request (proxies and servers refuse long request lines).
MAX_QUERY_CHARS = 6000


def _text(value: Any, limit: int = MAX_TEXT) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    value = value.strip()
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def channel_label(channel: str) -> str:
    """``E-mail``, ``Slack``, or a channel the dashboard does not know as the service named it."""
    return CHANNEL_LABELS.get(channel, channel.capitalize())


def notice_view(raw: Any) -> dict[str, Any] | None:
    """One notice as the page and the JSON API show it; None for something that is not one.

    Keeps the service's fields (``channel``, ``recipient``, ``notice``, ``step``, ``state``,
    ``attempts``, ``sent_at``, ``next_attempt_at``, ``error``) and adds ``channel_label``,
    ``status`` (one of :data:`STATUSES`) and ``warning``.
    """
    if not isinstance(raw, Mapping):
        return None
    channel = _text(raw.get("channel"), 40)
    if channel is None:
        return None
    state = _text(raw.get("state"), 40) or "unknown"
    attempts = _count(raw.get("attempts"))
    if state == "pending" and attempts > 0:
        status = "retrying"
    else:
        status = state if state in STATUSES and state != "retrying" else "unknown"
    return {
        "channel": channel,
        "channel_label": channel_label(channel),
        "recipient": _text(raw.get("recipient")) or "",
        "notice": _text(raw.get("notice"), 40) or "",
        "step": _count(raw.get("step")),
        "state": state,
        "status": status,
        "attempts": attempts,
        "sent_at": _text(raw.get("sent_at"), 64),
        "next_attempt_at": _text(raw.get("next_attempt_at"), 64) if status in WAITING_STATUSES else None,
        "error": _text(raw.get("error")),
        "warning": status in WARNING_STATUSES,
    }


def _counts_text(counts: Mapping[str, int], total: int) -> str:
    """``"sent"`` for one notice, else ``"3 sent · 1 failed"``."""
    if total == 1:
        return next(status for status in STATUSES if counts.get(status))
    return " · ".join(f"{counts[status]} {status}" for status in STATUSES if counts.get(status))


def _notice_line(n: Mapping[str, Any]) -> str:
    """One notice for a channel's title attribute: ``"alice@example.com, request: failed (3 attempts): ..."``."""
    line = f"{n['recipient'] or '?'}, {n['notice'] or 'notice'}: {n['status']}"
    if n["attempts"] > 1 or n["warning"]:
        line += f" ({n['attempts']} attempt{'s' if n['attempts'] != 1 else ''})"
    if n["error"] and n["status"] != "sent":
        line += f": {n['error']}"
    return line


def summarize(rows: Any) -> dict[str, Any] | None:
    """The delivery summary of one request from the service's notices (oldest first).

    ``channels``: one entry per channel (``label``, ``counts`` per status, ``text`` such as
    ``"E-mail: 3 sent · 1 failed"``, ``detail`` listing each notice for a title attribute,
    ``warning``); ``text`` the channels' lines joined; ``warning`` whether any notice failed or is
    being retried; ``notices`` the newest :data:`MAX_NOTICES` notices (``omitted`` the others).
    None when ``rows`` is not a list (nothing is known about the request's delivery).
    """
    if not isinstance(rows, list):
        return None
    notices = [n for n in (notice_view(r) for r in rows) if n is not None]
    grouped: dict[str, list[dict[str, Any]]] = {}
    for n in notices:
        grouped.setdefault(n["channel"], []).append(n)
    known = [c for c in CHANNEL_LABELS if c in grouped]
    order = known + [c for c in grouped if c not in CHANNEL_LABELS]
    channels: list[dict[str, Any]] = []
    for channel in order:
        entries = grouped[channel]
        counts = {s: sum(1 for n in entries if n["status"] == s) for s in STATUSES}
        counts = {s: c for s, c in counts.items() if c}
        label = channel_label(channel)
        channels.append(
            {
                "channel": channel,
                "label": label,
                "total": len(entries),
                "counts": counts,
                "text": f"{label}: {_counts_text(counts, len(entries))}",
                "detail": "\n".join(_notice_line(n) for n in entries[-MAX_NOTICES:]),
                "warning": any(n["warning"] for n in entries),
            }
        )
    return {
        "text": "; ".join(c["text"] for c in channels),
        "warning": any(c["warning"] for c in channels),
        "total": len(notices),
        "failed": sum(1 for n in notices if n["status"] == "failed"),
        "retrying": sum(1 for n in notices if n["status"] == "retrying"),
        "channels": channels,
        "notices": notices[-MAX_NOTICES:],
        "omitted": max(0, len(notices) - MAX_NOTICES),
    }


def batches(
    call_ids: Iterable[str], *, max_ids: int = MAX_DELIVERY_IDS, max_chars: int = MAX_QUERY_CHARS
) -> list[list[str]]:
    """``call_ids`` (each once, in order) in groups the deliveries route takes in one request: at
    most ``max_ids`` ids and about ``max_chars`` characters of query string each."""
    out: list[list[str]] = []
    current: list[str] = []
    size = 0
    for call_id in dict.fromkeys(call_ids):
        length = len("call_id=") + len(quote(call_id, safe="")) + 1
        if current and (len(current) >= max_ids or size + length > max_chars):
            out.append(current)
            current, size = [], 0
        current.append(call_id)
        size += length
    if current:
        out.append(current)
    return out


class DeliveryLookups:
    """One round of delivery look-ups per page, remembering backends that cannot answer.

    A backend without the route (404) is not asked again for :attr:`NO_ROUTE_SECONDS` (an
    upgraded service is picked up after that); one that failed (unreachable, 5xx, too slow) for
    :attr:`DOWN_SECONDS`. Either way the page gets no delivery info, never an error.

    :param clock: seconds, monotonic (tests pass their own).
    """

    NO_ROUTE_SECONDS = 300.0
    DOWN_SECONDS = 30.0
    #: Seconds the look-ups of a page may take together (the page waits for them).
    TIMEOUT_SECONDS = 5.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._skip_until: dict[str, float] = {}

    def _skip(self, base_url: str, seconds: float) -> None:
        self._skip_until[base_url] = self._clock() + seconds

    async def fetch(self, client: ApprovalsClient, call_ids: Sequence[str]) -> dict[str, Any] | None:
        """``{call_id: [notice, ...]}`` for those of ``call_ids`` the backend knows; None when it
        cannot say (no such route, or the look-up failed)."""
        key = client.base_url
        if self._skip_until.get(key, 0.0) > self._clock():
            return None
        wanted = [c for c in call_ids if isinstance(c, str) and c]
        if not wanted:
            return {}
        try:
            answers = await asyncio.wait_for(
                asyncio.gather(*(client.deliveries(chunk) for chunk in batches(wanted))),
                timeout=self.TIMEOUT_SECONDS,
            )
        except ApprovalsRequestError as exc:
            # Refused (an id it will not read, a key it does not take): nothing for this page.
            log.info("Delivery status not shown: the approvals backend answered %s", exc.status_code)
            return None
        except (ApprovalsUnavailable, DelegateKeyMissing, asyncio.TimeoutError) as exc:
            log.info("Delivery status not shown: %s", str(exc) or type(exc).__name__)
            self._skip(key, self.DOWN_SECONDS)
            return None
        except Exception:
            # An error of the in-process service must not break the page it only decorates.
            log.warning("Delivery status not shown: the look-up failed", exc_info=True)
            self._skip(key, self.DOWN_SECONDS)
            return None
        known = [answer for answer in answers if answer is not None]
        if len(known) < len(answers):
            self._skip(key, self.NO_ROUTE_SECONDS)
            return None
        self._skip_until.pop(key, None)
        asked = set(wanted)
        return {k: v for answer in known for k, v in answer.items() if k in asked}
