"""e2e: many approval gates pending at once (one mapped HumanApprovalSensor), then a tally."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_hlml.sensors.approval import HumanApprovalSensor

with DAG(
    dag_id="e2e_gate_fanout",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    params={"count": 50},
    max_active_tasks=64,
    tags=["e2e"],
):

    @task
    def subjects(**context: Any) -> list[str]:
        return [f"e2e gate {i}" for i in range(int(context["params"]["count"]))]

    gates = HumanApprovalSensor.partial(
        task_id="gate",
        body="An end-to-end test gate.",
        approval_type="workflow_decision",
        urgency="low",
        poll_interval=1,
        response_timeout=timedelta(minutes=20),
        deferrable=True,
    ).expand(subject=subjects())

    @task
    def tally(results: Any) -> dict[str, int]:
        decisions = list(results)
        return {
            "count": len(decisions),
            "approved": sum(1 for d in decisions if d["approved"]),
            "calls": len({d["call_id"] for d in decisions}),
        }

    tally(gates.output)
