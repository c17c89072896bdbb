"""Log every finished DAG run that uses this provider's operators to an MLflow experiment.

Registered through the ``hlml`` Airflow plugin (``listeners``). For each DAG run that ends in
success or failure and has a task of one of :data:`HLML_OPERATORS`, one MLflow run is written to
``[hlml] workflow_logging_experiment`` with the duration, task counts, success, the number of
human approval gates and their response times (read from the gates' XCom results).

The record is gathered from the metadata DB synchronously (a few indexed reads) and sent to MLflow
from a daemon thread after a bounded reachability probe, so an MLflow outage never fails or slows
the DAG run: it costs one warning line. ``[hlml] workflow_logging_enabled = False`` turns it off.
"""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
from datetime import datetime, timezone
from statistics import fmean
from typing import TYPE_CHECKING, Any

from airflow.listeners import hookimpl

from airflow_provider_hlml import audit, settings

if TYPE_CHECKING:
    from airflow.models.dagrun import DagRun

log = logging.getLogger(__name__)

#: Task types (operator class names, or the TaskFlow decorator name) that make a DAG run "ours".
HLML_OPERATORS = frozenset(
    {
        "MLflowTrainOperator",
        "MLflowValidateOperator",
        "ModelPromoteOperator",
        "HumanApprovalSensor",
        "@task.mlflow_train",
    }
)
#: Task types that are human approval gates (``airflow_provider_hlml.sensors.approval``).
GATE_OPERATORS = frozenset({"HumanApprovalSensor"})
#: Seconds the reachability probe of the MLflow server may take.
PROBE_TIMEOUT_SECONDS = 3.0


def _seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None:
        return None
    end = end or datetime.now(timezone.utc)
    return max((end - start).total_seconds(), 0.0)


def collect_record(dag_run: DagRun, success: bool, session: Any = None) -> dict[str, Any] | None:
    """
    The workflow record of ``dag_run``, or ``None`` when no task of it is an HLML operator.

    :param dag_run: the finished DAG run (ORM object).
    :param success: whether it succeeded.
    :param session: SQLAlchemy session; the DAG run's own one by default.
    """
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select
    from sqlalchemy.orm import object_session

    own_session = session or object_session(dag_run)
    if own_session is None:
        with create_session() as new_session:
            return collect_record(dag_run, success, new_session)
    rows = own_session.execute(
        select(
            TaskInstance.task_id,
            TaskInstance.map_index,
            TaskInstance.state,
            TaskInstance.operator,
            TaskInstance.custom_operator_name,
        ).where(TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id)
    ).all()
    kinds = {row.operator for row in rows} | {row.custom_operator_name for row in rows}
    if not kinds & HLML_OPERATORS:
        return None
    counts: dict[str, int] = {}
    for row in rows:
        state = str(row.state.value if hasattr(row.state, "value") else row.state or "none")
        counts[state] = counts.get(state, 0) + 1
    gate_ids = sorted({row.task_id for row in rows if row.operator in GATE_OPERATORS})
    gates: list[dict[str, Any]] = []
    if gate_ids:
        query = XComModel.get_many(
            run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=gate_ids, key="return_value"
        )
        decided = {}
        xcom: Any
        for xcom in own_session.scalars(query):
            value = XComModel.deserialize_value(xcom)
            if isinstance(value, dict):
                decided[(xcom.task_id, xcom.map_index)] = value
        for row in rows:
            if row.operator not in GATE_OPERATORS:
                continue
            value = decided.get((row.task_id, row.map_index), {})
            seconds = value.get("response_seconds")
            gates.append(
                {
                    "task_id": row.task_id,
                    "map_index": row.map_index,
                    "state": str(row.state.value if hasattr(row.state, "value") else row.state),
                    "approved": value.get("approved"),
                    "response_seconds": float(seconds) if isinstance(seconds, int | float) else None,
                    "call_id": value.get("call_id"),
                }
            )
    return {
        "dag_id": dag_run.dag_id,
        "run_id": dag_run.run_id,
        "run_type": str(getattr(dag_run.run_type, "value", dag_run.run_type)),
        "success": success,
        "start_date": dag_run.start_date.isoformat() if dag_run.start_date else None,
        "end_date": dag_run.end_date.isoformat() if dag_run.end_date else None,
        "duration_seconds": _seconds_between(dag_run.start_date, dag_run.end_date),
        "task_counts": counts,
        "tasks_total": len(rows),
        "gates": gates,
    }


def record_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The numeric view of a record logged as MLflow metrics."""
    metrics: dict[str, float] = {
        "success": 1.0 if record["success"] else 0.0,
        "tasks_total": float(record["tasks_total"]),
        "human_gates": float(len(record["gates"])),
        "human_gates_approved": float(sum(1 for g in record["gates"] if g["approved"] is True)),
    }
    if record["duration_seconds"] is not None:
        metrics["duration_seconds"] = float(record["duration_seconds"])
    for state, count in record["task_counts"].items():
        metrics[f"tasks_{state}"] = float(count)
    times = [g["response_seconds"] for g in record["gates"] if g["response_seconds"] is not None]
    if times:
        metrics["gate_response_seconds_mean"] = fmean(times)
        metrics["gate_response_seconds_max"] = max(times)
    for gate in record["gates"]:
        if gate["response_seconds"] is not None:
            suffix = f".{gate['map_index']}" if gate["map_index"] not in (None, -1) else ""
            metrics[f"gate.{gate['task_id']}{suffix}.response_seconds"] = gate["response_seconds"]
    return metrics


class WorkflowLoggingListener:
    """Airflow listener writing one MLflow run per finished DAG run that uses HLML operators."""

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    @hookimpl
    def on_dag_run_success(self, dag_run: DagRun, msg: str) -> None:
        self._handle(dag_run, success=True)

    @hookimpl
    def on_dag_run_failed(self, dag_run: DagRun, msg: str) -> None:
        self._handle(dag_run, success=False)

    def _handle(self, dag_run: DagRun, success: bool) -> None:
        try:
            if not settings.workflow_logging_enabled():
                return
            record = collect_record(dag_run, success)
            if record is None:
                return
            thread = threading.Thread(target=self.send, args=(record,), name="hlml-workflow-log", daemon=True)
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
            thread.start()
        except Exception:
            log.warning("Workflow logging skipped for %s: could not read the DAG run", dag_run, exc_info=True)

    def send(self, record: dict[str, Any]) -> str | None:
        """Write ``record`` to MLflow; returns the MLflow run id, or ``None`` (with a warning)."""
        from airflow_provider_hlml.hooks.mlflow import MLflowHook

        conn_id = settings.mlflow_conn_id()
        experiment = settings.workflow_logging_experiment()
        try:
            hook = MLflowHook(conn_id)
            if not self._reachable(hook):
                log.warning(
                    "Workflow record of %s/%s not logged: %s did not answer within %.0fs",
                    record["dag_id"],
                    record["run_id"],
                    hook.describe(),
                    PROBE_TIMEOUT_SECONDS,
                )
                return None
            return self._write(hook, experiment, record)
        except Exception as exc:
            log.warning(
                "Workflow record of %s/%s not logged to MLflow: %s", record["dag_id"], record["run_id"], exc
            )
            return None

    @staticmethod
    def _reachable(hook: Any) -> bool:
        uri = hook.tracking_uri
        if not uri.startswith(("http://", "https://")):
            return True
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_SECONDS):
                return True
        except urllib.error.HTTPError:
            return True  # it answered: /health may be behind auth
        except (OSError, ValueError):
            return False

    @staticmethod
    def _write(hook: Any, experiment: str, record: dict[str, Any]) -> str:
        from airflow_provider_hlml.operators.mlflow_runs import log_batch

        client = hook.client
        experiment_id = hook.get_or_create_experiment(
            experiment, description="One run per finished DAG run that uses HLML operators."
        )
        tags = {
            audit.AIRFLOW_DAG_ID: record["dag_id"],
            audit.AIRFLOW_RUN_ID: record["run_id"],
            audit.AIRFLOW_DAG_RUN: audit.dag_run_group(record["dag_id"], record["run_id"]),
            audit.HLML_STAGE: "workflow",
        }
        run = client.create_run(experiment_id, run_name=f"{record['dag_id']}/{record['run_id']}", tags=tags)
        run_id = run.info.run_id
        log_batch(
            client,
            run_id,
            metrics=record_metrics(record),
            params={"dag_id": record["dag_id"], "run_type": record["run_type"]},
        )
        client.log_dict(run_id, record, "workflow_record.json")
        client.set_terminated(run_id, status="FINISHED" if record["success"] else "FAILED")
        return str(run_id)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait for pending sends (tests, shutdown); ``True`` when none is left running."""
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)
        return not any(t.is_alive() for t in threads)


#: The listener object the ``hlml`` plugin registers.
workflow_logging_listener = WorkflowLoggingListener()
