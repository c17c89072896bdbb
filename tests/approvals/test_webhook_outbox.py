"""Decision webhooks are an outbox: real service processes POSTing to a real local receiver.

A settled request is POSTed to every configured URL at least once, retried with backoff until the
receiver answers 2xx (a 4xx is given up at once), whoever settled it and whenever (the API, the
CLI, while the service or the receiver was down); replicas on one PostgreSQL database deliver each
decision once. Also: the batched settled lookup and the feature flags that announce both.
"""

from __future__ import annotations

import functools
import json
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from airflow_provider_hlml.approvals.settings import ApprovalsSettings
from airflow_provider_hlml.approvals.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature_problem
from airflow_provider_hlml.gate.wire import FEATURE_PUSH, FEATURE_SETTLED, FEATURES_PATH, SETTLED_PATH
from tests.approvals.conftest import Api, wait_for
from tests.fixtures.approvals import ApprovalsService, make_keys
from tests.fixtures.processes import VENV_BIN, free_port

SECRET = "outbox-secret-for-tests"


@dataclass(frozen=True)
class Hit:
    """One POST the receiver got, and what it answered."""

    headers: dict[str, str]
    body: bytes
    status: int
    at: float

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def call_id(self) -> str:
        return str(self.payload["event"]["call_id"])


class Receiver:
    """A webhook endpoint on a port of its own that can be stopped and started again; it records
    every POST and answers 200 unless ``rules[call_id]()`` says otherwise."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.hits: list[Hit] = []
        self.rules: dict[str, Callable[[], int]] = {}
        self._cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    call_id = str(json.loads(body)["event"]["call_id"])
                except (ValueError, KeyError, TypeError):
                    call_id = ""
                rule = receiver.rules.get(call_id)
                status = rule() if rule is not None else 200
                with receiver._cond:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    receiver.hits.append(Hit(headers, body, status, time.monotonic()))
                    receiver._cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def of(self, call_id: str) -> list[Hit]:
        with self._cond:
            return [h for h in self.hits if h.call_id == call_id]

    def acked(self, call_id: str) -> list[Hit]:
        return [h for h in self.of(call_id) if 200 <= h.status < 300]

    def wait_acked(self, call_id: str, timeout: float = 40.0) -> Hit:
        with self._cond:
            self._cond.wait_for(
                lambda: any(h.call_id == call_id and 200 <= h.status < 300 for h in self.hits), timeout
            )
        acked = self.acked(call_id)
        assert acked, f"{call_id} was not acknowledged in {timeout} s; hits: {self.of(call_id)}"
        return acked[0]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    try:
        yield r
    finally:
        r.stop()


def _service(
    database_url: str, root: Path, urls: list[str], *, deliver: bool = True, **env: str
) -> ApprovalsService:
    """An ``hlml-approvals serve`` process (not started) notifying ``urls``, signed with SECRET."""
    root.mkdir(parents=True, exist_ok=True)
    service = ApprovalsService(database_url=database_url, root=root, port=free_port(), deliver=deliver)
    make_keys(service)
    service.extra_env = {
        "HLML_APPROVALS_WEBHOOK_URLS": ",".join(urls),
        "HLML_APPROVALS_WEBHOOK_SECRET": SECRET,
        "HLML_APPROVALS_DELIVERY_INTERVAL": "0.2",
        **env,
    }
    return service


def _sqlite_service(prefix: str, urls: list[str], **kwargs: Any) -> ApprovalsService:
    root = Path(tempfile.mkdtemp(prefix=prefix))
    return _service(f"sqlite:///{root / 'approvals.db'}", root, urls, **kwargs)


@pytest.fixture(scope="module")
def hooked(receiver: Receiver) -> Iterator[ApprovalsService]:
    service = _sqlite_service("hlml-outbox-", [receiver.url]).start()
    try:
        yield service
    finally:
        service.stop()


def _create(service: ApprovalsService, call_id: str | None = None) -> str:
    call_id = call_id or f"call-{uuid.uuid4().hex[:12]}"
    resp = Api(service, service.agent_key).post(
        "/function_calls",
        json={"run_id": "r", "call_id": call_id, "spec": {"fn": "promote", "kwargs": {"subject": "Go?"}}},
    )
    assert resp.status_code == 201, resp.text
    return call_id


def _decide(service: ApprovalsService, call_id: str, approved: bool = True) -> dict[str, Any]:
    resp = Api(service, service.reviewer_key).post(
        f"/agent/function_calls/{call_id}/respond", json={"approved": approved, "comment": "decided"}
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


def _cli_approve(service: ApprovalsService, call_id: str) -> None:
    proc = subprocess.run(
        [
            *(str(VENV_BIN / "hlml-approvals"), "approve", call_id, "--comment", "from the CLI"),
            *("--database-url", service.database_url, "--json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"]["approved"] is True


def _audit(service: ApprovalsService, call_id: str) -> list[dict[str, Any]]:
    resp = Api(service, service.admin_key).get(f"/function_calls/{call_id}/audit")
    assert resp.status_code == 200, resp.text
    return resp.json()


def _webhook_events(service: ApprovalsService, call_id: str, event: str) -> list[dict[str, Any]]:
    return [
        e
        for e in _audit(service, call_id)
        if e["event"] == event and (e["metadata"] or {}).get("channel") == "webhook"
    ]


_wait = functools.partial(wait_for, timeout=40.0)


def _assert_signed(hit: Hit) -> None:
    problem = signature_problem(
        SECRET, hit.body, hit.headers.get(SIGNATURE_HEADER.lower()), hit.headers.get(TIMESTAMP_HEADER.lower())
    )
    assert problem is None, problem


class TestRetriesUntilAcknowledged:
    def test_a_receiver_answering_503_gets_the_decision_once_after_it_recovers(
        self, hooked: ApprovalsService, receiver: Receiver
    ) -> None:
        call_id = _create(hooked)
        recovers_at = time.monotonic() + 4.0
        receiver.rules[call_id] = lambda: 503 if time.monotonic() < recovers_at else 200
        _decide(hooked, call_id, approved=False)
        acked = receiver.wait_acked(call_id)
        assert acked.at >= recovers_at
        time.sleep(3)  # longer than the next backoff: nothing more comes once it is acknowledged
        hits = receiver.of(call_id)
        assert len(receiver.acked(call_id)) == 1
        assert hits[-1] is acked
        assert [h.status for h in hits[:-1]] == [503] * (len(hits) - 1)
        assert len(hits) >= 2
        # Every attempt is signed when it is sent, and carries HumanLayer's body.
        for hit in hits:
            _assert_signed(hit)
            assert signature_problem(
                "another secret",
                hit.body,
                hit.headers[SIGNATURE_HEADER.lower()],
                hit.headers[TIMESTAMP_HEADER.lower()],
            )
        read = Api(hooked, hooked.agent_key).get(f"/function_calls/{call_id}").json()
        assert acked.payload == {"is_test": False, "type": "function_call.completed", "event": read}
        assert read["status"]["approved"] is False
        # Each attempt is audited on the request; the URL is, the secret never.
        retries = _webhook_events(hooked, call_id, "delivery_retry")
        assert len(retries) == len(hits) - 1
        assert "503" in (retries[0]["comment"] or "")
        (delivered,) = _webhook_events(hooked, call_id, "delivered")
        assert delivered["metadata"]["recipient"] == receiver.url
        assert delivered["actor"] == "hlml-delivery"
        assert SECRET not in json.dumps(_audit(hooked, call_id))

    def test_a_4xx_is_not_retried(self, hooked: ApprovalsService, receiver: Receiver) -> None:
        call_id = _create(hooked)
        receiver.rules[call_id] = lambda: 400
        _decide(hooked, call_id)
        (failed,) = _wait(
            lambda: _webhook_events(hooked, call_id, "delivery_failed"), what="a delivery_failed event"
        )
        assert "400" in (failed["comment"] or "")
        time.sleep(3)  # a retry would have come after 2 s
        assert len(receiver.of(call_id)) == 1
        assert not _webhook_events(hooked, call_id, "delivery_retry")
        status = Api(hooked, hooked.admin_key).get("/hlml/deliveries", params={"call_id": call_id}).json()
        (webhook,) = [d for d in status[call_id] if d["channel"] == "webhook"]
        assert (webhook["state"], webhook["attempts"], webhook["recipient"]) == ("failed", 1, receiver.url)

    def test_cancellations_and_human_contacts_are_notified(
        self, hooked: ApprovalsService, receiver: Receiver
    ) -> None:
        call_id = _create(hooked)
        resp = Api(hooked, hooked.admin_key).post(
            f"/agent/function_calls/{call_id}/cancel", json={"reason": "timeout"}
        )
        assert resp.status_code == 200, resp.text
        event = receiver.wait_acked(call_id).payload["event"]
        assert event["status"]["cancel_reason"] == "timeout"
        contact = f"contact-{uuid.uuid4().hex[:12]}"
        agent = Api(hooked, hooked.agent_key)
        resp = agent.post(
            "/contact_requests", json={"run_id": "r", "call_id": contact, "spec": {"msg": "Which one?"}}
        )
        assert resp.status_code == 201, resp.text
        resp = Api(hooked, hooked.reviewer_key).post(
            f"/agent/human_contacts/{contact}/respond", json={"response": "the second"}
        )
        assert resp.status_code == 200, resp.text
        payload = receiver.wait_acked(contact).payload
        assert payload["type"] == "human_contact.completed"
        assert payload["event"]["status"]["response"] == "the second"
        # A pending request is never notified, nor is an escalation.
        pending = _create(hooked)
        time.sleep(1)
        assert not receiver.of(pending)


def test_a_decision_reaches_a_receiver_that_is_up_at_once(receiver: Receiver) -> None:
    """The publisher wakes the worker: no wait for its next turn (30 s here)."""
    service = _sqlite_service("hlml-outbox-fast-", [receiver.url], HLML_APPROVALS_DELIVERY_INTERVAL="30")
    service.start()
    try:
        for _ in range(3):
            call_id = _create(service)
            started = time.monotonic()
            _decide(service, call_id)
            assert receiver.wait_acked(call_id, timeout=10).at - started < 3.0
    finally:
        service.stop()


def test_a_decision_made_while_the_receiver_was_down_survives_a_restart() -> None:
    receiver = Receiver()  # not listening yet: connections are refused
    service = _sqlite_service("hlml-outbox-restart-", [receiver.url]).start()
    try:
        call_id = _create(service)
        _decide(service, call_id)
        retry = _wait(lambda: _webhook_events(service, call_id, "delivery_retry"), what="a delivery_retry")
        assert "not reached" in (retry[0]["comment"] or "")
        service.stop()
        receiver.start()
        service.start()
        hit = receiver.wait_acked(call_id)
        _assert_signed(hit)
        time.sleep(2)
        assert len(receiver.of(call_id)) == 1
        assert len(_webhook_events(service, call_id, "delivered")) == 1
    finally:
        service.stop()
        receiver.stop()


def test_cli_decisions_are_notified(receiver: Receiver) -> None:
    """Decided with ``hlml-approvals approve``: while the service runs, and while it is stopped."""
    service = _sqlite_service("hlml-outbox-cli-", [receiver.url]).start()
    try:
        running, stopped = _create(service), _create(service)
        _cli_approve(service, running)
        assert receiver.wait_acked(running).payload["event"]["status"]["comment"] == "from the CLI"
        service.stop()
        _cli_approve(service, stopped)
        time.sleep(0.5)
        assert not receiver.of(stopped)
        service.start()
        assert receiver.wait_acked(stopped).payload["event"]["status"]["approved"] is True
        time.sleep(1)
        assert len(receiver.of(running)) == len(receiver.of(stopped)) == 1
    finally:
        service.stop()


def test_serve_no_deliver_leaves_webhooks_to_a_delivery_process(receiver: Receiver) -> None:
    service = _sqlite_service("hlml-outbox-deliver-", [receiver.url], deliver=False).start()
    try:
        call_id = _create(service)
        _decide(service, call_id)
        time.sleep(2)
        assert not receiver.of(call_id)  # the server processes do not deliver
        features = Api(service, service.agent_key).get(FEATURES_PATH).json()["features"]
        assert FEATURE_PUSH in features  # the service pushes decisions, through its deliver process
        deliverer = service.delivery_process()
        try:
            _assert_signed(receiver.wait_acked(call_id))
        finally:
            deliverer.stop()
        assert deliverer.proc is not None
        assert deliverer.proc.returncode == 0, deliverer.log_tail()
    finally:
        service.stop()


@pytest.mark.postgres
def test_two_replicas_on_postgres_notify_each_decision_once(
    receiver: Receiver, empty_postgres_url: str
) -> None:
    root = Path(tempfile.mkdtemp(prefix="hlml-outbox-pg-"))
    first = _service(empty_postgres_url, root / "a", [receiver.url]).start()
    second = ApprovalsService(database_url=empty_postgres_url, root=root / "b", port=free_port())
    second.root.mkdir(parents=True)
    second.agent_key, second.reviewer_key = first.agent_key, first.reviewer_key
    second.extra_env = dict(first.extra_env)
    second.start()
    try:
        replicas = (first, second)
        calls = [_create(replicas[n % 2]) for n in range(20)]
        for n, call_id in enumerate(calls):
            _decide(replicas[(n // 2) % 2], call_id, approved=n % 3 != 0)
        for call_id in calls:
            receiver.wait_acked(call_id)
        time.sleep(3)
        for call_id in calls:
            assert len(receiver.of(call_id)) == 1, call_id
            assert len(_webhook_events(first, call_id, "delivered")) == 1
    finally:
        second.stop()
        first.stop()


class TestSettledLookup:
    def test_only_settled_calls_visible_to_the_caller(self, hooked: ApprovalsService) -> None:
        pending, approved, cancelled = _create(hooked), _create(hooked), _create(hooked)
        _decide(hooked, approved)
        Api(hooked, hooked.admin_key).post(f"/agent/function_calls/{cancelled}/cancel", json={})
        # A human contact is no function call, even settled and under the same id as one.
        agent = Api(hooked, hooked.agent_key)
        contact = agent.post(
            "/contact_requests", json={"run_id": "r", "call_id": pending, "spec": {"msg": "?"}}
        )
        assert contact.status_code == 201, contact.text
        Api(hooked, hooked.reviewer_key).post(
            f"/agent/human_contacts/{pending}/respond", json={"response": "x"}
        )
        ids = [pending, approved, "no-such-call", cancelled, approved]
        for api in (agent, Api(hooked, hooked.reviewer_key), Api(hooked, hooked.delegate_key)):
            resp = api.post(SETTLED_PATH, json={"call_ids": ids})
            assert resp.status_code == 200, resp.text
            found = resp.json()["function_calls"]
            assert [c["call_id"] for c in found] == [approved, cancelled]
            assert found[0] == agent.get(f"/function_calls/{approved}").json()
        for key in (None, "hl_not-a-key"):
            resp = Api(hooked, key).post(SETTLED_PATH, json={"call_ids": ids})
            assert resp.status_code == 401

    @pytest.mark.parametrize(
        "body",
        [
            {},
            {"call_ids": []},
            {"call_ids": "call-1"},
            {"call_ids": [1, 2]},
            {"call_ids": [None]},
            {"call_ids": ["a/b"]},
            {"call_ids": ["with space"]},
            {"call_ids": [""]},
            {"call_ids": ["x" * 257]},
            {"call_ids": ["nul\u0000"]},
            {"call_ids": ["\ud800"]},
            {"call_ids": ["c"] * 10_001},
            ["call-1"],
        ],
        ids=lambda b: json.dumps(b)[:40],
    )
    def test_bad_bodies_get_422(self, hooked: ApprovalsService, body: Any) -> None:
        raw = json.dumps(body).encode()
        resp = Api(hooked, hooked.agent_key).post(
            SETTLED_PATH, content=raw, headers={"Content-Type": "application/json"}
        )
        assert resp.status_code == 422, resp.text
        assert resp.json()["error"]["code"] == "validation_error"

    def test_not_json_and_too_large(self, hooked: ApprovalsService) -> None:
        agent = Api(hooked, hooked.agent_key)
        resp = agent.post(SETTLED_PATH, content=b"{not json", headers={"Content-Type": "application/json"})
        assert resp.status_code == 422
        huge = {"call_ids": ["c" * 250] * 5000}  # over the service's 1 MiB body limit
        assert agent.post(SETTLED_PATH, json=huge).status_code == 413

    def test_2000_ids_in_one_request(self, hooked: ApprovalsService) -> None:
        settled = [_create(hooked) for _ in range(30)]
        for call_id in settled:
            _decide(hooked, call_id)
        unknown = [f"unknown-{n}" for n in range(2000 - len(settled))]
        # Spread over the lookup's chunks.
        ids = unknown[:700] + settled[:10] + unknown[700:1500] + settled[10:] + unknown[1500:]
        assert len(ids) == 2000
        started = time.monotonic()
        resp = Api(hooked, hooked.agent_key).post(SETTLED_PATH, json={"call_ids": ids})
        assert resp.status_code == 200, resp.text
        assert time.monotonic() - started < 10
        assert [c["call_id"] for c in resp.json()["function_calls"]] == settled


class TestFeatures:
    def test_push_is_listed_only_when_configured(
        self, hooked: ApprovalsService, approvals_service: ApprovalsService
    ) -> None:
        plain = Api(approvals_service, approvals_service.agent_key).get(FEATURES_PATH)
        assert plain.status_code == 200, plain.text
        assert FEATURE_SETTLED in plain.json()["features"]
        assert FEATURE_PUSH not in plain.json()["features"]
        pushed = Api(hooked, hooked.agent_key).get(FEATURES_PATH).json()["features"]
        assert FEATURE_SETTLED in pushed
        assert FEATURE_PUSH in pushed


@pytest.mark.parametrize(
    "urls", ["ftp://example.com/hook", "/relative/hook", "http:///no-host", "https://x.example/" + "a" * 320]
)
def test_webhook_urls_are_checked(urls: str) -> None:
    with pytest.raises(ValidationError, match="webhook_urls"):
        ApprovalsSettings(webhook_urls=urls)
