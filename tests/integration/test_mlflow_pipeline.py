"""The whole MLflow chain with a real gate: train -> validate -> HumanApprovalSensor -> promote.

Real ``mlflow server``, real approvals service over HTTP (a reviewer answers from a thread with
the unmodified ``humanlayer`` SDK), real Airflow metadata DB, ``dag.test()``. The workflow
logging listener then records the run, with the gate's response time.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pendulum
import pytest
import requests

from airflow_provider_hlml import audit
from airflow_provider_hlml.hooks.mlflow import MLflowHook
from airflow_provider_hlml.listeners.workflow_logging import workflow_logging_listener
from airflow_provider_hlml.operators.mlflow import (
    MLflowTrainOperator,
    MLflowValidateOperator,
    ModelPromoteOperator,
    TrainResult,
)
from tests.unit.operators.dagrun_helpers import churn_frame, run_dag, task_states, xcom_value

pytestmark = pytest.mark.integration

FEATURES = [f"f{i}" for i in range(5)]


def train(params: dict[str, Any]) -> TrainResult:
    from sklearn.linear_model import LogisticRegression

    frame = churn_frame()
    model = LogisticRegression(C=float(params["C"]), max_iter=200).fit(frame[FEATURES], frame["churned"])
    return TrainResult(
        metrics={"accuracy": float(model.score(frame[FEATURES], frame["churned"]))},
        model=model,
        input_example=frame[FEATURES].head(3),
    )


def _approve_when_pending(service: Any, dag_id: str, result: dict[str, Any]) -> None:
    """Reviewer alice approves the DAG run's request as soon as it appears."""
    from humanlayer import FunctionCallStatus, HumanLayer

    deadline = time.monotonic() + 600  # training and validation come first
    while time.monotonic() < deadline:
        resp = requests.get(
            f"{service.base_url}/function_calls",
            params={"status": "pending", "limit": 1000},
            headers={"Authorization": f"Bearer {service.admin_key}"},
            timeout=10,
        )
        resp.raise_for_status()
        mine = [
            c
            for c in resp.json()
            if ((c["spec"].get("state") or {}).get("hlml") or {}).get("airflow", {}).get("dag_id") == dag_id
        ]
        if mine:
            result["call"] = mine[0]
            client = HumanLayer.cloud(api_key=service.reviewer_key, api_base_url=service.base_url)
            client.backend.functions().respond(  # type: ignore[union-attr]
                mine[0]["call_id"], FunctionCallStatus(approved=True, comment="beats the baseline")
            )
            return
        time.sleep(0.3)


class TestMLflowPipeline:
    def test_train_validate_approve_promote(
        self,
        mlflow_conn: str,
        approvals_service: Any,
        humanlayer_conn: str,
        airflow_db: Any,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        from airflow.sdk import DAG

        from airflow_provider_hlml.sensors.approval import HumanApprovalSensor

        monkeypatch.setenv("AIRFLOW__HLML__LONG_POLL_SECONDS", "5")
        dag_id = f"mlflow_pipeline_{uuid.uuid4().hex[:8]}"
        model_name = f"churn_{uuid.uuid4().hex[:8]}"
        with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC")) as dag:
            fit = MLflowTrainOperator(
                task_id="train",
                python_callable=train,
                experiment_name="hlml-pipeline",
                params={"C": 1.0},
                registered_model_name=model_name,
            )
            validate = MLflowValidateOperator(
                task_id="validate",
                model_uri=f"models:/{model_name}/{{{{ ti.xcom_pull('train')['model_version'] }}}}",
                data=lambda: churn_frame("validation"),
                target="churned",
                thresholds={"accuracy": {"threshold": 0.8, "min_relative_change": 0.01}},
            )
            gate = HumanApprovalSensor(
                task_id="approve",
                subject=f"Promote {model_name}?",
                context=validate.output,
                approval_type="model_promotion",
                deferrable=True,
                poll_interval=0.3,
                response_timeout=600,  # bounds the test if no reviewer shows up
            )
            promote = ModelPromoteOperator(
                task_id="promote",
                model_name=model_name,
                version="{{ ti.xcom_pull('validate')['model_version'] }}",
                approval_task_id="approve",
            )
            fit >> validate >> gate >> promote

        reviewer: dict[str, Any] = {}
        thread = threading.Thread(
            target=_approve_when_pending, args=(approvals_service, dag_id, reviewer), daemon=True
        )
        thread.start()
        dag_run = run_dag(dag)
        thread.join(30)
        assert task_states(dag_run) == {
            "train": "success",
            "validate": "success",
            "approve": "success",
            "promote": "success",
        }
        trained = xcom_value(dag_run, "train")
        report = xcom_value(dag_run, "validate")
        decision = xcom_value(dag_run, "approve")
        assert report["model_version"] == trained["model_version"]
        assert report["mlflow_run_id"] == trained["run_id"]
        assert decision["context"]["model_version"] == trained["model_version"]

        client = MLflowHook(mlflow_conn).client
        champion = client.get_model_version_by_alias(model_name, "champion")
        assert champion.version == trained["model_version"]
        assert champion.run_id == trained["run_id"]
        assert champion.tags[audit.APPROVAL_CALL_ID] == decision["call_id"] == reviewer["call"]["call_id"]
        assert champion.tags[audit.APPROVAL_COMMENT] == "beats the baseline"
        assert "alice" in champion.tags[audit.APPROVED_BY]
        assert champion.tags[audit.previous_holder_tag("champion")] == ""

        # The workflow record names the gate and how long the human took.
        assert workflow_logging_listener.flush(60)
        experiment = client.get_experiment_by_name("hlml-workflow-executions")
        (record,) = client.search_runs(
            [experiment.experiment_id], f"tags.`{audit.AIRFLOW_DAG_ID}` = '{dag_id}'"
        )
        assert record.data.metrics["human_gates"] == 1.0
        assert record.data.metrics["human_gates_approved"] == 1.0
        assert record.data.metrics["gate.approve.response_seconds"] == pytest.approx(
            decision["response_seconds"]
        )


class TestSpecTrainThenGatedDeploy:
    """A spec with training followed by a gated deployment and no validation stage."""

    def test_gate_shows_the_training_result_and_the_promotion_is_accepted(
        self,
        mlflow_server: Any,
        approvals_service: Any,
        humanlayer_conn: str,
        airflow_db: Any,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        import json

        from airflow_provider_hlml.examples.review import approve_when_pending
        from airflow_provider_hlml.sensors.approval import HumanApprovalSensor
        from airflow_provider_hlml.workflows.builder import build_ml_workflow_dag

        # The spec names no MLflow connection: ``[hlml] mlflow_conn_id`` is the stages' default.
        monkeypatch.setenv(
            "AIRFLOW_CONN_MLFLOW_SPEC", json.dumps({"conn_type": "mlflow", "host": mlflow_server.url})
        )
        monkeypatch.setenv("AIRFLOW__HLML__MLFLOW_CONN_ID", "mlflow_spec")
        monkeypatch.delenv("AIRFLOW_CONN_MLFLOW_DEFAULT", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        monkeypatch.setenv("AIRFLOW__HLML__LONG_POLL_SECONDS", "5")
        suffix = uuid.uuid4().hex[:8]
        dag_id, model_name = f"train_deploy_{suffix}", f"churn_td_{suffix}"
        churn = "airflow_provider_hlml.examples.churn"
        dag = build_ml_workflow_dag(
            {
                "name": f"Train then deploy {suffix}",
                "dag_id": dag_id,
                "experiment_name": "hlml-train-deploy",
                "model_name": model_name,
                "humanlayer_conn_id": humanlayer_conn,
                "poll_interval": 0.3,
                "stages": [
                    {
                        "name": "Train",
                        "type": "training",
                        "config": {
                            "callable": f"{churn}:train_churn_model",
                            "params": {"C": 1.0, "max_iter": 200},
                            "op_kwargs": {"data_task_id": None, "n_samples": 600},
                        },
                    },
                    {"name": "Deploy", "type": "deployment", "approval_required": True},
                ],
            }
        )
        for task in dag.tasks:
            if isinstance(task, HumanApprovalSensor):
                task.poke_interval = 0.3
        assert {task.mlflow_conn_id for task in dag.tasks if hasattr(task, "mlflow_conn_id")} == {
            "mlflow_spec"
        }

        answered: list[dict[str, Any]] = []
        thread = threading.Thread(
            target=lambda: answered.extend(
                approve_when_pending(
                    approvals_service.base_url,
                    approvals_service.reviewer_key,
                    dag_id=dag_id,
                    timeout=300,
                    poll_interval=0.3,
                    comment="trained well",
                )
            ),
            daemon=True,
        )
        thread.start()
        dag_run = run_dag(dag)
        thread.join(30)
        assert task_states(dag_run) == {"train": "success", "approve_deploy": "success", "deploy": "success"}

        trained = xcom_value(dag_run, "train")
        decision = xcom_value(dag_run, "approve_deploy")
        record = xcom_value(dag_run, "deploy")
        # The reviewer saw the training result, which names the model like every stage output.
        approved = decision["context"]
        assert approved["model_name"] == model_name
        assert approved["model_version"] == trained["model_version"]
        assert approved["mlflow_run_id"] == trained["mlflow_run_id"] == trained["run_id"]
        assert record["mode"] == "promote"
        assert record["model_version"] == trained["model_version"]
        assert record["mlflow_run_id"] == trained["mlflow_run_id"]
        assert record["approval_call_id"] == decision["call_id"] == answered[0]["call_id"]

        champion = MLflowHook("mlflow_spec").client.get_model_version_by_alias(model_name, "champion")
        assert champion.version == trained["model_version"]
        assert champion.run_id == trained["mlflow_run_id"]
        assert champion.tags[audit.APPROVAL_CALL_ID] == decision["call_id"]
        assert champion.tags[audit.APPROVAL_COMMENT] == "trained well"
