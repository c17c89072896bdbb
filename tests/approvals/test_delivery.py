"""Delivery by the approvals service, against a real service process and a real SMTP server.

A request is e-mailed to its approvers with signed one-click links; a link opens a confirmation
page (a GET never decides), its POST decides as the recipient through the request's policy, once;
a down mail server delays delivery but never a request or a decision; reminders and escalations
run once on their clock, across a restart; alerts fire once per episode.
"""

from __future__ import annotations

import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.approvals.conftest import Api, wait_for
from tests.fixtures.approvals import ApprovalsService, make_keys
from tests.fixtures.processes import free_port
from tests.fixtures.smtp import SmtpServer

AIRFLOW_URL = "http://airflow.example:8080"
LINK = re.compile(r"https?://[^\s\"'<>]+/hlml/act/[A-Za-z0-9_\-]+")


def _service(database_url: str, root: Path, smtp: SmtpServer, **env: str) -> ApprovalsService:
    root.mkdir(parents=True, exist_ok=True)
    service = ApprovalsService(database_url=database_url, root=root, port=free_port())
    make_keys(service)
    service.extra_env = {
        "HLML_APPROVALS_SMTP_URL": smtp.url,
        "HLML_APPROVALS_SMTP_FROM": "approvals@example.com",
        "HLML_APPROVALS_PUBLIC_URL": service.base_url,
        "HLML_APPROVALS_AIRFLOW_URL": AIRFLOW_URL,
        "HLML_APPROVALS_DELIVERY_INTERVAL": "0.2",
        **env,
    }
    return service.start()


@pytest.fixture(scope="module")
def mail_service(smtp_server: SmtpServer) -> Iterator[ApprovalsService]:
    root = Path(tempfile.mkdtemp(prefix="hlml-delivery-"))
    service = _service(
        f"sqlite:///{root / 'approvals.db'}",
        root,
        smtp_server,
        HLML_APPROVALS_ALERT_TO="ops@example.com",
        HLML_APPROVALS_ALERT_PENDING_SECONDS="3",
    )
    try:
        yield service
    finally:
        service.stop()


def _subject() -> str:
    return f"Promote churn {uuid.uuid4().hex[:8]}"


def _create(
    service: ApprovalsService,
    subject: str,
    *,
    approvers: list[str] | None = None,
    requester: str | None = None,
    reminders: dict[str, Any] | None = None,
    timeout: float | None = None,
    channel: dict[str, Any] | None = None,
    reject_options: list[dict[str, Any]] | None = None,
) -> str:
    call_id = f"call-{uuid.uuid4().hex[:12]}"
    hlml: dict[str, Any] = {
        "approvers": approvers if approvers is not None else ["alice"],
        "requester": requester,
        "allow_self_approval": False,
        "airflow": {"dag_id": "churn", "run_id": "manual__1", "task_id": "approve", "map_index": -1},
    }
    if reminders:
        hlml["reminders"] = reminders
    if timeout:
        hlml["timeout"] = timeout
    if requester:
        hlml["forbid"] = ["requester"]
        hlml["forbidden"] = [{"who": requester, "duty": "requester"}]
    resp = Api(service, service.agent_key).post(
        "/function_calls",
        json={
            "run_id": "churn-run",
            "call_id": call_id,
            "spec": {
                "fn": "model_promotion",
                "kwargs": {
                    "subject": subject,
                    "body": "**Recall** improved. <script>alert(1)</script>",
                    "context": {"model_name": "churn", "model_version": "3", "note": "<b>hi</b>"},
                    "approval_type": "model_promotion",
                    "urgency": "high",
                },
                "channel": channel,
                "state": {"hlml": hlml},
                "reject_options": reject_options,
            },
        },
    )
    assert resp.status_code == 201, resp.text
    return call_id


def _mails(smtp: SmtpServer, subject: str, to: str | None = None) -> list[EmailMessage]:
    out = []
    for message in smtp.messages():
        if subject in str(message["Subject"]) and (to is None or to in str(message["To"])):
            out.append(message)
    return out


def _wait_mails(smtp: SmtpServer, subject: str, to: str | None = None, count: int = 1) -> list[EmailMessage]:
    return wait_for(  # type: ignore[no-any-return]
        lambda: (m := _mails(smtp, subject, to)) and len(m) >= count and m,
        what=f"{count} message(s) '{subject}' to {to}",
    )


def _text(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def _html(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())


def _links(message: EmailMessage) -> dict[str, str]:
    """The approve and reject links of an e-mail (in the order the text part lists them)."""
    found = list(dict.fromkeys(LINK.findall(_text(message))))
    assert len(found) == 2, _text(message)
    return {"approve": found[0], "reject": found[1]}


def _status(service: ApprovalsService, call_id: str) -> dict[str, Any]:
    resp = Api(service, service.admin_key).get(f"/function_calls/{call_id}")
    assert resp.status_code == 200, resp.text
    return resp.json()["status"] or {}


def _audit(service: ApprovalsService, call_id: str) -> list[dict[str, Any]]:
    resp = Api(service, service.admin_key).get(f"/function_calls/{call_id}/audit")
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


class TestEmailDelivery:
    def test_request_is_mailed_to_its_approvers_with_links(
        self, mail_service: ApprovalsService, smtp: SmtpServer
    ) -> None:
        subject = _subject()
        call_id = _create(
            mail_service,
            subject,
            approvers=["alice", "carol@example.com"],
            channel={"email": {"address": "team@example.com"}},
        )
        for to in ("alice@example.com", "carol@example.com", "team@example.com"):
            message = _wait_mails(smtp, subject, to)[0]
            assert message["From"] == "approvals@example.com"
            html = _html(message)
            assert "<script>" not in html
            assert "&lt;b&gt;hi&lt;/b&gt;" in html
            assert f"{AIRFLOW_URL}/dags/churn/runs/manual__1/tasks/approve" in html
        # Only those the policy lets approve get one-click links: team@ is not an approver.
        assert len(_links(_mails(smtp, subject, "alice@example.com")[0])) == 2
        assert not LINK.findall(_text(_mails(smtp, subject, "team@example.com")[0]))
        delivered = wait_for(
            lambda: [e for e in _audit(mail_service, call_id) if e["event"] == "delivered"] or None,
            what="delivered audit events",
        )
        wait_for(lambda: len([e for e in _audit(mail_service, call_id) if e["event"] == "delivered"]) == 3)
        assert delivered[0]["actor"] == "hlml-delivery"
        assert delivered[0]["metadata"]["channel"] == "email"
        status = Api(mail_service, mail_service.admin_key).get(
            "/hlml/deliveries", params={"call_id": call_id}
        )
        assert status.status_code == 200
        rows = status.json()[call_id]
        assert {r["recipient"] for r in rows} == {
            "alice@example.com",
            "carol@example.com",
            "team@example.com",
        }
        assert {r["state"] for r in rows} == {"sent"}

    def test_link_page_never_decides_and_post_decides_once_as_the_recipient(
        self, mail_service: ApprovalsService, smtp: SmtpServer
    ) -> None:
        subject = _subject()
        call_id = _create(mail_service, subject, approvers=["alice"])
        links = _links(_wait_mails(smtp, subject, "alice@example.com")[0])
        with httpx.Client(timeout=30) as client:
            for _ in range(3):  # a mail scanner prefetching the link, then the reviewer
                page = client.get(links["approve"])
                assert page.status_code == 200
                assert "alice@example.com" in page.text
                assert "forwarded" in page.text
                assert page.headers["x-frame-options"] == "DENY"
                assert page.headers["cache-control"] == "no-store"
                assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
                assert "<script>alert(1)</script>" not in page.text
            assert _status(mail_service, call_id).get("approved") is None
            assert [e for e in _audit(mail_service, call_id) if e["event"] == "link_opened"]
            done = client.post(links["approve"], data={"comment": "ship it"})
            assert done.status_code == 200, done.text
            assert "recorded" in done.text
            status = _status(mail_service, call_id)
            assert status["approved"] is True
            assert status["user_info"]["name"] == "alice"
            assert status["user_info"]["email"] == "alice@example.com"
            assert status["user_info"]["principal"] == "hlml-email-link"
            assert status["comment"] == "ship it"
            again = client.post(links["approve"], data={})
            assert again.status_code == 410
            assert "used already" in again.text
            other = client.post(links["reject"], data={"comment": "no"})
            assert other.status_code == 409
        responded = [e for e in _audit(mail_service, call_id) if e["event"] == "responded"]
        assert len(responded) == 1
        assert responded[0]["actor"] == "hlml-email-link"
        assert responded[0]["on_behalf_of"] == "alice"

    def test_reject_link_with_a_reason(self, mail_service: ApprovalsService, smtp: SmtpServer) -> None:
        subject = _subject()
        call_id = _create(
            mail_service,
            subject,
            approvers=["alice"],
            reject_options=[{"name": "metrics", "title": "Metrics are not good enough"}],
        )
        links = _links(_wait_mails(smtp, subject, "alice@example.com")[0])
        page = httpx.get(links["reject"], timeout=30)
        assert "Metrics are not good enough" in page.text
        assert "Confirm rejection" in page.text
        done = httpx.post(links["reject"], data={"reject_option_name": "metrics", "comment": ""}, timeout=30)
        assert done.status_code == 200, done.text
        status = _status(mail_service, call_id)
        assert status["approved"] is False
        assert status["reject_option_name"] == "metrics"

    def test_unknown_forged_and_malformed_tokens(self, mail_service: ApprovalsService) -> None:
        base = mail_service.base_url + "/hlml/act/"
        assert httpx.get(base + "x" * 43, timeout=30).status_code == 404
        assert httpx.post(base + "x" * 43, data={}, timeout=30).status_code == 404
        assert httpx.get(base + "%C3%A9" * 20, timeout=30).status_code == 404
        assert httpx.get(base + "a" * 500, timeout=30).status_code == 404
        bad = httpx.post(
            base + "x" * 43,
            content=b"comment=\xff\xfe",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            timeout=30,
        )
        assert bad.status_code == 400

    def test_the_requester_gets_no_links(self, mail_service: ApprovalsService, smtp: SmtpServer) -> None:
        subject = _subject()
        _create(mail_service, subject, approvers=["alice", "bob"], requester="alice")
        assert LINK.findall(_text(_wait_mails(smtp, subject, "bob@example.com")[0]))
        assert not LINK.findall(_text(_wait_mails(smtp, subject, "alice@example.com")[0]))

    def test_a_link_expires_with_the_gate(self, mail_service: ApprovalsService, smtp: SmtpServer) -> None:
        subject = _subject()
        call_id = _create(mail_service, subject, approvers=["alice"], timeout=2)
        links = _links(_wait_mails(smtp, subject, "alice@example.com")[0])
        time.sleep(2.5)
        page = httpx.get(links["approve"], timeout=30)
        assert page.status_code == 410
        assert "expired" in page.text
        assert httpx.post(links["approve"], data={}, timeout=30).status_code == 410
        assert _status(mail_service, call_id).get("approved") is None

    def test_links_survive_a_restart(self, mail_service: ApprovalsService, smtp: SmtpServer) -> None:
        subject = _subject()
        call_id = _create(mail_service, subject, approvers=["alice"])
        links = _links(_wait_mails(smtp, subject, "alice@example.com")[0])
        mail_service.restart()
        assert httpx.post(links["approve"], data={}, timeout=30).status_code == 200
        assert _status(mail_service, call_id)["approved"] is True

    def test_a_down_mail_server_delays_delivery_never_the_request(
        self, mail_service: ApprovalsService, smtp: SmtpServer
    ) -> None:
        smtp.refuse(True)
        subject = _subject()
        started = time.monotonic()
        call_id = _create(mail_service, subject, approvers=["alice"])
        assert time.monotonic() - started < 5
        retry = wait_for(
            lambda: [e for e in _audit(mail_service, call_id) if e["event"] == "delivery_retry"] or None,
            what="a delivery_retry audit event",
        )
        assert "451" in (retry[0]["comment"] or "")
        # Deciding does not wait for the mail server either.
        answer = Api(mail_service, mail_service.reviewer_key).post(
            f"/agent/function_calls/{call_id}/respond", json={"approved": True}
        )
        assert answer.status_code == 200
        assert answer.json()["status"]["approved"] is True
        # Decided before it could be delivered: the notice is dropped, not sent late.
        smtp.refuse(False)
        wait_for(
            lambda: (
                Api(mail_service, mail_service.admin_key)
                .get("/hlml/deliveries", params={"call_id": call_id})
                .json()[call_id][0]["state"]
                == "skipped"
            ),
            timeout=40,
            what="the undelivered notice to be skipped",
        )
        assert not _mails(smtp, subject)

    def test_delivery_recovers_when_the_mail_server_returns(
        self, mail_service: ApprovalsService, smtp: SmtpServer
    ) -> None:
        smtp.refuse(True)
        subject = _subject()
        call_id = _create(mail_service, subject, approvers=["alice"])
        wait_for(lambda: [e for e in _audit(mail_service, call_id) if e["event"] == "delivery_retry"] or None)
        smtp.refuse(False)
        message = _wait_mails(smtp, subject, "alice@example.com")[0]
        assert len(_links(message)) == 2
        events = [e["event"] for e in _audit(mail_service, call_id)]
        assert events.index("delivery_retry") < events.index("delivered")


class TestLadder:
    def test_reminder_then_escalation_each_once_across_a_restart(
        self, mail_service: ApprovalsService, smtp: SmtpServer
    ) -> None:
        subject = _subject()
        call_id = _create(
            mail_service,
            subject,
            approvers=["alice"],
            reminders={"remind_after": 2, "escalate_after": 6, "escalate_to": ["bob"]},
        )
        _wait_mails(smtp, subject, "alice@example.com")
        reminder = _wait_mails(smtp, "Reminder: approval needed: " + subject, "alice@example.com")[0]
        assert len(_links(reminder)) == 2
        mail_service.restart()  # between the reminder and the escalation
        escalation = _wait_mails(smtp, "Escalated to you: " + subject, "bob@example.com")[0]
        assert len(_links(escalation)) == 2
        time.sleep(3)  # nothing is repeated after the restart
        assert len(_mails(smtp, "Reminder: approval needed: " + subject)) == 1
        assert len(_mails(smtp, "Escalated to you: " + subject)) == 1
        escalated = [e for e in _audit(mail_service, call_id) if e["event"] == "escalated"]
        assert len(escalated) == 1
        assert escalated[0]["actor"] == "hlml-ladder"
        # bob was added by the escalation: his link decides.
        assert httpx.post(_links(escalation)["approve"], data={}, timeout=30).status_code == 200
        assert _status(mail_service, call_id)["user_info"]["name"] == "bob"

    def test_no_reminder_after_a_decision(self, mail_service: ApprovalsService, smtp: SmtpServer) -> None:
        subject = _subject()
        call_id = _create(mail_service, subject, approvers=["alice"], reminders={"remind_after": 2})
        _wait_mails(smtp, subject, "alice@example.com")
        Api(mail_service, mail_service.reviewer_key).post(
            f"/agent/function_calls/{call_id}/respond", json={"approved": True}
        )
        time.sleep(3)
        assert not _mails(smtp, "Reminder: approval needed: " + subject)

    def test_a_malformed_ladder_is_refused(self, mail_service: ApprovalsService) -> None:
        resp = Api(mail_service, mail_service.agent_key).post(
            "/function_calls",
            json={
                "run_id": "r",
                "call_id": f"call-{uuid.uuid4().hex[:12]}",
                "spec": {
                    "fn": "x",
                    "kwargs": {},
                    "state": {"hlml": {"approvers": [], "reminders": {"remind_after": "soon"}}},
                },
            },
        )
        assert resp.status_code == 422
        assert "reminders.remind_after" in resp.text


class TestAlerts:
    def test_pending_too_long_alerts_once(self, mail_service: ApprovalsService, smtp: SmtpServer) -> None:
        subject = _subject()
        _create(mail_service, subject, approvers=["alice"])
        alert = _wait_mails(smtp, subject, "ops@example.com")[0]
        assert "pending" in str(alert["Subject"]).lower()
        time.sleep(2)
        assert len(_mails(smtp, subject, "ops@example.com")) == 1


def test_pending_count_alert_fires_once_per_episode(smtp_server: SmtpServer, smtp: SmtpServer) -> None:
    root = Path(tempfile.mkdtemp(prefix="hlml-delivery-count-"))
    service = _service(
        f"sqlite:///{root / 'approvals.db'}",
        root,
        smtp_server,
        HLML_APPROVALS_ALERT_TO="ops@example.com",
        HLML_APPROVALS_ALERT_PENDING_COUNT="2",
    )
    try:
        calls = [_create(service, _subject(), approvers=["alice"]) for _ in range(4)]

        def alerts() -> list[EmailMessage]:
            return [m for m in smtp.messages() if "approvals pending" in str(m["Subject"])]

        wait_for(alerts, what="the pending-count alert")
        time.sleep(6)  # the check runs every 5 s: still one episode
        assert len(alerts()) == 1
        for call_id in calls[:3]:
            Api(service, service.reviewer_key).post(
                f"/agent/function_calls/{call_id}/respond", json={"approved": True}
            )
        time.sleep(6)  # the episode closes
        for _ in range(2):
            _create(service, _subject(), approvers=["alice"])
        wait_for(lambda: len(alerts()) == 2, what="a second episode's alert")
    finally:
        service.stop()


@pytest.mark.postgres
def test_two_replicas_on_postgres_deliver_each_notice_once(
    smtp_server: SmtpServer, smtp: SmtpServer, empty_postgres_url: str
) -> None:
    """Two ``serve`` processes on one PostgreSQL database: every notice and every timed step once."""
    url = empty_postgres_url
    root = Path(tempfile.mkdtemp(prefix="hlml-delivery-pg-"))
    first = _service(url, root / "a", smtp_server)
    second = ApprovalsService(database_url=url, root=root / "b", port=free_port())
    second.root.mkdir(parents=True)
    second.agent_key = first.agent_key
    second.extra_env = dict(first.extra_env)
    second.start()
    try:
        subjects = [_subject() for _ in range(20)]
        for n, subject in enumerate(subjects):
            # Created on both replicas; each request has a reminder after 2 s.
            _create(first if n % 2 else second, subject, approvers=["alice"], reminders={"remind_after": 2})
        for subject in subjects:
            _wait_mails(smtp, "Reminder: approval needed: " + subject, "alice@example.com")
        time.sleep(3)
        for subject in subjects:
            assert len(_mails(smtp, "Approval needed: " + subject)) == 1, subject
            assert len(_mails(smtp, "Reminder: approval needed: " + subject)) == 1, subject
    finally:
        second.stop()
        first.stop()


def test_a_delivery_process_of_its_own(smtp_server: SmtpServer, smtp: SmtpServer) -> None:
    """``serve --no-deliver`` sends nothing; an ``hlml-approvals deliver`` process does, and stops on SIGTERM."""
    root = Path(tempfile.mkdtemp(prefix="hlml-delivery-separate-"))
    service = ApprovalsService(
        database_url=f"sqlite:///{root / 'approvals.db'}", root=root, port=free_port(), deliver=False
    )
    make_keys(service)
    service.extra_env = {
        "HLML_APPROVALS_SMTP_URL": smtp_server.url,
        "HLML_APPROVALS_PUBLIC_URL": service.base_url,
        "HLML_APPROVALS_DELIVERY_INTERVAL": "0.2",
    }
    service.start()
    try:
        subject = _subject()
        call_id = _create(service, subject, approvers=["alice"])
        time.sleep(2)
        assert not _mails(smtp, subject)  # the server processes do not deliver
        deliverer = service.delivery_process()
        try:
            message = _wait_mails(smtp, subject, "alice@example.com")[0]
            assert httpx.post(_links(message)["approve"], data={}, timeout=30).status_code == 200
            assert _status(service, call_id)["approved"] is True
        finally:
            deliverer.stop()
        assert deliverer.proc.returncode == 0, deliverer.log_tail()
    finally:
        service.stop()
