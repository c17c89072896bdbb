"""e2e: gates that time out while parked, one per ``on_timeout``, and one that escalates."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import DAG

from airflow_provider_hlml.sensors.approval import HumanApprovalSensor

with DAG(
    dag_id="e2e_parked_timeouts",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_tasks=16,
    tags=["e2e"],
):
    for policy in ("fail", "skip", "approve", "reject"):
        HumanApprovalSensor(
            task_id=f"timeout_{policy}",
            subject=f"Nobody answers: {policy}",
            approval_type="workflow_decision",
            response_timeout=timedelta(seconds=8),
            on_timeout=policy,
            retries=2,  # on_timeout="fail" and rejections fail without retrying all the same
        )
    HumanApprovalSensor(
        task_id="escalate",
        subject="Nobody answers at first: escalate to bob",
        approval_type="workflow_decision",
        approvers=["carol@example.com"],
        response_timeout=timedelta(seconds=8),
        on_timeout="escalate",
        escalation_approvers=["bob@example.com"],
        escalation_timeout=timedelta(minutes=10),
    )
