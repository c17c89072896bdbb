"""Slack delivery and Slack answers, against a real service process and a local Slack Web API stand-in.

The stand-in records ``chat.postMessage`` / ``chat.update``, answers ``users.info`` and posts signed
interaction payloads to the service the way Slack does (and, on demand, with a wrong signature, a
stale timestamp, or the same request twice).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.approvals.conftest import Api, wait_for
from tests.approvals.test_delivery import _audit, _create, _status, _subject
from tests.fixtures.approvals import ApprovalsService, make_keys
from tests.fixtures.processes import free_port
from tests.fixtures.slack_standin import SlackStandin

CHANNEL = "C0HLMLREVIEW"


@pytest.fixture(scope="module")
def slack_service(slack_standin: SlackStandin) -> Iterator[ApprovalsService]:
    root = Path(tempfile.mkdtemp(prefix="hlml-delivery-slack-"))
    service = ApprovalsService(database_url=f"sqlite:///{root / 'approvals.db'}", root=root, port=free_port())
    make_keys(service)
    service.extra_env = {
        "HLML_APPROVALS_SLACK_BOT_TOKEN": slack_standin.token,
        "HLML_APPROVALS_SLACK_SIGNING_SECRET": slack_standin.signing_secret,
        "HLML_APPROVALS_SLACK_API_URL": slack_standin.api_url,
        "HLML_APPROVALS_SLACK_CHANNEL": CHANNEL,
        "HLML_APPROVALS_SLACK_USERS": json.dumps({"U0MAPPED": "bob"}),
        "HLML_APPROVALS_PUBLIC_URL": service.base_url,
        "HLML_APPROVALS_DELIVERY_INTERVAL": "0.2",
    }
    service.start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def slack(slack_standin: SlackStandin) -> SlackStandin:
    slack_standin.clear()
    return slack_standin


def _interactions_url(service: ApprovalsService) -> str:
    return service.base_url + "/hlml/slack/interactions"


def _posted(slack: SlackStandin, subject: str) -> dict[str, Any]:
    """The ``chat.postMessage`` call of the request with ``subject``."""

    def find() -> dict[str, Any] | None:
        for call in slack.calls("chat.postMessage"):
            if subject in json.dumps(call.params):
                return call.params
        return None

    return wait_for(find, what=f"a Slack message about {subject}")  # type: ignore[no-any-return]


def _message_of(slack: SlackStandin, subject: str) -> tuple[str, str]:
    """(channel, ts) of the stored message about ``subject``."""

    def find() -> tuple[str, str] | None:
        for (channel, ts), message in slack.messages.items():
            if subject in json.dumps(message.blocks):
                return channel, ts
        return None

    return wait_for(find, what="the stored Slack message")  # type: ignore[no-any-return]


def _has_actions(blocks: list[dict[str, Any]]) -> bool:
    return any(b.get("type") == "actions" for b in blocks)


def _click(
    slack: SlackStandin,
    service: ApprovalsService,
    subject: str,
    call_id: str,
    user: str,
    action: str,
    **kw: Any,
) -> Any:
    channel, ts = _message_of(slack, subject)
    return slack.send_interaction(
        _interactions_url(service),
        user_id=user,
        action_id=action,
        value=kw.pop("value", call_id),
        channel_id=channel,
        message_ts=ts,
        **kw,
    )


class TestSlack:
    def test_request_is_posted_with_buttons_and_updated_once_decided(
        self, slack_service: ApprovalsService, slack: SlackStandin
    ) -> None:
        subject = _subject()
        call_id = _create(slack_service, subject, approvers=["alice"])
        params = _posted(slack, subject)
        assert params["channel"] == CHANNEL
        blocks = json.loads(params["blocks"]) if isinstance(params["blocks"], str) else params["blocks"]
        assert _has_actions(blocks)
        assert "<script>" not in json.dumps(blocks)
        resp = _click(slack, slack_service, subject, call_id, "U0ALICE", "hlml_approve")
        assert resp.status_code == 200
        status = _status(slack_service, call_id)
        assert status["approved"] is True
        assert status["user_info"]["name"] == "alice"
        assert status["user_info"]["principal"] == "hlml-slack"
        reply = slack.wait_for("response_url")[0]
        assert "recorded" in json.dumps(reply.params)
        channel, ts = _message_of(slack, subject)
        wait_for(lambda: not _has_actions(slack.messages[(channel, ts)].blocks), what="the message update")
        assert "alice" in json.dumps(slack.messages[(channel, ts)].blocks)

    def test_a_decision_from_another_channel_updates_the_message(
        self, slack_service: ApprovalsService, slack: SlackStandin
    ) -> None:
        subject = _subject()
        call_id = _create(slack_service, subject, approvers=["alice"])
        channel, ts = _message_of(slack, subject)
        Api(slack_service, slack_service.reviewer_key).post(
            f"/agent/function_calls/{call_id}/respond", json={"approved": False, "comment": "not yet"}
        )
        wait_for(lambda: not _has_actions(slack.messages[(channel, ts)].blocks), what="the message update")
        assert "not yet" in json.dumps(slack.messages[(channel, ts)].blocks)
        time.sleep(1)
        assert len([c for c in slack.calls("chat.update") if c.params.get("ts") == ts]) == 1

    def test_reject_with_a_reason_from_the_picker(
        self, slack_service: ApprovalsService, slack: SlackStandin
    ) -> None:
        subject = _subject()
        call_id = _create(
            slack_service,
            subject,
            approvers=["alice"],
            reject_options=[{"name": "metrics", "title": "Metrics are not good enough"}],
        )
        resp = _click(
            slack,
            slack_service,
            subject,
            call_id,
            "U0ALICE",
            "hlml_reject_reason",
            value=f"{call_id}\nmetrics",
        )
        assert resp.status_code == 200
        status = _status(slack_service, call_id)
        assert status["approved"] is False
        assert status["reject_option_name"] == "metrics"

    def test_wrong_signature_stale_timestamp_and_replay_decide_nothing(
        self, slack_service: ApprovalsService, slack: SlackStandin
    ) -> None:
        subject = _subject()
        call_id = _create(slack_service, subject, approvers=["alice", "bob"])
        wrong = _click(
            slack, slack_service, subject, call_id, "U0ALICE", "hlml_approve", signing_secret="wrong"
        )
        assert wrong.status_code == 401
        stale = _click(
            slack,
            slack_service,
            subject,
            call_id,
            "U0ALICE",
            "hlml_approve",
            timestamp=str(int(time.time()) - 400),
        )
        assert stale.status_code == 401
        future = _click(
            slack,
            slack_service,
            subject,
            call_id,
            "U0ALICE",
            "hlml_approve",
            timestamp=str(int(time.time()) + 400),
        )
        assert future.status_code == 401
        assert _status(slack_service, call_id).get("approved") is None
        first = _click(slack, slack_service, subject, call_id, "U0ALICE", "hlml_reject")
        assert first.status_code == 200
        body = slack.last_interaction
        assert body is not None
        # The same signed request again (a replay inside the 300 s window): accepted, not re-applied.
        channel, ts = _message_of(slack, subject)
        timestamp = str(int(time.time()))
        payload = slack.interaction_payload(
            user_id="U0BOB", action_id="hlml_approve", value=call_id, channel_id=channel, message_ts=ts
        )
        from urllib.parse import urlencode

        raw = urlencode({"payload": json.dumps(payload)}).encode()
        for _ in range(2):
            again = slack.send_interaction(
                _interactions_url(slack_service),
                user_id="U0BOB",
                action_id="hlml_approve",
                value=call_id,
                body=raw,
                timestamp=timestamp,
            )
            assert again.status_code == 200
        status = _status(slack_service, call_id)
        assert (
            status["approved"] is False
        )  # alice's rejection vetoed; bob's replayed approval changed nothing
        responded = [e for e in _audit(slack_service, call_id) if e["event"] == "responded"]
        assert len(responded) == 1
        assert responded[0]["on_behalf_of"] == "alice"

    def test_a_slack_user_without_an_approver_identity_decides_nothing(
        self, slack_service: ApprovalsService, slack: SlackStandin
    ) -> None:
        subject = _subject()
        call_id = _create(slack_service, subject, approvers=["alice"])
        assert _click(slack, slack_service, subject, call_id, "U0NOMAIL", "hlml_approve").status_code == 200
        reply = slack.wait_for("response_url")[0]
        assert "not linked" in json.dumps(reply.params)
        # bob (mapped from U0MAPPED) is not an approver of this request: the policy refuses him.
        assert _click(slack, slack_service, subject, call_id, "U0MAPPED", "hlml_approve").status_code == 200
        replies = slack.wait_for("response_url", 2)
        assert "Not recorded" in json.dumps(replies[1].params)
        assert _status(slack_service, call_id).get("approved") is None
        refused = [e for e in _audit(slack_service, call_id) if e["event"] == "refused"]
        assert refused
        assert refused[0]["on_behalf_of"] == "bob"

    def test_a_down_slack_api_delays_delivery_and_it_recovers(
        self, slack_service: ApprovalsService, slack: SlackStandin
    ) -> None:
        slack.fail_next("chat.postMessage", error="internal_error", status=500, times=2)
        subject = _subject()
        started = time.monotonic()
        call_id = _create(slack_service, subject, approvers=["alice"])
        assert time.monotonic() - started < 5
        _posted(slack, subject)
        wait_for(lambda: "delivered" in [e["event"] for e in _audit(slack_service, call_id)])
        events = [e["event"] for e in _audit(slack_service, call_id)]
        assert events.count("delivery_retry") == 2
        assert events.index("delivery_retry") < events.index("delivered")

    def test_interactions_need_slack_configured(self, mail_only: ApprovalsService) -> None:
        import httpx

        resp = httpx.post(_interactions_url(mail_only), content=b"payload=%7B%7D", timeout=30)
        assert resp.status_code == 404


@pytest.fixture(scope="module")
def mail_only(smtp_server: Any) -> Iterator[ApprovalsService]:
    root = Path(tempfile.mkdtemp(prefix="hlml-delivery-noslack-"))
    service = ApprovalsService(database_url=f"sqlite:///{root / 'approvals.db'}", root=root, port=free_port())
    make_keys(service)
    service.extra_env = {"HLML_APPROVALS_SMTP_URL": smtp_server.url}
    service.start()
    try:
        yield service
    finally:
        service.stop()
