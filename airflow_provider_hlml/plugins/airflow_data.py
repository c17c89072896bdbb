"""What the dashboard reads from the Airflow metadata database: pipeline DAG runs and their gates."""

from __future__ import annotations

import datetime as dt
import statistics
from typing import Any

from sqlalchemy import or_, select

from airflow_provider_hlml.review.links import airflow_ui_path as ui_path

#: Operator class names that make a DAG an HLML pipeline.
GATE_OPERATORS = frozenset({"HumanApprovalSensor"})
PROMOTE_OPERATORS = frozenset({"ModelPromoteOperator"})
PIPELINE_OPERATORS = frozenset(
    {"MLflowTrainOperator", "MLflowValidateOperator", *GATE_OPERATORS, *PROMOTE_OPERATORS}
)
FINISHED_RUN_STATES = frozenset({"success", "failed"})


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def pipeline_runs(readable_dag_ids: set[str], *, base_path: str, limit: int = 200) -> list[dict[str, Any]]:
    """Latest runs of the readable DAGs that use HLML operators, newest first, with their gates."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.utils.session import create_session

    if not readable_dag_ids:
        return []
    operator_match = or_(TI.operator.in_(PIPELINE_OPERATORS), TI.custom_operator_name.like("@task.mlflow%"))
    with create_session() as session:
        dag_ids = set(
            session.scalars(
                select(TI.dag_id).where(operator_match, TI.dag_id.in_(readable_dag_ids)).distinct()
            )
        )
        if not dag_ids:
            return []
        runs = list(
            session.scalars(
                select(DagRun)
                .where(DagRun.dag_id.in_(dag_ids))
                .order_by(DagRun.run_after.desc())
                .limit(limit)
            )
        )
        keys = {(r.dag_id, r.run_id) for r in runs}
        tis = session.execute(
            select(
                TI.dag_id,
                TI.run_id,
                TI.task_id,
                TI.map_index,
                TI.state,
                TI.operator,
                TI.start_date,
                TI.end_date,
                TI.duration,
            ).where(
                TI.dag_id.in_(dag_ids),
                TI.run_id.in_({run_id for _, run_id in keys}),
                operator_match,
            )
        ).all()
        by_run: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for ti in tis:
            if (ti.dag_id, ti.run_id) not in keys:
                continue
            by_run.setdefault((ti.dag_id, ti.run_id), []).append(
                {
                    "task_id": ti.task_id,
                    "map_index": ti.map_index,
                    "state": ti.state,
                    "operator": ti.operator,
                    "start_date": _iso(ti.start_date),
                    "end_date": _iso(ti.end_date),
                    "duration": ti.duration,
                    "url": ui_path(base_path, ti.dag_id, ti.run_id, ti.task_id),
                }
            )
        out = []
        for run in runs:
            tasks = sorted(by_run.get((run.dag_id, run.run_id), []), key=lambda t: t["start_date"] or "~")
            duration = (
                (run.end_date - run.start_date).total_seconds() if run.start_date and run.end_date else None
            )
            out.append(
                {
                    "dag_id": run.dag_id,
                    "run_id": run.run_id,
                    "state": str(run.state) if run.state else None,
                    "run_type": str(run.run_type),
                    "triggering_user_name": run.triggering_user_name,
                    "run_after": _iso(run.run_after),
                    "start_date": _iso(run.start_date),
                    "end_date": _iso(run.end_date),
                    "duration_seconds": duration,
                    "url": ui_path(base_path, run.dag_id, run.run_id),
                    "tasks": tasks,
                    "gates": [t for t in tasks if t["operator"] in GATE_OPERATORS],
                    "promotions": [t for t in tasks if t["operator"] in PROMOTE_OPERATORS],
                }
            )
        return out


def pipeline_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rates over finished pipeline runs (None when there is nothing to divide by)."""
    finished = [r for r in runs if r["state"] in FINISHED_RUN_STATES]
    reached_gate = [r for r in finished if any(g["state"] in ("success", "failed") for g in r["gates"])]
    deployed = [r for r in finished if any(p["state"] == "success" for p in r["promotions"])]
    durations = [r["duration_seconds"] for r in finished if r["state"] == "success" and r["duration_seconds"]]
    return {
        "pipeline_runs": len(runs),
        "finished_runs": len(finished),
        "running_runs": sum(1 for r in runs if r["state"] in ("running", "queued")),
        "failed_runs": sum(1 for r in finished if r["state"] == "failed"),
        # Runs whose gate finished: a decision policy may have decided it, so this is not the
        # human-intervention rate (``views.approval_figures`` counts who decided).
        "gated_run_rate": len(reached_gate) / len(finished) if finished else None,
        "deployment_rate": len(deployed) / len(finished) if finished else None,
        "avg_completion_seconds": statistics.fmean(durations) if durations else None,
    }
