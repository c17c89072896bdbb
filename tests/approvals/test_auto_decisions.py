"""Decisions by a promotion decision policy, recorded by the approvals service over real HTTP.

A request whose gate carries an auto-decision (``spec.state.hlml.auto``) is decided by the
policy's principal: at once without an override window, on the creator's ask after it otherwise,
and never when a person answered first. Nobody may answer under a ``policy:`` name. Every test
runs on SQLite and on PostgreSQL (the ``service`` fixture).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from airflow_provider_hlml.gate.wire import AUTO_DECISION_PATH, FEATURE_AUTO_DECISIONS, FEATURES_PATH
from tests.approvals.conftest import Api, call_body, policy_state
from tests.approvals.test_rules import World
from tests.fixtures.approvals import ApprovalsService

PRINCIPAL = "policy:champion-margin-v1"
EVIDENCE = {
    "outcome": "auto_approve",
    "reason": "accuracy: +5.1 points [+4.2, +6.0], above the required +1.0",
    "principal": PRINCIPAL,
    "policy": {"name": "champion-margin", "version": 1, "override_window": 0},
    "metrics": {"accuracy": {"candidate": 0.86, "champion": 0.81, "interval": [0.042, 0.060]}},
}


class Client(World):
    """The shared test world (its agent, reviewers, status and audit reads) plus the policy's part."""

    def __init__(self, service: ApprovalsService) -> None:
        super().__init__(service)
        self.alice = self.apis["alice"]
        self.delegate = self.apis["delegate"]

    def create(self, outcome: str = "approve", window: float = 0, **auto: Any) -> httpx.Response:
        state = policy_state()
        state["hlml"]["auto"] = {
            "outcome": outcome,
            "principal": PRINCIPAL,
            "reason": EVIDENCE["reason"],
            "override_seconds": window,
            **auto,
        }
        body = call_body(f"auto-{uuid.uuid4().hex[:12]}", state=state)
        body["spec"]["kwargs"]["context"] = {
            "model_name": "churn",
            "model_version": "3",
            "decision": EVIDENCE,
        }
        return self.agent.post("/function_calls", json=body)

    def decide(self, api: Api, call_id: str) -> httpx.Response:
        return api.post(AUTO_DECISION_PATH.format(call_id=call_id))

    def statement(self, call_id: str) -> dict[str, Any]:
        resp = self.agent.get(f"/function_calls/{call_id}/attestation")
        assert resp.status_code == 200, resp.text
        envelope = json.loads(resp.json()["attestation"])
        return dict(json.loads(base64.b64decode(envelope["payload"])))


@pytest.fixture
def client(service: ApprovalsService) -> Iterator[Client]:
    c = Client(service)
    yield c
    c.close()


def error(resp: httpx.Response, status: int, needle: str) -> None:
    assert resp.status_code == status, resp.text
    assert needle in resp.json()["error"]["message"], resp.text


class TestRecordedByTheService:
    def test_the_service_says_it_records_policy_decisions(self, client: Client) -> None:
        features = client.agent.get(FEATURES_PATH).json()["features"]
        assert FEATURE_AUTO_DECISIONS in features

    def test_without_a_window_the_policy_approves_at_creation(self, client: Client) -> None:
        resp = client.create()
        assert resp.status_code == 201, resp.text
        call_id = resp.json()["call_id"]
        status = resp.json()["status"]
        assert status["approved"] is True
        assert status["user_info"]["principal"] == PRINCIPAL
        assert status["user_info"]["name"] == PRINCIPAL
        assert [(a["name"], a["approved"], a["rule"]) for a in status["answers"]] == [
            (PRINCIPAL, True, "decision policy")
        ]
        responded = [e for e in client.audit(call_id) if e["event"] == "responded"]
        assert len(responded) == 1
        event = responded[0]
        assert event["actor"] == PRINCIPAL
        assert event["metadata"]["decided_by_policy"] == PRINCIPAL
        assert event["metadata"]["evidence"]["metrics"]["accuracy"]["interval"] == [0.042, 0.060]
        assert event["comment"] == EVIDENCE["reason"]
        statement = client.statement(call_id)
        assert statement["decision"] == "approved"
        assert [a["name"] for a in statement["approvers"]] == [PRINCIPAL]
        assert statement["rules_met"] == ["decision policy"]
        assert statement["call_id"] == call_id

    def test_a_clear_regression_is_rejected_by_the_policy(self, client: Client) -> None:
        resp = client.create("reject")
        assert resp.status_code == 201, resp.text
        status = resp.json()["status"]
        assert status["approved"] is False
        assert status["user_info"]["principal"] == PRINCIPAL
        assert status["comment"] == EVIDENCE["reason"]

    def test_creating_the_same_request_again_does_not_decide_twice(self, client: Client) -> None:
        state = policy_state()
        state["hlml"]["auto"] = {"outcome": "approve", "principal": PRINCIPAL, "override_seconds": 0}
        body = call_body(state=state)
        first = client.agent.post("/function_calls", json=body)
        again = client.agent.post("/function_calls", json=body)
        assert (first.status_code, again.status_code) == (201, 200)
        audit = client.audit(body["call_id"])
        assert [e["event"] for e in audit].count("responded") == 1


class TestOverrideWindow:
    def test_the_request_stays_open_and_is_decided_after_the_window(self, client: Client) -> None:
        resp = client.create(window=2)
        call_id = resp.json()["call_id"]
        assert resp.json()["status"]["approved"] is None
        error(client.decide(client.agent, call_id), 409, "override window is open")
        time.sleep(2.2)
        error(client.decide(client.alice, call_id), 403, "only the principal that created")
        resp = client.decide(client.agent, call_id)
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"]["approved"] is True
        assert resp.json()["status"]["user_info"]["principal"] == PRINCIPAL
        error(client.decide(client.agent, call_id), 409, "already approved")

    def test_a_person_answering_in_the_window_decides_instead(self, client: Client) -> None:
        call_id = client.create(window=1).json()["call_id"]
        resp = client.alice.post(
            f"/agent/function_calls/{call_id}/respond", json={"approved": False, "comment": "not this week"}
        )
        assert resp.status_code == 200, resp.text
        time.sleep(1.2)
        error(client.decide(client.agent, call_id), 409, "already rejected")
        status = client.status(call_id)
        assert status["approved"] is False
        assert status["user_info"]["name"] == "alice"

    def test_a_partial_answer_in_the_window_ends_the_policys_say(self, client: Client) -> None:
        state = policy_state()
        state["hlml"]["rules"] = [{"name": "Two", "approvers": [], "required": 2}]
        state["hlml"]["auto"] = {"outcome": "approve", "principal": PRINCIPAL, "override_seconds": 1}
        call_id = client.agent.post("/function_calls", json=call_body(state=state)).json()["call_id"]
        resp = client.alice.post(f"/agent/function_calls/{call_id}/respond", json={"approved": True})
        assert resp.status_code == 200, resp.text
        time.sleep(1.2)
        error(client.decide(client.agent, call_id), 409, "a person has answered it")
        assert client.status(call_id)["approved"] is None


class TestNobodyAnswersAsAPolicy:
    def test_a_request_without_an_auto_decision_is_not_decided_by_one(self, client: Client) -> None:
        call_id = client.agent.post("/function_calls", json=call_body(state=policy_state())).json()["call_id"]
        error(client.decide(client.agent, call_id), 409, "carries no auto-decision")

    def test_a_key_cannot_be_named_like_a_policy(self, service: ApprovalsService) -> None:
        from airflow_provider_hlml.approvals import db, store

        engine = db.make_engine(service.database_url, pool_size=1)
        try:
            with db.make_sessionmaker(engine)() as session, pytest.raises(store.ServiceError) as raised:
                store.create_key(session, name=PRINCIPAL, role="reviewer")
        finally:
            engine.dispose()
        assert "reserved for decision policies" in raised.value.message

    def test_a_delegate_cannot_answer_for_a_policy(self, client: Client) -> None:
        call_id = client.create(window=60).json()["call_id"]
        resp = client.delegate.post(
            f"/agent/function_calls/{call_id}/respond",
            json={"approved": True, "user_info": {"name": PRINCIPAL}},
        )
        error(resp, 403, "cannot answer through the API")
        assert client.status(call_id)["approved"] is None

    def test_an_unreadable_auto_decision_decides_nothing(self, client: Client) -> None:
        for auto in (
            {"principal": "alice"},
            {"outcome": "ship"},
            {"override_seconds": -1},
            {"override_seconds": "0"},
        ):
            resp = client.create(**auto)
            assert resp.status_code == 201, resp.text
            assert resp.json()["status"]["approved"] is None, auto
