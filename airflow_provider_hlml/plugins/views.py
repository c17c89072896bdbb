"""Turning raw approvals, runs and MLflow data into what the pages and JSON endpoints show."""

from __future__ import annotations

import datetime as dt
import statistics
from collections import Counter
from typing import Any

from airflow_provider_hlml.gate.policy import ApprovalPolicy
from airflow_provider_hlml.gate.state import GateLocation, GateState
from airflow_provider_hlml.plugins.auth import Identity

DECIDED_STATUSES = ("approved", "rejected", "expired", "cancelled")
ALL_STATUSES = ("pending", *DECIDED_STATUSES)


def parse_time(value: Any) -> dt.datetime | None:
    if not value or not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def call_status(status: dict[str, Any] | None) -> str:
    """pending / approved / rejected / cancelled / expired of a HumanLayer function call status."""
    status = status or {}
    if status.get("approved") is True:
        return "approved"
    if status.get("approved") is False:
        return "rejected"
    if status.get("cancelled_at") or status.get("cancel_reason"):
        return "expired" if status.get("cancel_reason") == "timeout" else "cancelled"
    return "pending"


def normalize_call(call: dict[str, Any], *, airflow_base_path: str) -> dict[str, Any]:
    """A flat view of one function call, with the gate's policy and its Airflow task."""
    spec = call.get("spec") or {}
    status = call.get("status") or {}
    kwargs = spec.get("kwargs") or {}
    gate = GateState.from_state(spec.get("state"))
    airflow = gate.airflow or GateLocation()
    requested = parse_time(status.get("requested_at"))
    responded = parse_time(status.get("responded_at")) or parse_time(status.get("cancelled_at"))
    kind = call_status(status)
    raw_user = status.get("user_info")
    user_info: dict[str, Any] = raw_user if isinstance(raw_user, dict) else {}
    reject_options = [
        {"name": o.get("name"), "title": o.get("title") or o.get("name"), "description": o.get("description")}
        for o in spec.get("reject_options") or []
        if isinstance(o, dict) and o.get("name")
    ]
    extra = status.get("extra_approvers")
    return {
        "call_id": call.get("call_id"),
        "run_id": call.get("run_id"),
        "fn": spec.get("fn"),
        "approval_type": kwargs.get("approval_type") or spec.get("fn"),
        "subject": kwargs.get("subject") or spec.get("fn"),
        "body": kwargs.get("body") or "",
        "urgency": kwargs.get("urgency") or "medium",
        "options": kwargs.get("options") or [],
        "context": kwargs.get("context") if isinstance(kwargs.get("context"), dict) else {},
        "reject_options": reject_options,
        "status": kind,
        "requested_at": requested.isoformat() if requested else None,
        "responded_at": responded.isoformat() if responded and kind != "pending" else None,
        "response_seconds": (responded - requested).total_seconds()
        if requested and responded and kind != "pending"
        else None,
        "comment": status.get("comment"),
        "reject_option_name": status.get("reject_option_name"),
        "cancel_reason": status.get("cancel_reason"),
        "responded_by": user_info.get("name") or user_info.get("email") or user_info.get("principal"),
        "responded_by_email": user_info.get("email"),
        "approvers": list(gate.approvers),
        # Approvers an escalation added (the service reports them; they extend the approvers).
        "extra_approvers": [a for a in extra if isinstance(a, str)] if isinstance(extra, list) else [],
        "requester": gate.requester,
        "allow_self_approval": gate.allow_self_approval,
        "dag_id": airflow.dag_id,
        "dag_run_id": airflow.run_id,
        "task_id": airflow.task_id,
        "try_number": airflow.try_number,
        # The request's own ``ti_url`` is whatever its creator wrote: the link is built from ids.
        "ti_url": task_instance_path(
            airflow_base_path, airflow.dag_id, airflow.run_id, airflow.task_id, airflow.map_index
        ),
    }


def task_instance_path(
    base_path: str, dag_id: str | None, run_id: str | None, task_id: str | None, map_index: Any
) -> str | None:
    """The Airflow UI path of a gate's task instance, from its ids; None without all three ids."""
    from airflow_provider_hlml.plugins.airflow_data import ui_path

    if not (dag_id and run_id and task_id):
        return None
    index = map_index if isinstance(map_index, int) and not isinstance(map_index, bool) else None
    return ui_path(base_path, dag_id, run_id, task_id, index)


def decision_block_reason(item: dict[str, Any], identity: Identity, *, may_edit_dag: bool) -> str | None:
    """Why this user may not decide this request, or None when they may."""
    if item["status"] != "pending":
        return f"Already {item['status']}"
    if not may_edit_dag:
        target = f"DAG {item['dag_id']}" if item["dag_id"] else "all DAGs"
        return f"You need edit access to {target} to decide"
    policy = ApprovalPolicy(
        approvers=tuple(item["approvers"]),
        requester=item.get("requester"),
        allow_self_approval=item["allow_self_approval"],
        extra_approvers=tuple(item.get("extra_approvers") or ()),
    )
    who = identity.responder
    if not policy.is_approver(who):
        return "Only these approvers may decide: " + ", ".join(policy.allowed)
    if policy.is_requester(who):
        return "You triggered this run and self-approval is off for this gate"
    return None


def approval_figures(items: list[dict[str, Any]], metrics: dict[str, Any] | None) -> dict[str, Any]:
    """Approval key figures: from the service's metrics when offered, else from the listed calls."""
    decided = [i for i in items if i["status"] in DECIDED_STATUSES]
    counts = Counter(i["status"] for i in items)
    response = [i["response_seconds"] for i in decided if i["status"] in ("approved", "rejected")]
    answered = counts["approved"] + counts["rejected"]
    computed = {
        "pending": counts["pending"],
        "total": len(items),
        "approved": counts["approved"],
        "rejected": counts["rejected"],
        "cancelled": counts["cancelled"],
        "expired": counts["expired"],
        "approval_rate": counts["approved"] / answered if answered else None,
        "median_response_seconds": statistics.median(response) if response else None,
        "timeout_rate": counts["expired"] / len(decided) if decided else None,
    }
    if metrics:
        for key in ("approval_rate", "median_response_seconds", "timeout_rate", "p95_response_seconds"):
            if key in metrics:
                computed[key] = metrics[key]
    return computed


def recent_activity(
    items: list[dict[str, Any]], runs: list[dict[str, Any]], *, limit: int = 15
) -> list[dict[str, Any]]:
    """Newest approvals events and DAG-run ends, merged."""
    events: list[dict[str, Any]] = []
    for item in items:
        if item["requested_at"]:
            events.append(
                {
                    "at": item["requested_at"],
                    "kind": "approval_requested",
                    "text": f"Approval requested: {item['subject']}",
                    "url": item["ti_url"],
                    "status": "requested",
                }
            )
        if item["responded_at"]:
            who = f" by {item['responded_by']}" if item["responded_by"] else ""
            events.append(
                {
                    "at": item["responded_at"],
                    "kind": f"approval_{item['status']}",
                    "text": f"{item['status'].capitalize()}{who}: {item['subject']}",
                    "url": item["ti_url"],
                    "status": item["status"],
                }
            )
    for run in runs:
        at = run["end_date"] or run["start_date"] or run["run_after"]
        if at:
            events.append(
                {
                    "at": at,
                    "kind": "dag_run",
                    "text": f"DAG run {run['dag_id']} / {run['run_id']}: {run['state']}",
                    "url": run["url"],
                    "status": run["state"],
                }
            )
    events.sort(key=lambda e: parse_time(e["at"]) or dt.datetime.min.replace(tzinfo=dt.timezone.utc))
    return list(reversed(events))[:limit]


def production_models(models: list[dict[str, Any]]) -> int:
    """Registered models with a serving alias (``champion`` or ``production``)."""
    return sum(1 for m in models if {"champion", "production"} & set(m.get("aliases", {})))


def daily_decision_counts(
    items: list[dict[str, Any]], *, days: int = 14
) -> tuple[list[str], dict[str, list[float]]]:
    today = dt.datetime.now(dt.timezone.utc).date()
    labels = [(today - dt.timedelta(days=days - 1 - i)).isoformat() for i in range(days)]
    index = {label: i for i, label in enumerate(labels)}
    stacks: dict[str, list[float]] = {s: [0.0] * days for s in DECIDED_STATUSES}
    for item in items:
        when = parse_time(item["responded_at"])
        if item["status"] in stacks and when and when.date().isoformat() in index:
            stacks[item["status"]][index[when.date().isoformat()]] += 1
    return [label[5:] for label in labels], stacks


def response_time_series(
    items: list[dict[str, Any]], *, limit: int = 30
) -> tuple[list[str], list[float | None]]:
    answered = [
        i for i in items if i["response_seconds"] is not None and i["status"] in ("approved", "rejected")
    ]
    answered.sort(key=lambda i: i["responded_at"] or "")
    answered = answered[-limit:]
    return (
        [(i["responded_at"] or "")[5:16].replace("T", " ") for i in answered],
        [round(i["response_seconds"] / 60.0, 2) for i in answered],
    )


def pipeline_duration_series(
    runs: list[dict[str, Any]], *, limit: int = 30
) -> tuple[list[str], dict[str, list[float | None]]]:
    finished = [r for r in runs if r["duration_seconds"] is not None][:limit]
    finished.reverse()
    labels = [(r["start_date"] or "")[5:16].replace("T", " ") for r in finished]
    series: dict[str, list[float | None]] = {}
    for idx, run in enumerate(finished):
        series.setdefault(run["dag_id"], [None] * len(finished))[idx] = round(
            run["duration_seconds"] / 60.0, 2
        )
    return labels, series


def model_metric_series(
    model: dict[str, Any], *, max_metrics: int = 4
) -> tuple[list[str], dict[str, list[float | None]]]:
    versions = sorted(model.get("versions", []), key=lambda v: int(v["version"]))
    names: list[str] = []
    for v in versions:
        for key in v.get("metrics", {}):
            if key not in names:
                names.append(key)
    names = names[:max_metrics]
    return (
        [f"v{v['version']}" for v in versions],
        {n: [v.get("metrics", {}).get(n) for v in versions] for n in names},
    )
