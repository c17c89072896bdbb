"""What every delivery channel implements: a small interface, so a new channel is one module.

The delivery worker (:mod:`airflow_provider_hlml.approvals.delivery`) decides *what* to send to
*whom* and *when*; a channel only turns a :class:`Notice` into a message on its medium and sends
it to one :class:`Recipient`. A channel raises :class:`DeliveryFailed` when a send did not happen
(``retryable`` when trying again later may succeed: a connection refused, a 5xx, a rate limit);
the worker retries with backoff and records every attempt in the request's audit trail. Channels
never see secrets they do not need, and never put one in an exception message.

A new channel (Microsoft Teams, say) implements :class:`Channel` and is listed in
:func:`airflow_provider_hlml.approvals.delivery.channels_from_settings`. The webhook channel
(:mod:`.webhook`) is one for machines: it gets only ``decision`` notices, whose ``payload`` is the
body it POSTs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from airflow_provider_hlml.review.card import Card

__all__ = ["ActionLinks", "Channel", "DeliveryFailed", "Notice", "NoticeKind", "Recipient", "Sent"]

#: ``request``: a new request; ``reminder``: still pending; ``escalation``: the request was
#: escalated to the recipient; ``outcome``: decided (a channel that can, updates its first
#: message); ``alert``: an operational alert (no card); ``decision``: a settled request for a
#: machine (a webhook's body in ``payload``, no card).
NoticeKind = Literal["request", "reminder", "escalation", "outcome", "alert", "decision"]


@dataclass(frozen=True)
class Recipient:
    """One person or place a notice goes to.

    :param channel: the channel's name (``email``, ``slack``).
    :param address: where: an e-mail address, a Slack channel or user id.
    :param name: the principal this recipient is, when known (whom a one-click answer is recorded as).
    """

    channel: str
    address: str
    name: str | None = None


@dataclass(frozen=True)
class ActionLinks:
    """A recipient's signed one-click links (confirmation pages; opening one never decides).

    :param approve: the approve link; None when this recipient gets no links.
    :param reject: the reject link.
    """

    approve: str | None = None
    reject: str | None = None


@dataclass(frozen=True)
class Notice:
    """What to tell a recipient.

    :param kind: why this notice is sent.
    :param subject: a one-line summary (e-mail subject, Slack fallback text); plain text.
    :param card: the reviewer's card of the request (None for alerts).
    :param text: a plain-text note above the card: why a reminder or escalation was sent, or the
        alert's text.
    :param links: this recipient's one-click links (e-mail); None for other channels.
    :param dashboard_url: the request in the Airflow dashboard, absolute, already ``safe_link``-checked.
    :param payload: a ``decision`` notice's machine-readable body (HumanLayer's webhook body).
    """

    kind: NoticeKind
    subject: str
    card: Card | None = None
    text: str | None = None
    links: ActionLinks | None = None
    dashboard_url: str | None = None
    payload: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Sent:
    """A message accepted by the channel.

    :param ref: what the channel needs to update the message later (Slack: ``channel:ts``; e-mail:
        the Message-ID), or None.
    """

    ref: str | None = None


class DeliveryFailed(Exception):
    """A send that did not happen; the message names no secret.

    :param retryable: whether trying again later may succeed.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class Channel(Protocol):
    """A medium notices are delivered on."""

    #: The channel's name, as in :attr:`Recipient.channel` and the audit trail.
    name: str

    def send(self, recipient: Recipient, notice: Notice) -> Sent:
        """Send ``notice`` to ``recipient``; raise :class:`DeliveryFailed` when it was not sent."""
        ...

    def update(self, recipient: Recipient, ref: str, notice: Notice) -> Sent | None:
        """Replace a sent message (``ref`` from its :class:`Sent`) with ``notice``; None when this
        channel cannot update messages (the worker then sends nothing: e-mail is not re-sent)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
