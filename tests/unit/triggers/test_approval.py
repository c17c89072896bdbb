"""HumanApprovalTrigger against a local HTTP server speaking the HumanLayer API, with injected faults."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from airflow_provider_hlml.gate.wire import UserInfo
from airflow_provider_hlml.hooks.humanlayer import SESSION_POOL
from airflow_provider_hlml.triggers.approval import (
    EVENT_STATUSES,
    HumanApprovalTrigger,
    refusal_reason,
)
from tests.fixtures.faulty_server import FaultyHumanLayerServer
from tests.unit.sensors.test_approval import TaskInstanceRecord

CLASSPATH = "airflow_provider_hlml.triggers.approval.HumanApprovalTrigger"
ALICE = {"name": "alice", "email": "alice@example.com", "principal": "alice"}
BOB = {"name": "bob", "email": "bob@example.com", "principal": "bob"}


def _in(seconds: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat()


def _trigger(conn_id: str, **kwargs) -> HumanApprovalTrigger:
    kwargs.setdefault("call_id", "call-1")
    kwargs.setdefault("poll_interval", 0.2)
    kwargs.setdefault("long_poll_seconds", 1)
    return HumanApprovalTrigger(humanlayer_conn_id=conn_id, **kwargs)


def _decide_later(server: FaultyHumanLayerServer, delay: float, **kwargs) -> threading.Timer:
    timer = threading.Timer(delay, server.decide, kwargs=kwargs)
    timer.start()
    return timer


async def _first_event(trigger: HumanApprovalTrigger, timeout: float = 20) -> dict:
    gen = trigger.run()
    try:
        event = await asyncio.wait_for(gen.__anext__(), timeout)
    finally:
        await gen.aclose()
    assert event.payload["status"] in EVENT_STATUSES
    return event.payload


class TestHumanApprovalTrigger:
    def test_serialize_exact_tuple(self):
        trigger = HumanApprovalTrigger(
            call_id="hlml-x-1",
            humanlayer_conn_id="hl",
            deadline=datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
            poll_interval=2,
            long_poll_seconds=10,
            approvers=["alice@example.com"],
            requester="carol",
            allow_self_approval=False,
            escalated=True,
            finish={"approval_url": "http://airflow/x", "xcom": True},
        )
        assert trigger.serialize() == (
            CLASSPATH,
            {
                "call_id": "hlml-x-1",
                "humanlayer_conn_id": "hl",
                "deadline": "2030-01-02T03:04:05+00:00",
                "poll_interval": 2.0,
                "long_poll_seconds": 10,
                "approvers": ["alice@example.com"],
                "requester": "carol",
                "allow_self_approval": False,
                "policy": None,
                "escalated": True,
                "finish": {"approval_url": "http://airflow/x", "xcom": True},
            },
        )

    def test_serialize_round_trip(self):
        original = HumanApprovalTrigger(call_id="c", deadline="2030-01-02T03:04:05+00:00").serialize()
        classpath, kwargs = original
        assert HumanApprovalTrigger(**kwargs).serialize() == original
        assert classpath == CLASSPATH

    def test_rejects_non_positive_poll_interval(self):
        with pytest.raises(ValueError, match="poll_interval"):
            HumanApprovalTrigger(call_id="c", poll_interval=0)

    async def test_approve_event(self, faulty_server, faulty_conn):
        faulty_server.add_call("call-1", kwargs={"subject": "Go?", "context": {"model_version": "3"}})
        timer = _decide_later(
            faulty_server, 0.3, call_id="call-1", approved=True, comment="ok", user_info=ALICE
        )
        payload = await _first_event(_trigger(faulty_conn, deadline=_in(20)))
        timer.join()
        assert payload["status"] == "approved"
        assert payload["approved"] is True
        assert payload["comment"] == "ok"
        # The context as sent travels with the decision: the resumed task need not read it again.
        assert payload["context"] == {"model_version": "3"}
        assert payload["responded_by_user"] == {
            "id": "alice",
            "name": "alice",
            "email": "alice@example.com",
            "via_delegate": None,
        }
        assert payload["responded_at"] is not None
        # Long-polling: the decision was seen without a burst of reads.
        assert faulty_server.count("GET", "/function_calls/call-1") <= 3

    async def test_reject_event(self, faulty_server, faulty_conn):
        faulty_server.add_call("call-1")
        faulty_server.decide("call-1", approved=False, comment="too risky", reject_option_name="needs_review")
        payload = await _first_event(_trigger(faulty_conn))
        assert payload["status"] == "rejected"
        assert payload["approved"] is False
        assert payload["reject_option"] == "needs_review"
        assert payload["comment"] == "too risky"

    async def test_timeout_event(self, faulty_server, faulty_conn):
        faulty_server.add_call("call-1")
        started = asyncio.get_running_loop().time()
        payload = await _first_event(_trigger(faulty_conn, deadline=_in(1.0)))
        assert payload["status"] == "timeout"
        assert payload["escalated"] is False
        assert payload["requested_at"] is not None
        assert asyncio.get_running_loop().time() - started < 8  # the trigger enforced the 1 s deadline itself

    async def test_past_deadline_still_reports_a_decision(self, faulty_server, faulty_conn):
        faulty_server.add_call("call-1")
        faulty_server.decide("call-1", approved=True, user_info=ALICE)
        payload = await _first_event(_trigger(faulty_conn, deadline=_in(-5)))
        assert payload["status"] == "approved"

    async def test_cancelled_event(self, faulty_server, faulty_conn):
        faulty_server.add_call("call-1")
        faulty_server.calls["call-1"]["status"].update(cancelled_at=_in(0), cancel_reason="killed")
        payload = await _first_event(_trigger(faulty_conn))
        assert payload == {
            "status": "cancelled",
            "call_id": "call-1",
            "reason": "killed",
            "cancelled_at": payload["cancelled_at"],
        }
        assert payload["cancelled_at"]

    @pytest.mark.parametrize("fault", [500, 503, 429, "timeout", "reset"])
    async def test_backs_off_on_transient_faults(self, faulty_server, faulty_conn, fault):
        faulty_server.hang_seconds = 3.5  # longer than the connection's 2 s timeout + 0 s wait
        faulty_server.add_call("call-1")
        faulty_server.decide("call-1", approved=True, user_info=ALICE)
        faulty_server.inject(fault, times=2, path_re="/function_calls/call-1")
        payload = await _first_event(_trigger(faulty_conn, long_poll_seconds=0, deadline=_in(30)))
        assert payload["status"] == "approved"
        assert faulty_server.count("GET", "/function_calls/call-1") == 3

    async def test_transient_faults_until_deadline_end_in_timeout(self, faulty_server, faulty_conn):
        faulty_server.add_call("call-1")
        faulty_server.inject(503, times=1000)
        payload = await _first_event(_trigger(faulty_conn, deadline=_in(2.0)))
        assert payload["status"] == "timeout"
        assert faulty_server.count("GET", "/function_calls/call-1") >= 2

    @pytest.mark.parametrize(
        ("fault", "http_status", "hint"),
        [
            (401, 401, "Check the API key"),
            (403, 403, "check its role"),
            (404, 404, "Check the base URL"),
            ("nonjson", 200, "not JSON"),
        ],
    )
    async def test_fails_fast(self, faulty_server, faulty_conn, fault, http_status, hint):
        faulty_server.add_call("call-1")
        faulty_server.inject(fault, times=5)
        payload = await _first_event(_trigger(faulty_conn, deadline=_in(30)))
        assert payload["status"] == "error"
        assert payload["http_status"] == http_status
        assert hint in payload["message"]
        assert "hl_faulty" in payload["message"]
        assert faulty_server.api_key not in payload["message"]
        assert faulty_server.count("GET", "/function_calls/call-1") == 1

    async def test_unknown_request_fails_fast(self, faulty_server, faulty_conn):
        payload = await _first_event(_trigger(faulty_conn, call_id="never-created", deadline=_in(30)))
        assert payload["status"] == "error"
        assert payload["http_status"] == 404

    async def test_decision_by_non_approver_is_ignored(self, faulty_server, faulty_conn, capsys):
        faulty_server.add_call("call-1")
        faulty_server.decide("call-1", approved=True, user_info=BOB)
        payload = await _first_event(
            _trigger(faulty_conn, approvers=["alice@example.com"], deadline=_in(1.5))
        )
        assert payload["status"] == "timeout"
        logged = capsys.readouterr().out
        assert "bob" in logged
        assert "not one of the approvers" in logged
        # The refused decision is returned at once by the server: the trigger must not spin on it.
        assert faulty_server.count("GET", "/function_calls/call-1") < 15

    async def test_self_approval_is_ignored_then_approver_decision_wins(
        self, faulty_server, faulty_conn, capsys
    ):
        faulty_server.add_call("call-1")
        faulty_server.decide("call-1", approved=True, user_info=ALICE)
        timer = _decide_later(
            faulty_server, 0.8, call_id="call-1", approved=True, comment="bob ok", user_info=BOB
        )
        payload = await _first_event(_trigger(faulty_conn, requester="alice", deadline=_in(20)))
        timer.join()
        assert "self-approval is not allowed" in capsys.readouterr().out
        assert payload["status"] == "approved"
        assert payload["responded_by_user"]["name"] == "bob"

    async def test_polls_when_server_ignores_long_polling(self, faulty_server, faulty_conn):
        faulty_server.long_poll = False
        faulty_server.add_call("call-1")
        payload = await _first_event(
            _trigger(faulty_conn, poll_interval=0.3, long_poll_seconds=20, deadline=_in(1.5))
        )
        assert payload["status"] == "timeout"
        reads = faulty_server.count("GET", "/function_calls/call-1")
        assert 3 <= reads <= 8

    async def test_recreated_trigger_reads_the_same_request(self, faulty_server, faulty_conn):
        faulty_server.add_call("call-1")
        first = _trigger(faulty_conn, deadline=_in(30))
        gen = first.run()
        pending = asyncio.ensure_future(gen.__anext__())
        await asyncio.sleep(0.5)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        await gen.aclose()
        await first.cleanup()
        _, kwargs = first.serialize()
        faulty_server.decide("call-1", approved=True, user_info=ALICE)
        payload = await _first_event(HumanApprovalTrigger(**kwargs))
        assert payload["status"] == "approved"
        assert faulty_server.count("POST", "/function_calls") == 0
        assert list(faulty_server.calls) == ["call-1"]

    async def test_triggers_share_one_pooled_session(self, faulty_server, faulty_conn):
        for i in range(5):
            faulty_server.add_call(f"call-{i}")
        triggers = [_trigger(faulty_conn, call_id=f"call-{i}", deadline=_in(20)) for i in range(5)]
        gens = [t.run() for t in triggers]
        tasks = [asyncio.ensure_future(g.__anext__()) for g in gens]
        await asyncio.sleep(0.5)
        session = SESSION_POOL.session_for_running_loop()
        assert session is not None
        assert SESSION_POOL.users() >= 5
        faulty_server.decide("call-0", approved=True, user_info=ALICE)
        first = await asyncio.wait_for(tasks[0], 10)
        assert first.payload["status"] == "approved"
        await gens[0].aclose()
        # One trigger finishing leaves the shared session open for the others.
        assert not session.closed
        assert SESSION_POOL.session_for_running_loop() is session
        for i in range(1, 5):
            faulty_server.decide(f"call-{i}", approved=False, comment="no", user_info=ALICE)
        for task, gen in zip(tasks[1:], gens[1:], strict=True):
            assert (await asyncio.wait_for(task, 10)).payload["status"] == "rejected"
            await gen.aclose()
        assert session.closed
        assert SESSION_POOL.users() == 0


class TestRefusalReason:
    def test_any_reviewer_when_no_approvers(self):
        assert refusal_reason(UserInfo(**BOB), [], None, False) is None

    def test_matches_email_or_name_case_insensitively(self):
        assert refusal_reason(UserInfo(**ALICE), ["Alice@Example.com"], None, False) is None
        assert refusal_reason(UserInfo(**ALICE), ["ALICE"], None, False) is None

    def test_non_approver(self):
        assert "not one of the approvers" in refusal_reason(UserInfo(**BOB), ["alice"], None, False)

    def test_self_approval(self):
        assert "self-approval" in refusal_reason(UserInfo(**ALICE), [], "alice", False)
        assert refusal_reason(UserInfo(**ALICE), [], "alice", True) is None

    def test_unknown_decider_is_left_to_the_server(self):
        assert refusal_reason(None, ["alice"], "alice", False) is None


class TestEndingInPlace:
    """Which events end the gate in the triggerer; the ending itself (the XCom written through the
    triggerer's execution API client, ``TaskSuccessEvent``) runs in a real triggerer in
    tests/e2e/test_stack_scenarios.py (TestEndInPlace, TestTriggererChaos)."""

    FINISH = {"approval_url": "http://airflow/hlml/x", "xcom": True, "links": {"_link_X": "http://x"}}

    def _context_call(self, server: FaultyHumanLayerServer, **decision: Any) -> None:
        server.add_call("call-1", kwargs={"subject": "Go?", "context": {"model_version": "3"}})
        server.decide("call-1", user_info=ALICE, **decision)

    async def test_without_a_task_instance_the_decision_event_fires(self, faulty_server, faulty_conn):
        self._context_call(faulty_server, approved=True, comment="ok")
        payload = await _first_event(_trigger(faulty_conn, finish=self.FINISH))
        assert payload["status"] == "approved"

    async def test_a_rejection_fires_the_decision_event(self, faulty_server, faulty_conn):
        self._context_call(faulty_server, approved=False, comment="no")
        trigger = _trigger(faulty_conn, finish=self.FINISH)
        trigger.task_instance = TaskInstanceRecord()  # type: ignore[assignment]
        payload = await _first_event(trigger)
        assert payload["status"] == "rejected"

    async def test_a_result_it_cannot_write_resumes_the_task_instead(self, faulty_server, faulty_conn):
        """An approval it may end, with a task instance, but no execution API client in this
        process: the write fails, and the task resumes on a worker with the decision rather than
        ending without its result (a TaskSuccessEvent's payload is "success", not this)."""
        self._context_call(faulty_server, approved=True, comment="ok")
        trigger = _trigger(faulty_conn, finish=self.FINISH)
        trigger.task_instance = TaskInstanceRecord()  # type: ignore[assignment]
        payload = await _first_event(trigger)
        assert payload["status"] == "approved"
        assert payload["comment"] == "ok"
