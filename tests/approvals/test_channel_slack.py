"""The Slack channel against a local Slack Web API stand-in: Block Kit, sending, updating, errors,
user look-ups, replies, and the signed interaction requests a click in Slack produces."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from airflow_provider_hlml.approvals.channels.base import DeliveryFailed, Notice, NoticeKind, Recipient
from airflow_provider_hlml.approvals.channels.slack import (
    ACTION_APPROVE,
    ACTION_REJECT,
    ACTION_REJECT_REASON,
    SlackAction,
    SlackChannel,
    build_blocks,
    fallback_text,
    mrkdwn_escape,
    parse_interaction,
    verify_request,
)
from airflow_provider_hlml.gate.state import GateLocation
from airflow_provider_hlml.review.card import Card, build_card
from tests.fixtures.processes import free_port
from tests.fixtures.slack_standin import SlackStandin, render_mrkdwn

CHANNEL = "C0HLMLREVIEW"
DASHBOARD = "http://airflow.local:8080/hlml/approvals/call-churn-7"
EVIL_BODY = (
    "## Why\n**Better** AUC than the champion. <!channel> please look: <https://evil.example/x|click here>"
    " & <@U0BOB> <!subteam^S123|@ml> > done"
)


class Links:
    """A LinkMaker like the dashboard's (plus an unsafe one, which must never become a link)."""

    def mlflow_run(self, run_id: str) -> str | None:
        return f"http://mlflow.local:5000/#/experiments/1/runs/{run_id}"

    def mlflow_model_version(self, name: str, version: str) -> str | None:
        return f"http://mlflow.local:5000/#/models/{name}/versions/{version}"

    def mlflow_compare_runs(self, run_ids: Any) -> str | None:
        return f"http://mlflow.local:5000/#/compare-runs?runs=[{','.join(run_ids)}]&experiments=[1]"

    def airflow_task(self, location: GateLocation) -> str | None:
        return "javascript:alert(document.cookie)"

    def airflow_dag_run(self, location: GateLocation) -> str | None:
        return "http://airflow.local:8080/dags/train/runs/r1|<!channel>"


def make_call(
    call_id: str = "call-churn-7", status: dict[str, Any] | None = None, **kwargs: Any
) -> dict[str, Any]:
    spec_kwargs = {
        "subject": "Promote churn-classifier v7 <!channel>",
        "body": EVIL_BODY,
        "approval_type": "model_promotion",
        "urgency": "high",
        "context": {
            "model_name": "churn-classifier",
            "model_version": "7",
            "mlflow_run_id": "a1b2c3d4",
            "champion_version": "6",
            "passed": True,
            "metrics": {
                "auc": {
                    "candidate": 0.912,
                    "champion": 0.897,
                    "passed": True,
                    "threshold": {"threshold": 0.85, "greater_is_better": True},
                },
                "log_loss <@U0BOB>": {
                    "candidate": 0.31,
                    "champion": 0.29,
                    "passed": False,
                    "reason": "worse than the champion <!here>",
                    "threshold": {"greater_is_better": False, "min_absolute_change": 0.01},
                },
            },
        },
    }
    spec_kwargs.update(kwargs)
    return {
        "call_id": call_id,
        "spec": {
            "fn": "promote_model",
            "kwargs": spec_kwargs,
            "reject_options": [
                {"name": "metrics_regressed", "title": "Metrics regressed"},
                {"name": "needs_review", "title": "Needs a <!channel> review & more"},
            ],
            "state": {
                "hlml": {
                    "airflow": {"dag_id": "train", "run_id": "r1", "task_id": "approve", "map_index": -1}
                },
            },
        },
        "status": status or {},
    }


def make_card(**kwargs: Any) -> Card:
    return build_card(make_call(**kwargs), Links(), champion_run_id="c9c9")


def request_notice(card: Card | None = None, **kwargs: Any) -> Notice:
    card = card or make_card()
    return Notice(
        kind=kwargs.pop("kind", "request"),
        subject=kwargs.pop("subject", card.subject),
        card=card,
        dashboard_url=kwargs.pop("dashboard_url", DASHBOARD),
        **kwargs,
    )


# ---------------------------------------------------------------------------------------------- helpers
def texts(value: Any) -> Iterator[str]:
    """Every text in a Block Kit structure (text objects' ``text`` and option values)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "text" and isinstance(item, str):
                yield item
            else:
                yield from texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from texts(item)


def utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def assert_within_limits(blocks: list[dict[str, Any]]) -> None:
    """Block Kit's documented limits."""
    assert 1 <= len(blocks) <= 50
    for block in blocks:
        kind = block["type"]
        if kind == "header":
            assert block["text"]["type"] == "plain_text"
            assert 1 <= utf16(block["text"]["text"]) <= 150
        elif kind == "section":
            assert "text" in block or "fields" in block
            if "text" in block:
                assert 1 <= utf16(block["text"]["text"]) <= 3000
            fields = block.get("fields", [])
            assert len(fields) <= 10
            assert all(1 <= utf16(f["text"]) <= 2000 for f in fields)
        elif kind == "context":
            assert 1 <= len(block["elements"]) <= 10
            assert all(utf16(e["text"]) <= 3000 for e in block["elements"])
        elif kind == "actions":
            assert len(block["elements"]) <= 25
            assert len(block["block_id"]) <= 255
            for element in block["elements"]:
                assert len(element["action_id"]) <= 255
                if element["type"] == "button":
                    assert utf16(element["text"]["text"]) <= 75
                    assert len(element["value"]) <= 2000
                elif element["type"] == "static_select":
                    assert 1 <= len(element["options"]) <= 100
                    assert utf16(element["placeholder"]["text"]) <= 150
                    for option in element["options"]:
                        assert 1 <= utf16(option["text"]["text"]) <= 75
                        assert 1 <= len(option["value"]) <= 150
        else:
            assert kind == "divider", kind
    for text in texts(blocks):
        # Never an entity cut in half: every "&" starts one of the three.
        assert not re.search(r"&(?!amp;|lt;|gt;)", text), text


ALLOWED_LINK = re.compile(r"^<(https?://[^<>|\s]+)\|[^<>|]+>$")


def assert_no_injection(blocks: list[dict[str, Any]]) -> None:
    """Every ``<...>`` in any text is a link of ours to an http(s) URL; no mention survives."""
    for text in texts(blocks):
        for found in re.findall(r"<[^>]*>", text):
            assert ALLOWED_LINK.match(found), f"{found!r} in {text!r}"
        assert "<!" not in text
        assert "<@" not in text
        assert "evil.example" not in text or "&lt;https://evil.example" in text


def actions_of(blocks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = [b for b in blocks if b["type"] == "actions"]
    assert len(found) <= 1
    return {e["action_id"]: e for e in found[0]["elements"]} if found else {}


# ---------------------------------------------------------------------------------------------- blocks
def test_mrkdwn_escape() -> None:
    assert (
        mrkdwn_escape("<!channel> & <@U1> <https://x|y>")
        == "&lt;!channel&gt; &amp; &lt;@U1&gt; &lt;https://x|y&gt;"
    )
    assert mrkdwn_escape("&amp;") == "&amp;amp;"
    assert mrkdwn_escape("plain *bold* _it_") == "plain *bold* _it_"


def test_request_blocks_are_escaped_within_limits_and_decidable() -> None:
    card = make_card()
    blocks = build_blocks(request_notice(card))
    assert_within_limits(blocks)
    assert_no_injection(blocks)

    assert blocks[0] == {
        "type": "header",
        "text": {"type": "plain_text", "text": "Promote churn-classifier v7 &lt;!channel&gt;", "emoji": True},
    }
    everything = "\n".join(texts(blocks))
    assert (
        "&lt;!channel&gt; please look: &lt;https://evil.example/x|click here&gt; &amp; &lt;@U0BOB&gt;"
        in everything
    )
    assert "*Why*" in everything
    assert "*Better* AUC" in everything
    fields = next(b["fields"] for b in blocks if "fields" in b)
    field_text = "\n".join(f["text"] for f in fields)
    assert "*Approval type*\nmodel_promotion" in field_text
    assert "*Urgency*\nhigh" in field_text
    assert "churn-classifier v7\nrun a1b2c3d4" in field_text
    # Metrics: candidate / champion / difference, escaped names and reasons.
    assert "*auc* (higher is better): candidate *0.912* · champion 0.897 · difference +0.015" in everything
    assert "log_loss &lt;@U0BOB&gt;" in everything
    assert "worse than the champion &lt;!here&gt;" in everything
    assert "*Rules*:" in everything
    # Links: the dashboard and the card's safe links; the javascript: one and the one with "|" are not links.
    context = next(b for b in blocks if b["type"] == "context")
    links = [e["text"] for e in context["elements"]]
    assert links[0] == f"<{DASHBOARD}|Open in the dashboard>"
    assert "<http://mlflow.local:5000/#/experiments/1/runs/a1b2c3d4|MLflow run>" in links
    assert (
        "<http://mlflow.local:5000/#/compare-runs?runs=[a1b2c3d4,c9c9]&amp;experiments=[1]|compare with the champion>"
        in links
    )
    assert "javascript" not in everything
    assert not any("train / approve" in text for text in links)  # its URL was javascript:
    # A URL with "|" and "<...>" stays one link: the characters are percent-encoded.
    assert "<http://airflow.local:8080/dags/train/runs/r1%7C%3C!channel%3E|DAG run>" in links

    actions = actions_of(blocks)
    assert set(actions) == {ACTION_APPROVE, ACTION_REJECT, ACTION_REJECT_REASON}
    assert next(b for b in blocks if b["type"] == "actions")["block_id"] == "hlml_decision"
    assert actions[ACTION_APPROVE]["style"] == "primary"
    assert actions[ACTION_APPROVE]["value"] == "call-churn-7"
    assert actions[ACTION_REJECT]["style"] == "danger"
    assert actions[ACTION_REJECT]["value"] == "call-churn-7"
    assert set(actions[ACTION_REJECT]["confirm"]) >= {"title", "text", "confirm", "deny"}
    select = actions[ACTION_REJECT_REASON]
    assert select["type"] == "static_select"
    assert select["placeholder"]["text"] == "Reject with a reason…"
    assert [(o["text"]["text"], o["value"]) for o in select["options"]] == [
        ("Metrics regressed", "call-churn-7\nmetrics_regressed"),
        ("Needs a &lt;!channel&gt; review &amp; more", "call-churn-7\nneeds_review"),
    ]
    assert blocks[-1]["type"] == "actions"


def test_no_champion_yet() -> None:
    call = make_call()
    call["spec"]["kwargs"]["context"]["champion_version"] = None
    call["spec"]["kwargs"]["context"]["metrics"] = {"auc": {"candidate": 0.9, "passed": True}}
    blocks = build_blocks(request_notice(build_card(call, Links())))
    everything = "\n".join(texts(blocks))
    assert "no champion yet" in everything
    assert "champion 0." not in everything
    assert_within_limits(blocks)


def test_huge_request_is_cut_to_block_kit_limits() -> None:
    metrics = {f"metric_{i}_<!channel>" * 3: {"candidate": i / 7, "champion": i / 9} for i in range(300)}
    call = make_call(
        subject="<&>" * 400,
        body="& <!channel> " * 20_000,
        approval_type="x" * 5000,
        urgency="<!here>" * 900,
        context={
            "model_name": "m" * 5000,
            "model_version": "7" * 500,
            "mlflow_run_id": "r" * 5000,
            "metrics": metrics,
        },
    )
    call["spec"]["reject_options"] = [{"name": f"opt{i}", "title": "<&>" * 100} for i in range(250)]
    card = build_card(call, Links())
    kinds: tuple[NoticeKind, ...] = ("request", "reminder", "outcome")
    for kind in kinds:
        blocks = build_blocks(
            Notice(
                kind=kind, subject=card.subject, card=card, text="<!channel> " * 2000, dashboard_url=DASHBOARD
            )
        )
        assert_within_limits(blocks)
        assert_no_injection(blocks)
        assert blocks[0]["text"]["text"].endswith("…")
        if kind == "request":
            assert len(actions_of(blocks)[ACTION_REJECT_REASON]["options"]) == 100
    assert utf16(fallback_text(Notice(kind="alert", subject="💥<" * 5000))) <= 3000


def test_reject_options_that_do_not_fit_a_value_are_left_out() -> None:
    long_id = "c" * 140
    call = make_call(call_id=long_id)
    call["spec"]["reject_options"] = [
        {"name": "short", "title": "Short"},
        {"name": "n" * 20, "title": "Long"},
    ]
    actions = actions_of(build_blocks(request_notice(build_card(call, Links()))))
    assert actions[ACTION_APPROVE]["value"] == long_id
    assert [o["value"] for o in actions[ACTION_REJECT_REASON]["options"]] == [f"{long_id}\nshort"]
    call["spec"]["reject_options"] = [{"name": "n" * 20, "title": "Long"}]
    assert ACTION_REJECT_REASON not in actions_of(build_blocks(request_notice(build_card(call, Links()))))


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (
            {"approved": True, "user_info": {"name": "alice"}, "comment": "ship it <!channel>"},
            "Approved* by alice",
        ),
        (
            {
                "approved": False,
                "user_info": {"name": "bob <@U1>"},
                "reject_option_name": "needs_review",
                "comment": "AUC too low",
            },
            "Rejected* by bob &lt;@U1&gt;: Needs a &lt;!channel&gt; review &amp; more — AUC too low",
        ),
        ({"cancelled_at": "2025-01-01T00:00:00Z", "cancel_reason": "timeout"}, "Expired"),
        ({"cancelled_at": "2025-01-01T00:00:00Z", "cancel_reason": "cancelled"}, "Cancelled"),
    ],
)
def test_outcome_blocks_have_no_actions(status: dict[str, Any], expected: str) -> None:
    card = make_card(status=status)
    blocks = build_blocks(request_notice(card, kind="outcome"))
    assert_within_limits(blocks)
    assert_no_injection(blocks)
    assert actions_of(blocks) == {}
    assert blocks[0]["type"] == "header"
    assert expected in blocks[-1]["text"]["text"]
    # The same summary as the request.
    request_blocks = build_blocks(request_notice(make_card()))
    assert blocks[1] == request_blocks[1]


def test_reminder_and_alert_blocks() -> None:
    reminder = build_blocks(request_notice(kind="reminder", text="Still waiting after 2 h <!channel>"))
    assert reminder[1] == {
        "type": "section",
        "text": {"type": "mrkdwn", "text": "Still waiting after 2 h &lt;!channel&gt;"},
    }
    assert ACTION_APPROVE in actions_of(reminder)
    alert = build_blocks(Notice(kind="alert", subject="Delivery failing <x>", text="SMTP down & <!here>"))
    assert alert == [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": "Delivery failing &lt;x&gt;", "emoji": True},
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": "SMTP down &amp; &lt;!here&gt;"}},
    ]


def test_unsafe_dashboard_url_is_not_a_link() -> None:
    for url in ("javascript:alert(1)", "/relative/path", "//evil.example", "http://user@evil.example/"):
        blocks = build_blocks(request_notice(dashboard_url=url))
        assert "Open in the dashboard" not in "\n".join(texts(blocks))
    blocks = build_blocks(request_notice(dashboard_url="http://a.example/x?q=1>2|3"))
    assert "<http://a.example/x?q=1%3E2%7C3|Open in the dashboard>" in "\n".join(texts(blocks))


# ---------------------------------------------------------------------------------------------- sending
@pytest.fixture
def slack(slack_standin: SlackStandin) -> SlackStandin:
    slack_standin.clear()
    return slack_standin


@pytest.fixture
def channel(slack: SlackStandin) -> Iterator[SlackChannel]:
    chan = SlackChannel(slack.token, base_url=slack.api_url, timeout=5)
    yield chan
    chan.close()


def test_send_posts_blocks_and_returns_channel_ts(slack: SlackStandin, channel: SlackChannel) -> None:
    notice = request_notice()
    sent = channel.send(Recipient("slack", CHANNEL, "alice"), notice)
    assert sent.ref is not None
    assert re.fullmatch(r"C0HLMLREVIEW:\d+\.\d{6}", sent.ref)
    (call,) = slack.calls("chat.postMessage")
    assert call.params["channel"] == CHANNEL
    assert call.params["text"] == "Promote churn-classifier v7 &lt;!channel&gt;"
    assert call.params["blocks"] == build_blocks(notice)
    assert slack.message(sent.ref).blocks == build_blocks(notice)


def test_send_by_name_or_to_a_user_uses_the_channel_slack_answers(
    slack: SlackStandin, channel: SlackChannel
) -> None:
    by_name = channel.send(Recipient("slack", "#ml-reviews"), request_notice())
    assert by_name.ref is not None
    assert by_name.ref.startswith("C0HLMLREVIEW:")
    dm = channel.send(Recipient("slack", "U0ALICE"), request_notice())
    assert dm.ref is not None
    assert dm.ref.startswith("D0ALICE:")
    assert len(slack.wait_for("chat.postMessage", 2)) == 2


def test_update_replaces_the_blocks(slack: SlackStandin, channel: SlackChannel) -> None:
    recipient = Recipient("slack", CHANNEL)
    sent = channel.send(recipient, request_notice())
    assert sent.ref is not None
    outcome = request_notice(
        make_card(status={"approved": True, "user_info": {"name": "alice"}}), kind="outcome"
    )
    updated = channel.update(recipient, sent.ref, outcome)
    assert updated is not None
    assert updated.ref == sent.ref
    (call,) = slack.calls("chat.update")
    channel_id, ts = sent.ref.split(":")
    assert (call.params["channel"], call.params["ts"]) == (channel_id, ts)
    stored = slack.message(sent.ref)
    assert stored.blocks == build_blocks(outcome)
    assert not any(b["type"] == "actions" for b in stored.blocks)
    assert any(b["type"] == "actions" for b in stored.history[0])
    assert len(slack.messages) == 1


def test_update_of_a_bad_ref_is_not_retryable(channel: SlackChannel) -> None:
    with pytest.raises(DeliveryFailed) as failed:
        channel.update(Recipient("slack", CHANNEL), "no-ts-here", request_notice())
    assert failed.value.retryable is False
    with pytest.raises(DeliveryFailed) as failed:
        channel.update(Recipient("slack", CHANNEL), f"{CHANNEL}:1700000000.999999", request_notice())
    assert failed.value.retryable is False
    assert "message_not_found" in str(failed.value)


@pytest.mark.parametrize(
    ("error", "status", "retryable", "text"),
    [
        ("ratelimited", 429, True, "Retry-After 7 s"),
        ("internal_error", 500, True, "HTTP 500"),
        ("service_unavailable", 503, True, "service_unavailable"),
        ("channel_not_found", 200, False, "channel_not_found"),
        ("not_in_channel", 200, False, "not_in_channel"),
        ("invalid_blocks", 200, False, "invalid_blocks"),
        ("msg_too_long", 200, False, "msg_too_long"),
        ("account_inactive", 200, False, "account_inactive"),
        ("token_revoked", 200, False, "token_revoked"),
    ],
)
def test_error_mapping(
    slack: SlackStandin, channel: SlackChannel, error: str, status: int, retryable: bool, text: str
) -> None:
    slack.fail_next("chat.postMessage", error=error, status=status, retry_after=7)
    with pytest.raises(DeliveryFailed) as failed:
        channel.send(Recipient("slack", CHANNEL), request_notice())
    assert failed.value.retryable is retryable
    assert text in str(failed.value)
    assert error in str(failed.value)
    # One attempt only: the delivery worker owns the retries.
    assert len(slack.calls("chat.postMessage")) == 1
    # The fault was used up: the next send goes through.
    assert channel.send(Recipient("slack", CHANNEL), request_notice()).ref


def test_unknown_channel_and_wrong_token_are_not_retryable(
    slack: SlackStandin, channel: SlackChannel
) -> None:
    with pytest.raises(DeliveryFailed) as failed:
        channel.send(Recipient("slack", "#no-such-channel"), request_notice())
    assert failed.value.retryable is False
    assert "channel_not_found" in str(failed.value)

    wrong = SlackChannel("xoxb-wrong-token-value", base_url=slack.api_url)
    with pytest.raises(DeliveryFailed) as failed:
        wrong.send(Recipient("slack", CHANNEL), request_notice())
    assert failed.value.retryable is False
    assert "invalid_auth" in str(failed.value)
    assert "xoxb-wrong-token-value" not in str(failed.value)


def test_server_down_and_timeouts_are_retryable(slack: SlackStandin) -> None:
    down = SlackChannel(slack.token, base_url=f"http://127.0.0.1:{free_port()}/api/", timeout=2)
    started = time.monotonic()
    with pytest.raises(DeliveryFailed) as failed:
        down.send(Recipient("slack", CHANNEL), request_notice())
    assert failed.value.retryable is True
    assert "cannot reach" in str(failed.value)
    assert time.monotonic() - started < 5  # no hidden retries with sleeps

    slow = SlackChannel(slack.token, base_url=slack.api_url, timeout=0.5)
    slack.fail_next("chat.postMessage", error="ok", status=200, delay=2.0)
    with pytest.raises(DeliveryFailed) as failed:
        slow.send(Recipient("slack", CHANNEL), request_notice())
    assert failed.value.retryable is True


def test_token_is_never_in_messages_or_logs(slack: SlackStandin, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = slack.token
    chan = SlackChannel(token, base_url=slack.api_url, timeout=0.5)
    down = SlackChannel(token, base_url=f"http://127.0.0.1:{free_port()}/api/", timeout=0.5)
    failures: list[DeliveryFailed] = []
    for error, status in (("ratelimited", 429), ("internal_error", 500), ("invalid_auth", 200)):
        slack.fail_next("chat.postMessage", error=error, status=status)
        with pytest.raises(DeliveryFailed) as failed:
            chan.send(Recipient("slack", CHANNEL), request_notice())
        failures.append(failed.value)
    with pytest.raises(DeliveryFailed) as failed:
        down.send(Recipient("slack", CHANNEL), request_notice())
    failures.append(failed.value)
    assert down.user_email("U0ALICE") is None
    down.post_ephemeral_reply(f"{slack.root_url}/response_url/1", "hello")
    assert chan.send(Recipient("slack", CHANNEL), request_notice()).ref
    for failure in failures:
        assert token not in str(failure)
        assert token not in repr(failure)
    assert token not in repr(chan)
    assert caplog.records, "slack_sdk logs at DEBUG: the check must see them"
    assert token not in caplog.text
    assert all(token not in str(r.args) for r in caplog.records)


# ---------------------------------------------------------------------------------------------- users.info and replies
def test_user_email(slack: SlackStandin, channel: SlackChannel) -> None:
    assert channel.user_email("U0ALICE") == "alice@example.com"
    assert channel.user_email("U0ALICE") == "alice@example.com"
    assert len(slack.calls("users.info")) == 1  # cached
    assert slack.calls("users.info")[0].params["user"] == "U0ALICE"
    assert channel.user_email("U0NOMAIL") is None
    assert channel.user_email("U0NOBODY") is None
    before = len(slack.calls("users.info"))
    for bad in ("alice", "u0alice", "U0ALICE&user=U0BOB", "", "U" + "A" * 40, "C0HLMLREVIEW"):
        assert channel.user_email(bad) is None
    assert len(slack.calls("users.info")) == before
    slack.fail_next("users.info", error="ratelimited")
    assert channel.user_email("U0BOB") is None
    assert channel.user_email("U0BOB") == "bob@example.com"  # an error is not cached


def test_post_ephemeral_reply(slack: SlackStandin, channel: SlackChannel) -> None:
    channel.post_ephemeral_reply(f"{slack.root_url}/response_url/41", "Approved <!channel> & done")
    (call,) = slack.wait_for("response_url", 1)
    assert call.params == {
        "id": 41,
        "response_type": "ephemeral",
        "replace_original": False,
        "text": "Approved &lt;!channel&gt; &amp; done",
    }
    for url in (
        f"http://127.0.0.1:{free_port()}/response_url/1",
        "https://evil.example/response_url/1",
        "https://hooks.slack.com.evil.example/x",
        "javascript:alert(1)",
        f"http://user@{slack.root_url[len('http://') :]}/response_url/1",
    ):
        channel.post_ephemeral_reply(url, "nope")
    time.sleep(0.2)
    assert len(slack.calls("response_url")) == 1
    assert channel.response_url_allowed("https://hooks.slack.com/actions/T1/2/abc")
    assert not channel.response_url_allowed("http://hooks.slack.com/actions/T1/2/abc")


# ---------------------------------------------------------------------------------------------- verify_request
SECRET = "8f14e45fceea167a5a36dedd4bea2543"


def sign(body: bytes, timestamp: str, secret: str = SECRET) -> str:
    import hashlib
    import hmac

    return "v0=" + hmac.new(secret.encode(), f"v0:{timestamp}:".encode() + body, hashlib.sha256).hexdigest()


def test_verify_request() -> None:
    body = b"payload=%7B%22type%22%3A%22block_actions%22%7D"
    now = 1_700_000_000.0
    ts = str(int(now))
    assert verify_request(SECRET, body, ts, sign(body, ts), now=now) is None
    # Within the window on either side.
    for offset in (-299, 299):
        stamp = str(int(now) + offset)
        assert verify_request(SECRET, body, stamp, sign(body, stamp), now=now) is None
    refused = {
        "wrong signature": verify_request(SECRET, body, ts, sign(body, ts, "other-secret"), now=now),
        "tampered body": verify_request(SECRET, body + b"x", ts, sign(body, ts), now=now),
        "stale": verify_request(SECRET, body, str(int(now) - 301), sign(body, str(int(now) - 301)), now=now),
        "future": verify_request(SECRET, body, str(int(now) + 301), sign(body, str(int(now) + 301)), now=now),
        "no timestamp": verify_request(SECRET, body, None, sign(body, ts), now=now),
        "no signature": verify_request(SECRET, body, ts, None, now=now),
        "empty": verify_request(SECRET, body, "", "", now=now),
        "non-numeric": verify_request(SECRET, body, "abc", sign(body, "abc"), now=now),
        "float": verify_request(SECRET, body, "1700000000.5", sign(body, "1700000000.5"), now=now),
        "underscores": verify_request(SECRET, body, "1_700_000_000", sign(body, "1_700_000_000"), now=now),
        "spaces": verify_request(SECRET, body, f" {ts}", sign(body, f" {ts}"), now=now),
        "huge": verify_request(SECRET, body, "9" * 400, sign(body, "9" * 400), now=now),
        "v1": verify_request(SECRET, body, ts, "v1=" + sign(body, ts)[3:], now=now),
        "non-ascii signature": verify_request(SECRET, body, ts, "v0=" + "é" * 64, now=now),
        "upper-case hex": verify_request(SECRET, body, ts, sign(body, ts).upper(), now=now),
        "no secret": verify_request("", body, ts, sign(body, ts, " "), now=now),
        "non-utf8 body": verify_request(SECRET, b"\xff\xfe", ts, sign(b"\xff\xfe", ts), now=now),
    }
    for case, reason in refused.items():
        assert isinstance(reason, str), case
        assert reason, case
    assert "too old or in the future" in str(refused["stale"])
    assert "too old or in the future" in str(refused["future"])
    # The real clock is used without ``now``.
    live = str(int(time.time()))
    assert verify_request(SECRET, body, live, sign(body, live)) is None
    assert verify_request(SECRET, body, "1700000000", sign(body, "1700000000")) is not None


# ---------------------------------------------------------------------------------------------- parse_interaction
def form(payload: Any) -> bytes:
    return urlencode({"payload": payload if isinstance(payload, str) else json.dumps(payload)}).encode()


def test_parse_interaction_approve_reject_and_reason(slack: SlackStandin) -> None:
    approve = slack.interaction_payload(
        user_id="U0ALICE",
        action_id=ACTION_APPROVE,
        value="call-churn-7",
        channel_id=CHANNEL,
        message_ts="1700000001.000101",
    )
    action = parse_interaction(form(approve))
    assert action == SlackAction(
        call_id="call-churn-7",
        approve=True,
        reject_option=None,
        user_id="U0ALICE",
        user_name="alice",
        response_url=approve["response_url"],
        channel_id=CHANNEL,
        message_ts="1700000001.000101",
        team_id="T0HLMLTEST",
    )
    reject = slack.interaction_payload(user_id="U0BOB", action_id=ACTION_REJECT, value="call-churn-7")
    parsed = parse_interaction(form(reject))
    assert parsed is not None
    assert (parsed.call_id, parsed.approve, parsed.reject_option, parsed.user_name) == (
        "call-churn-7",
        False,
        None,
        "bob",
    )
    reason = slack.interaction_payload(
        user_id="U0BOB", action_id=ACTION_REJECT_REASON, value="call-churn-7\nmetrics_regressed"
    )
    parsed = parse_interaction(form(reason))
    assert parsed is not None
    assert (parsed.call_id, parsed.approve, parsed.reject_option) == (
        "call-churn-7",
        False,
        "metrics_regressed",
    )


def test_parse_interaction_refuses_garbage(slack: SlackStandin) -> None:
    good = slack.interaction_payload(user_id="U0ALICE", action_id=ACTION_APPROVE, value="call-1")
    assert parse_interaction(form(good)) is not None

    def variant(**changes: Any) -> dict[str, Any]:
        payload = json.loads(json.dumps(good))
        for path, value in changes.items():
            target = payload
            keys = path.split("__")
            for key in keys[:-1]:
                target = target[int(key)] if isinstance(target, list) else target[key]
            target[keys[-1]] = value
        return payload

    bodies: list[Any] = [
        b"",
        b"payload=",
        b"payload=not-json",
        b"payload=%5B1%2C2%5D",
        b"payload=%22a%22",
        b"\xff\xfe",
        b"payload=%FF%FE",
        b"other=1",
        form(good) + b"&" + form(good),
        form("[" * 100_000),
        b"payload=" + b"x" * (2 * 1024 * 1024),
        "payload={}",
        form(variant(type="view_submission")),
        form(variant(actions=[])),
        form(variant(actions="approve")),
        form(variant(actions=["approve"])),
        form(variant(actions__0__action_id="someone_elses_button")),
        form(variant(actions__0__value=42)),
        form(variant(actions__0__value="")),
        form(variant(actions__0__value="c" * 257)),
        form(variant(actions__0__value="call\n1")),
        form(variant(actions__0__value="../admin")),
        form(variant(actions__0__value="call 1")),
        form(variant(user=None)),
        form(variant(user={"name": "alice"})),
        form(variant(user__id="alice")),
        form(variant(user__id=["U0ALICE"])),
        form(variant(actions__0__action_id=ACTION_REJECT_REASON)),
        form(
            variant(
                actions__0__action_id=ACTION_REJECT_REASON, actions__0__selected_option={"value": "call-1"}
            )
        ),
        form(
            variant(
                actions__0__action_id=ACTION_REJECT_REASON, actions__0__selected_option={"value": "call-1\n"}
            )
        ),
        form(variant(actions__0__action_id=ACTION_REJECT_REASON, actions__0__selected_option="call-1\nx")),
    ]
    for body in bodies:
        assert parse_interaction(body) is None, body[:200]
    # A 256-character call_id is fine; optional fields of the wrong shape are dropped, not fatal.
    parsed = parse_interaction(
        form(
            variant(
                actions__0__value="c" * 256, response_url=5, container="x", channel=[], team=None, message=1
            )
        )
    )
    assert parsed is not None
    assert (parsed.call_id, parsed.response_url, parsed.channel_id, parsed.message_ts) == (
        "c" * 256,
        None,
        None,
        None,
    )
    parsed = parse_interaction(form(variant(response_url="javascript:alert(1)")))
    assert parsed is not None
    assert parsed.response_url is None


# ---------------------------------------------------------------------------------------------- end to end
class Receiver:
    """A tiny app endpoint: verify, parse, reply to the clicker; records what it accepted."""

    def __init__(self, channel: SlackChannel, secret: str) -> None:
        self.channel, self.secret = channel, secret
        self.accepted: list[SlackAction] = []
        self.refused: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                why = verify_request(
                    receiver.secret,
                    body,
                    self.headers.get("X-Slack-Request-Timestamp"),
                    self.headers.get("X-Slack-Signature"),
                )
                action = None if why else parse_interaction(body)
                if why or action is None:
                    receiver.refused.append(why or "not ours")
                    self.send_response(401 if why else 400)
                else:
                    receiver.accepted.append(action)
                    if action.response_url:
                        verb = "approved" if action.approve else "rejected"
                        receiver.channel.post_ephemeral_reply(
                            action.response_url, f"You {verb} {action.call_id}"
                        )
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/slack/interactions"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(slack: SlackStandin, channel: SlackChannel) -> Iterator[Receiver]:
    rec = Receiver(channel, slack.signing_secret)
    yield rec
    rec.close()


def test_a_click_in_slack_end_to_end(slack: SlackStandin, channel: SlackChannel, receiver: Receiver) -> None:
    sent = channel.send(Recipient("slack", CHANNEL), request_notice())
    assert sent.ref is not None
    channel_id, ts = sent.ref.split(":")
    response = slack.send_interaction(
        receiver.url,
        signing_secret=slack.signing_secret,
        user_id="U0ALICE",
        action_id=ACTION_REJECT_REASON,
        value="call-churn-7\nneeds_review",
        message_ts=ts,
        channel_id=channel_id,
    )
    assert response.status_code == 200
    (action,) = receiver.accepted
    assert (action.call_id, action.approve, action.reject_option) == ("call-churn-7", False, "needs_review")
    assert (action.user_id, action.channel_id, action.message_ts) == ("U0ALICE", channel_id, ts)
    assert slack.last_interaction is not None
    assert slack.last_interaction["message"]["blocks"] == slack.message(sent.ref).blocks
    (reply,) = slack.wait_for("response_url", 1)
    assert reply.params["text"] == "You rejected call-churn-7"
    assert reply.params["response_type"] == "ephemeral"
    assert channel.user_email(action.user_id) == "alice@example.com"


def test_forged_stale_and_replayed_clicks_are_refused(slack: SlackStandin, receiver: Receiver) -> None:
    common: dict[str, Any] = {"user_id": "U0ALICE", "action_id": ACTION_APPROVE, "value": "call-churn-7"}
    forged = slack.send_interaction(receiver.url, signing_secret="not-the-secret", **common)
    assert forged.status_code == 401
    old = str(int(time.time()) - 301)
    stale = slack.send_interaction(receiver.url, signing_secret=slack.signing_secret, timestamp=old, **common)
    assert stale.status_code == 401
    future = str(int(time.time()) + 301)
    ahead = slack.send_interaction(
        receiver.url, signing_secret=slack.signing_secret, timestamp=future, **common
    )
    assert ahead.status_code == 401
    # A captured request (body and signature) replayed once its timestamp is out of the window.
    body = form(slack.interaction_payload(**common))
    replay = slack.send_interaction(
        receiver.url, timestamp=old, signature=slack.signature(body, old), body=body, **common
    )
    assert replay.status_code == 401
    missing = httpx.post(
        receiver.url, content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert missing.status_code == 401
    assert receiver.accepted == []
    assert len(receiver.refused) == 5
    # Signed but not one of ours.
    other = slack.send_interaction(receiver.url, **{**common, "action_id": "other_button"})
    assert other.status_code == 400
    assert slack.calls("response_url") == []


def test_render_page(slack: SlackStandin, channel: SlackChannel) -> None:
    sent = channel.send(Recipient("slack", CHANNEL), request_notice())
    assert sent.ref is not None
    page = httpx.get(slack.render_url(*sent.ref.split(":")))
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["content-security-policy"]
    html = page.text
    assert "<h1>Promote churn-classifier v7 &lt;!channel&gt;</h1>" in html
    assert "&lt;https://evil.example/x|click here&gt;" in html
    assert 'href="https://evil.example' not in html
    assert 'href="http://airflow.local:8080/hlml/approvals/call-churn-7"' in html
    assert '<button class="btn primary" type="button">Approve</button>' in html
    assert '<button class="btn danger" type="button">Reject</button>' in html
    assert "<option>Needs a &lt;!channel&gt; review &amp; more</option>" in html
    assert "<b>Why</b>" in html
    assert '<span class="mention">' not in html
    assert "<script" not in html
    assert httpx.get(slack.render_url(CHANNEL, "1.2")).status_code == 404


def test_render_mrkdwn_escapes_everything() -> None:
    assert render_mrkdwn("<javascript:alert(1)|x>") == "x"
    assert render_mrkdwn('<http://a.example/"onmouseover=x|y>') == (
        '<a href="http://a.example/&quot;onmouseover=x" rel="noopener noreferrer">y</a>'
    )
    assert (
        render_mrkdwn("<!channel> *b* <img src=x>")
        == '<span class="mention">@channel</span> <b>b</b> img src=x'
    )
    assert render_mrkdwn("&lt;img src=x onerror=alert(1)&gt;") == "&lt;img src=x onerror=alert(1)&gt;"
