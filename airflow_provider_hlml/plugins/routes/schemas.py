"""JSON models of the dashboard's ``/api`` endpoints (documented in the app's OpenAPI)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

StatusFilter = Literal["all", "pending", "decided", "approved", "rejected", "expired", "cancelled"]


class BackendStatus(BaseModel):
    """Reachability of the dashboard's data sources."""

    approvals_ok: bool
    approvals_message: str | None = None
    mlflow_ok: bool
    mlflow_message: str | None = None

    @classmethod
    def of(cls, approvals_problem: str | None, mlflow_problem: str | None) -> BackendStatus:
        """The status from each source's problem message (``None`` = reachable)."""
        return cls(
            approvals_ok=approvals_problem is None,
            approvals_message=approvals_problem,
            mlflow_ok=mlflow_problem is None,
            mlflow_message=mlflow_problem,
        )


class Overview(BaseModel):
    """Key figures and recent activity."""

    figures: dict[str, Any]
    recent_activity: list[dict[str, Any]]
    backends: BackendStatus


class ApprovalItem(BaseModel):
    """One approval request with the caller's right to decide it."""

    call_id: str
    status: str
    subject: str | None = None
    fn: str | None = None
    approval_type: str | None = None
    urgency: str | None = None
    body: str = ""
    context: dict[str, Any] = Field(default_factory=dict)
    options: list[Any] = Field(default_factory=list)
    reject_options: list[dict[str, Any]] = Field(default_factory=list)
    requested_at: str | None = None
    responded_at: str | None = None
    response_seconds: float | None = None
    comment: str | None = None
    reject_option_name: str | None = None
    responded_by: str | None = None
    approvers: list[str] = Field(default_factory=list)
    requester: str | None = None
    dag_id: str | None = None
    dag_run_id: str | None = None
    task_id: str | None = None
    ti_url: str | None = None
    can_decide: bool = False
    decide_blocked_reason: str | None = None


class ApprovalList(BaseModel):
    """Approval requests visible to the caller."""

    items: list[ApprovalItem]
    total: int
    backends: BackendStatus


class ApprovalDetail(ApprovalItem):
    """One approval request with its audit trail."""

    audit: list[dict[str, Any]] = Field(default_factory=list)


class DecisionBody(BaseModel):
    """A reviewer's decision on a pending request."""

    approved: bool
    comment: str | None = Field(default=None, max_length=4000)
    reject_option: str | None = Field(default=None, max_length=200)


class DecisionResult(BaseModel):
    """The request after the decision."""

    call_id: str
    status: str
    responded_by: str | None = None
    comment: str | None = None


class Experiments(BaseModel):
    """MLflow experiments with recent runs, and registered models."""

    experiments: list[dict[str, Any]]
    models: list[dict[str, Any]]
    pipeline_runs: list[dict[str, Any]]
    mlflow_ui_url: str | None = None
    backends: BackendStatus


class Analytics(BaseModel):
    """Series behind the Analytics charts."""

    response_minutes: dict[str, Any]
    daily_decisions: dict[str, Any]
    pipeline_duration_minutes: dict[str, Any]
    model_metrics: list[dict[str, Any]]
    backends: BackendStatus
