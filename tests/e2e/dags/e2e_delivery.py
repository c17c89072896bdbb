"""e2e / benchmark: a gate answered from its e-mail's one-click link next to one answered in the dashboard.

benchmarks/delivery.py approves ``mail_gate`` through the approve link of the e-mail the approvals
service sent, and ``ui_gate`` through the dashboard's decision API, and measures from each decision
to the start of the task after the gate.
"""

from __future__ import annotations

from datetime import datetime, timezone

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

from airflow_provider_hlml.sensors.approval import HumanApprovalSensor

with DAG(
    dag_id="e2e_delivery",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    tags=["e2e"],
):
    mail_gate = HumanApprovalSensor(
        task_id="mail_gate",
        subject="One-click probe {{ run_id }}",
        body="Decided from the e-mail by benchmarks/delivery.py.",
        approvers=["reviewer@example.com"],
        deferrable=True,
    )
    ui_gate = HumanApprovalSensor(
        task_id="ui_gate",
        subject="Dashboard probe {{ run_id }}",
        body="Decided in the dashboard by benchmarks/delivery.py.",
        approvers=["reviewer"],
        deferrable=True,
    )
    mail_gate >> PythonOperator(task_id="after_mail", python_callable=lambda: "started")
    ui_gate >> PythonOperator(task_id="after_ui", python_callable=lambda: "started")
