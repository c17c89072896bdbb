"""The e-mail channel: a :class:`~.base.Notice` as a multipart (plain text + HTML) message over SMTP.

:class:`SmtpTarget` is the server, parsed from ``HLML_APPROVALS_SMTP_URL`` (``smtp://``,
``smtp+starttls://`` or ``smtps://``, host and port only); the credentials come separately, from
``HLML_APPROVALS_SMTP_USERNAME`` / ``HLML_APPROVALS_SMTP_PASSWORD``, and the password is never in
a ``repr``, a log line or an exception message.

:func:`render_email` lays the reviewer's card out with two Jinja templates
(``approvals/templates/email/notice.html`` and ``notice.txt``). Every value from the request is
escaped in the HTML part; the only markup inserted as is, is :attr:`Card.body_html`, which
:mod:`airflow_provider_hlml.review.markdown` sanitised. Every ``href`` passes
:func:`~airflow_provider_hlml.review.links.safe_link` and must be absolute (a path of the dashboard
means nothing in a mail client); a URL that does not is shown as text. The HTML is made for mail
clients: tables, inline styles, no scripts, no images, no external resources.

:class:`EmailChannel` keeps one SMTP connection per thread, reuses it across sends and reconnects
once when the server dropped it; a failure becomes :class:`~.base.DeliveryFailed`, retryable for
connection errors, timeouts and 4xx replies, not for 5xx replies (no such user, login refused).
E-mail cannot be updated: :meth:`EmailChannel.update` returns None.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import smtplib
import ssl
import threading
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid, parseaddr
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from airflow_provider_hlml.approvals.channels.base import DeliveryFailed, Notice, Recipient, Sent
from airflow_provider_hlml.review.card import Card, MetricRow
from airflow_provider_hlml.review.links import safe_link

if TYPE_CHECKING:
    import jinja2

__all__ = ["FORWARDING_WARNING", "EmailChannel", "SmtpTarget", "render_email"]

log = logging.getLogger(__name__)

Security = Literal["plain", "starttls", "tls"]

#: URL scheme -> (security, default port).
SCHEMES: dict[str, tuple[Security, int]] = {
    "smtp": ("plain", 25),
    "smtp+starttls": ("starttls", 587),
    "smtps": ("tls", 465),
}
#: Shown next to the one-click links.
FORWARDING_WARNING = (
    "These links are yours: anyone you forward this e-mail to would answer as you. "
    "Opening a link shows a confirmation page; nothing is decided until you confirm."
)
#: Bounds of what a request puts in a message.
MAX_SUBJECT_CHARS = 200
MAX_VALUE_CHARS = 500
MAX_TEXT_CHARS = 5_000
MAX_BODY_CHARS = 20_000
MAX_CONTEXT_ITEMS = 50

_TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "email"
_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}")
_DOMAIN = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


# --- the server --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpTarget:
    """An SMTP server and how to talk to it.

    :param host: host name or IP address.
    :param port: TCP port.
    :param security: ``plain`` (no TLS), ``starttls`` (upgrade with STARTTLS) or ``tls``
        (implicit TLS).
    :param username: the login, or None to send without one.
    :param password: the login's password; never part of ``repr``.
    :param timeout: seconds for connecting and for each reply.
    """

    host: str
    port: int
    security: Security = "plain"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 10.0

    @property
    def address(self) -> str:
        """``host:port`` (``[::1]:25`` for an IPv6 address), for messages."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def from_url(
        cls, url: str, *, username: str | None = None, password: str | None = None, timeout: float = 10.0
    ) -> SmtpTarget:
        """The target of an ``HLML_APPROVALS_SMTP_URL``.

        ``smtp://host[:port]`` (plain, port 25), ``smtp+starttls://host[:port]`` (STARTTLS, 587),
        ``smtps://host[:port]`` (implicit TLS, 465). Credentials are never part of the URL; a login
        over plain ``smtp://`` is only allowed to a loopback address (it would cross the network in
        clear text).

        :param url: the URL.
        :param username: ``HLML_APPROVALS_SMTP_USERNAME``, or None.
        :param password: ``HLML_APPROVALS_SMTP_PASSWORD``, or None.
        :param timeout: seconds for connecting and for each reply.
        :raises ValueError: the URL or the credentials are not usable; the message quotes neither
            the URL nor a password.
        """
        if not isinstance(url, str) or not url.strip():
            raise ValueError("HLML_APPROVALS_SMTP_URL is empty")
        try:
            parts = urlsplit(url.strip())
        except ValueError:
            raise ValueError("HLML_APPROVALS_SMTP_URL is not a valid URL") from None
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            shown = scheme if scheme.isascii() and scheme.replace("+", "").isalnum() else "?"
            raise ValueError(
                f"HLML_APPROVALS_SMTP_URL has the scheme {shown!r}: use smtp://, smtp+starttls:// or smtps://"
            )
        if "@" in parts.netloc:
            raise ValueError(
                "HLML_APPROVALS_SMTP_URL must not contain credentials (user:password@): set "
                "HLML_APPROVALS_SMTP_USERNAME and HLML_APPROVALS_SMTP_PASSWORD instead"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("HLML_APPROVALS_SMTP_URL must be scheme://host[:port], without a path or query")
        host = parts.hostname
        if not host:
            raise ValueError("HLML_APPROVALS_SMTP_URL has no host")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("HLML_APPROVALS_SMTP_URL has an invalid port") from None
        if port == 0:
            raise ValueError("HLML_APPROVALS_SMTP_URL has an invalid port")
        security, default_port = SCHEMES[scheme]
        username = username or None
        if password and not username:
            raise ValueError("HLML_APPROVALS_SMTP_PASSWORD is set but HLML_APPROVALS_SMTP_USERNAME is not")
        if username and any(ch in username for ch in "\r\n\0"):
            raise ValueError("HLML_APPROVALS_SMTP_USERNAME contains a line break or NUL")
        if username and security == "plain" and not _loopback(host):
            raise ValueError(
                "a login over smtp:// would send the password in clear text: use smtp+starttls:// "
                "or smtps:// for HLML_APPROVALS_SMTP_URL"
            )
        if not timeout or timeout <= 0:
            raise ValueError("the SMTP timeout must be positive")
        return cls(
            host=host,
            port=port or default_port,
            security=security,
            username=username,
            password=password if username else None,
            timeout=float(timeout),
        )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- addresses and text ------------------------------------------------------------------------


def _address(raw: object) -> str | None:
    """The bare address of ``raw`` (``a@example.com`` or ``Name <a@example.com>``), or None when it
    is not exactly one plausible address (line breaks, several addresses, no domain...)."""
    if not isinstance(raw, str) or not raw or len(raw) > 320:
        return None
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in raw):
        return None
    if len(getaddresses([raw])) != 1:
        return None
    address = parseaddr(raw)[1]
    local, at, domain = address.rpartition("@")
    if not at or not _LOCAL_PART.fullmatch(local) or local.startswith(".") or local.endswith("."):
        return None
    if ".." in local or not _DOMAIN.fullmatch(domain):
        return None
    return address


def _clean(value: object, limit: int, *, multiline: bool = False) -> str:
    """``value`` as text without control characters (line breaks kept only when ``multiline``),
    at most ``limit`` characters."""
    text = value if isinstance(value, str) else str(value)
    if multiline:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    out = []
    for ch in text[: limit * 2]:
        if multiline and ch in "\n\t":
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            out.append(" ")
        else:
            out.append(ch)
    cleaned = "".join(out)
    if not multiline:
        cleaned = " ".join(cleaned.split())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1].rstrip() + "…"


def clean_subject(subject: object) -> str:
    """A subject line: one line, no control characters, at most :data:`MAX_SUBJECT_CHARS`."""
    return _clean(subject or "", MAX_SUBJECT_CHARS) or "Approval request"


def _href(url: object) -> str | None:
    """``url`` when it may be an ``href`` of an e-mail: it passes :func:`safe_link` and is absolute."""
    link = safe_link(url)
    return link if link is not None and not link.startswith("/") else None


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _value(value: Any) -> str:
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
        except (TypeError, ValueError):
            text = repr(value)
    return _clean(text, MAX_VALUE_CHARS)


# --- rendering ---------------------------------------------------------------------------------


@lru_cache(maxsize=2)
def _environment(html: bool) -> jinja2.Environment:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_TEMPLATES)),
        autoescape=html,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _metric(row: MetricRow) -> dict[str, Any]:
    delta = "-"
    if row.delta is not None:
        delta = f"{row.delta:+.4g}"
        if row.delta_relative is not None:
            delta += f" ({row.delta_relative:+.1%})"
    return {
        "name": _clean(row.name, 100),
        "candidate": _number(row.candidate),
        "champion": _number(row.champion),
        "delta": delta,
        "better": row.better,
        "direction": row.direction,
        "rule": _clean(row.rule, 200) or "-",
        "result": "passed" if row.passed else ("failed" if row.passed is False else "-"),
        "reason": _clean(row.reason, MAX_VALUE_CHARS) if row.reason and row.passed is False else "",
    }


def _card_view(card: Card) -> dict[str, Any]:
    from markupsafe import Markup

    model = card.model
    summary = []
    if model.get("model_name"):
        version = f" v{model['model_version']}" if model.get("model_version") else ""
        summary.append(("Model", _clean(f"{model['model_name']}{version}", MAX_VALUE_CHARS)))
    labels = (
        ("champion_version", "Champion"),
        ("model_uri", "URI"),
        ("mlflow_run_id", "Run"),
        ("validation_run_id", "Validation run"),
    )
    for key, label in labels:
        if model.get(key):
            shown = f"v{model[key]}" if key == "champion_version" else model[key]
            summary.append((label, _clean(shown, MAX_VALUE_CHARS)))
    items = list(card.context.items())
    context = [(_clean(k, 100), _value(v)) for k, v in items[:MAX_CONTEXT_ITEMS]]
    alias = card.context.get("alias")
    compared = card.has_report or any(r.passed is not None or r.champion is not None for r in card.metrics)
    return {
        "subject": _clean(card.subject, MAX_SUBJECT_CHARS),
        "approval_type": _clean(card.approval_type, 100),
        "urgency": _clean(card.urgency, 50),
        "status": _clean(card.status, 50),
        "model": summary,
        "metrics": [_metric(r) for r in card.metrics],
        "compared": compared,
        "no_champion": card.no_champion,
        "alias": _clean(alias, 100) if isinstance(alias, str) and alias else "champion",
        "context": context,
        "context_more": max(0, len(items) - MAX_CONTEXT_ITEMS),
        # Sanitised by review/markdown.py (nh3 allowlist, links through safe_link): the one value
        # inserted into the HTML part unescaped.
        "body_html": Markup(card.body_html),
        "body_text": _clean(card.body_markdown, MAX_BODY_CHARS, multiline=True).strip(),
        "progress": _clean(card.progress, MAX_VALUE_CHARS),
        "policy_note": _clean(card.policy_note or "", MAX_VALUE_CHARS),
        "links": [{"label": _clean(lk.label, 200), "href": _href(lk.url)} for lk in card.links if lk.url],
    }


def _decision_view(card: Card | None) -> dict[str, str] | None:
    decision: Mapping[str, Any] = (card.decision if card else None) or {}
    if not decision and (card is None or card.status == "pending"):
        return None
    status = decision.get("status") or (card.status if card else "decided")
    return {
        "status": _clean(status, 50),
        "by": _clean(decision.get("by") or "", 200),
        "at": _clean(str(decision.get("at") or "")[:19].replace("T", " "), 50),
        "comment": _clean(decision.get("comment") or "", MAX_TEXT_CHARS, multiline=True).strip(),
        "reason": _clean(decision.get("reject_option_title") or decision.get("reject_option") or "", 200),
    }


_HEADINGS = {
    "request": "Approval requested",
    "reminder": "Reminder: your approval is still needed",
    "escalation": "Escalated to you: approval needed",
    "outcome": "Request decided",
    "alert": "Alert",
}


def _view(notice: Notice) -> dict[str, Any]:
    kind = notice.kind if notice.kind in _HEADINGS else "request"
    card = notice.card if kind != "alert" else None
    actions = None
    if kind in ("request", "reminder", "escalation") and notice.links is not None:
        raw = {"approve": notice.links.approve, "reject": notice.links.reject}
        shown = {k: {"url": v, "href": _href(v)} for k, v in raw.items() if v}
        if shown:
            actions = shown
    return {
        "kind": kind,
        "heading": _HEADINGS[kind],
        "subject": clean_subject(notice.subject),
        "text": _clean(notice.text, MAX_TEXT_CHARS, multiline=True).strip() if notice.text else "",
        "card": _card_view(card) if card is not None else None,
        "decision": _decision_view(card) if kind == "outcome" else None,
        "actions": actions,
        "warning": FORWARDING_WARNING,
        "dashboard_href": _href(notice.dashboard_url) if kind != "alert" else None,
    }


def _msgid_domain(address: str) -> str:
    domain = address.rpartition("@")[2]
    return domain if _DOMAIN.fullmatch(domain) else "hlml.invalid"


def render_email(notice: Notice, *, sender: str, recipient: Recipient) -> EmailMessage:
    """``notice`` as a message from ``sender`` to ``recipient``: multipart/alternative, plain text
    and HTML, with ``From``, ``To``, ``Subject``, ``Date``, ``Message-ID`` and
    ``Auto-Submitted: auto-generated``.

    :param notice: what to say.
    :param sender: the ``From`` address (``approvals@example.com`` or ``Name <approvals@...>``).
    :param recipient: whom to; its ``address`` is an e-mail address.
    :raises ValueError: ``sender`` or the recipient's address is not one plausible address.
    """
    from_address = _address(sender)
    if from_address is None:
        raise ValueError("the sender is not a valid e-mail address")
    to_address = _address(recipient.address)
    if to_address is None:
        raise ValueError("the recipient is not a valid e-mail address")
    view = _view(notice)
    message = EmailMessage()
    message["From"] = sender.strip()
    message["To"] = to_address
    message["Subject"] = view["subject"]
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain=_msgid_domain(from_address))
    message["Auto-Submitted"] = "auto-generated"
    message["X-Auto-Response-Suppress"] = "All"
    message.set_content(_environment(False).get_template("notice.txt").render(view))
    message.add_alternative(_environment(True).get_template("notice.html").render(view), subtype="html")
    return message


# --- sending -----------------------------------------------------------------------------------


def _reason(raw: object) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return _clean(text, 200)


class EmailChannel:
    """Notices as e-mail, over SMTP (see the module's docstring).

    :param target: the SMTP server.
    :param sender: the ``From`` address.
    :param ssl_context: the TLS context for STARTTLS and implicit TLS; default
        :func:`ssl.create_default_context` (the system's CAs, host names checked).
    """

    name = "email"

    def __init__(self, target: SmtpTarget, sender: str, *, ssl_context: ssl.SSLContext | None = None) -> None:
        envelope_from = _address(sender)
        if envelope_from is None:
            raise ValueError("the sender of approval e-mails is not a valid e-mail address")
        self.target = target
        self.sender = sender.strip()
        self._envelope_from = envelope_from
        self._ssl_context = ssl_context
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[smtplib.SMTP] = []

    def __repr__(self) -> str:
        return f"EmailChannel(target={self.target!r}, sender={self.sender!r})"

    # Channel protocol

    def send(self, recipient: Recipient, notice: Notice) -> Sent:
        """Send ``notice`` to ``recipient.address``; the :class:`Sent` ref is the Message-ID.

        :raises DeliveryFailed: not sent; ``retryable`` for connection problems and 4xx replies.
        """
        to_address = _address(recipient.address)
        if to_address is None:
            raise DeliveryFailed("the recipient is not a valid e-mail address", retryable=False)
        message = render_email(notice, sender=self.sender, recipient=recipient)
        self._deliver(message, to_address)
        ref = message["Message-ID"]
        log.debug("sent %s notice %s via %s", notice.kind, ref, self.target.address)
        return Sent(ref=str(ref))

    def update(self, recipient: Recipient, ref: str, notice: Notice) -> Sent | None:
        """E-mail cannot be updated: None (nothing is sent)."""
        return None

    def close(self) -> None:
        """Quit every connection this channel opened, in any thread."""
        with self._lock:
            opened, self._opened = self._opened, []
            self._local = threading.local()
        for conn in opened:
            try:
                if conn.sock is not None:
                    conn.quit()
            except (smtplib.SMTPException, OSError):
                pass
            finally:
                conn.close()

    # connections

    def _context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    def _connection(self) -> tuple[smtplib.SMTP, bool]:
        """This thread's connection and whether it was used before (then it may have been dropped)."""
        conn: smtplib.SMTP | None = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is not None:
            return conn, True
        conn = self._connect()
        with self._lock:
            self._opened.append(conn)
            self._local.conn = conn
        return conn, False

    def _discard(self, conn: smtplib.SMTP) -> None:
        conn.close()
        with self._lock:
            if conn in self._opened:
                self._opened.remove(conn)
            if getattr(self._local, "conn", None) is conn:
                self._local.conn = None

    def _connect(self) -> smtplib.SMTP:
        target = self.target
        phase = "connect"
        conn: smtplib.SMTP | None = None
        try:
            if target.security == "tls":
                conn = smtplib.SMTP_SSL(
                    target.host, target.port, timeout=target.timeout, context=self._context()
                )
            else:
                conn = smtplib.SMTP(target.host, target.port, timeout=target.timeout)
            phase = "EHLO"
            conn.ehlo_or_helo_if_needed()
            if target.security == "starttls":
                phase = "STARTTLS"
                conn.starttls(context=self._context())
                conn.ehlo_or_helo_if_needed()
            if target.username:
                phase = "login"
                try:
                    conn.login(target.username, target.password or "")
                except (smtplib.SMTPException, OSError) as exc:
                    # Nothing of the login's internals travels on (the cause is dropped).
                    failure = self._failure(exc, phase)
                    raise failure from None
        except DeliveryFailed:
            if conn is not None:
                conn.close()
            raise
        except (smtplib.SMTPException, OSError) as exc:
            if conn is not None:
                conn.close()
            raise self._failure(exc, phase) from exc
        log.info("connected to the SMTP server %s (%s)", target.address, target.security)
        return conn

    def _deliver(self, message: EmailMessage, to_address: str) -> None:
        for attempt in (1, 2):
            conn, reused = self._connection()
            try:
                conn.send_message(message, from_addr=self._envelope_from, to_addrs=[to_address])
                return
            except smtplib.SMTPServerDisconnected as exc:
                self._discard(conn)
                if reused and attempt == 1:
                    log.info("the SMTP server %s dropped the connection; reconnecting", self.target.address)
                    continue
                raise self._failure(exc, "send") from exc
            except (smtplib.SMTPResponseException, smtplib.SMTPRecipientsRefused) as exc:
                if conn.sock is None or _code(exc) == 421:
                    # 421: the server is closing the connection (an idle timeout, a restart).
                    self._discard(conn)
                    if reused and attempt == 1:
                        log.info(
                            "the SMTP server %s closed the connection; reconnecting", self.target.address
                        )
                        continue
                # Otherwise smtplib reset the transaction: the connection stays usable.
                raise self._failure(exc, "send") from exc
            except (smtplib.SMTPException, OSError) as exc:
                self._discard(conn)
                raise self._failure(exc, "send") from exc

    def _failure(self, exc: BaseException, phase: str) -> DeliveryFailed:
        """``exc`` as a :class:`DeliveryFailed` naming the server, the phase and the SMTP reply."""
        where = f"SMTP server {self.target.address} ({phase})"
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            replies = list(exc.recipients.values())
            text = "; ".join(f"{code} {_reason(reply)}" for code, reply in replies)
            retryable = bool(replies) and all(400 <= code < 500 for code, _ in replies)
            return self._scrubbed(f"{where} refused the recipient: {text}", retryable)
        if isinstance(exc, smtplib.SMTPResponseException):
            what = {
                smtplib.SMTPAuthenticationError: "refused the login",
                smtplib.SMTPSenderRefused: "refused the sender",
                smtplib.SMTPDataError: "refused the message",
                smtplib.SMTPConnectError: "refused the connection",
                smtplib.SMTPHeloError: "refused EHLO",
            }.get(type(exc), "answered")
            code = exc.smtp_code
            return self._scrubbed(f"{where} {what}: {code} {_reason(exc.smtp_error)}", not 500 <= code < 600)
        if isinstance(exc, smtplib.SMTPServerDisconnected):
            # smtplib reports a timeout or a reset while reading a reply as a disconnection.
            return DeliveryFailed(f"{where}: {_reason(exc) or 'connection closed'}", retryable=True)
        if isinstance(exc, smtplib.SMTPException):
            # Not supported (STARTTLS, AUTH), no usable auth mechanism: the configuration.
            return self._scrubbed(f"{where}: {_reason(exc)}", False)
        if isinstance(exc, ssl.SSLCertVerificationError):
            return DeliveryFailed(
                f"{where}: its TLS certificate is not trusted: {_reason(exc.verify_message)}", retryable=False
            )
        if isinstance(exc, ssl.SSLError):
            return DeliveryFailed(f"{where}: TLS failed: {_reason(exc.reason or exc)}", retryable=True)
        if isinstance(exc, TimeoutError):
            return DeliveryFailed(f"{where} timed out after {self.target.timeout:g} s", retryable=True)
        if isinstance(exc, ConnectionRefusedError):
            return DeliveryFailed(f"{where} refused the connection", retryable=True)
        if isinstance(exc, OSError):
            return DeliveryFailed(f"{where}: {_reason(exc.strerror or exc)}", retryable=True)
        return DeliveryFailed(f"{where}: {type(exc).__name__}", retryable=True)

    def _scrubbed(self, message: str, retryable: bool) -> DeliveryFailed:
        # A server's reply is quoted; should one ever echo the password, it is not repeated.
        password = self.target.password
        if password:
            message = message.replace(password, "***")
        return DeliveryFailed(message, retryable=retryable)


def _code(exc: smtplib.SMTPResponseException | smtplib.SMTPRecipientsRefused) -> int | None:
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code
    codes = {code for code, _ in exc.recipients.values()}
    return codes.pop() if len(codes) == 1 else None
