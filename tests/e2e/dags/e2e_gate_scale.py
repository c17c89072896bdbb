"""Benchmark: many gates waiting at once, ours next to Airflow's native ApprovalOperator.

Each DAG maps a task group over ``count`` lanes: a gate, then a trivial task that starts as soon
as that lane's gate is approved (benchmarks/gate_scale.py --deployment measures from the decision
to that start, and what the waiting gates cost while nobody decides).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import DAG, task, task_group

from airflow_provider_hlml.sensors.approval import HumanApprovalSensor

for dag_id, native in (("bench_scale_hlml", False), ("bench_scale_native", True)):
    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
        catchup=False,
        params={"count": 10},
        max_active_tasks=4096,
        tags=["e2e", "benchmark"],
    ):

        @task
        def lanes(**context: Any) -> list[int]:
            return list(range(int(context["params"]["count"])))

        @task
        def after(lane: int) -> int:
            return lane

        @task_group
        def lane(i: int, native: bool = native) -> None:
            if native:
                gate: Any = ApprovalOperator(task_id="gate", subject="Scale probe", body="benchmark")
            else:
                gate = HumanApprovalSensor(
                    task_id="gate", subject="Scale probe", body="benchmark", approval_type="custom"
                )
            gate >> after(i)

        lane.expand(i=lanes())
