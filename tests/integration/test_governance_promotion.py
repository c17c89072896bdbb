"""A promotion bound to what the reviewers were shown, end to end.

train -> validate -> HumanApprovalSensor -> promote with ``dag.test()``, a real ``mlflow server``
(real scikit-learn model, ``mlflow.models.evaluate``) and the real approvals service over HTTP;
reviewers answer through the service's API with their own keys. The gate writes the digest of the
validation report into the request; the promotion re-reads the same facts from MLflow and moves
the alias only when they still hold.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pendulum
import pytest

from airflow_provider_hlml import audit
from airflow_provider_hlml.gate.digest import review_digest, review_facts
from airflow_provider_hlml.hooks.mlflow import MLflowHook
from airflow_provider_hlml.operators.mlflow import (
    MLflowTrainOperator,
    MLflowValidateOperator,
    ModelPromoteOperator,
    TrainResult,
)
from airflow_provider_hlml.operators.promote import CHANGED_SINCE_APPROVAL
from tests.unit.operators.dagrun_helpers import churn_frame, run_dag, task_states, xcom_value

pytestmark = pytest.mark.integration

FEATURES = [f"f{i}" for i in range(5)]


def train(params: dict[str, Any]) -> TrainResult:
    from sklearn.linear_model import LogisticRegression

    frame = churn_frame()
    model = LogisticRegression(max_iter=200).fit(frame[FEATURES], frame["churned"])
    return TrainResult(
        metrics={"accuracy": float(model.score(frame[FEATURES], frame["churned"]))},
        model=model,
        input_example=frame[FEATURES].head(3),
    )


def _pipeline(dag_id: str, model_name: str, *, between: Any = None, **gate_kwargs: Any) -> Any:
    """train >> validate >> approve [>> between] >> promote."""
    from airflow.sdk import DAG

    from airflow_provider_hlml.sensors.approval import HumanApprovalSensor

    with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC")) as dag:
        fit = MLflowTrainOperator(
            task_id="train",
            python_callable=train,
            experiment_name="hlml-governance-promotion",
            registered_model_name=model_name,
        )
        validate = MLflowValidateOperator(
            task_id="validate",
            model_uri=f"models:/{model_name}/{{{{ ti.xcom_pull('train')['model_version'] }}}}",
            data=lambda: churn_frame("validation"),
            target="churned",
            thresholds={"accuracy": {"threshold": 0.8}, "f1": {"threshold": 0.5}},
        )
        gate = HumanApprovalSensor(
            task_id="approve",
            subject=f"Promote {model_name}?",
            context=validate.output,
            approval_type="model_promotion",
            deferrable=True,
            poll_interval=0.3,
            response_timeout=600,  # bounds the test if no reviewer shows up
            **gate_kwargs,
        )
        promote = ModelPromoteOperator(
            task_id="promote", model_name=model_name, approval_task_id="approve", retries=0
        )
        fit >> validate >> gate
        if between is not None:
            gate >> between(validate.output) >> promote
        else:
            gate >> promote
    return dag


def _reviewers(service: Any, dag_id: str, keys: list[str]) -> tuple[threading.Thread, list[dict[str, Any]]]:
    """A thread in which each reviewer (by key, in order) approves the DAG's pending request."""
    from airflow_provider_hlml.examples.review import approve_when_pending

    answered: list[dict[str, Any]] = []

    def review() -> None:
        for key in keys:
            answered.extend(
                approve_when_pending(
                    service.base_url,
                    key,
                    dag_id=dag_id,
                    timeout=600,
                    poll_interval=0.3,
                    comment="looks right",
                )
            )

    thread = threading.Thread(target=review, daemon=True)
    thread.start()
    return thread, answered


@pytest.fixture
def env(
    mlflow_conn: str,
    approvals_service: Any,
    humanlayer_conn: str,
    airflow_db: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    monkeypatch.setenv("AIRFLOW__HLML__LONG_POLL_SECONDS", "5")
    monkeypatch.delenv("AIRFLOW__HLML__APPROVAL_POLICY_FILE", raising=False)
    return approvals_service


class TestPromotionOfWhatWasReviewed:
    def test_two_approvals_of_an_unchanged_model_promote_it_with_both_approvers(
        self, env: Any, mlflow_conn: str
    ) -> None:
        suffix = uuid.uuid4().hex[:8]
        dag_id, model_name = f"reviewed_promotion_{suffix}", f"churn_reviewed_{suffix}"
        dag = _pipeline(
            dag_id,
            model_name,
            approval_rules=[
                {"name": "ML lead", "approvers": ["alice@example.com", "bob@example.com"], "required": 2}
            ],
        )
        thread, answered = _reviewers(env, dag_id, [env.reviewer_key, env.reviewer2_key])
        dag_run = run_dag(dag)
        thread.join(30)
        assert task_states(dag_run) == {
            "train": "success",
            "validate": "success",
            "approve": "success",
            "promote": "success",
        }
        report = xcom_value(dag_run, "validate")
        decision = xcom_value(dag_run, "approve")
        record = xcom_value(dag_run, "promote")
        assert len(answered) == 2
        # The gate's digest covers the report the reviewers saw, as the validation produced it.
        assert decision["review_digest"] == review_digest(review_facts(report) or {})
        assert [(a["email"], a["rule"]) for a in decision["approvals"]] == [
            ("alice@example.com", "ML lead"),
            ("bob@example.com", "ML lead"),
        ]
        assert [(a["email"], a["rule"]) for a in record["approvers"]] == [
            ("alice@example.com", "ML lead"),
            ("bob@example.com", "ML lead"),
        ]
        champion = MLflowHook(mlflow_conn).client.get_model_version_by_alias(model_name, "champion")
        assert champion.version == report["model_version"]
        assert champion.tags[audit.APPROVERS] == "alice@example.com (ML lead); bob@example.com (ML lead)"
        assert champion.tags[audit.REVIEW_DIGEST] == decision["review_digest"]
        assert champion.tags[audit.APPROVAL_CALL_ID] == decision["call_id"]

    def test_a_metric_logged_again_after_the_approval_needs_a_new_approval(
        self, env: Any, mlflow_conn: str, capfd: pytest.CaptureFixture[str]
    ) -> None:
        from airflow.sdk import task

        @task(task_id="evaluate_again")
        def evaluate_again(report: dict[str, Any]) -> float:
            """After the approval, a lower accuracy is logged on the validation run (latest wins)."""
            row = report["metrics"]["accuracy"]
            lower = round(float(row["candidate"]) - 0.1, 4)
            MLflowHook(mlflow_conn).client.log_metric(
                report["validation_run_id"], row["mlflow_metric"], lower
            )
            return lower

        suffix = uuid.uuid4().hex[:8]
        dag_id, model_name = f"changed_promotion_{suffix}", f"churn_changed_{suffix}"
        dag = _pipeline(dag_id, model_name, between=evaluate_again)
        thread, answered = _reviewers(env, dag_id, [env.reviewer_key])
        dag_run = run_dag(dag)
        thread.join(30)
        out, err = capfd.readouterr()
        assert task_states(dag_run) == {
            "train": "success",
            "validate": "success",
            "approve": "success",
            "evaluate_again": "success",
            "promote": "failed",
        }
        assert len(answered) == 1
        report = xcom_value(dag_run, "validate")
        lower = xcom_value(dag_run, "evaluate_again")
        shown = report["metrics"]["accuracy"]["candidate"]
        assert xcom_value(dag_run, "approve")["approved"] is True
        assert f"{CHANGED_SINCE_APPROVAL}metrics.accuracy: shown {shown!r}, now {lower!r}" in out + err
        assert "metrics.f1" not in out + err
        client = MLflowHook(mlflow_conn).client
        assert client.get_registered_model(model_name).aliases == {}
        tags = client.get_model_version(model_name, report["model_version"]).tags
        assert audit.APPROVED_BY not in tags
        assert audit.APPROVERS not in tags
