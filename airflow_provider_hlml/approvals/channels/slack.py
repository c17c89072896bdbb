"""The Slack channel: approval requests as Block Kit messages, decided with buttons in Slack.

:func:`build_blocks` lays a :class:`~airflow_provider_hlml.review.card.Card` out as Block Kit
(header, body, fields, metrics, rules progress, links, then Approve / Reject buttons and a "Reject
with a reason…" menu); :class:`SlackChannel` posts it with ``chat.postMessage`` and replaces it
with ``chat.update`` once the request is decided. Everything taken from a request is escaped with
:func:`mrkdwn_escape`, so a request cannot mention ``<!channel>`` or disguise a link; the only links
are those of the card (each already passed :func:`~airflow_provider_hlml.review.links.safe_link`,
checked again here) and the dashboard URL.

A click in Slack reaches the service as a signed interaction request: :func:`verify_request`
checks Slack's ``v0`` signature and the timestamp (300 s either side of the clock), and
:func:`parse_interaction` reads the ``block_actions`` payload into a :class:`SlackAction`. Each
button's ``value`` is the request's ``call_id``; each reject option's value is
``"<call_id>\\n<option name>"`` (Slack allows 150 characters for an option value: an option that
does not fit is left out of the menu).

Nothing here imports Airflow; ``slack_sdk`` is imported when a :class:`SlackChannel` is made.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs, urlsplit

from airflow_provider_hlml.approvals.channels.base import DeliveryFailed, Notice, Recipient, Sent
from airflow_provider_hlml.review.card import Card, MetricRow
from airflow_provider_hlml.review.links import safe_link

if TYPE_CHECKING:
    from slack_sdk import WebClient

__all__ = [
    "ACTION_APPROVE",
    "ACTION_REJECT",
    "ACTION_REJECT_REASON",
    "DECISION_BLOCK_ID",
    "SlackAction",
    "SlackChannel",
    "build_blocks",
    "fallback_text",
    "mrkdwn_escape",
    "parse_interaction",
    "verify_request",
]

log = logging.getLogger(__name__)

#: ``action_id`` of the Approve button; its ``value`` is the call_id.
ACTION_APPROVE = "hlml_approve"
#: ``action_id`` of the Reject button; its ``value`` is the call_id.
ACTION_REJECT = "hlml_reject"
#: ``action_id`` of the "Reject with a reason…" menu; each option's value is ``"<call_id>\n<name>"``.
ACTION_REJECT_REASON = "hlml_reject_reason"
#: ``block_id`` of the actions block.
DECISION_BLOCK_ID = "hlml_decision"
OUR_ACTIONS = frozenset({ACTION_APPROVE, ACTION_REJECT, ACTION_REJECT_REASON})

# Block Kit limits (https://docs.slack.dev/reference/block-kit/blocks).
MAX_BLOCKS = 50
MAX_HEADER = 150
MAX_SECTION_TEXT = 3000
#: The body is cut here, well under the section limit.
MAX_BODY = 2900
MAX_FIELDS = 10
MAX_FIELD_TEXT = 2000
MAX_CONTEXT_ELEMENTS = 10
MAX_OPTIONS = 100
MAX_OPTION_TEXT = 75
MAX_OPTION_VALUE = 150
MAX_BUTTON_VALUE = 2000
MAX_FALLBACK = 3000

#: Seconds a Slack request's timestamp may be away from our clock, either side.
REPLAY_WINDOW_SECONDS = 300
#: The largest interaction body read (a ``block_actions`` payload repeats the whole message).
MAX_INTERACTION_BODY = 1024 * 1024
MAX_CALL_ID = 256
MAX_OPTION_NAME = 200
MAX_NAME = 200
MAX_RESPONSE_URL = 2048
#: How long a users.info answer is kept, and how many are kept.
EMAIL_CACHE_SECONDS = 300.0
EMAIL_CACHE_SIZE = 1024

USER_ID = re.compile(r"^[UW][A-Z0-9]{2,30}$")
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,30}$")
_TEAM_ID = re.compile(r"^[TE][A-Z0-9]{2,30}$")
_TS = re.compile(r"^[0-9]{1,12}\.[0-9]{1,9}$")
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
_SIGNATURE = re.compile(r"^v0=[0-9a-f]{64}$")
# The service's call_id rule (schemas.CallId), plus no control characters.
_CALL_ID = re.compile(r"^[^/\s?#%\\\x00-\x1f\x7f]{1,256}$")
_ERROR_CODE = re.compile(r"^[a-z0-9_.]{1,64}$")

#: Slack API errors worth trying again later; every other ``error`` (``channel_not_found``,
#: ``not_in_channel``, ``invalid_auth``, ``invalid_blocks``, ...) will not go away by itself.
RETRYABLE_ERRORS = frozenset(
    {"ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)

_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


# ---------------------------------------------------------------------------------------------- text
def mrkdwn_escape(text: str) -> str:
    """``text`` escaped for Slack (``&``, ``<``, ``>`` as ``&amp;``, ``&lt;``, ``&gt;``).

    What is left cannot be a mention (``<!channel>``, ``<@U123>``) or a link (``<url|label>``); Slack
    shows the characters as typed.
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _units(text: str) -> int:
    """Length as Slack may count it (UTF-16 code units; never less than ``len``)."""
    return len(text.encode("utf-16-le")) // 2


def _esc(text: object, limit: int) -> str:
    """``text`` escaped and cut to at most ``limit`` units (ending in "…" when cut), never inside
    an entity."""
    raw = text if isinstance(text, str) else str(text)
    escaped = mrkdwn_escape(raw)
    if _units(escaped) <= limit:
        return escaped
    out: list[str] = []
    used = 0
    for ch in raw:
        piece = _ESCAPES.get(ch, ch)
        size = _units(piece)
        if used + size > limit - 1:
            break
        out.append(piece)
        used += size
    return "".join(out) + "…"


def _label(text: object, limit: int = 200) -> str:
    """A link label: no ``|`` or ``>`` (they would end it), escaped."""
    raw = text if isinstance(text, str) else str(text)
    return _esc(raw.replace("|", " ").replace(">", " ").replace("\n", " "), limit) or "link"


def _slack_url(url: object) -> str | None:
    """``url`` as the target of a mrkdwn link, when it is a safe absolute http(s) URL."""
    safe = safe_link(url)
    if safe is None or not safe.lower().startswith(("http://", "https://")):
        return None
    # safe_link allows printable ASCII; the three that would end or break ``<url|label>`` are encoded.
    return safe.replace("&", "&amp;").replace("<", "%3C").replace(">", "%3E").replace("|", "%7C")


def _link(url: object, label: object) -> str:
    """``<url|label>``, or the escaped label alone when ``url`` is not a safe link."""
    target = _slack_url(url)
    return f"<{target}|{_label(label)}>" if target else _label(label)


def _markdown_to_mrkdwn(text: str) -> str:
    """The little of Markdown that differs in Slack: ``**bold**`` and ``# headings`` become ``*bold*``."""
    text = re.sub(r"\*\*([^*\n]+)\*\*", r"*\1*", text)
    return re.sub(r"(?m)^#{1,6}[ \t]+(.+?)[ \t#]*$", r"*\1*", text)


def _plain(text: str, limit: int) -> dict[str, Any]:
    return {"type": "plain_text", "text": _esc(text, limit) or " ", "emoji": True}


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": _mrkdwn(text)}


def _join_lines(lines: list[str], limit: int) -> str:
    """``lines`` joined by newlines, as many whole lines as fit in ``limit`` units."""
    out: list[str] = []
    used = 0
    for line in lines:
        size = _units(line) + (1 if out else 0)
        if used + size > limit - 2:
            out.append("…")
            break
        out.append(line)
        used += size
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- blocks
def _number(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def _metric_line(row: MetricRow, no_champion: bool) -> str:
    name = _esc(row.name, 100)
    parts = [f"*{name}* ({row.direction}): candidate *{_number(row.candidate)}*"]
    if no_champion:
        parts.append("no champion yet")
    else:
        parts.append(f"champion {_number(row.champion)}")
        if row.delta is not None:
            diff = f"difference {_number(row.delta, signed=True)}"
            if row.delta_relative is not None:
                diff += f" ({row.delta_relative:+.1%})"
            if row.better is not None:
                diff += ", better" if row.better else ", worse"
            parts.append(diff)
    if row.rule:
        parts.append(f"rule {_esc(row.rule, 200)}")
    if row.passed is not None:
        parts.append(":white_check_mark: passed" if row.passed else ":x: failed")
    line = " · ".join(parts)
    if row.passed is False and row.reason:
        line += f": {_esc(row.reason, 300)}"
    return line


def _fields(card: Card) -> list[dict[str, Any]]:
    fields = [
        _mrkdwn(f"*Approval type*\n{_esc(card.approval_type or '—', 500)}"),
        _mrkdwn(f"*Urgency*\n{_esc(card.urgency or '—', 200)}"),
    ]
    model = card.model
    if model.get("model_name"):
        text = _esc(model["model_name"], 300)
        if model.get("model_version"):
            text += f" v{_esc(model['model_version'], 100)}"
        if model.get("mlflow_run_id"):
            text += f"\nrun {_esc(model['mlflow_run_id'], 300)}"
        fields.append(_mrkdwn(f"*Model*\n{text}"))
    elif model.get("mlflow_run_id"):
        fields.append(_mrkdwn(f"*MLflow run*\n{_esc(model['mlflow_run_id'], 300)}"))
    if model.get("champion_version"):
        fields.append(_mrkdwn(f"*Champion*\nv{_esc(model['champion_version'], 100)}"))
    return fields[:MAX_FIELDS]


def _links_block(card: Card, dashboard_url: str | None) -> dict[str, Any] | None:
    elements: list[dict[str, Any]] = []
    if _slack_url(dashboard_url):
        elements.append(_mrkdwn(_link(dashboard_url, "Open in the dashboard")))
    for card_link in card.links:
        if len(elements) >= MAX_CONTEXT_ELEMENTS:
            break
        if _slack_url(card_link.url):
            elements.append(_mrkdwn(_link(card_link.url, card_link.label)))
    return {"type": "context", "elements": elements} if elements else None


def _summary_blocks(card: Card, dashboard_url: str | None) -> list[dict[str, Any]]:
    """What the request and its outcome share: body, fields, metrics, progress, links."""
    blocks: list[dict[str, Any]] = []
    body = _esc(_markdown_to_mrkdwn(card.body_markdown), MAX_BODY).strip()
    if body:
        blocks.append(_section(body))
    blocks.append({"type": "section", "fields": _fields(card)})
    if card.metrics:
        lines = ["*Metrics* (candidate / champion / difference)"]
        if card.no_champion:
            lines.append("_No champion yet: this is the first version to be compared._")
        lines.extend(_metric_line(row, card.no_champion) for row in card.metrics)
        blocks.append(_section(_join_lines(lines, MAX_SECTION_TEXT)))
    elif card.no_champion:
        blocks.append(_section("*Metrics*: no champion yet"))
    if card.policy_note:
        blocks.append(_section(f"*Decision policy*: {_esc(card.policy_note, 2000)}"))
    if card.progress:
        blocks.append(_section(f"*Rules*: {_esc(card.progress, 2000)}"))
    links = _links_block(card, dashboard_url)
    if links:
        blocks.append(links)
    return blocks


def _decision_text(card: Card) -> str:
    decision: Mapping[str, Any] = card.decision or {"status": card.status}
    status = decision.get("status") or card.status
    by = decision.get("by")
    who = f" by {_esc(by, 200)}" if isinstance(by, str) and by else ""
    comment = decision.get("comment")
    comment_text = _esc(comment, 1500) if isinstance(comment, str) and comment else ""
    if status == "approved":
        text = f"✅ *Approved*{who}"
        if comment_text:
            text += f" — {comment_text}"
    elif status == "rejected":
        text = f"❌ *Rejected*{who}"
        reason = decision.get("reject_option_title") or decision.get("reject_option")
        if isinstance(reason, str) and reason:
            text += f": {_esc(reason, 300)}"
        if comment_text:
            text += f" — {comment_text}"
    elif status == "expired":
        text = "⌛ *Expired*"
    elif status == "cancelled":
        text = "🚫 *Cancelled*"
        if comment_text:
            text += f" — {comment_text}"
    else:
        text = f"*{_esc(status or 'pending', 50)}*"
    at = decision.get("at")
    if isinstance(at, str) and at:
        text += f"\n_{_esc(at, 64)}_"
    return text


def _option_value(call_id: str, name: str) -> str:
    return f"{call_id}\n{name}"


def _actions_block(card: Card) -> dict[str, Any] | None:
    call_id = card.call_id
    if not _CALL_ID.match(call_id):
        return None
    elements: list[dict[str, Any]] = [
        {
            "type": "button",
            "action_id": ACTION_APPROVE,
            "text": {"type": "plain_text", "text": "Approve", "emoji": True},
            "style": "primary",
            "value": call_id,
        },
        {
            "type": "button",
            "action_id": ACTION_REJECT,
            "text": {"type": "plain_text", "text": "Reject", "emoji": True},
            "style": "danger",
            "value": call_id,
            "confirm": {
                "title": {"type": "plain_text", "text": "Reject this request?"},
                "text": {
                    "type": "mrkdwn",
                    "text": "The request is rejected in your name and the pipeline does not go on.",
                },
                "confirm": {"type": "plain_text", "text": "Reject"},
                "deny": {"type": "plain_text", "text": "Cancel"},
                "style": "danger",
            },
        },
    ]
    options = []
    for option in card.reject_options:
        value = _option_value(call_id, option.name)
        if len(value) > MAX_OPTION_VALUE or not option.name or len(option.name) > MAX_OPTION_NAME:
            continue
        options.append({"text": _plain(option.title or option.name, MAX_OPTION_TEXT), "value": value})
        if len(options) >= MAX_OPTIONS:
            break
    if options:
        elements.append(
            {
                "type": "static_select",
                "action_id": ACTION_REJECT_REASON,
                "placeholder": {"type": "plain_text", "text": "Reject with a reason…", "emoji": True},
                "options": options,
            }
        )
    return {"type": "actions", "block_id": DECISION_BLOCK_ID, "elements": elements}


def build_blocks(notice: Notice) -> list[dict[str, Any]]:
    """The Block Kit blocks of ``notice``.

    ``request``, ``reminder`` and ``escalation``: header, the notice's text, the card (body, fields,
    metrics, rules progress, links) and the decision buttons. ``outcome``: the same without buttons,
    with the decision. ``alert`` (or a notice without a card): header and text.

    :param notice: what to show.
    :return: at most 50 blocks, every text within Block Kit's limits, everything from the request
        escaped.
    """
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": _plain(notice.subject or "Approval request", MAX_HEADER)}
    ]
    if notice.text:
        blocks.append(_section(_esc(notice.text, MAX_BODY)))
    card = notice.card
    if notice.kind == "alert" or card is None:
        return blocks
    blocks.extend(_summary_blocks(card, notice.dashboard_url))
    if notice.kind == "outcome":
        blocks.append({"type": "divider"})
        blocks.append(_section(_decision_text(card)))
    else:
        actions = _actions_block(card)
        if actions is not None and card.status == "pending":
            blocks.append(actions)
        elif card.status != "pending":
            blocks.append(_section(_decision_text(card)))
    if len(blocks) > MAX_BLOCKS:
        blocks = [*blocks[: MAX_BLOCKS - 1], blocks[-1]]
    return blocks


def fallback_text(notice: Notice) -> str:
    """The message's ``text`` (notifications, screen readers): the subject, escaped (Slack reads this
    as mrkdwn too, mentions included)."""
    return _esc(notice.subject or "Approval request", MAX_FALLBACK)


# ---------------------------------------------------------------------------------------------- channel
class SlackChannel:
    """Deliver notices with the Slack Web API (a bot token with ``chat:write``; ``users:read`` and
    ``users:read.email`` for :meth:`user_email`).

    :param token: the bot token (``xoxb-...``); never logged or put in a message.
    :param base_url: the Web API's base URL (a stand-in's in tests).
    :param timeout: seconds for each HTTP request.
    """

    name = "slack"

    def __init__(self, token: str, *, base_url: str = "https://slack.com/api/", timeout: float = 5.0) -> None:
        from slack_sdk import WebClient

        if not isinstance(token, str) or not token.strip():
            raise ValueError("a Slack bot token is required")
        if not base_url.endswith("/"):
            base_url += "/"
        self.base_url = base_url
        self.timeout = timeout
        self._token = token.strip()
        # No retries in the client: the delivery worker retries with backoff and audits each attempt.
        # urllib takes a float timeout; slack_sdk annotates it as int.
        self._client: WebClient = WebClient(
            token=self._token, base_url=base_url, timeout=cast("int", timeout), retry_handlers=[]
        )
        self._emails: OrderedDict[str, tuple[float, str | None]] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SlackChannel(base_url={self.base_url!r})"

    # ------------------------------------------------------------------ errors
    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    def _failed(self, method: str, exc: Exception) -> DeliveryFailed:
        from slack_sdk.errors import SlackApiError

        if isinstance(exc, SlackApiError):
            response = exc.response
            data = response.data if isinstance(getattr(response, "data", None), dict) else {}
            error = data.get("error")
            error = error if isinstance(error, str) and _ERROR_CODE.match(error) else "unknown_error"
            status = getattr(response, "status_code", 0)
            status = status if isinstance(status, int) else 0
            headers = getattr(response, "headers", None) or {}
            retry_after = headers.get("Retry-After") or headers.get("retry-after")
            if isinstance(retry_after, list):
                retry_after = retry_after[0] if retry_after else None
            retryable = error in RETRYABLE_ERRORS or status == 429 or status >= 500
            message = f"Slack {method} failed: {error} (HTTP {status})"
            if retryable and isinstance(retry_after, str) and retry_after.strip().isdigit():
                message += f"; Retry-After {int(retry_after.strip())} s"
            return DeliveryFailed(message, retryable=retryable)
        reason = getattr(exc, "reason", None) or exc
        detail = self._scrub(str(reason))[:200]
        return DeliveryFailed(
            f"Slack {method} failed: cannot reach the Slack API ({type(exc).__name__}: {detail})",
            retryable=True,
        )

    def _call(self, method: str, **params: Any) -> Any:
        """Call Web API ``method`` (``chat.postMessage``: ``chat_postMessage``) as slack_sdk sends it.

        :raises DeliveryFailed: on an error answer or when Slack cannot be reached.
        """
        from slack_sdk.errors import SlackClientError

        call = getattr(self._client, method.replace(".", "_"))
        try:
            return call(**params)
        except (SlackClientError, OSError, http.client.HTTPException) as exc:
            raise self._failed(method, exc) from None

    # ------------------------------------------------------------------ Channel
    def send(self, recipient: Recipient, notice: Notice) -> Sent:
        """Post ``notice`` to ``recipient.address`` (a channel id or name, or a user id for a DM).

        :return: ``Sent(ref="<channel id>:<ts>")``, the channel being the one Slack answers with.
        :raises DeliveryFailed: when Slack refused the message or could not be reached.
        """
        response = self._call(
            "chat.postMessage",
            channel=recipient.address,
            text=fallback_text(notice),
            blocks=build_blocks(notice),
            unfurl_links=False,
            unfurl_media=False,
        )
        channel, ts = response.get("channel"), response.get("ts")
        if isinstance(channel, str) and isinstance(ts, str) and channel and ts:
            return Sent(ref=f"{channel}:{ts}")
        return Sent(ref=None)

    def update(self, recipient: Recipient, ref: str, notice: Notice) -> Sent | None:
        """Replace the message ``ref`` (``"<channel id>:<ts>"`` from :meth:`send`) with ``notice``.

        :raises DeliveryFailed: when ``ref`` is not one of ours (not retryable), or Slack refused.
        """
        channel, _, ts = (ref or "").partition(":")
        if not channel or not _TS.match(ts):
            raise DeliveryFailed(
                "Slack chat.update: the message reference is not <channel>:<ts>", retryable=False
            )
        response = self._call(
            "chat.update", channel=channel, ts=ts, text=fallback_text(notice), blocks=build_blocks(notice)
        )
        new_channel, new_ts = response.get("channel"), response.get("ts")
        if isinstance(new_channel, str) and isinstance(new_ts, str) and new_channel and new_ts:
            return Sent(ref=f"{new_channel}:{new_ts}")
        return Sent(ref=ref)

    def close(self) -> None:
        """Forget cached answers (the client keeps no connection open)."""
        with self._lock:
            self._emails.clear()

    # ------------------------------------------------------------------ helpers for interactivity
    def user_email(self, user_id: str) -> str | None:
        """The e-mail address of Slack user ``user_id`` (``users.info``), or None when the profile
        shows none, the id is malformed or Slack could not answer. Answers are cached for
        :data:`EMAIL_CACHE_SECONDS`."""
        if not isinstance(user_id, str) or not USER_ID.match(user_id):
            return None
        now = time.monotonic()
        with self._lock:
            cached = self._emails.get(user_id)
            if cached is not None and now - cached[0] < EMAIL_CACHE_SECONDS:
                return cached[1]
        try:
            response = self._call("users.info", user=user_id)
        except DeliveryFailed as exc:
            log.warning("Slack users.info for %s: %s", user_id, exc)
            return None
        user = response.get("user")
        profile = user.get("profile") if isinstance(user, dict) else None
        email = profile.get("email") if isinstance(profile, dict) else None
        email = email if isinstance(email, str) and 0 < len(email) <= 320 and "@" in email else None
        with self._lock:
            self._emails[user_id] = (now, email)
            self._emails.move_to_end(user_id)
            while len(self._emails) > EMAIL_CACHE_SIZE:
                self._emails.popitem(last=False)
        return email

    def response_url_allowed(self, response_url: object) -> bool:
        """Whether ``response_url`` is Slack's (``https://hooks.slack.com/...``) or on the host of
        :attr:`base_url` (a stand-in)."""
        if not isinstance(response_url, str) or len(response_url) > MAX_RESPONSE_URL:
            return False
        if safe_link(response_url) is None:
            return False
        try:
            url, base = urlsplit(response_url), urlsplit(self.base_url)
        except ValueError:
            return False
        scheme, netloc = url.scheme.lower(), url.netloc.lower()
        if scheme == "https" and netloc == "hooks.slack.com" and url.path.startswith("/"):
            return True
        return bool(netloc) and (scheme, netloc) == (base.scheme.lower(), base.netloc.lower())

    def post_ephemeral_reply(self, response_url: str, text: str) -> None:
        """Tell the person who clicked, and only them, what happened (``text`` is plain text).

        Posts ``{"response_type": "ephemeral", "replace_original": false, "text": ...}`` to the
        interaction's ``response_url``, when :meth:`response_url_allowed`; never raises.
        """
        if not self.response_url_allowed(response_url):
            log.warning("Slack reply not sent: the response_url is not Slack's")
            return
        from slack_sdk.errors import SlackClientError
        from slack_sdk.webhook import WebhookClient

        client = WebhookClient(response_url, timeout=cast("int", self.timeout), retry_handlers=[])
        try:
            response = client.send_dict(
                {"response_type": "ephemeral", "replace_original": False, "text": _esc(text, MAX_FALLBACK)}
            )
        except (SlackClientError, OSError, http.client.HTTPException, ValueError) as exc:
            log.warning("Slack reply not sent: %s", type(exc).__name__)
            return
        if response.status_code != 200:
            log.warning("Slack reply not accepted: HTTP %s", response.status_code)


# ---------------------------------------------------------------------------------------------- interactivity
def verify_request(
    signing_secret: str,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    *,
    now: float | None = None,
) -> str | None:
    """Why a request that claims to come from Slack is refused, or None when it is Slack's.

    Slack signs ``v0:{X-Slack-Request-Timestamp}:{raw body}`` with HMAC-SHA256 under the app's
    signing secret and sends ``X-Slack-Signature: v0=<hex>``. A timestamp more than
    :data:`REPLAY_WINDOW_SECONDS` before or after ``now`` is refused, so a captured request cannot
    be replayed later.

    :param signing_secret: the Slack app's signing secret.
    :param body: the raw request body, as received.
    :param timestamp: the ``X-Slack-Request-Timestamp`` header.
    :param signature: the ``X-Slack-Signature`` header.
    :param now: the current Unix time (tests); default: the clock.
    """
    from slack_sdk.signature import Clock, SignatureVerifier

    if not isinstance(signing_secret, str) or not signing_secret.strip():
        return "no Slack signing secret is configured"
    if not timestamp or not signature:
        return "the request has no X-Slack-Request-Timestamp or X-Slack-Signature header"
    if not isinstance(timestamp, str) or not _TIMESTAMP.match(timestamp):
        return "the request timestamp is not a Unix time"
    if not isinstance(signature, str) or not _SIGNATURE.match(signature):
        return "the request signature is not a v0 signature"
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > REPLAY_WINDOW_SECONDS:
        return "the request timestamp is too old or in the future"
    if not isinstance(body, bytes | bytearray):
        return "the request body is not bytes"
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError:
        return "the request body is not UTF-8"

    class _At(Clock):
        def now(self) -> float:
            return current

    if not SignatureVerifier(signing_secret, clock=_At()).is_valid(text, timestamp, signature):
        return "the request signature does not match"
    return None


@dataclass(frozen=True)
class SlackAction:
    """A click on one of our buttons or menus, as Slack reported it.

    :param call_id: the request decided on.
    :param approve: True for Approve, False for Reject (with or without a reason).
    :param reject_option: the chosen reject option's name (the menu), else None.
    :param user_id: the Slack user who clicked (``U...``).
    :param user_name: their Slack username, when given.
    :param response_url: where to reply to them (see :meth:`SlackChannel.post_ephemeral_reply`).
    :param channel_id: the channel of the message clicked.
    :param message_ts: the ``ts`` of the message clicked.
    :param team_id: the user's workspace.
    """

    call_id: str
    approve: bool
    reject_option: str | None
    user_id: str
    user_name: str | None
    response_url: str | None
    channel_id: str | None
    message_ts: str | None
    team_id: str | None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _matching(value: Any, pattern: re.Pattern[str]) -> str | None:
    return value if isinstance(value, str) and pattern.match(value) else None


def _short(value: Any, limit: int) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= limit and value.isprintable() else None


def parse_interaction(body: bytes) -> SlackAction | None:
    """The :class:`SlackAction` of an interaction request's body, or None when it is not a click on
    one of ours (or is malformed in any way).

    :param body: the raw ``application/x-www-form-urlencoded`` body, whose ``payload`` field holds
        the JSON Slack sends for ``block_actions``.
    """
    if not isinstance(body, bytes | bytearray) or not body or len(body) > MAX_INTERACTION_BODY:
        return None
    try:
        form = parse_qs(bytes(body).decode("utf-8"), strict_parsing=False, errors="strict", max_num_fields=50)
        fields = form.get("payload")
        if not fields or len(fields) != 1:
            return None
        payload = json.loads(fields[0])
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(payload, dict) or payload.get("type") != "block_actions":
        return None
    actions = payload.get("actions")
    if not isinstance(actions, list) or not actions or not isinstance(actions[0], dict):
        return None
    action = actions[0]
    action_id = action.get("action_id")
    if action_id not in OUR_ACTIONS:
        return None
    reject_option: str | None = None
    call_id: Any
    if action_id == ACTION_REJECT_REASON:
        value = _dict(action.get("selected_option")).get("value")
        if not isinstance(value, str) or "\n" not in value:
            return None
        call_id, _, option = value.partition("\n")
        reject_option = _short(option, MAX_OPTION_NAME)
        if reject_option is None:
            return None
    else:
        call_id = action.get("value")
    if not isinstance(call_id, str) or not _CALL_ID.match(call_id):
        return None
    user = _dict(payload.get("user"))
    user_id = _matching(user.get("id"), USER_ID)
    if user_id is None:
        return None
    container, channel, message = (_dict(payload.get(k)) for k in ("container", "channel", "message"))
    response_url = payload.get("response_url")
    if not isinstance(response_url, str) or len(response_url) > MAX_RESPONSE_URL:
        response_url = None
    return SlackAction(
        call_id=call_id,
        approve=action_id == ACTION_APPROVE,
        reject_option=reject_option,
        user_id=user_id,
        user_name=_short(user.get("username"), MAX_NAME) or _short(user.get("name"), MAX_NAME),
        response_url=safe_link(response_url),
        channel_id=_matching(container.get("channel_id"), _CHANNEL_ID)
        or _matching(channel.get("id"), _CHANNEL_ID),
        message_ts=_matching(container.get("message_ts"), _TS) or _matching(message.get("ts"), _TS),
        team_id=_matching(_dict(payload.get("team")).get("id"), _TEAM_ID)
        or _matching(user.get("team_id"), _TEAM_ID),
    )
