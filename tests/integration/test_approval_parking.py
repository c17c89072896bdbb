"""Parking a gate (Airflow 3.3+ ``awaiting_input``): what the sensor hands Airflow and how it resumes.

Against the real approvals service over HTTP. The sensor parks by raising Airflow's
``TaskAwaitingInput``; the API server resumes it with a decision event (tested with
``wake_gate`` in tests/unit/plugins/test_wake.py and end to end in tests/e2e/test_sqlite_mounted.py);
the scheduler's sweep resumes it at its deadline with the event it gives every task that has no
native Human-in-the-loop row: ``{"error": ..., "error_type": "timeout"}``. Each resumption is
replayed here exactly as the task runner does it (``resume_execution``).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowSkipException, TaskAwaitingInput, TaskDeferred

from airflow_provider_hlml.sensors.approval import PARKED_KWARG, HumanApprovalSensor
from tests.integration.test_approval_restart import approve, make_context

pytestmark = pytest.mark.integration

#: The event the scheduler's sweep resumes a parked task with when it has no native HITL row
#: (airflow/jobs/scheduler_job_runner.py, check_awaiting_input_timeouts).
SWEEP_TIMEOUT_EVENT = {
    "error": "The Human-in-the-loop response timeout has passed without a response.",
    "error_type": "timeout",
}


def park(sensor: HumanApprovalSensor, context: dict[str, Any], method: str = "execute", **kwargs: Any) -> Any:
    """Run ``execute`` (or resume ``method`` with ``kwargs``) and return the park signal it raises."""

    def run() -> None:
        if method == "execute":
            sensor.execute(context)
        else:
            sensor.resume_execution(method, kwargs, context)

    with pytest.raises(TaskAwaitingInput) as parked:
        run()
    assert parked.value.method_name == "execute_complete"
    assert set(parked.value.kwargs or {}) == {PARKED_KWARG}
    return parked.value


def resume(sensor: HumanApprovalSensor, context: dict[str, Any], kept: dict[str, Any], event: Any) -> Any:
    """What the task runner calls once the API server or the sweep resumed the task."""
    return sensor.resume_execution("execute_complete", {**kept, "event": event}, context)


class TestParking:
    def test_parked_gate_keeps_what_resuming_needs(
        self, approvals_service: Any, humanlayer_conn: str, airflow_db: Any
    ) -> None:
        sensor = HumanApprovalSensor(
            task_id="gate",
            subject="Park?",
            approvers=["alice@example.com"],
            response_timeout=120,
            wait_mode="park",
        )
        context = make_context(sensor, try_number=1, run_id="manual__park_keeps")
        parked = park(sensor, context)
        kept = parked.kwargs[PARKED_KWARG]
        assert kept["call_id"] == sensor.call_id_for(context)
        assert kept["humanlayer_conn_id"] == sensor.humanlayer_conn_id
        assert kept["escalated"] is False
        assert kept["policy"]["approvers"] == ["alice@example.com"]
        # The park timeout is the gate's deadline: the scheduler's sweep enforces it.
        assert 115 <= parked.timeout.total_seconds() <= 120
        assert kept["deadline"]

        # The API server hands the decision over (wake_gate builds this event from the request).
        from airflow_provider_hlml.gate.events import settled_event
        from airflow_provider_hlml.gate.policy import ApprovalPolicy

        approve(approvals_service, kept["call_id"])
        call = sensor.hook.get_function_call(kept["call_id"])
        event, refused = settled_event(call, ApprovalPolicy.from_json(kept["policy"]))
        assert refused is None
        assert event is not None
        result = resume(sensor, context, parked.kwargs, dict(event))
        assert result["approved"] is True
        assert result["call_id"] == kept["call_id"]
        assert result["timed_out"] is False

    def test_sweep_at_the_deadline_applies_on_timeout(
        self, approvals_service: Any, humanlayer_conn: str, airflow_db: Any
    ) -> None:
        sensor = HumanApprovalSensor(
            task_id="gate", subject="Nobody?", response_timeout=1, on_timeout="skip", wait_mode="park"
        )
        context = make_context(sensor, try_number=1, run_id="manual__park_sweep_skip")
        parked = park(sensor, context)
        time.sleep(1.2)
        with pytest.raises(AirflowSkipException, match="No decision on approval request"):
            resume(sensor, context, parked.kwargs, SWEEP_TIMEOUT_EVENT)
        # The request was withdrawn as expired, so nobody can decide it any more.
        call = sensor.hook.get_function_call(parked.kwargs[PARKED_KWARG]["call_id"])
        assert call.status is not None
        assert call.status.is_cancelled

    def test_a_decision_just_before_the_deadline_wins_over_the_sweep(
        self, approvals_service: Any, humanlayer_conn: str, airflow_db: Any
    ) -> None:
        sensor = HumanApprovalSensor(
            task_id="gate", subject="Just in time?", response_timeout=1, on_timeout="skip", wait_mode="park"
        )
        context = make_context(sensor, try_number=1, run_id="manual__park_sweep_late")
        parked = park(sensor, context)
        approve(approvals_service, parked.kwargs[PARKED_KWARG]["call_id"])
        time.sleep(1.2)
        result = resume(sensor, context, parked.kwargs, SWEEP_TIMEOUT_EVENT)
        assert result["approved"] is True
        assert result["timed_out"] is False

    def test_escalation_parks_again_until_the_second_deadline(
        self, approvals_service: Any, humanlayer_conn: str, airflow_db: Any
    ) -> None:
        sensor = HumanApprovalSensor(
            task_id="gate",
            subject="Escalate?",
            response_timeout=1,
            on_timeout="escalate",
            escalation_approvers=["bob@example.com"],
            escalation_timeout=300,
            wait_mode="park",
        )
        context = make_context(sensor, try_number=1, run_id="manual__park_escalate")
        first = park(sensor, context)
        time.sleep(1.2)
        second = park(sensor, context, "execute_complete", **first.kwargs, event=SWEEP_TIMEOUT_EVENT)
        kept = second.kwargs[PARKED_KWARG]
        assert kept["escalated"] is True
        assert kept["policy"]["extra_approvers"] == ["bob@example.com"]
        assert 290 <= second.timeout.total_seconds() <= 301
        events = [e["event"] for e in sensor.hook.get_audit(kept["call_id"])]
        assert events.count("escalated") == 1
        # The second deadline passes: on_timeout="escalate" then fails.
        from airflow.sdk.exceptions import AirflowSensorTimeout

        with pytest.raises(AirflowSensorTimeout, match="after escalating"):
            resume(sensor, context, second.kwargs, {**SWEEP_TIMEOUT_EVENT})  # as if 300 s had passed
        assert [e["event"] for e in sensor.hook.get_audit(kept["call_id"])].count("escalated") == 1


class TestWaitModeChoice:
    def test_auto_defers_when_the_backend_does_not_push(
        self, approvals_service: Any, humanlayer_conn: str, airflow_db: Any
    ) -> None:
        from airflow_provider_hlml.gate.wire import FEATURE_PUSH

        sensor = HumanApprovalSensor(task_id="gate", subject="Auto?", deferrable=True, response_timeout=60)
        assert sensor.wait_mode is None  # [hlml] wait_mode: auto
        assert FEATURE_PUSH not in sensor.hook.features()
        context = make_context(sensor, try_number=1, run_id="manual__auto_defer")
        with pytest.raises(TaskDeferred):
            sensor.execute(context)

    def test_defer_overrides_and_park_needs_no_push(
        self, approvals_service: Any, humanlayer_conn: str, airflow_db: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AIRFLOW__HLML__WAIT_MODE", "park")
        sensor = HumanApprovalSensor(task_id="gate", subject="Configured?", response_timeout=60)
        park(sensor, make_context(sensor, try_number=1, run_id="manual__conf_park"))
        sensor = HumanApprovalSensor(
            task_id="gate", subject="Overridden?", response_timeout=60, deferrable=True, wait_mode="defer"
        )
        with pytest.raises(TaskDeferred):
            sensor.execute(make_context(sensor, try_number=1, run_id="manual__override_defer"))

    def test_an_airflow_that_cannot_park_defers_and_refuses_an_explicit_park(
        self, approvals_service: Any, humanlayer_conn: str, airflow_db: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Airflow 3.1 / 3.2 have no ``TaskAwaitingInput``: ``auto`` keeps the deferrable path."""
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_provider_hlml.sensors import approval

        monkeypatch.setattr(approval, "_awaiting_input", lambda: None)
        monkeypatch.setenv("AIRFLOW__HLML__WAIT_MODE", "auto")
        sensor = HumanApprovalSensor(
            task_id="gate", subject="Old Airflow?", deferrable=True, response_timeout=60
        )
        with pytest.raises(TaskDeferred):
            sensor.execute(make_context(sensor, try_number=1, run_id="manual__old_airflow_auto"))
        sensor = HumanApprovalSensor(task_id="gate", subject="Old Airflow, park?", wait_mode="park")
        with pytest.raises(AirflowFailException, match=r"needs Airflow 3\.3"):
            sensor.execute(make_context(sensor, try_number=1, run_id="manual__old_airflow_park"))

    def test_wait_mode_is_checked_at_parse_time(self) -> None:
        with pytest.raises(ValueError, match="wait_mode must be one of"):
            HumanApprovalSensor(task_id="gate", subject="?", wait_mode="sleep")
