"""HumanApprovalSensor arguments, request building and the approval helper factories."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from airflow_provider_hlml.sensors.approval import (
    HumanApprovalSensor,
    code_execution_approval,
    content_approval,
    workflow_approval,
)
from airflow_provider_hlml.utils.ids import approval_call_id, approval_call_id_from_ti, humanlayer_run_id


@dataclass
class TaskInstanceRecord:
    dag_id: str = "dag"
    run_id: str = "manual__1"
    task_id: str = "gate"
    map_index: int = -1
    try_number: int = 1
    log_url: str = "http://airflow/log"


@dataclass
class DagRunRecord:
    triggering_user_name: str | None = "carol"


def _context(task: HumanApprovalSensor, **ti: Any) -> dict[str, Any]:
    record = TaskInstanceRecord(task_id=task.task_id, **ti)
    return {"ti": record, "task_instance": record, "task": task, "dag_run": DagRunRecord()}


class TestHumanApprovalSensor:
    def test_defaults_follow_the_contract(self) -> None:
        sensor = HumanApprovalSensor(task_id="gate", subject="Go?")
        assert sensor.approval_type == "custom"
        assert sensor.urgency == "medium"
        assert sensor.on_timeout == "fail"
        assert sensor.on_reject == "fail"
        assert sensor.allow_self_approval is False
        assert sensor.humanlayer_conn_id == "humanlayer_default"
        assert sensor.deferrable is False  # [operators] default_deferrable is False here
        assert sensor.mode == "reschedule"
        assert tuple(sensor.template_fields) == (
            "subject",
            "body",
            "context",
            "approvers",
            "approval_rules",
            "escalation_approvers",
        )

    def test_deferrable_keeps_poke_mode_and_poll_interval(self) -> None:
        sensor = HumanApprovalSensor(task_id="gate", subject="Go?", deferrable=True, poll_interval=2.5)
        assert sensor.mode == "poke"
        assert sensor.poke_interval == 2.5

    def test_sensor_timeout_is_a_safety_net_behind_the_gate_deadlines(self) -> None:
        sensor = HumanApprovalSensor(
            task_id="gate",
            subject="Go?",
            response_timeout=timedelta(minutes=10),
            on_timeout="escalate",
            escalation_approvers="boss@example.com",
            escalation_timeout=300,
        )
        assert sensor.timeout > 600 + 300

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"approval_type": "deploy"}, "approval_type must be one of"),
            ({"urgency": "urgent"}, "urgency must be one of"),
            ({"on_reject": "retry"}, "on_reject must be one of"),
            ({"on_timeout": "wait"}, "on_timeout must be one of"),
            ({"on_timeout": "skip"}, "needs response_timeout"),
            ({"response_timeout": 0}, "response_timeout must be positive"),
            ({"poll_interval": 0}, "poll_interval must be positive"),
            (
                {"response_timeout": 5, "on_timeout": "escalate", "escalation_timeout": 5},
                "needs escalation_approvers",
            ),
            (
                {"response_timeout": 5, "on_timeout": "escalate", "escalation_approvers": ["b@x.io"]},
                "needs escalation_timeout",
            ),
            ({"options": [3]}, "options: expected a HumanLayer model"),
        ],
    )
    def test_bad_arguments_name_the_field(self, kwargs: dict[str, Any], message: str) -> None:
        with pytest.raises((ValueError, TypeError), match=message):
            HumanApprovalSensor(task_id="gate", subject="Go?", **kwargs)

    def test_accepts_humanlayer_models(self) -> None:
        from humanlayer import ContactChannel, EmailContactChannel, ResponseOption

        sensor = HumanApprovalSensor(
            task_id="gate",
            subject="Go?",
            options=[ResponseOption(name="canary", title="Roll out to 5%"), "full"],
            reject_options=[ResponseOption(name="bad_metrics")],
            channel=ContactChannel(email=EmailContactChannel(address="ml-leads@example.com")),
        )
        assert sensor.options == [
            {"name": "canary", "title": "Roll out to 5%", "interactive": False},
            {"name": "full"},
        ]
        assert sensor.reject_options[0]["name"] == "bad_metrics"
        assert sensor.channel is not None
        assert sensor.channel["email"]["address"] == "ml-leads@example.com"

    def test_build_request_redacts_and_carries_the_policy(self, faulty_conn: str) -> None:
        from airflow.sdk.log import mask_secret

        mask_secret("very-secret-variable-value")
        sensor = HumanApprovalSensor(
            task_id="gate",
            subject="Deploy with very-secret-variable-value?",
            context={
                "metrics": {"accuracy": 0.91},
                "password": "p4ss-w0rd-xyz",
                "note": "very-secret-variable-value",
            },
            approvers=["alice@example.com", "bob"],
            approval_type="model_promotion",
            urgency="critical",
            reject_options=["not_now"],
            humanlayer_conn_id=faulty_conn,
        )
        request = sensor.build_request(_context(sensor))
        dumped = request.model_dump(mode="json")
        assert "very-secret-variable-value" not in str(dumped)
        assert "p4ss-w0rd-xyz" not in str(dumped)
        kwargs = dumped["spec"]["kwargs"]
        assert kwargs["context"]["metrics"] == {"accuracy": 0.91}
        assert kwargs["context"]["password"] == "***"
        assert kwargs["urgency"] == "critical"
        assert dumped["spec"]["fn"] == "model_promotion"
        assert dumped["call_id"] == approval_call_id("dag", "manual__1", "gate", -1, 1)
        assert dumped["run_id"] == humanlayer_run_id("dag", "manual__1")
        assert dumped["spec"]["state"]["hlml"] == {
            "approvers": ["alice@example.com", "bob"],
            "requester": "carol",
            "allow_self_approval": False,
            # A model promotion bars the model's author too (this context names no run: no author).
            "forbid": ["requester", "model_author"],
            "airflow": {
                "dag_id": "dag",
                "run_id": "manual__1",
                "task_id": "gate",
                "map_index": -1,
                "try_number": 1,
                "ti_url": "http://airflow/log",
                "deployment_id": "",
            },
        }

    def test_non_dict_context_and_datetimes_are_sent_as_json(self, faulty_conn: str) -> None:
        import datetime as dt

        sensor = HumanApprovalSensor(
            task_id="gate",
            subject="x",
            context=[dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)],
            humanlayer_conn_id=faulty_conn,
        )
        kwargs = sensor.build_request(_context(sensor)).spec.kwargs
        assert kwargs["context"] == {"value": ["2025-01-01 00:00:00+00:00"]}

    def test_approvers_widen_only_after_escalation(self) -> None:
        sensor = HumanApprovalSensor(
            task_id="gate",
            subject="x",
            approvers="alice@example.com",
            response_timeout=5,
            on_timeout="escalate",
            escalation_approvers=["boss@example.com"],
            escalation_timeout=5,
        )
        assert sensor.approvers_for(escalated=False) == ["alice@example.com"]
        assert sensor.approvers_for(escalated=True) == ["alice@example.com", "boss@example.com"]


class TestCallIds:
    def test_same_try_same_id_new_try_new_id(self) -> None:
        first = approval_call_id("dag", "run", "gate", -1, 1)
        assert first == approval_call_id("dag", "run", "gate", -1, 1)
        assert first != approval_call_id("dag", "run", "gate", -1, 2)
        assert first != approval_call_id("dag", "run", "gate", 0, 1)
        assert first != approval_call_id("dag", "run2", "gate", -1, 1)
        assert first.startswith("hlml-gate-")
        assert len(first) <= 64

    def test_parts_cannot_be_shifted_into_each_other(self) -> None:
        assert approval_call_id("a", "b_c", "t", -1, 1) != approval_call_id("a_b", "c", "t", -1, 1)

    def test_from_task_instance(self) -> None:
        ti = TaskInstanceRecord(map_index=3, try_number=2)
        assert approval_call_id_from_ti(ti) == approval_call_id("dag", "manual__1", "gate", 3, 2)

    def test_deployment_id_sets_deployments_apart(self, monkeypatch: pytest.MonkeyPatch) -> None:
        plain = approval_call_id("dag", "run", "gate", -1, 1)
        assert approval_call_id("dag", "run", "gate", -1, 1, "") == plain
        staging = approval_call_id("dag", "run", "gate", -1, 1, "staging")
        assert staging != plain
        assert staging != approval_call_id("dag", "run", "gate", -1, 1, "prod")
        monkeypatch.setenv("AIRFLOW__HLML__DEPLOYMENT_ID", "staging")
        assert approval_call_id_from_ti(TaskInstanceRecord(run_id="run")) == staging


class TestRequestOrigin:
    """A request under this gate's id that is not exactly the gate's own request is refused, not taken over."""

    def _pair(self, faulty_conn: str, **theirs: Any) -> tuple[Any, Any]:
        from airflow_provider_hlml.gate.wire import GateFunctionCall

        sensor = HumanApprovalSensor(task_id="gate", subject="Go?", humanlayer_conn_id=faulty_conn)
        request = sensor.build_request(_context(sensor))
        existing = request.model_dump(mode="json")
        existing["spec"]["state"]["hlml"]["airflow"].update(theirs)
        return GateFunctionCall.model_validate(existing), request

    def test_own_request_is_taken(self, faulty_conn: str) -> None:
        existing, request = self._pair(faulty_conn)
        HumanApprovalSensor.check_same_request(existing, request)

    def test_request_of_another_deployment_is_refused(self, faulty_conn: str) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        existing, request = self._pair(
            faulty_conn, ti_url="https://staging.example.com/dags/dag/runs/manual__1"
        )
        with pytest.raises(AirflowFailException, match=r"spec\.state\.hlml\.airflow.*deployment_id"):
            HumanApprovalSensor.check_same_request(existing, request)

    def test_request_of_another_try_is_refused(self, faulty_conn: str) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        existing, request = self._pair(faulty_conn, try_number=7)
        with pytest.raises(AirflowFailException, match=r"differs in spec\.state\.hlml\.airflow"):
            HumanApprovalSensor.check_same_request(existing, request)

    def test_request_showing_other_content_is_refused(self, faulty_conn: str) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        existing, request = self._pair(faulty_conn)
        existing.spec.kwargs["context"] = {"code": "SELECT 1"}
        existing.spec.kwargs["subject"] = "Harmless"
        with pytest.raises(AirflowFailException, match=r"spec\.kwargs\.context\.code, spec\.kwargs\.subject"):
            HumanApprovalSensor.check_same_request(existing, request)

    def test_request_without_recorded_origin_is_compared_on_the_rest(self, faulty_conn: str) -> None:
        existing, request = self._pair(faulty_conn)
        existing.spec.state = None
        HumanApprovalSensor.check_same_request(existing, request)


class TestFactories:
    def test_code_execution_approval_analyses_at_run_time(self) -> None:
        gate = code_execution_approval("DROP TABLE customers;", "production", language="sql")
        assert gate.task_id == "approve_code_execution"
        assert gate.approval_type == "code_execution"
        assert "code" in gate.template_fields
        context = gate.request_context(_context(gate))
        assert context["risk_level"] == "critical"
        assert context["environment"] == "production"
        assert context["security_analysis"]["findings"][0]["rule"] == "SQL001"
        assert gate.request_urgency(context) == "critical"

    def test_code_execution_fixed_urgency_wins(self) -> None:
        gate = code_execution_approval("print('hi')", "staging", urgency="low", task_id="run_it")
        context = gate.request_context(_context(gate))
        assert context["risk_level"] == "none"
        assert context["language"] == "python"
        assert gate.request_urgency(context) == "low"

    def test_content_approval_redacts_what_it_flags(self) -> None:
        from humanlayer import ContactChannel, SlackContactChannel

        channel = ContactChannel(slack=SlackContactChannel(channel_or_user_id="C123"))
        gate = content_approval("Reach me at jane@example.com\naws = 'AKIAIOSFODNN7EXAMPLE'", channel)
        assert gate.approval_type == "content_publishing"
        assert gate.channel == {"slack": {"channel_or_user_id": "C123"}}
        context = gate.request_context(_context(gate))
        assert context["compliance"]["passed"] is False
        assert {f["kind"] for f in context["compliance"]["findings"]} == {"email", "AWS Access Key"}
        assert "jane@example.com" not in context["content"]
        assert "AKIAIOSFODNN7EXAMPLE" not in context["content"]
        assert gate.request_urgency(context) == "high"

    def test_content_approval_rejects_unknown_policies(self) -> None:
        with pytest.raises(ValueError, match="unknown \\['gdpr'\\]"):
            content_approval("x", None, policies=["gdpr"])

    def test_workflow_approval(self) -> None:
        gate = workflow_approval("churn-weekly", "Retrain on the new data?", {"rows": 1200})
        assert gate.approval_type == "workflow_decision"
        assert gate.subject == "Retrain on the new data?"
        assert gate.request_context(_context(gate)) == {
            "workflow_id": "churn-weekly",
            "details": {"rows": 1200},
        }


class TestOnKill:
    def test_on_kill_cancels_the_pending_request(self, faulty_server: Any, faulty_conn: str) -> None:
        sensor = HumanApprovalSensor(task_id="gate", subject="x", humanlayer_conn_id=faulty_conn)
        context = _context(sensor)
        call_id = approval_call_id("dag", "manual__1", "gate", -1, 1)
        faulty_server.add_call(call_id)
        sensor.pre_execute(context)  # type: ignore[arg-type]
        sensor.on_kill()
        status = faulty_server.calls[call_id]["status"]
        assert status["cancel_reason"] == "killed"
        assert status["approved"] is None

    def test_on_kill_before_execution_does_nothing(self, faulty_server: Any, faulty_conn: str) -> None:
        HumanApprovalSensor(task_id="gate", subject="x", humanlayer_conn_id=faulty_conn).on_kill()
        assert faulty_server.requests == []


class TestFinishInPlace:
    """Which gates hand over what ending in place needs (``finish_in_place_spec``)."""

    def test_on_by_default_with_the_results_link_and_xcom(self) -> None:
        sensor = HumanApprovalSensor(task_id="gate", subject="Go?")
        spec = sensor.finish_in_place_spec(_context(sensor))
        assert spec is not None
        assert spec["xcom"] is True
        call_id = approval_call_id("dag", "manual__1", "gate", -1, 1)
        assert spec["approval_url"] is not None
        assert call_id in spec["approval_url"]

    def test_hands_over_the_extra_links_a_worker_would_push(self) -> None:
        from airflow.models.taskinstancekey import TaskInstanceKey

        sensor = HumanApprovalSensor(task_id="gate", subject="Go?")
        context = _context(sensor)
        context["ti"] = type(
            "RuntimeTI",
            (),
            {**vars(context["ti"]), "key": TaskInstanceKey("dag", "gate", "manual__1", 1, -1)},
        )()
        spec = sensor.finish_in_place_spec(context)
        assert spec is not None
        call_id = approval_call_id("dag", "manual__1", "gate", -1, 1)
        link = spec["links"]["_link_ApprovalRequestLink"]
        assert call_id in link

    def test_do_xcom_push_false_is_kept(self) -> None:
        sensor = HumanApprovalSensor(task_id="gate", subject="Go?", do_xcom_push=False)
        spec = sensor.finish_in_place_spec(_context(sensor))
        assert spec is not None
        assert spec["xcom"] is False

    def test_opt_out_per_gate(self) -> None:
        sensor = HumanApprovalSensor(task_id="gate", subject="Go?", finish_in_place=False)
        assert sensor.finish_in_place_spec(_context(sensor)) is None

    def test_opt_out_in_config_and_per_gate_opt_in_wins(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW__HLML__FINISH_IN_PLACE", "False")
        sensor = HumanApprovalSensor(task_id="gate", subject="Go?")
        assert sensor.finish_in_place_spec(_context(sensor)) is None
        forced = HumanApprovalSensor(task_id="gate", subject="Go?", finish_in_place=True)
        assert forced.finish_in_place_spec(_context(forced)) is not None

    def test_a_gate_with_outlets_resumes_on_a_worker(self) -> None:
        from airflow.sdk import Asset

        sensor = HumanApprovalSensor(task_id="gate", subject="Go?", outlets=[Asset("s3://models/approved")])
        assert sensor.finish_in_place_spec(_context(sensor)) is None

    def test_a_subclass_that_settles_outcomes_itself_resumes_on_a_worker(self) -> None:
        class Audited(HumanApprovalSensor):
            def result(self, *args: Any, **kwargs: Any) -> Any:
                return {"audited": True, **super().result(*args, **kwargs)}

        sensor = Audited(task_id="gate", subject="Go?")
        assert sensor.finish_in_place_spec(_context(sensor)) is None

    def test_a_subclass_with_its_own_post_execute_resumes_on_a_worker(self) -> None:
        class Counted(HumanApprovalSensor):
            def post_execute(self, context: Any, result: Any = None) -> None:
                pass

        sensor = Counted(task_id="gate", subject="Go?")
        assert sensor.finish_in_place_spec(_context(sensor)) is None

    def test_a_gate_whose_result_a_task_is_mapped_over_resumes_on_a_worker(self) -> None:
        from airflow.sdk import DAG, task

        with DAG("mapped_over", schedule=None):
            gate = HumanApprovalSensor(task_id="gate", subject="Go?")
            plain = HumanApprovalSensor(task_id="plain", subject="Go?")

            @task
            def each(item: Any) -> Any:
                return item

            each.expand(item=gate.output)
            each.override(task_id="once")(plain.output)
        assert gate.finish_in_place_spec(_context(gate)) is None
        assert plain.finish_in_place_spec(_context(plain)) is not None

    def test_the_factories_gates_end_in_place(self) -> None:
        gate = code_execution_approval("print(1)", "staging", language="python")
        assert gate.finish_in_place_spec(_context(gate)) is not None
