"""HTTP semantics of the approvals service: auth, roles, policy, limits, lists, audit, metrics."""

from __future__ import annotations

import datetime as dt
import json

import httpx
import pytest

from tests.approvals.conftest import Api, call_body, new_call_id, policy_state
from tests.fixtures.approvals import ApprovalsService


def assert_error(resp: httpx.Response, status: int, *needles: str) -> dict[str, str]:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) >= {"message", "code"}
    for needle in needles:
        assert needle in error["message"], error["message"]
    return error


def create(api: Api, **kwargs: object) -> dict:
    resp = api.post("/function_calls", json=call_body(**kwargs))  # type: ignore[arg-type]
    assert resp.status_code == 201, resp.text
    return resp.json()


class TestAuthentication:
    def test_health_needs_no_key(self, approvals_service: ApprovalsService) -> None:
        for url in (approvals_service.root_url + "/healthz", approvals_service.base_url + "/healthz"):
            health = httpx.get(url).json()
            assert health["status"] == "ok"
            assert health["long_poll_waiters"] >= 0

    def test_missing_key_is_401(self, approvals_service: ApprovalsService) -> None:
        error = assert_error(Api(approvals_service, None).get("/function_calls"), 401, "missing API key")
        assert error["code"] == "unauthorized"

    def test_wrong_key_is_401(self, approvals_service: ApprovalsService) -> None:
        assert_error(Api(approvals_service, "hl_wrong").get("/metrics/approvals"), 401, "invalid")

    def test_key_is_not_echoed(self, approvals_service: ApprovalsService) -> None:
        resp = Api(approvals_service, "hl_secret-value-123").get("/function_calls")
        assert "secret-value-123" not in resp.text


class TestRoles:
    def test_reviewer_cannot_create(self, as_alice: Api) -> None:
        assert_error(as_alice.post("/function_calls", json=call_body()), 403, "reviewer")

    def test_agent_cannot_respond(self, as_agent: Api) -> None:
        call = create(as_agent)
        resp = as_agent.post(f"/agent/function_calls/{call['call_id']}/respond", json={"approved": True})
        assert_error(resp, 403, "agent")

    def test_reviewer_cannot_cancel(self, as_agent: Api, as_alice: Api) -> None:
        call = create(as_agent)
        assert_error(as_alice.post(f"/agent/function_calls/{call['call_id']}/cancel", json={}), 403)

    def test_creating_key_never_responds(self, as_admin: Api) -> None:
        call = create(as_admin)
        resp = as_admin.post(f"/agent/function_calls/{call['call_id']}/respond", json={"approved": True})
        assert_error(resp, 403, "created this request")

    def test_admin_responds_to_others_calls(self, as_agent: Api, as_admin: Api) -> None:
        call = create(as_agent)
        resp = as_admin.post(f"/agent/function_calls/{call['call_id']}/respond", json={"approved": True})
        assert resp.status_code == 200
        assert resp.json()["status"]["user_info"]["principal"] == "root"


class TestPolicy:
    def test_only_listed_approvers(self, as_agent: Api, as_alice: Api, as_bob: Api) -> None:
        call = create(as_agent, state=policy_state(approvers=["bob@example.com"]))
        path = f"/agent/function_calls/{call['call_id']}/respond"
        assert_error(as_alice.post(path, json={"approved": True}), 403, "not one of the approvers")
        assert as_bob.post(path, json={"approved": True}).status_code == 200
        events = as_agent.get(f"/function_calls/{call['call_id']}/audit").json()
        assert [e["event"] for e in events] == ["created", "refused", "responded"]
        assert events[1]["actor"] == "alice"
        assert "approvers" in events[1]["comment"]

    def test_approvers_match_names_too(self, as_agent: Api, as_alice: Api) -> None:
        call = create(as_agent, state=policy_state(approvers=["Alice"]))
        resp = as_alice.post(f"/agent/function_calls/{call['call_id']}/respond", json={"approved": True})
        assert resp.status_code == 200

    def test_requester_cannot_self_approve(self, as_agent: Api, as_alice: Api) -> None:
        call = create(as_agent, state=policy_state(requester="alice@example.com"))
        resp = as_alice.post(f"/agent/function_calls/{call['call_id']}/respond", json={"approved": True})
        assert_error(resp, 403, "self-approval")

    def test_requester_may_when_allowed(self, as_agent: Api, as_alice: Api) -> None:
        call = create(as_agent, state=policy_state(requester="alice", allow_self_approval=True))
        resp = as_alice.post(f"/agent/function_calls/{call['call_id']}/respond", json={"approved": True})
        assert resp.status_code == 200

    def test_escalation_channel_adds_approvers(self, as_agent: Api, as_bob: Api) -> None:
        call = create(as_agent, state=policy_state(approvers=["carol@example.com"]))
        path = f"/agent/function_calls/{call['call_id']}"
        assert as_bob.post(f"{path}/respond", json={"approved": True}).status_code == 403
        escalation = {"escalation_msg": "urgent", "channel": {"email": {"address": "bob@example.com"}}}
        assert as_agent.post(f"{path}/escalate_email", json=escalation).status_code == 200
        assert as_bob.post(f"{path}/respond", json={"approved": True}).status_code == 200
        events = [e["event"] for e in as_agent.get(f"/function_calls/{call['call_id']}/audit").json()]
        assert events == ["created", "refused", "escalated", "responded"]


class TestDelegate:
    def test_records_both_identities(self, as_agent: Api, as_delegate: Api) -> None:
        call = create(as_agent, state=policy_state(approvers=["alice@example.com"]))
        resp = as_delegate.post(
            f"/agent/function_calls/{call['call_id']}/respond",
            json={
                "approved": False,
                "comment": "not yet",
                "user_info": {"name": "alice", "email": "alice@example.com"},
            },
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"]["user_info"] == {
            "name": "alice",
            "email": "alice@example.com",
            "principal": "airflow-ui",
            "via_delegate": True,
        }
        responded = as_agent.get(f"/function_calls/{call['call_id']}/audit").json()[-1]
        assert (responded["event"], responded["actor"], responded["on_behalf_of"]) == (
            "responded",
            "airflow-ui",
            "alice",
        )

    def test_requires_user_info(self, as_agent: Api, as_delegate: Api) -> None:
        call = create(as_agent)
        resp = as_delegate.post(f"/agent/function_calls/{call['call_id']}/respond", json={"approved": True})
        assert_error(resp, 422, "user_info")

    def test_policy_applies_to_the_person(self, as_agent: Api, as_delegate: Api) -> None:
        call = create(as_agent, state=policy_state(approvers=["alice@example.com"]))
        resp = as_delegate.post(
            f"/agent/function_calls/{call['call_id']}/respond",
            json={"approved": True, "user_info": {"name": "mallory", "email": "mallory@example.com"}},
        )
        assert_error(resp, 403, "mallory")

    def test_reviewer_user_info_is_ignored(self, as_agent: Api, as_alice: Api) -> None:
        call = create(as_agent)
        resp = as_alice.post(
            f"/agent/function_calls/{call['call_id']}/respond",
            json={"approved": True, "user_info": {"name": "bob", "email": "bob@example.com"}},
        )
        assert resp.json()["status"]["user_info"]["name"] == "alice"


class TestBadInput:
    def test_malformed_json_is_422(self, as_agent: Api) -> None:
        resp = as_agent.post(
            "/function_calls", content=b'{"run_id": ', headers={"Content-Type": "application/json"}
        )
        assert_error(resp, 422)

    def test_wrong_types_name_the_field(self, as_agent: Api) -> None:
        body = call_body()
        body["spec"]["kwargs"] = "not a dict"
        assert_error(as_agent.post("/function_calls", json=body), 422, "spec.kwargs")

    def test_missing_field(self, as_agent: Api) -> None:
        body = call_body()
        del body["spec"]["fn"]
        assert_error(as_agent.post("/function_calls", json=body), 422, "spec.fn")

    def test_respond_needs_approved(self, as_agent: Api, as_alice: Api) -> None:
        call = create(as_agent)
        resp = as_alice.post(f"/agent/function_calls/{call['call_id']}/respond", json={"approved": None})
        assert_error(resp, 422, "approved")

    def test_unknown_reject_option(self, as_agent: Api, as_alice: Api) -> None:
        call = create(as_agent, reject_options=[{"name": "retrain"}])
        resp = as_alice.post(
            f"/agent/function_calls/{call['call_id']}/respond",
            json={"approved": False, "comment": "x", "reject_option_name": "bogus"},
        )
        assert_error(resp, 422, "bogus", "retrain")

    def test_body_too_large_is_413(self, as_agent: Api) -> None:
        body = call_body()
        body["spec"]["kwargs"]["blob"] = "x" * 2_000_000
        error = assert_error(as_agent.post("/function_calls", json=body), 413, "limit")
        assert error["code"] == "payload_too_large"

    def test_streamed_body_too_large_is_413(self, as_agent: Api) -> None:
        def chunks():  # no Content-Length: the limit applies while streaming
            yield b'{"run_id": "r", "call_id": "c", "spec": {"fn": "f", "kwargs": {"b": "'
            for _ in range(40):
                yield b"y" * 65536
            yield b'"}}}'

        assert_error(as_agent.post("/function_calls", content=chunks()), 413)

    def test_unknown_fields_are_ignored(self, as_agent: Api) -> None:
        body = call_body()
        body["future_field"] = {"x": 1}
        body["spec"]["another"] = True
        assert as_agent.post("/function_calls", json=body).status_code == 201

    def test_nul_and_nan_are_refused(self, as_agent: Api) -> None:
        body = call_body()
        body["spec"]["kwargs"]["s"] = "a\x00b"
        assert_error(as_agent.post("/function_calls", json=body), 422, "NUL")
        raw = json.dumps(call_body()).replace('"kwargs": {', '"kwargs": {"x": NaN, ')
        resp = as_agent.post("/function_calls", content=raw, headers={"Content-Type": "application/json"})
        assert_error(resp, 422, "finite")

    def test_deep_nesting_is_refused(self, as_agent: Api) -> None:
        for depth in (40, 600):  # one within the JSON parser's limit, one far over the service's
            body = json.dumps(call_body()).replace(
                '"kwargs": {', '"kwargs": {"x": ' + "[" * depth + "]" * depth + ", "
            )
            resp = as_agent.post(
                "/function_calls", content=body, headers={"Content-Type": "application/json"}
            )
            assert_error(resp, 422, "nested deeper")

    def test_out_of_range_dates(self, as_agent: Api) -> None:
        for param in ("since", "until"):
            resp = as_agent.get("/function_calls", params={param: "0001-01-01T00:00:00+01:00"})
            assert_error(resp, 422, f"query.{param}")

    def test_bad_call_id_in_body(self, as_agent: Api) -> None:
        assert_error(as_agent.post("/function_calls", json=call_body("a/b")), 422, "call_id")

    def test_unknown_ids_are_404(self, as_agent: Api) -> None:
        missing = new_call_id("missing")
        assert_error(as_agent.get(f"/function_calls/{missing}"), 404, missing)
        assert_error(as_agent.get(f"/contact_requests/{missing}"), 404)
        assert_error(as_agent.get(f"/function_calls/{missing}/audit"), 404)
        assert_error(as_agent.post(f"/agent/function_calls/{missing}/cancel", json={}), 404)

    def test_unknown_route_and_method(self, as_agent: Api) -> None:
        assert_error(as_agent.get("/nothing-here"), 404)
        assert_error(as_agent.delete("/function_calls"), 405)

    def test_bad_query_values(self, as_agent: Api) -> None:
        assert_error(as_agent.get("/function_calls", params={"status": "maybe"}), 422, "status")
        assert_error(as_agent.get("/function_calls", params={"limit": 0}), 422, "limit")
        assert_error(as_agent.get("/function_calls/x", params={"wait": -1}), 422, "wait")
        assert_error(as_agent.get("/function_calls", params={"since": "yesterday"}), 422, "since")


class TestConcurrency:
    def test_racing_reviewers_one_wins(self, approvals_service: ApprovalsService, as_agent: Api) -> None:
        from concurrent.futures import ThreadPoolExecutor

        ids = [create(as_agent)["call_id"] for _ in range(5)]
        keys = [approvals_service.reviewer_key, approvals_service.reviewer2_key, approvals_service.admin_key]

        def respond(args: tuple[str, str]) -> int:
            call_id, key = args
            with Api(approvals_service, key).client as client:
                return client.post(
                    f"/agent/function_calls/{call_id}/respond", json={"approved": True}
                ).status_code

        with ThreadPoolExecutor(15) as pool:
            codes = list(pool.map(respond, [(c, k) for c in ids for k in keys]))
        assert sorted(codes) == [200] * 5 + [409] * 10
        for call_id in ids:
            events = [e["event"] for e in as_agent.get(f"/function_calls/{call_id}/audit").json()]
            assert events == ["created", "responded"]


class TestCancel:
    def test_timeout_is_expired(self, as_agent: Api, as_alice: Api) -> None:
        call = create(as_agent)
        path = f"/agent/function_calls/{call['call_id']}"
        resp = as_agent.post(f"{path}/cancel", json={"reason": "timeout", "comment": "no answer in 24h"})
        status = resp.json()["status"]
        assert status["cancel_reason"] == "timeout"
        assert status["cancelled_at"]
        assert status["approved"] is None
        assert_error(as_alice.post(f"{path}/respond", json={"approved": True}), 409, "cancelled")
        assert_error(as_agent.post(f"{path}/cancel", json={"reason": "killed"}), 409)
        events = as_agent.get(f"/function_calls/{call['call_id']}/audit").json()
        assert events[-1]["event"] == "expired"
        assert events[-1]["comment"] == "no answer in 24h"

    def test_bad_reason(self, as_agent: Api) -> None:
        call = create(as_agent)
        resp = as_agent.post(f"/agent/function_calls/{call['call_id']}/cancel", json={"reason": "bored"})
        assert_error(resp, 422, "reason")


class TestListsAndMetrics:
    def test_filters_and_pagination(self, as_agent: Api, as_alice: Api) -> None:
        run_id = new_call_id("run")
        ids = [create(as_agent, run_id=run_id, fn="list_test")["call_id"] for _ in range(3)]
        as_alice.post(f"/agent/function_calls/{ids[0]}/respond", json={"approved": True})
        as_agent.post(f"/agent/function_calls/{ids[1]}/cancel", json={"reason": "killed"})
        listed = as_agent.get("/function_calls", params={"run_id": run_id})
        assert listed.headers["X-Total-Count"] == "3"
        assert [c["call_id"] for c in listed.json()] == ids[::-1]
        by_status = {
            s: [
                c["call_id"]
                for c in as_agent.get("/function_calls", params={"run_id": run_id, "status": s}).json()
            ]
            for s in ("pending", "approved", "rejected", "cancelled")
        }
        assert by_status == {"pending": [ids[2]], "approved": [ids[0]], "rejected": [], "cancelled": [ids[1]]}
        page = as_agent.get("/function_calls", params={"run_id": run_id, "limit": 1, "offset": 1}).json()
        assert [c["call_id"] for c in page] == [ids[1]]
        future = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).isoformat()
        assert as_agent.get("/function_calls", params={"run_id": run_id, "since": future}).json() == []
        assert len(as_agent.get("/function_calls", params={"fn": "list_test", "until": future}).json()) >= 3

    def test_metrics_from_the_database(self, approvals_service: ApprovalsService, as_agent: Api) -> None:
        from airflow_provider_hlml.approvals import db, store

        # Compare with the same numbers counted straight from the rows.
        created = [create(as_agent)["call_id"] for _ in range(2)]
        as_agent.post(f"/agent/function_calls/{created[0]}/cancel", json={"reason": "timeout"})
        metrics = as_agent.get("/metrics/approvals").json()
        engine = db.make_engine(approvals_service.database_url, pool_size=1)
        with db.make_sessionmaker(engine)() as session:
            rows = session.query(db_models().ApprovalRequest).filter_by(kind=store.FUNCTION_CALL).all()
        engine.dispose()
        assert metrics["total"] == len(rows)
        assert metrics["pending"] == sum(r.state == "pending" for r in rows)
        assert metrics["approved"] == sum(r.state == "approved" for r in rows)
        assert metrics["expired"] == sum(r.cancel_reason == "timeout" for r in rows)
        decided = metrics["approved"] + metrics["rejected"]
        assert metrics["approval_rate"] == pytest.approx(metrics["approved"] / decided)
        assert 0 <= metrics["median_response_seconds"] <= metrics["p95_response_seconds"]
        closed = metrics["total"] - metrics["pending"]
        assert metrics["timeout_rate"] == pytest.approx(metrics["expired"] / closed)


def db_models():  # imported late: keeps collection light
    from airflow_provider_hlml.approvals import models

    return models
