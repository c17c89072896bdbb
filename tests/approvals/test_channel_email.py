"""The e-mail channel against real SMTP servers (aiosmtpd): plain, STARTTLS and implicit TLS.

The session's ``smtp`` fixture (tests/fixtures/smtp.py) receives the plain-SMTP messages; the
tests that need TLS, a login, recipient refusals or connection counting start their own
:class:`aiosmtpd.controller.Controller` on a free port, with a self-signed certificate made here.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_hlml.approvals.channels.base import (
    ActionLinks,
    DeliveryFailed,
    Notice,
    Recipient,
    Sent,
)
from airflow_provider_hlml.approvals.channels.email import (
    FORWARDING_WARNING,
    EmailChannel,
    SmtpTarget,
    render_email,
)
from airflow_provider_hlml.review.card import Card, build_card
from tests.fixtures.processes import free_port

SENDER = "HLML approvals <approvals@hlml.example.com>"
REVIEWER = Recipient(channel="email", address="alice@example.com", name="alice")
APPROVE_URL = "https://hlml.example.com/approvals/act/c-42?token=approve.tok-1"
REJECT_URL = "https://hlml.example.com/approvals/act/c-42?token=reject.tok-2"
DASHBOARD_URL = "https://airflow.example.com/hlml/approvals?call_id=c-42"
XSS = "<img src=x onerror=alert(1)>"
USERNAME = "hlml-mailer"
PASSWORD = "pw-Zq8$very-secret-7731"


# --- requests and notices ----------------------------------------------------------------------


class Links:
    """The channel's links (a LinkMaker); the champion's version link is hostile, so it is dropped."""

    def mlflow_run(self, run_id: str) -> str | None:
        return f"https://mlflow.example.com/#/experiments/1/runs/{run_id}"

    def mlflow_model_version(self, name: str, version: str) -> str | None:
        if version == "6":
            return "javascript:alert(document.cookie)"
        return f"https://mlflow.example.com/#/models/{name}/versions/{version}"

    def mlflow_compare_runs(self, run_ids: Any) -> str | None:
        return "https://mlflow.example.com/#/compare-runs?runs=" + ",".join(run_ids)

    def airflow_task(self, location: Any) -> str | None:
        return None

    def airflow_dag_run(self, location: Any) -> str | None:
        return None


def promotion_call(
    *, champion: str | None = "6", status: dict[str, Any] | None = None, **context: Any
) -> dict[str, Any]:
    """A model-promotion request as the approvals service returns it."""
    metrics: dict[str, Any] = {
        "roc_auc": {
            "candidate": 0.912,
            "champion": 0.897 if champion else None,
            "passed": True,
            "threshold": {"threshold": 0.85, "min_absolute_change": 0.005},
        },
        "log_loss": {
            "candidate": 0.311,
            "champion": 0.298 if champion else None,
            "passed": False,
            "reason": "0.311 > 0.3",
            "threshold": {"threshold": 0.3, "greater_is_better": False},
        },
    }
    return {
        "call_id": "c-42",
        "run_id": "churn_pipeline",
        "spec": {
            "fn": "promote_model",
            "kwargs": {
                "subject": "Promote churn-classifier v7 to @champion",
                "body": (
                    "## Why this version\n\n"
                    "Retrained on **March** data; ROC AUC is up.\n\n"
                    "<script>alert('pwned')</script>\n\n"
                    "[click me](javascript:alert(document.cookie)) and "
                    "[the report](https://reports.example.com/churn/7)\n"
                ),
                "context": {
                    "model_name": "churn-classifier",
                    "model_version": "7",
                    "mlflow_run_id": "4f1c2a9be0d14c8f",
                    "champion_version": champion,
                    "passed": False,
                    "metrics": metrics,
                    "dataset": "s3://ml/churn/2024-03",
                    "note": XSS,
                    "params": {"max_depth": 6, "n_estimators": 400},
                    **context,
                },
                "approval_type": "model_promotion",
                "urgency": "high",
            },
            "reject_options": [
                {"name": "metrics", "title": "Metrics not good enough"},
                {"name": "data", "title": "Training data problem"},
            ],
        },
        "status": status or {},
    }


def request_notice(
    card: Card | None = None, *, subject: str = "Approval needed: promote churn-classifier v7", **kw: Any
) -> Notice:
    return Notice(
        kind=kw.pop("kind", "request"),
        subject=subject,
        card=card if card is not None else build_card(promotion_call(), Links()),
        text=kw.pop("text", None),
        links=kw.pop("links", ActionLinks(approve=APPROVE_URL, reject=REJECT_URL)),
        dashboard_url=kw.pop("dashboard_url", DASHBOARD_URL),
    )


def parts(message: EmailMessage) -> tuple[str, str]:
    plain, html = message.get_body(("plain",)), message.get_body(("html",))
    assert plain is not None
    assert html is not None
    return plain.get_content(), html.get_content()


class HtmlScan(HTMLParser):
    """Every tag and attribute of an HTML part."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.hrefs: list[str] = []
        self.anchors: dict[str, str] = {}
        self.attributes: list[tuple[str, str, str]] = []
        self._href: str | None = None
        self._text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            self.attributes.append((tag, name, value or ""))
        if tag == "a":
            self._href = dict(attrs).get("href") or ""
            self.hrefs.append(self._href)
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.anchors["".join(self._text).strip()] = self._href
            self._href = None


def assert_mail_safe(html: str) -> HtmlScan:
    """No script, no active content, no external resources, every link absolute http(s)."""
    scan = HtmlScan(html)
    assert not {"script", "img", "iframe", "object", "embed", "form", "link", "style", "base"} & set(
        scan.tags
    )
    for tag, name, value in scan.attributes:
        assert not name.startswith("on"), (tag, name)
        assert name not in ("src", "srcset", "background", "action", "formaction"), (tag, name)
        assert "javascript:" not in value.lower(), (tag, name, value)
        assert "url(" not in value.lower(), (tag, name, value)
    assert scan.hrefs
    assert all(h.startswith("https://") for h in scan.hrefs), scan.hrefs
    return scan


# --- servers -----------------------------------------------------------------------------------


@dataclass
class Recorder:
    """An aiosmtpd handler that records connections, messages and how they were sent."""

    rcpt_reply: str | None = None
    #: Replies to the next MAIL commands (then 250).
    mail_replies: list[str] = field(default_factory=list)
    ehlo: int = 0
    quits: int = 0
    messages: list[dict[str, Any]] = field(default_factory=list)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.ehlo += 1
        session.host_name = hostname
        return responses

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.mail_replies:
            return self.mail_replies.pop(0)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            {
                "peer": session.peer,
                "authenticated": session.authenticated,
                "login": session.auth_data.login if session.auth_data else None,
                "tls": server.transport.get_extra_info("ssl_object") is not None,
                "rcpt_tos": list(envelope.rcpt_tos),
                "message": message_from_bytes(bytes(envelope.original_content), policy=policy.default),
            }
        )
        return "250 Message accepted"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        self.quits += 1
        return "221 Bye"

    @property
    def peers(self) -> set[Any]:
        return {m["peer"] for m in self.messages}


@dataclass
class Certificate:
    cert_pem: str
    cert_path: Path
    key_path: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A default (verifying) client context that trusts this certificate only."""
        return ssl.create_default_context(cadata=self.cert_pem)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hlml test smtp")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("smtp-tls")
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_text(cert_pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return Certificate(cert_pem, cert_path, key_path)


def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
    from aiosmtpd.smtp import AuthResult, LoginPassword

    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == USERNAME.encode()
        and auth_data.password == PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


ServerFactory = Callable[..., tuple[Recorder, int]]


@pytest.fixture
def smtp_servers() -> Iterator[ServerFactory]:
    """Start aiosmtpd Controllers on free ports: ``start(recorder=None, **controller_kwargs)``."""
    from aiosmtpd.controller import Controller

    controllers: list[Any] = []

    def start(recorder: Recorder | None = None, **kwargs: Any) -> tuple[Recorder, int]:
        handler = recorder or Recorder()
        port = free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        controllers.append(controller)
        return handler, port

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture
def channels() -> Iterator[Callable[..., EmailChannel]]:
    """EmailChannels that are closed after the test."""
    made: list[EmailChannel] = []

    def make(target: SmtpTarget, sender: str = SENDER, **kwargs: Any) -> EmailChannel:
        channel = EmailChannel(target, sender, **kwargs)
        made.append(channel)
        return channel

    yield make
    for channel in made:
        channel.close()


# --- the message -------------------------------------------------------------------------------


def test_request_is_multipart_with_the_card(smtp: Any, channels: Callable[..., EmailChannel]) -> None:
    channel = channels(SmtpTarget.from_url(smtp.url))
    assert channel.name == "email"
    sent = channel.send(REVIEWER, request_notice(text="Sent because you are on the ML-lead rule."))
    assert isinstance(sent, Sent)

    (message,) = smtp.wait_for(1)
    assert message.get_content_type() == "multipart/alternative"
    assert message["Message-ID"] == sent.ref
    assert sent.ref is not None
    assert sent.ref.endswith("@hlml.example.com>")
    assert message["From"] == SENDER
    assert message["To"] == "alice@example.com"
    assert message["Subject"] == "Approval needed: promote churn-classifier v7"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Date"]
    assert smtp.received[0].mail_from == "approvals@hlml.example.com"
    assert smtp.received[0].rcpt_tos == ["alice@example.com"]

    text, html = parts(message)
    for part in (text, html):
        # The note on top, then the card: subject, type, urgency, model, metrics, context, rules.
        assert part.index("Sent because you are on the ML-lead rule.") < part.index("model_promotion")
        assert "Promote churn-classifier v7 to @champion" in part
        assert "urgency" in part.lower()
        assert "high" in part
        assert "churn-classifier v7" in part
        assert "4f1c2a9be0d14c8f" in part
        assert "v6" in part  # the champion
        for value in (
            "roc_auc",
            "0.912",
            "0.897",
            "+0.015",
            "log_loss",
            "0.311",
            "0.298",
            "failed",
            "passed",
        ):
            assert value in part, value
        assert "s3://ml/churn/2024-03" in part
        assert "Any reviewer 0 of 1" in part
        assert "no champion yet" not in part.lower()
    # Context values that are not strings are JSON.
    assert '{"max_depth": 6, "n_estimators": 400}' in text
    assert "{&#34;max_depth&#34;: 6, &#34;n_estimators&#34;: 400}" in html
    # The body: Markdown in the text part, the sanitised HTML in the HTML part.
    assert "## Why this version" in text
    assert "<h2>Why this version</h2>" in html
    assert "<strong>March</strong>" in html

    scan = assert_mail_safe(html)
    assert scan.anchors["MLflow run"] == "https://mlflow.example.com/#/experiments/1/runs/4f1c2a9be0d14c8f"
    assert (
        scan.anchors["churn-classifier v7"]
        == "https://mlflow.example.com/#/models/churn-classifier/versions/7"
    )
    assert scan.anchors["the report"] == "https://reports.example.com/churn/7"
    # The champion's link was javascript: (CardLink.url None): not a link, not listed.
    assert "champion v6" not in scan.anchors
    assert "https://mlflow.example.com/#/experiments/1/runs/4f1c2a9be0d14c8f" in text


def test_values_from_the_request_are_escaped(smtp: Any, channels: Callable[..., EmailChannel]) -> None:
    call = promotion_call(owner='"><script>alert(2)</script>', long_value="x" * 5000)
    call["spec"]["kwargs"]["subject"] = "Promote <b>v7</b> & friends"
    channel = channels(SmtpTarget.from_url(smtp.url))
    channel.send(REVIEWER, request_notice(build_card(call, Links()), subject="Approve <i>v7</i>"))

    (message,) = smtp.wait_for(1)
    text, html = parts(message)
    assert message["Subject"] == "Approve <i>v7</i>"
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert XSS not in html
    assert "&#34;&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in html
    assert "Promote &lt;b&gt;v7&lt;/b&gt; &amp; friends" in html
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(" in html  # the body's raw HTML is text
    assert_mail_safe(html)
    # Long values are bounded.
    assert "x" * 600 not in html
    assert "x" * 600 not in text
    assert "x" * 400 in text
    # The text part is text: the values as they are.
    assert XSS in text


def test_one_click_links_with_the_forwarding_warning(
    smtp: Any, channels: Callable[..., EmailChannel]
) -> None:
    channel = channels(SmtpTarget.from_url(smtp.url))
    channel.send(REVIEWER, request_notice())

    text, html = parts(smtp.wait_for(1)[0])
    scan = assert_mail_safe(html)
    assert scan.anchors["Approve"] == APPROVE_URL
    assert scan.anchors["Reject"] == REJECT_URL
    assert scan.anchors["Open in the dashboard"] == DASHBOARD_URL
    assert FORWARDING_WARNING in html
    assert FORWARDING_WARNING in text
    assert f"Approve: {APPROVE_URL}" in text
    assert f"Reject: {REJECT_URL}" in text
    assert f"Open in the dashboard: {DASHBOARD_URL}" in text
    assert FORWARDING_WARNING == (
        "These links are yours: anyone you forward this e-mail to would answer as you. Opening a link "
        "shows a confirmation page; nothing is decided until you confirm."
    )


def test_no_links_no_buttons(smtp: Any, channels: Callable[..., EmailChannel]) -> None:
    channel = channels(SmtpTarget.from_url(smtp.url))
    channel.send(
        REVIEWER, request_notice(links=None, dashboard_url=None, kind="reminder", text="Still pending.")
    )

    text, html = parts(smtp.wait_for(1)[0])
    assert "Reminder" in text
    assert "Still pending." in html
    assert FORWARDING_WARNING not in html
    assert FORWARDING_WARNING not in text
    assert "Approve" not in HtmlScan(html).anchors
    assert "Open in the dashboard" not in html


def test_unsafe_links_are_text() -> None:
    notice = request_notice(
        links=ActionLinks(
            approve="javascript:alert(1)", reject="https://evil.example.com@hlml.example.com/x"
        ),
        dashboard_url="/hlml/approvals",  # a path means nothing in a mail client
    )
    message = render_email(notice, sender=SENDER, recipient=REVIEWER)
    text, html = parts(message)
    scan = HtmlScan(html)
    assert "Approve" not in scan.anchors
    assert "Reject" not in scan.anchors
    assert "Open in the dashboard" not in scan.anchors
    assert "javascript:" not in " ".join(scan.hrefs)
    assert "Approve: (link unavailable)" in text
    assert "javascript:alert(1)" not in text
    assert "evil.example.com" not in text + html


def test_no_champion_yet() -> None:
    card = build_card(promotion_call(champion=None, alias="prod"), Links())
    assert card.no_champion
    text, html = parts(render_email(request_notice(card), sender=SENDER, recipient=REVIEWER))
    for part in (text, html):
        assert "No champion yet" in part
        assert "@prod" in part


def test_subject_header_injection(smtp: Any, channels: Callable[..., EmailChannel]) -> None:
    channel = channels(SmtpTarget.from_url(smtp.url))
    evil = "x\r\nBcc: evil@example.com\r\n\r\nbody\u2028Cc: more@example.com\x00" + "y" * 500
    channel.send(REVIEWER, request_notice(subject=evil))

    (message,) = smtp.wait_for(1)
    assert message["Bcc"] is None
    assert message["Cc"] is None
    subject = message["Subject"]
    assert subject.startswith("x Bcc: evil@example.com body Cc: more@example.com")
    assert not any(ch in subject for ch in "\r\n\x00\u2028")
    assert len(subject) <= 200
    assert smtp.received[0].rcpt_tos == ["alice@example.com"]
    headers = smtp.received[0].data.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nBcc:" not in headers
    assert b"\nBcc:" not in headers


@pytest.mark.parametrize(
    "address",
    [
        "alice@example.com\r\nBcc: evil@example.com",
        "alice@example.com\nRCPT TO:<evil@example.com>",
        "alice",
        "alice@",
        "@example.com",
        "alice@example.com, evil@example.com",
        "",
    ],
)
def test_bad_recipient_is_not_retryable(
    smtp: Any, channels: Callable[..., EmailChannel], address: str
) -> None:
    channel = channels(SmtpTarget.from_url(smtp.url))
    with pytest.raises(DeliveryFailed) as failed:
        channel.send(Recipient(channel="email", address=address), request_notice())
    assert failed.value.retryable is False
    assert "not a valid e-mail address" in str(failed.value)
    assert smtp.received == []


def test_outcome_and_alert() -> None:
    decided = promotion_call(
        status={
            "approved": False,
            "comment": "log_loss regressed <again>",
            "reject_option_name": "metrics",
            "user_info": {"name": "bob", "email": "bob@example.com"},
            "responded_at": "2024-03-05T10:11:12Z",
        }
    )
    card = build_card(decided, Links())
    outcome = Notice(
        kind="outcome", subject="Rejected: churn-classifier v7", card=card, dashboard_url=DASHBOARD_URL
    )
    text, html = parts(render_email(outcome, sender=SENDER, recipient=REVIEWER))
    assert "This request was rejected by bob at 2024-03-05 10:11:12." in text
    assert "Reason: Metrics not good enough" in text
    assert "log_loss regressed <again>" in text
    assert "rejected</strong> by <strong>bob</strong>" in html
    assert "log_loss regressed &lt;again&gt;" in html
    assert FORWARDING_WARNING not in text
    assert "roc_auc" not in text  # an outcome is short

    alert = Notice(kind="alert", subject="Delivery to slack failing", text="3 notices failed:\n- c-42 <x>")
    text, html = parts(render_email(alert, sender=SENDER, recipient=REVIEWER))
    assert "Delivery to slack failing" in text
    assert "3 notices failed:\n- c-42 <x>" in text
    assert "3 notices failed:\n- c-42 &lt;x&gt;" in html
    assert "Approve" not in text
    assert "Details" not in text


# --- sending -----------------------------------------------------------------------------------


def test_connection_is_reused_and_closed(
    smtp_servers: ServerFactory, channels: Callable[..., EmailChannel]
) -> None:
    recorder, port = smtp_servers()
    channel = channels(SmtpTarget.from_url(f"smtp://127.0.0.1:{port}"))
    first = channel.send(REVIEWER, request_notice())
    second = channel.send(Recipient("email", "Bob <bob@example.com>"), request_notice(kind="reminder"))

    assert first.ref != second.ref
    assert len(recorder.messages) == 2
    assert recorder.ehlo == 1
    assert len(recorder.peers) == 1
    assert recorder.messages[1]["rcpt_tos"] == ["bob@example.com"]
    assert recorder.messages[1]["message"]["To"] == "bob@example.com"

    # Another thread gets its own connection.
    thread = threading.Thread(target=channel.send, args=(REVIEWER, request_notice()))
    thread.start()
    thread.join()
    assert len(recorder.messages) == 3
    assert len(recorder.peers) == 2

    channel.close()
    assert recorder.quits == 2
    # After close, a send opens a new connection.
    channel.send(REVIEWER, request_notice())
    assert len(recorder.peers) == 3


def test_dropped_connection_is_reopened_once(
    smtp_servers: ServerFactory, channels: Callable[..., EmailChannel]
) -> None:
    # The server closes idle connections after 1 s.
    recorder, port = smtp_servers(timeout=1)
    channel = channels(SmtpTarget.from_url(f"smtp://127.0.0.1:{port}"))
    channel.send(REVIEWER, request_notice())
    threading.Event().wait(1.8)
    channel.send(REVIEWER, request_notice())

    assert len(recorder.messages) == 2
    assert len(recorder.peers) == 2
    assert recorder.ehlo == 2


def test_421_on_a_reused_connection_reconnects_once(
    smtp_servers: ServerFactory, channels: Callable[..., EmailChannel]
) -> None:
    recorder, port = smtp_servers()
    channel = channels(SmtpTarget.from_url(f"smtp://127.0.0.1:{port}"))
    channel.send(REVIEWER, request_notice())
    # The server is shutting down this connection (421): a new one delivers.
    recorder.mail_replies.append("421 4.3.2 Service shutting down")
    channel.send(REVIEWER, request_notice())
    assert len(recorder.messages) == 2
    assert len(recorder.peers) == 2

    # Twice in a row: the fresh connection gets 421 too, the send fails (retryable), once.
    recorder.mail_replies.extend(["421 4.3.2 Service shutting down"] * 2)
    with pytest.raises(DeliveryFailed) as failed:
        channel.send(REVIEWER, request_notice())
    assert failed.value.retryable is True
    assert "421" in str(failed.value)
    assert recorder.mail_replies == []
    assert recorder.ehlo == 3


def test_starttls_with_login(
    smtp_servers: ServerFactory,
    channels: Callable[..., EmailChannel],
    certificate: Certificate,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    recorder, port = smtp_servers(
        tls_context=certificate.server_context(),
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=True,
    )
    target = SmtpTarget.from_url(f"smtp+starttls://127.0.0.1:{port}", username=USERNAME, password=PASSWORD)
    assert (target.security, target.port) == ("starttls", port)
    channel = channels(target, ssl_context=certificate.client_context())
    channel.send(REVIEWER, request_notice())
    channel.send(REVIEWER, request_notice())

    assert [(m["tls"], m["authenticated"], m["login"]) for m in recorder.messages] == [
        (True, True, USERNAME.encode())
    ] * 2
    assert len(recorder.peers) == 1
    assert recorder.messages[0]["message"]["Subject"] == "Approval needed: promote churn-classifier v7"

    # A wrong password: 535, permanent; the message names the server and the reply, no secret.
    wrong = SmtpTarget.from_url(
        f"smtp+starttls://127.0.0.1:{port}", username=USERNAME, password=PASSWORD + "-x"
    )
    with pytest.raises(DeliveryFailed) as failed:
        channels(wrong, ssl_context=certificate.client_context()).send(REVIEWER, request_notice())
    assert failed.value.retryable is False
    assert "535" in str(failed.value)
    assert f"127.0.0.1:{port}" in str(failed.value)

    # An untrusted certificate (the system's CAs): permanent, says so.
    with pytest.raises(DeliveryFailed) as untrusted:
        channels(target).send(REVIEWER, request_notice())
    assert untrusted.value.retryable is False
    assert "certificate" in str(untrusted.value)

    for secret_free in (repr(target), repr(wrong), repr(channel), str(failed.value), repr(failed.value),
                        str(failed.value.__cause__), str(untrusted.value), str(untrusted.value.__cause__),
                        caplog.text):  # fmt: skip
        assert PASSWORD not in secret_free
    assert USERNAME in repr(target)
    assert "password" not in repr(target)
    assert "connected to the SMTP server" in caplog.text


def test_starttls_required_but_not_offered(
    smtp_servers: ServerFactory, channels: Callable[..., EmailChannel], certificate: Certificate
) -> None:
    _, port = smtp_servers()
    with pytest.raises(DeliveryFailed) as failed:
        channels(
            SmtpTarget.from_url(f"smtp+starttls://127.0.0.1:{port}"), ssl_context=certificate.client_context()
        ).send(REVIEWER, request_notice())
    assert failed.value.retryable is False
    assert "STARTTLS" in str(failed.value)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
def test_implicit_tls_with_login(
    smtp_servers: ServerFactory,
    channels: Callable[..., EmailChannel],
    certificate: Certificate,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    # aiosmtpd only counts STARTTLS as TLS for auth_require_tls; the whole session is TLS here.
    recorder, port = smtp_servers(
        ssl_context=certificate.server_context(),
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=False,
    )
    target = SmtpTarget.from_url(f"smtps://127.0.0.1:{port}", username=USERNAME, password=PASSWORD)
    assert target.security == "tls"
    channel = channels(target, ssl_context=certificate.client_context())
    sent = channel.send(REVIEWER, request_notice())

    (received,) = recorder.messages
    assert (received["tls"], received["authenticated"], received["login"]) == (True, True, USERNAME.encode())
    assert received["message"]["Message-ID"] == sent.ref
    assert PASSWORD not in caplog.text
    assert PASSWORD not in repr(channel)

    with pytest.raises(DeliveryFailed) as untrusted:
        channels(target).send(REVIEWER, request_notice())
    assert untrusted.value.retryable is False
    assert PASSWORD not in str(untrusted.value)


def test_451_is_retryable_and_the_connection_survives(
    smtp: Any, channels: Callable[..., EmailChannel]
) -> None:
    channel = channels(SmtpTarget.from_url(smtp.url))
    smtp.refuse(True)
    with pytest.raises(DeliveryFailed) as failed:
        channel.send(REVIEWER, request_notice())
    assert failed.value.retryable is True
    assert "451" in str(failed.value)
    assert f"{smtp.host}:{smtp.port}" in str(failed.value)
    smtp.refuse(False)
    channel.send(REVIEWER, request_notice())
    assert len(smtp.wait_for(1)) == 1


@pytest.mark.parametrize(
    ("reply", "retryable"),
    [("550 5.1.1 No such user here", False), ("450 4.2.1 Mailbox busy, try later", True)],
)
def test_recipient_refused(
    smtp_servers: ServerFactory, channels: Callable[..., EmailChannel], reply: str, retryable: bool
) -> None:
    recorder, port = smtp_servers(Recorder(rcpt_reply=reply))
    with pytest.raises(DeliveryFailed) as failed:
        channels(SmtpTarget.from_url(f"smtp://127.0.0.1:{port}")).send(REVIEWER, request_notice())
    assert failed.value.retryable is retryable
    assert reply[:3] in str(failed.value)
    assert f"127.0.0.1:{port}" in str(failed.value)
    assert recorder.messages == []


def test_server_not_listening_is_retryable(channels: Callable[..., EmailChannel]) -> None:
    port = free_port()
    with pytest.raises(DeliveryFailed) as failed:
        channels(SmtpTarget.from_url(f"smtp://127.0.0.1:{port}")).send(REVIEWER, request_notice())
    assert failed.value.retryable is True
    assert f"127.0.0.1:{port}" in str(failed.value)


def test_silent_server_times_out(channels: Callable[..., EmailChannel]) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # accepts the TCP connection, never greets
        port = listener.getsockname()[1]
        target = SmtpTarget.from_url(f"smtp://127.0.0.1:{port}", timeout=0.5)
        with pytest.raises(DeliveryFailed) as failed:
            channels(target).send(REVIEWER, request_notice())
    assert failed.value.retryable is True
    assert "timed out" in str(failed.value)


def test_update_sends_nothing(smtp: Any, channels: Callable[..., EmailChannel]) -> None:
    channel = channels(SmtpTarget.from_url(smtp.url))
    assert channel.update(REVIEWER, "<x@hlml.example.com>", request_notice(kind="outcome")) is None
    assert smtp.received == []


def test_bad_sender() -> None:
    target = SmtpTarget.from_url("smtp://127.0.0.1:25")
    for sender in ("not an address", "a@example.com\r\nBcc: b@example.com", ""):
        with pytest.raises(ValueError, match="sender"):
            EmailChannel(target, sender)


# --- SmtpTarget.from_url -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "port", "security"),
    [
        ("smtp://mail.example.com", "mail.example.com", 25, "plain"),
        ("smtp://mail.example.com:2525", "mail.example.com", 2525, "plain"),
        ("smtp+starttls://mail.example.com", "mail.example.com", 587, "starttls"),
        ("SMTP+STARTTLS://Mail.Example.com:25/", "mail.example.com", 25, "starttls"),
        ("smtps://mail.example.com", "mail.example.com", 465, "tls"),
        ("smtps://[::1]:4650", "::1", 4650, "tls"),
    ],
)
def test_from_url(url: str, host: str, port: int, security: str) -> None:
    target = SmtpTarget.from_url(url)
    assert (target.host, target.port, target.security) == (host, port, security)
    assert target.username is None
    assert target.password is None
    assert target.timeout == 10.0


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://mail.example.com", "scheme"),
        ("smtp+ssl://mail.example.com", "scheme"),
        ("mail.example.com:25", "scheme"),
        ("smtp://", "no host"),
        ("smtp://:25", "no host"),
        ("smtp://mail.example.com/inbox", "path"),
        ("smtp://mail.example.com?tls=1", "path or query"),
        ("smtp://mail.example.com:99999", "port"),
        ("smtp://mail.example.com:smtp", "port"),
        ("", "empty"),
    ],
)
def test_from_url_refuses(url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        SmtpTarget.from_url(url)


@pytest.mark.parametrize(
    "url",
    [
        f"smtps://mailer:{PASSWORD}@mail.example.com:465",
        f"smtp+starttls://mailer:{PASSWORD}@mail.example.com",
        f"smtp://{PASSWORD}@mail.example.com",
    ],
)
def test_from_url_refuses_credentials(url: str) -> None:
    with pytest.raises(ValueError) as refused:
        SmtpTarget.from_url(url)
    message = str(refused.value)
    assert "HLML_APPROVALS_SMTP_USERNAME" in message
    assert "HLML_APPROVALS_SMTP_PASSWORD" in message
    assert PASSWORD not in message
    assert PASSWORD not in repr(refused.value)
    assert refused.value.__cause__ is None
    assert refused.value.__context__ is None


def test_credentials() -> None:
    target = SmtpTarget.from_url("smtps://mail.example.com", username=USERNAME, password=PASSWORD, timeout=3)
    assert (target.username, target.password, target.timeout) == (USERNAME, PASSWORD, 3.0)
    assert PASSWORD not in repr(target)
    assert PASSWORD not in str(target)
    with pytest.raises(ValueError, match="HLML_APPROVALS_SMTP_USERNAME") as refused:
        SmtpTarget.from_url("smtps://mail.example.com", password=PASSWORD)
    assert PASSWORD not in str(refused.value)
    # A login over plain SMTP would cross the network in clear text; a local relay may take one.
    with pytest.raises(ValueError, match="clear text") as refused:
        SmtpTarget.from_url("smtp://mail.example.com", username=USERNAME, password=PASSWORD)
    assert PASSWORD not in str(refused.value)
    assert (
        SmtpTarget.from_url("smtp://127.0.0.1:25", username=USERNAME, password=PASSWORD).username == USERNAME
    )


def test_the_decision_policys_proposal_is_on_the_card_and_escaped() -> None:
    call = promotion_call(status={"requested_at": "2026-11-27T10:00:00+00:00"})
    call["spec"]["state"] = {
        "hlml": {
            "approvers": [],
            "auto": {
                "outcome": "approve",
                "principal": "policy:margin-v1",
                "reason": f"accuracy +5 points {XSS}",
                "override_seconds": 600,
            },
        }
    }
    text, html = parts(
        render_email(request_notice(build_card(call, Links())), sender=SENDER, recipient=REVIEWER)
    )
    assert "Decision policy: policy:margin-v1 would approve this request" in text
    assert "It decides at 2026-11-27T10:10:00+00:00 unless a person answers first." in text
    assert "Decision policy</h2>" in html
    assert "<script" not in html
    assert_mail_safe(html)
