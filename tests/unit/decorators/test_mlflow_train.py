"""``@task.mlflow_train`` resolved through the provider's task-decorators, run with ``dag.test()``."""

from __future__ import annotations

import uuid
from typing import Any

import pendulum
import pytest

from airflow_provider_hlml import audit
from airflow_provider_hlml.decorators.mlflow_train import _MLflowTrainDecoratedOperator
from airflow_provider_hlml.hooks.mlflow import MLflowHook
from airflow_provider_hlml.operators.mlflow import TrainResult
from tests.unit.operators.dagrun_helpers import churn_frame, run_dag, task_states, xcom_value

FEATURES = [f"f{i}" for i in range(5)]


class TestMLflowTrainDecorator:
    def test_decorated_function_trains_in_an_mlflow_run(self, mlflow_conn: str, airflow_db: Any) -> None:
        from airflow.sdk import DAG, task

        dag_id = f"decorated_{uuid.uuid4().hex[:8]}"
        with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC")) as dag:

            @task
            def rows() -> int:
                return 200

            @task.mlflow_train(experiment_name="hlml-decorated", params={"max_depth": 3})
            def train(n_rows: int, run: Any = None, params: Any = None) -> TrainResult:
                from sklearn.tree import DecisionTreeClassifier

                frame = churn_frame().head(n_rows)
                model = DecisionTreeClassifier(max_depth=params["max_depth"], random_state=0)
                model.fit(frame[FEATURES], frame["churned"])
                assert run.info.run_id  # the active MLflow run is handed in
                return TrainResult(
                    metrics={"accuracy": model.score(frame[FEATURES], frame["churned"])}, model=model
                )

            train(rows())

        op = dag.get_task("train")
        assert isinstance(op, _MLflowTrainDecoratedOperator)
        dag_run = run_dag(dag)
        assert task_states(dag_run) == {"rows": "success", "train": "success"}
        result = xcom_value(dag_run, "train")
        assert result["metrics"]["accuracy"] > 0.8
        assert result["model_uri"]
        run = MLflowHook(mlflow_conn).client.get_run(result["run_id"])
        assert run.info.status == "FINISHED"
        assert run.data.params == {"max_depth": "3"}
        assert run.data.tags[audit.AIRFLOW_TASK_ID] == "train"
        assert run.data.tags[audit.AIRFLOW_DAG_ID] == dag_id

    def test_missing_argument_is_reported_at_definition(self) -> None:
        from airflow.sdk import DAG, task

        with DAG("decorated_bad", schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC")):

            @task.mlflow_train(experiment_name="x")
            def train(n_rows: int, run: Any = None) -> dict[str, float]:
                return {}

            with pytest.raises(TypeError, match="n_rows"):
                train()
