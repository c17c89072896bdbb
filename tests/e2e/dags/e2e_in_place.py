"""e2e: an approved gate ends where its decision lands; its result reaches downstream tasks unchanged.

- ``gate``: ends in place on approval (the default); ``read`` gets its result through
  ``gate.output`` (Python) and through a Jinja template, and returns both;
- ``opted_out``: ``finish_in_place=False``: resumes on a worker, as every gate did before;
- ``rejected``: ``on_reject="skip"``: a rejection resumes on a worker and skips ``after_rejected``.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_hlml.sensors.approval import HumanApprovalSensor

with DAG(
    dag_id="e2e_in_place",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    tags=["e2e"],
):
    common: dict[str, Any] = {
        "approval_type": "workflow_decision",
        "poll_interval": 1,
        "response_timeout": timedelta(minutes=20),
        "deferrable": True,
    }
    gate = HumanApprovalSensor(task_id="gate", subject="End in place", **common)
    opted_out = HumanApprovalSensor(
        task_id="opted_out", subject="Resume on a worker", finish_in_place=False, **common
    )
    rejected = HumanApprovalSensor(task_id="rejected", subject="Reject me", on_reject="skip", **common)

    @task
    def read(result: dict[str, Any], comment: str, approved: str) -> dict[str, Any]:
        return {
            "type": type(result).__name__,
            "approved": result["approved"],
            "comment": result["comment"],
            "by": result["responded_by_user"]["name"],
            "template_comment": comment,
            "template_approved": approved,
        }

    read(
        gate.output,
        "{{ ti.xcom_pull(task_ids='gate')['comment'] }}",
        "{{ ti.xcom_pull(task_ids='gate').approved }}",
    )

    @task
    def after_opted_out(result: dict[str, Any]) -> bool:
        return bool(result["approved"])

    after_opted_out(opted_out.output)

    @task
    def after_rejected() -> str:
        return "ran"

    rejected >> after_rejected()
