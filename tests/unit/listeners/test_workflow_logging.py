"""Workflow logging listener: real DAG runs (``dag.test()``) logged to a real MLflow server."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pendulum
import pytest
from airflow.sdk import BaseOperator

from airflow_provider_hlml import audit
from airflow_provider_hlml.hooks.mlflow import MLflowHook
from airflow_provider_hlml.listeners.workflow_logging import (
    GATE_OPERATORS,
    WorkflowLoggingListener,
    workflow_logging_listener,
)
from airflow_provider_hlml.operators.mlflow import MLflowTrainOperator
from tests.fixtures.processes import free_port
from tests.unit.operators.dagrun_helpers import run_dag

START = pendulum.datetime(2024, 1, 1, tz="UTC")


class HumanApprovalSensor(BaseOperator):
    """Stand-in gate for this test: a task of the gate's type that returns the gate's XCom result.

    The listener recognises gates by task type and reads their result; the real sensor's waiting
    is covered by the sensor's own tests.
    """

    def __init__(self, *, response_seconds: float, approved: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.response_seconds = response_seconds
        self.approved = approved

    def execute(self, context: Any) -> dict[str, Any]:
        return {
            "approved": self.approved,
            "response_seconds": self.response_seconds,
            "call_id": f"call-{self.task_id}",
            "responded_by_user": {"name": "alice"},
            "context": {},
        }


@pytest.fixture
def listener(airflow_db: Any) -> Iterator[WorkflowLoggingListener]:
    """The listener the ``hlml`` plugin registers, as Airflow's listener manager holds it."""
    from airflow.listeners.listener import get_listener_manager

    manager = get_listener_manager()
    if not manager.pm.is_registered(workflow_logging_listener):
        manager.add_listener(workflow_logging_listener)
    workflow_logging_listener.flush(60)  # records of earlier tests' DAG runs
    yield workflow_logging_listener
    workflow_logging_listener.flush(60)


def _pipeline(dag_id: str, fail: bool = False) -> Any:
    from airflow.sdk import DAG

    def train() -> dict[str, float]:
        if fail:
            raise ValueError("no data")
        return {"accuracy": 0.9}

    with DAG(dag_id, schedule=None, start_date=START) as dag:
        gate_a = HumanApprovalSensor(task_id="approve_data", response_seconds=30.0)
        gate_b = HumanApprovalSensor(task_id="approve_model", response_seconds=90.0)
        fit = MLflowTrainOperator(
            task_id="train", python_callable=train, experiment_name="hlml-listener-stage"
        )
        gate_a >> fit >> gate_b
    return dag


def _workflow_runs(hook: MLflowHook, dag_id: str) -> list[Any]:
    experiment = hook.client.get_experiment_by_name("hlml-workflow-executions")
    if experiment is None:
        return []
    return hook.client.search_runs([experiment.experiment_id], f"tags.`{audit.AIRFLOW_DAG_ID}` = '{dag_id}'")


class TestWorkflowLoggingListener:
    def test_plugin_registers_the_listener(self) -> None:
        from airflow_provider_hlml.plugins.plugin import HlmlPlugin

        assert workflow_logging_listener in HlmlPlugin.listeners
        assert {"HumanApprovalSensor"} == GATE_OPERATORS

    def test_plugin_leaves_the_listener_out_when_logging_is_off(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from airflow_provider_hlml.plugins.plugin import plugin_listeners

        assert plugin_listeners() == [workflow_logging_listener]
        monkeypatch.setenv("AIRFLOW__HLML__WORKFLOW_LOGGING_ENABLED", "False")
        assert plugin_listeners() == []

    def test_successful_run_is_logged_with_gates(
        self, listener: WorkflowLoggingListener, mlflow_conn: str
    ) -> None:
        dag_id = f"wf_ok_{uuid.uuid4().hex[:8]}"
        dag_run = run_dag(_pipeline(dag_id))
        assert listener.flush(60)
        runs = _workflow_runs(MLflowHook(mlflow_conn), dag_id)
        assert len(runs) == 1
        run = runs[0]
        assert run.info.status == "FINISHED"
        assert run.data.tags[audit.AIRFLOW_RUN_ID] == dag_run.run_id
        assert run.data.tags[audit.AIRFLOW_DAG_RUN] == f"{dag_id}/{dag_run.run_id}"
        metrics = run.data.metrics
        assert metrics["success"] == 1.0
        assert metrics["tasks_total"] == 3.0
        assert metrics["tasks_success"] == 3.0
        assert metrics["human_gates"] == 2.0
        assert metrics["human_gates_approved"] == 2.0
        assert metrics["gate_response_seconds_mean"] == pytest.approx(60.0)
        assert metrics["gate_response_seconds_max"] == pytest.approx(90.0)
        assert metrics["gate.approve_model.response_seconds"] == pytest.approx(90.0)
        assert metrics["duration_seconds"] > 0

    def test_failed_run_is_logged_failed(self, listener: WorkflowLoggingListener, mlflow_conn: str) -> None:
        dag_id = f"wf_fail_{uuid.uuid4().hex[:8]}"
        run_dag(_pipeline(dag_id, fail=True))
        assert listener.flush(60)
        (run,) = _workflow_runs(MLflowHook(mlflow_conn), dag_id)
        assert run.info.status == "FAILED"
        assert run.data.metrics["success"] == 0.0
        assert run.data.metrics["tasks_failed"] == 1.0
        assert run.data.metrics["tasks_upstream_failed"] == 1.0
        assert run.data.metrics["human_gates"] == 2.0

    def test_mlflow_down_costs_a_warning_only(
        self,
        listener: WorkflowLoggingListener,
        airflow_db: Any,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        from airflow.sdk import DAG

        down = f"http://127.0.0.1:{free_port()}"
        monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DOWN", json.dumps({"conn_type": "mlflow", "host": down}))
        monkeypatch.setenv("AIRFLOW__HLML__MLFLOW_CONN_ID", "mlflow_down")
        dag_id = f"wf_down_{uuid.uuid4().hex[:8]}"
        with DAG(dag_id, schedule=None, start_date=START) as dag:
            HumanApprovalSensor(task_id="approve", response_seconds=5.0)
        caplog.set_level(logging.WARNING, logger="airflow_provider_hlml.listeners.workflow_logging")
        dag_run = run_dag(dag)
        assert str(dag_run.state) == "success"
        assert listener.flush(30)  # the probe is bounded: the send thread ends on its own
        assert f"'mlflow_down' ({down}) did not answer" in caplog.text

    def test_disabled_by_config_and_ignores_other_dags(
        self, listener: WorkflowLoggingListener, mlflow_conn: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from airflow.sdk import DAG, task

        hook = MLflowHook(mlflow_conn)
        monkeypatch.setenv("AIRFLOW__HLML__WORKFLOW_LOGGING_ENABLED", "False")
        off = f"wf_off_{uuid.uuid4().hex[:8]}"
        run_dag(_pipeline(off))
        monkeypatch.delenv("AIRFLOW__HLML__WORKFLOW_LOGGING_ENABLED")
        plain = f"wf_plain_{uuid.uuid4().hex[:8]}"
        with DAG(plain, schedule=None, start_date=START) as dag:

            @task
            def hello() -> int:
                return 1

            hello()
        run_dag(dag)
        assert listener.flush(30)
        assert _workflow_runs(hook, off) == []
        assert _workflow_runs(hook, plain) == []
