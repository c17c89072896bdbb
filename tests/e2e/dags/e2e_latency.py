"""e2e / benchmark: this provider's approval gate next to Airflow's native ApprovalOperator.

Each gate is followed by a trivial task; benchmarks/e2e_latency.py answers both gates and
measures from the decision to the start of the task after it.
"""

from __future__ import annotations

from datetime import datetime, timezone

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

from airflow_provider_hlml.sensors.approval import HumanApprovalSensor

with DAG(
    dag_id="e2e_latency",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    tags=["e2e"],
):
    hlml_gate = HumanApprovalSensor(
        task_id="hlml_gate",
        subject="Latency probe",
        body="Decided by benchmarks/e2e_latency.py.",
        approval_type="custom",
        deferrable=True,
    )
    native_gate = ApprovalOperator(
        task_id="native_gate",
        subject="Latency probe",
        body="Decided by benchmarks/e2e_latency.py.",
    )
    hlml_gate >> PythonOperator(task_id="after_hlml", python_callable=lambda: "started")
    native_gate >> PythonOperator(task_id="after_native", python_callable=lambda: "started")
