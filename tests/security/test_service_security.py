"""What an attacker holding one of the approvals service's keys tries, on SQLite and PostgreSQL.

Each test is an attack that worked before the hardening: a string that poisons the store, a
request squatted under another gate's id, a second key of the requester answering, another
agent cancelling or escalating, a flood of refused answers.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from tests.fixtures.approvals import ApprovalsService
from tests.security.conftest import Api, call_body, new_call_id, policy_state

pytestmark = pytest.mark.security


def make_key(service: ApprovalsService, name: str, role: str, email: str | None = None) -> str:
    """A new key for principal ``name`` (created if new), straight into the service's database."""
    from airflow_provider_hlml.approvals import db, store

    engine = db.make_engine(service.database_url, pool_size=1)
    try:
        with db.make_sessionmaker(engine)() as session:
            return store.create_key(session, name=name, role=role, email=email)[1]
    finally:
        engine.dispose()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def raw_post(api: Api, path: str, text: str) -> httpx.Response:
    """POST a JSON text as it is (escapes such as ``\\ud800`` reach the server unchanged)."""
    return api.post(path, content=text.encode("ascii"), headers={"Content-Type": "application/json"})


def audit_events(api: Api, call_id: str) -> list[dict[str, Any]]:
    resp = api.get(f"/function_calls/{call_id}/audit")
    assert resp.status_code == 200, resp.text
    return list(resp.json())


class TestOneStringCannotPoisonTheStore:
    """A lone UTF-16 surrogate anywhere is refused before anything is written."""

    @pytest.mark.parametrize(
        "where",
        ["kwargs value", "kwargs key", "context key", "fn", "run_id", "state value", "reject option"],
    )
    def test_lone_surrogate_is_refused_and_every_read_still_answers(
        self, service: ApprovalsService, where: str
    ) -> None:
        agent = Api(service, service.agent_key)
        call_id = new_call_id("surrogate")
        body = call_body(call_id, state=policy_state())
        marker = "HOSTILE-MARKER"
        if where == "kwargs value":
            body["spec"]["kwargs"]["subject"] = marker
        elif where == "kwargs key":
            body["spec"]["kwargs"][marker] = "x"
        elif where == "context key":
            body["spec"]["kwargs"]["context"][marker] = 1
        elif where == "fn":
            body["spec"]["fn"] = marker
        elif where == "run_id":
            body["run_id"] = marker
        elif where == "state value":
            body["spec"]["state"]["hlml"]["requester"] = marker
        else:
            body["spec"]["reject_options"] = [{"name": marker, "title": "t", "description": "d"}]
        text = json.dumps(body).replace(marker, "x\\ud800")
        assert "\\ud800" in text

        resp = raw_post(agent, "/function_calls", text)

        assert resp.status_code == 422, resp.text
        assert any(w in resp.json()["error"]["message"] for w in ("surrogate", "unicode"))
        assert agent.get(f"/function_calls/{call_id}").status_code == 404
        for path in ("/function_calls", "/agent/function_calls/pending", "/contact_requests"):
            listed = agent.get(path)
            assert listed.status_code == 200, f"{path}: {listed.text}"
            json.dumps(listed.json(), ensure_ascii=False).encode("utf-8")

    def test_lone_surrogate_in_an_answer_is_refused(self, service: ApprovalsService) -> None:
        agent, alice = Api(service, service.agent_key), Api(service, service.reviewer_key)
        call_id = new_call_id("surrogate-answer")
        assert agent.post("/function_calls", json=call_body(call_id)).status_code == 201
        resp = raw_post(
            alice, f"/agent/function_calls/{call_id}/respond", '{"approved": false, "comment": "no \\udfff"}'
        )
        assert resp.status_code == 422, resp.text
        read = agent.get(f"/function_calls/{call_id}")
        assert read.status_code == 200
        assert read.json()["status"]["approved"] is None
        assert [e["event"] for e in audit_events(agent, call_id)] == ["created"]


class TestSquatting:
    """Nobody can create a request under another gate's id and have that gate adopt it."""

    def test_another_principal_cannot_take_a_call_id(self, service: ApprovalsService) -> None:
        squatter = Api(service, make_key(service, unique("squatter"), "agent"))
        agent = Api(service, service.agent_key)
        call_id = new_call_id("future-run")
        harmless = call_body(call_id, fn="code_execution", state=policy_state())
        harmless["spec"]["kwargs"]["context"] = {"code": "SELECT 1"}
        assert squatter.post("/function_calls", json=harmless).status_code == 201

        # The gate sends its own request, or even the very same one: never handed the squatter's.
        real = call_body(call_id, fn="code_execution", state=policy_state())
        real["spec"]["kwargs"]["context"] = {"code": "DROP TABLE users;"}
        for body in (real, harmless):
            resp = agent.post("/function_calls", json=body)
            assert resp.status_code == 409, resp.text
            assert resp.json()["error"]["code"] == "call_id_taken"
            assert "another principal" in resp.json()["error"]["message"]

    def test_the_same_principal_gets_its_request_back_only_when_it_is_the_same(
        self, service: ApprovalsService
    ) -> None:
        agent = Api(service, service.agent_key)
        other_key_same_agent = Api(service, make_key(service, "airflow", "agent"))
        call_id = new_call_id("idempotent")
        body = call_body(call_id, state=policy_state(approvers=["alice@example.com"]))
        first = agent.post("/function_calls", json=body)
        assert first.status_code == 201
        assert "Idempotent-Replayed" not in first.headers
        again = other_key_same_agent.post("/function_calls", json=body)
        assert again.status_code == 200
        assert again.headers["Idempotent-Replayed"] == "true"

        changed = call_body(call_id, state=policy_state(approvers=["mallory@example.com"]))
        changed["spec"]["kwargs"]["subject"] = "Something else"
        resp = agent.post("/function_calls", json=changed)
        assert resp.status_code == 409
        message = resp.json()["error"]["message"]
        assert "spec.kwargs.subject" in message
        assert "spec.state.hlml.approvers" in message

    def test_gate_refuses_a_squatted_request(
        self, approvals_service: ApprovalsService, humanlayer_conn: str
    ) -> None:
        """The real gate, pointed at a request another agent created first, fails naming why."""
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_provider_hlml.sensors.factories import code_execution_approval
        from tests.unit.sensors.test_approval import _context

        gate = code_execution_approval("DROP TABLE users;", "production", language="sql", task_id="squat")
        ctx = _context(gate)
        request = gate.build_request(ctx)
        squatted = request.model_dump(mode="json")
        squatted["spec"]["kwargs"]["context"]["code"] = "SELECT 1"
        squatter = Api(approvals_service, make_key(approvals_service, unique("squatter"), "agent"))
        assert squatter.post("/function_calls", json=squatted).status_code == 201

        with pytest.raises(AirflowFailException, match="another principal"):
            gate.ensure_request(ctx)


class TestAnswersAreJudgedByPrincipal:
    def test_a_second_key_of_the_creating_principal_cannot_answer(self, service: ApprovalsService) -> None:
        name = unique("ops")
        first, second = (Api(service, make_key(service, name, "admin")) for _ in range(2))
        call_id = new_call_id("self")
        assert first.post("/function_calls", json=call_body(call_id)).status_code == 201

        resp = second.post(f"/agent/function_calls/{call_id}/respond", json={"approved": True})

        assert resp.status_code == 403, resp.text
        assert "created this request" in resp.json()["error"]["message"]
        assert first.get(f"/function_calls/{call_id}").json()["status"]["approved"] is None

    def test_a_role_that_may_not_answer_is_refused_and_audited(self, service: ApprovalsService) -> None:
        agent, other_agent = (
            Api(service, service.agent_key),
            Api(service, make_key(service, unique("a"), "agent")),
        )
        call_id = new_call_id("role")
        assert agent.post("/function_calls", json=call_body(call_id)).status_code == 201

        resp = other_agent.post(f"/agent/function_calls/{call_id}/respond", json={"approved": True})

        assert resp.status_code == 403
        refused = [e for e in audit_events(agent, call_id) if e["event"] == "refused"]
        assert len(refused) == 1
        assert "role 'agent' may not respond" in refused[0]["comment"]

    def test_refusals_are_audited_up_to_a_bound(self, service: ApprovalsService) -> None:
        from airflow_provider_hlml.approvals.store import MAX_AUDITED_REFUSALS

        agent, bob = Api(service, service.agent_key), Api(service, service.reviewer2_key)
        call_id = new_call_id("flood")
        body = call_body(call_id, state=policy_state(approvers=["alice@example.com"]))
        assert agent.post("/function_calls", json=body).status_code == 201

        for _ in range(MAX_AUDITED_REFUSALS + 15):
            resp = bob.post(f"/agent/function_calls/{call_id}/respond", json={"approved": True})
            assert resp.status_code == 403

        refused = [e for e in audit_events(agent, call_id) if e["event"] == "refused"]
        assert len(refused) == MAX_AUDITED_REFUSALS
        assert refused[-1]["metadata"] == {"further_refusals_not_audited": True}


class TestRequestsBelongToTheirCreator:
    @pytest.mark.parametrize("action", ["cancel", "escalate_email"])
    def test_another_agent_cannot_cancel_or_escalate(self, service: ApprovalsService, action: str) -> None:
        agent = Api(service, service.agent_key)
        intruder = Api(service, make_key(service, unique("intruder"), "agent"))
        delegate = Api(service, service.delegate_key)
        call_id = new_call_id(action)
        assert agent.post("/function_calls", json=call_body(call_id)).status_code == 201
        body: dict[str, Any] = (
            {"reason": "cancelled"}
            if action == "cancel"
            else {"escalation_msg": "hurry", "additional_recipients": [{"address": "mallory@evil.example"}]}
        )

        for other in (intruder, delegate):
            resp = other.post(f"/agent/function_calls/{call_id}/{action}", json=body)
            assert resp.status_code == 403, resp.text
            assert "created this request, or an admin" in resp.json()["error"]["message"]
        read = agent.get(f"/function_calls/{call_id}").json()
        assert read["status"]["cancelled_at"] is None
        assert [e["event"] for e in audit_events(agent, call_id)] == ["created", "refused", "refused"]

        assert agent.post(f"/agent/function_calls/{call_id}/{action}", json=body).status_code == 200

    def test_an_admin_may_cancel_any_request(self, service: ApprovalsService) -> None:
        agent, admin = Api(service, service.agent_key), Api(service, service.admin_key)
        call_id = new_call_id("admin-cancel")
        assert agent.post("/function_calls", json=call_body(call_id)).status_code == 201
        resp = admin.post(f"/agent/function_calls/{call_id}/cancel", json={"reason": "cancelled"})
        assert resp.status_code == 200
        assert resp.json()["status"]["cancel_reason"] == "cancelled"
