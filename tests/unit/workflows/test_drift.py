"""The drift response: what a person's answer leads to, what they are shown, how the DAG is wired."""

from __future__ import annotations

from typing import Any

import pendulum
import pytest

from airflow_provider_hlml.operators.drift import DriftMonitorOperator
from airflow_provider_hlml.operators.promote import ModelPromoteOperator
from airflow_provider_hlml.sensors.drift import DriftResponseSensor
from airflow_provider_hlml.workflows.drift import (
    MAX_LISTED,
    choose_response,
    drift_request_content,
    drift_response_tasks,
    verify_rollback_target,
)

ALICE = {"id": "alice@example.com", "name": "alice", "email": "alice@example.com"}


def decision(**kwargs: Any) -> dict[str, Any]:
    return {
        "approved": True,
        "reject_option": None,
        "timed_out": False,
        "responded_by_user": ALICE,
        "branch": "human",
        **kwargs,
    }


def report(**kwargs: Any) -> dict[str, Any]:
    features = {
        "income": {
            "name": "income",
            "kind": "numeric",
            "psi": 0.9,
            "test": "ks",
            "statistic": 0.4,
            "p_value": 1e-30,
            "drifted": True,
        },
        "age": {
            "name": "age",
            "kind": "numeric",
            "psi": 0.01,
            "test": "ks",
            "statistic": 0.02,
            "p_value": 0.7,
            "drifted": False,
        },
    }
    return {
        "model_name": "churn",
        "model_version": "7",
        "mlflow_run_id": "abc123",
        "alias": "champion",
        "drifted": True,
        "reason": "drift: 1 of 2 features drifted: income (PSI 0.9, p=1e-30)",
        "features": features,
        "predictions": {"psi": 0.3, "test": "chi2", "statistic": 50.0, "p_value": 1e-9, "drifted": True},
        "live_metric": None,
        "policy": {"psi_threshold": 0.2},
        "monitoring_run_id": "run1",
        "monitoring_run_url": "http://mlflow:5000/#/experiments/1/runs/run1",
        "rollback_version": "6",
        **kwargs,
    }


class TestChooseResponse:
    def test_an_approval_by_a_person_is_a_rollback(self) -> None:
        assert choose_response(decision()) == "rollback"

    def test_a_rejection_naming_retrain_is_a_retrain(self) -> None:
        assert choose_response(decision(approved=False, reject_option="retrain")) == "retrain"

    @pytest.mark.parametrize(
        "answer",
        [
            decision(approved=False, reject_option="accept"),
            decision(approved=False, reject_option=None),
            decision(approved=False, reject_option="rollback"),
            decision(timed_out=True),  # on_timeout decided, not a person
            decision(responded_by_user=None),
            decision(responded_by_user={"name": "policy:champion-margin-v1"}),
            decision(branch="auto_approve"),
            decision(approved="true"),
            {"approved": True},
            None,
            "rollback",
        ],
    )
    def test_anything_else_is_no_action(self, answer: Any) -> None:
        assert choose_response(answer) is None


class TestVerifyRollbackTarget:
    @pytest.mark.parametrize(
        "answer",
        [decision(approved=False, reject_option="retrain"), decision(timed_out=True), None],
    )
    def test_refuses_before_reading_anything_unless_a_person_approved(self, answer: Any) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        with pytest.raises(AirflowFailException, match="no person approved a rollback"):
            verify_rollback_target(
                answer,
                report(),
                mlflow_conn_id="nowhere",
                humanlayer_conn_id="nowhere",
                require_attested=True,
            )


class TestRequestContent:
    def test_names_the_model_the_drift_and_the_three_answers(self) -> None:
        content = drift_request_content(
            report(),
            rollback={"version": "6", "attested": True, "detail": "ok"},
            retrain_dag_id="train_churn",
        )
        assert content["subject"] == "Drift in churn v7 (@champion): roll back, retrain or accept?"
        context = content["context"]
        assert (context["model_name"], context["model_version"], context["mlflow_run_id"]) == (
            "churn",
            "7",
            "abc123",
        )
        assert [f["name"] for f in context["drifted_features"]] == ["income"]
        assert context["drifted_features"][0]["p_value"] == 1e-30
        assert context["rollback_to"] == {"version": "6", "attested": True, "detail": "ok"}
        body = content["body"]
        assert "| `income` | 0.9 | 1e-30 | ks |" in body
        assert "roll @`champion` back to v`6` (its signed approval verified" in body
        assert "start the training DAG `train_churn`" in body
        assert "**Reject, reason Accept**" in body
        assert "[MLflow run](http://mlflow:5000/#/experiments/1/runs/run1)" in body

    def test_hostile_feature_names_stay_inside_their_cell(self) -> None:
        name = "x` | [click](http://evil.example) <script>alert(1)</script>"
        features = {name: {"name": name, "psi": 1.0, "p_value": 0.0, "test": "ks", "drifted": True}}
        body = drift_request_content(report(features=features, monitoring_run_url="javascript:alert(1)"))[
            "body"
        ]
        row = next(line for line in body.splitlines() if line.startswith("| `x"))
        assert row.count("`") == 2  # one code span
        assert " | " not in row.split("`")[1]  # pipes escaped inside it
        assert "javascript:" not in body

    def test_lists_at_most_max_listed_features(self) -> None:
        features = {
            f"f{i}": {"name": f"f{i}", "psi": 0.5 + i / 1000, "p_value": 0.0, "test": "ks", "drifted": True}
            for i in range(MAX_LISTED + 7)
        }
        content = drift_request_content(report(features=features))
        assert len(content["context"]["drifted_features"]) == MAX_LISTED
        assert content["context"]["drifted_feature_count"] == MAX_LISTED + 7
        assert "and 7 more" in content["body"]

    def test_without_a_previous_champion_says_a_rollback_would_be_refused(self) -> None:
        body = drift_request_content(report(rollback_version=None))["body"]
        assert "a rollback would be refused" in body

    @pytest.mark.parametrize("bad", [None, [], {"model_name": "churn"}, report(model_version=7)])
    def test_refuses_a_result_that_is_not_a_drift_report(self, bad: Any) -> None:
        with pytest.raises(ValueError, match="drift monitor's result"):
            drift_request_content(bad)


def build(**kwargs: Any) -> Any:
    from airflow.sdk import DAG

    with DAG("drift_unit", schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC")) as dag:
        monitor = DriftMonitorOperator(
            task_id="monitor", model_name="churn", reference="/data/ref.csv", current="/data/now.csv"
        )
        response = drift_response_tasks(monitor, **kwargs)
    return dag, response


class TestWiring:
    def test_the_rollback_runs_only_after_the_review_and_is_bound_to_it(self) -> None:
        dag, response = build()
        assert isinstance(response.review, DriftResponseSensor)
        assert response.review.approval_type == "workflow_decision"
        assert response.review.on_reject == "skip"
        assert response.review.auto_decisions is False
        rollback = dag.get_task("rollback")
        assert isinstance(rollback, ModelPromoteOperator)
        assert (rollback.mode, rollback.approval_task_id) == ("rollback", "drift_review")
        assert rollback.upstream_task_ids == {"verify_rollback"}
        assert dag.get_task("drift_decision").downstream_task_ids == {"verify_rollback", "retrain"}
        assert "drift_review" in dag.get_task("verify_rollback").upstream_task_ids
        assert dag.get_task("drift_detected").upstream_task_ids == {"monitor"}
        assert response.retrain.task_id == "retrain"
        assert dag.get_task("retrain").upstream_task_ids == {"monitor", "drift_review", "drift_decision"}

    @pytest.mark.parametrize("bad", ["", "churn pipeline", "{{ params.dag }}", "x" * 300, 7])
    def test_a_bad_training_dag_id_is_refused(self, bad: Any) -> None:
        with pytest.raises(ValueError, match="retrain_dag_id"):
            build(retrain_dag_id=bad)

    @pytest.mark.parametrize(
        ("gate_kwargs", "message"),
        [
            ({"on_timeout": "approve", "response_timeout": 60}, "without a person"),
            ({"auto_decisions": True}, "always a person's decision"),
            ({"act_on_reject": ["accept_everything"]}, "act_on_reject"),
        ],
    )
    def test_a_gate_that_could_act_without_a_person_is_refused(
        self, gate_kwargs: dict[str, Any], message: str
    ) -> None:
        with pytest.raises(ValueError, match=message):
            build(gate_kwargs=gate_kwargs)
