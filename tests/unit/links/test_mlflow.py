"""The "MLflow run" extra link: URL pushed in execute, rendered by the task runner via get_link."""

from __future__ import annotations

import uuid
from typing import Any

import pendulum
import pytest

from airflow_provider_hlml.links.mlflow import MLFLOW_RUN_URL_XCOM_KEY, MLflowRunLink
from airflow_provider_hlml.operators.mlflow import (
    MLflowTrainOperator,
    MLflowValidateOperator,
    ModelPromoteOperator,
)
from tests.unit.operators.dagrun_helpers import run_dag, xcom_value


class TestMLflowRunLink:
    def test_name_and_operators(self) -> None:
        assert MLflowRunLink.name == "MLflow run"
        for operator in (MLflowTrainOperator, MLflowValidateOperator, ModelPromoteOperator):
            assert any(isinstance(link, MLflowRunLink) for link in operator.operator_extra_links)

    def test_link_renders_after_a_run(self, mlflow_conn: str, mlflow_server: Any, airflow_db: Any) -> None:
        from airflow.sdk import DAG

        with DAG(
            f"link_{uuid.uuid4().hex[:8]}", schedule=None, start_date=pendulum.datetime(2024, 1, 1)
        ) as dag:
            MLflowTrainOperator(
                task_id="train", python_callable=lambda: {"loss": 0.1}, experiment_name="hlml-link"
            )
        dag_run = run_dag(dag)
        result = xcom_value(dag_run, "train")
        expected = f"{mlflow_server.url}/#/experiments/{result['experiment_id']}/runs/{result['run_id']}"
        assert xcom_value(dag_run, "train", MLFLOW_RUN_URL_XCOM_KEY) == expected
        # The task runner calls get_link at the end of the task and stores what the UI shows.
        assert xcom_value(dag_run, "train", MLflowRunLink().xcom_key) == expected

    def test_no_xcom_error_when_training_fails_before_its_run(
        self, airflow_db: Any, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
    ) -> None:
        from airflow.sdk import DAG

        from tests.unit.operators.dagrun_helpers import task_states

        monkeypatch.delenv("AIRFLOW_CONN_MLFLOW_NOWHERE", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        with DAG(
            f"link_failed_{uuid.uuid4().hex[:8]}", schedule=None, start_date=pendulum.datetime(2024, 1, 1)
        ) as dag:
            MLflowTrainOperator(
                task_id="train",
                python_callable=lambda: {"loss": 0.1},
                experiment_name="hlml-link",
                mlflow_conn_id="mlflow_nowhere",  # fails before any MLflow run starts
            )
        capfd.readouterr()
        dag_run = run_dag(dag)
        out, err = capfd.readouterr()
        log = out + err
        assert task_states(dag_run) == {"train": "failed"}
        assert "'mlflow_nowhere' is not defined" in log  # the one real problem is in the log
        assert "XCom not found" not in log
        assert "Failed to push an xcom for task operator extra link" not in log
        assert xcom_value(dag_run, "train", MLflowRunLink().xcom_key) == ""
