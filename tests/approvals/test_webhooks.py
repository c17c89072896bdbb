"""Outgoing webhooks of the approvals service: a real service process posting to a local receiver."""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_hlml.approvals.webhooks import (
    REPLAY_WINDOW_SECONDS,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature,
    signature_problem,
)
from tests.fixtures.approvals import ApprovalsService, make_keys
from tests.fixtures.processes import free_port

SECRET = "webhook-secret-for-tests"


class Receiver:
    """A webhook endpoint that records what it receives; it can answer errors or be slow first."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = 0
        self.delay = 0.0
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                time.sleep(receiver.delay)
                with receiver._cond:
                    receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    failing = receiver.fail_first > 0
                    receiver.fail_first -= 1
                    receiver._cond.notify_all()
                self.send_response(503 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 15) -> list[tuple[dict[str, str], bytes]]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.received) >= count, timeout)
            return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def module_receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def receiver(module_receiver: Receiver) -> Receiver:
    """The module's receiver, emptied (deliveries of an earlier test have all arrived by then)."""
    time.sleep(0.2)
    with module_receiver._cond:
        module_receiver.received.clear()
        module_receiver.fail_first = 0
        module_receiver.delay = 0.0
    return module_receiver


@pytest.fixture(scope="module")
def hooked_service(module_receiver: Receiver) -> Iterator[ApprovalsService]:
    root = Path(tempfile.mkdtemp(prefix="hlml-approvals-webhooks-"))
    service = ApprovalsService(database_url=f"sqlite:///{root / 'approvals.db'}", root=root, port=free_port())
    make_keys(service)
    service.extra_env = {
        "HLML_APPROVALS_WEBHOOK_URLS": module_receiver.url,
        "HLML_APPROVALS_WEBHOOK_SECRET": SECRET,
    }
    service.start()
    try:
        yield service
    finally:
        service.stop()


def _client(service: ApprovalsService, key: str) -> httpx.Client:
    return httpx.Client(base_url=service.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _create(service: ApprovalsService, call_id: str) -> None:
    with _client(service, service.agent_key) as agent:
        resp = agent.post(
            "/function_calls",
            json={"run_id": "r", "call_id": call_id, "spec": {"fn": "custom", "kwargs": {"subject": "Go?"}}},
        )
        assert resp.status_code == 201, resp.text


def _respond(service: ApprovalsService, call_id: str, approved: bool, comment: str) -> httpx.Response:
    with _client(service, service.reviewer_key) as reviewer:
        return reviewer.post(
            f"/agent/function_calls/{call_id}/respond", json={"approved": approved, "comment": comment}
        )


class TestWebhooks:
    def test_decision_is_posted_signed_in_humanlayer_shape(
        self, hooked_service: ApprovalsService, receiver: Receiver
    ) -> None:
        _create(hooked_service, "wh-1")
        assert receiver.received == []  # creating a request is not a completion
        assert _respond(hooked_service, "wh-1", True, "ship it").status_code == 200
        ((headers, body),) = receiver.wait_for(1)
        payload = json.loads(body)
        assert payload["type"] == "function_call.completed"
        assert payload["is_test"] is False
        assert payload["event"]["call_id"] == "wh-1"
        assert payload["event"]["status"]["approved"] is True
        assert payload["event"]["status"]["comment"] == "ship it"
        assert payload["event"]["status"]["user_info"]["email"] == "alice@example.com"
        sent_sig, sent_at = headers[SIGNATURE_HEADER.lower()], headers[TIMESTAMP_HEADER.lower()]
        assert abs(int(sent_at) - time.time()) < 60
        assert sent_sig == signature(SECRET, body, sent_at)
        assert sent_sig.startswith("v1=")
        assert not signature_problem(SECRET, body, sent_sig, sent_at)
        assert signature_problem("another secret", body, sent_sig, sent_at)
        assert signature_problem(SECRET, body, sent_sig, str(int(sent_at) + 1))
        stale = int(sent_at) + REPLAY_WINDOW_SECONDS + 5
        assert signature_problem(SECRET, body, sent_sig, sent_at, now=stale)
        # No key of any kind travels in a webhook.
        for key in (hooked_service.agent_key, hooked_service.reviewer_key, SECRET):
            assert key not in body.decode()

    def test_cancellation_is_posted(self, hooked_service: ApprovalsService, receiver: Receiver) -> None:
        _create(hooked_service, "wh-cancel")
        with _client(hooked_service, hooked_service.admin_key) as admin:
            resp = admin.post("/agent/function_calls/wh-cancel/cancel", json={"reason": "killed"})
        assert resp.status_code == 200, resp.text
        ((_, body),) = receiver.wait_for(1)
        event = json.loads(body)["event"]
        assert event["call_id"] == "wh-cancel"
        assert event["status"]["cancel_reason"] == "killed"

    def test_failing_receiver_is_retried(self, hooked_service: ApprovalsService, receiver: Receiver) -> None:
        receiver.fail_first = 2
        _create(hooked_service, "wh-retry")
        assert _respond(hooked_service, "wh-retry", False, "not yet").status_code == 200
        received = receiver.wait_for(3)
        assert len(received) == 3  # two 503s, then delivered
        assert {json.loads(b)["event"]["call_id"] for _, b in received} == {"wh-retry"}
        # Every attempt is signed when it is sent.
        for headers, body in received:
            assert not signature_problem(
                SECRET, body, headers[SIGNATURE_HEADER.lower()], headers[TIMESTAMP_HEADER.lower()]
            )

    def test_slow_receiver_does_not_delay_the_decision(
        self, hooked_service: ApprovalsService, receiver: Receiver
    ) -> None:
        receiver.delay = 3.0
        _create(hooked_service, "wh-slow")
        started = time.monotonic()
        assert _respond(hooked_service, "wh-slow", True, "ok").status_code == 200
        assert time.monotonic() - started < 2.0
        assert receiver.wait_for(1)

    def test_rejected_decision_is_not_posted_twice(
        self, hooked_service: ApprovalsService, receiver: Receiver
    ) -> None:
        _create(hooked_service, "wh-once")
        assert _respond(hooked_service, "wh-once", True, "first").status_code == 200
        assert _respond(hooked_service, "wh-once", False, "second").status_code == 409
        receiver.wait_for(1)
        time.sleep(0.5)
        assert len(receiver.received) == 1
