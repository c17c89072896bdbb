from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from airflow_provider_hlml.plugins import views
from airflow_provider_hlml.plugins.auth import Identity

NOW = dt.datetime.now(dt.timezone.utc)


def _call(status: dict[str, Any] | None = None, **policy: Any) -> dict[str, Any]:
    return {
        "run_id": "r",
        "call_id": "c1",
        "spec": {
            "fn": "model_promotion",
            "kwargs": {
                "subject": "Promote v3",
                "body": "b",
                "context": {"model_version": "3"},
                "urgency": "high",
            },
            "reject_options": [{"name": "retrain", "title": "Retrain"}, {"title": "no name"}],
            "state": {
                "hlml": {
                    "approvers": policy.get("approvers", []),
                    "requester": policy.get("requester"),
                    "allow_self_approval": policy.get("allow_self_approval", False),
                    "airflow": {"dag_id": "churn", "run_id": "manual__1", "task_id": "approve"},
                }
            },
        },
        "status": status,
    }


class TestNormalizeCall:
    @pytest.mark.parametrize(
        ("status", "expected"),
        [
            (None, "pending"),
            ({"requested_at": NOW.isoformat(), "approved": None}, "pending"),
            ({"approved": True}, "approved"),
            ({"approved": False, "comment": "no"}, "rejected"),
            ({"approved": None, "cancelled_at": NOW.isoformat(), "cancel_reason": "timeout"}, "expired"),
            ({"approved": None, "cancelled_at": NOW.isoformat(), "cancel_reason": "killed"}, "cancelled"),
        ],
    )
    def test_status(self, status: dict[str, Any] | None, expected: str) -> None:
        assert views.normalize_call(_call(status), airflow_base_path="")["status"] == expected

    def test_policy_task_link_and_response_time(self) -> None:
        requested = NOW - dt.timedelta(minutes=5)
        item = views.normalize_call(
            _call(
                {
                    "requested_at": requested.isoformat(),
                    "responded_at": NOW.isoformat(),
                    "approved": True,
                    "user_info": {"name": "ann", "email": "ann@example.com", "principal": "ui"},
                },
                approvers=["ann@example.com"],
                requester="bob",
            ),
            airflow_base_path="/airflow",
        )
        assert item["approvers"] == ["ann@example.com"]
        assert item["requester"] == "bob"
        assert item["ti_url"] == "/airflow/dags/churn/runs/manual__1/tasks/approve"
        assert item["response_seconds"] == pytest.approx(300, abs=0.01)
        assert item["responded_by"] == "ann"
        assert item["reject_options"] == [{"name": "retrain", "title": "Retrain", "description": None}]
        assert item["context"] == {"model_version": "3"}

    def test_malformed_state_is_tolerated(self) -> None:
        call = {"call_id": "x", "spec": {"fn": "f", "kwargs": {}, "state": {"hlml": "junk"}}, "status": None}
        item = views.normalize_call(call, airflow_base_path="")
        assert item["approvers"] == []
        assert item["dag_id"] is None
        assert item["subject"] == "f"


class TestDecisionBlockReason:
    def _item(self, **policy: Any) -> dict[str, Any]:
        return views.normalize_call(_call(None, **policy), airflow_base_path="")

    def test_allowed(self) -> None:
        ann = Identity(name="ann", email="ANN@example.com", user_id="ann")
        assert (
            views.decision_block_reason(self._item(approvers=["ann@example.com"]), ann, may_edit_dag=True)
            is None
        )
        assert views.decision_block_reason(self._item(), ann, may_edit_dag=True) is None

    def test_refusals(self) -> None:
        bob = Identity(name="bob", email=None, user_id="bob")
        assert "edit access to DAG churn" in str(
            views.decision_block_reason(self._item(), bob, may_edit_dag=False)
        )
        assert "ann" in str(
            views.decision_block_reason(self._item(approvers=["ann"]), bob, may_edit_dag=True)
        )
        own = self._item(requester="bob")
        assert "self-approval" in str(views.decision_block_reason(own, bob, may_edit_dag=True))
        own_allowed = self._item(requester="bob", allow_self_approval=True)
        assert views.decision_block_reason(own_allowed, bob, may_edit_dag=True) is None
        decided = views.normalize_call(_call({"approved": True}), airflow_base_path="")
        assert views.decision_block_reason(decided, bob, may_edit_dag=True) == "Already approved"


def _item(status: str, seconds: float | None = None, day: int = 0) -> dict[str, Any]:
    responded = (NOW - dt.timedelta(days=day)).isoformat() if status != "pending" else None
    return {
        "status": status,
        "response_seconds": seconds,
        "responded_at": responded,
        "requested_at": (NOW - dt.timedelta(days=day, hours=1)).isoformat(),
        "subject": f"s-{status}",
        "ti_url": None,
        "responded_by": "ann" if responded else None,
    }


class TestFigures:
    def test_computed_without_service_metrics(self) -> None:
        items = [
            _item("approved", 60),
            _item("approved", 180),
            _item("rejected", 120),
            _item("expired"),
            _item("pending"),
        ]
        figures = views.approval_figures(items, None)
        assert figures["pending"] == 1
        assert figures["approval_rate"] == pytest.approx(2 / 3)
        assert figures["median_response_seconds"] == 120
        assert figures["timeout_rate"] == pytest.approx(1 / 4)

    def test_service_metrics_win(self) -> None:
        figures = views.approval_figures([_item("approved", 10)], {"approval_rate": 0.5, "timeout_rate": 0.1})
        assert figures["approval_rate"] == 0.5
        assert figures["timeout_rate"] == 0.1
        assert figures["median_response_seconds"] == 10

    def test_empty(self) -> None:
        figures = views.approval_figures([], None)
        assert figures["approval_rate"] is None
        assert figures["median_response_seconds"] is None

    def test_production_models(self) -> None:
        models = [{"aliases": {"champion": "3"}}, {"aliases": {"challenger": "4"}}, {"aliases": {}}]
        assert views.production_models(models) == 1


class TestSeries:
    def test_daily_counts_bucket_by_response_day(self) -> None:
        items = [
            _item("approved", 1, day=0),
            _item("approved", 1, day=0),
            _item("rejected", 1, day=2),
            _item("expired", None, day=30),
        ]
        labels, stacks = views.daily_decision_counts(items, days=7)
        assert len(labels) == 7
        assert stacks["approved"][-1] == 2
        assert stacks["rejected"][-3] == 1
        assert sum(stacks["expired"]) == 0

    def test_response_time_in_minutes_oldest_first(self) -> None:
        labels, minutes = views.response_time_series(
            [_item("approved", 120, day=0), _item("rejected", 60, day=1)]
        )
        assert minutes == [1.0, 2.0]
        assert len(labels) == 2

    def test_pipeline_durations_per_dag(self) -> None:
        runs = [
            {"dag_id": "a", "duration_seconds": 120.0, "start_date": "2026-01-02T10:00:00"},
            {"dag_id": "b", "duration_seconds": 60.0, "start_date": "2026-01-01T10:00:00"},
            {"dag_id": "a", "duration_seconds": None, "start_date": None},
        ]
        labels, series = views.pipeline_duration_series(runs)
        assert labels == ["01-01 10:00", "01-02 10:00"]
        assert series == {"b": [1.0, None], "a": [None, 2.0]}

    def test_model_metrics_across_versions(self) -> None:
        model = {
            "versions": [
                {"version": "2", "metrics": {"acc": 0.9}},
                {"version": "1", "metrics": {"acc": 0.8, "f1": 0.5}},
            ]
        }
        labels, series = views.model_metric_series(model)
        assert labels == ["v1", "v2"]
        assert series == {"acc": [0.8, 0.9], "f1": [0.5, None]}

    def test_recent_activity_newest_first(self) -> None:
        items = [_item("approved", 5, day=1)]
        runs = [
            {
                "dag_id": "d",
                "run_id": "r",
                "state": "success",
                "end_date": NOW.isoformat(),
                "start_date": None,
                "run_after": None,
                "url": "/dags/d",
            }
        ]
        events = views.recent_activity(items, runs)
        assert [e["kind"] for e in events] == ["dag_run", "approval_approved", "approval_requested"]


class TestEscalationApprovers:
    """An escalation approver decides from the dashboard as the service and the gate allow."""

    async def test_escalation_approver_may_decide_on_the_dashboard(self, approvals_service: Any) -> None:
        import uuid

        import httpx

        from airflow_provider_hlml.gate.events import settled_event
        from airflow_provider_hlml.gate.policy import ApprovalPolicy
        from airflow_provider_hlml.gate.state import GateState
        from airflow_provider_hlml.gate.wire import GateFunctionCall
        from airflow_provider_hlml.plugins.approvals_client import ApprovalsClient

        base = approvals_service.base_url
        agent = {"Authorization": f"Bearer {approvals_service.agent_key}"}
        call_id = f"escalated-{uuid.uuid4().hex}"
        gate = GateState(approvers=("alice@example.com",), requester="dave")
        spec = {"fn": "model_promotion", "kwargs": {"subject": "Promote v3"}, "state": gate.to_state()}
        created = httpx.post(
            f"{base}/function_calls", json={"run_id": "r", "call_id": call_id, "spec": spec}, headers=agent
        )
        created.raise_for_status()
        httpx.post(
            f"{base}/agent/function_calls/{call_id}/escalate_email",
            json={
                "escalation_msg": "Please decide",
                "additional_recipients": [{"address": "boss@example.com"}],
            },
            headers=agent,
        ).raise_for_status()

        client = ApprovalsClient(base, approvals_service.delegate_key)
        item = views.normalize_call(await client.get_call(call_id), airflow_base_path="")
        assert item["extra_approvers"] == ["boss@example.com"]
        boss = Identity(name="Boss", email="boss@example.com", user_id="7")
        carol = Identity(name="carol", email="carol@example.com", user_id="8")
        assert views.decision_block_reason(item, boss, may_edit_dag=True) is None
        assert "boss@example.com" in str(views.decision_block_reason(item, carol, may_edit_dag=True))

        # What the dashboard offers, the service accepts ...
        decided = await client.respond(
            call_id,
            approved=True,
            comment="ok",
            reject_option_name=None,
            requested_at=None,
            user_info=boss.user_info(),
        )
        assert decided["status"]["user_info"]["email"] == "boss@example.com"
        # ... and the gate, still holding its pre-escalation policy, accepts it from the wire.
        call = GateFunctionCall.model_validate(decided)
        event, refused = settled_event(call, ApprovalPolicy.of_gate(gate))
        assert refused is None
        assert event is not None
        assert event["status"] == "approved"
        assert call.status is not None
        call.status.extra_approvers = None
        assert settled_event(call, ApprovalPolicy.of_gate(gate))[1] is not None
