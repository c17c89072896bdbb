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


class RuleProgressItem(BaseModel):
    """How far one approval rule of a request is."""

    name: str
    approvers: list[str] = Field(default_factory=list, description="As written; empty: any reviewer")
    eligible: list[str] = Field(
        default_factory=list, description="The approvers, each group with the members it resolved to"
    )
    required: int
    veto: bool = True
    source: str = Field("gate", description="gate (the DAG's own rule) or policy (the approval policy file)")
    approved_by: list[str] = Field(default_factory=list, description="Who approved toward this rule")
    count: int
    met: bool
    summary: str = Field(description='E.g. "ML lead 1 of 2: alice"')


class AnswerItem(BaseModel):
    """One person's answer to a request (a request with rules collects several)."""

    label: str
    name: str | None = None
    email: str | None = None
    via_delegate: bool = False
    approved: bool
    comment: str | None = None
    at: str | None = None
    rule: str | None = Field(None, description="The rule the approval counts toward")


class MetricRowItem(BaseModel):
    """One metric of the reviewer's card: the candidate against the champion."""

    name: str
    candidate: float | None = None
    champion: float | None = None
    delta: float | None = Field(None, description="candidate - champion")
    delta_relative: float | None = Field(None, description="delta / |champion|")
    delta_text: str = Field("-", description='E.g. "+0.012 (+1.4%)"')
    better: bool | None = Field(
        None,
        description="Whether the candidate is better, in the metric's direction (None: equal or no champion)",
    )
    greater_is_better: bool = True
    direction: str = Field("higher is better", description='"higher is better" or "lower is better"')
    rule: str = Field("", description='The metric\'s rule in words, e.g. ">= 0.85"')
    passed: bool | None = None
    reason: str | None = None


class CardLinkItem(BaseModel):
    """A link of the reviewer's card (``url`` None: shown as text, it could not be a safe link)."""

    label: str
    url: str | None = None
    kind: str = Field(
        "",
        description="mlflow_run, model_version, champion_version, compare, validation_run, "
        "airflow_task or airflow_dag_run",
    )


class DeliveryNoticeItem(BaseModel):
    """One notice the approvals service sent (or is sending) about a request."""

    channel: str = Field(description="email or slack")
    channel_label: str = Field(description='How the channel is named: "E-mail", "Slack"')
    recipient: str = Field("", description="An e-mail address, or a Slack channel or user")
    notice: str = Field("", description="request, reminder, escalation, outcome or alert")
    step: int = Field(0, description="The reminder ladder's step it belongs to (0: the request)")
    state: str = Field(description="As the service reports it: pending, sent, failed or skipped")
    status: str = Field(
        description="As shown: sent, retrying (pending, tried already), pending, failed, skipped or unknown"
    )
    attempts: int = 0
    sent_at: str | None = None
    next_attempt_at: str | None = Field(None, description="When a pending notice is tried next")
    error: str | None = Field(None, description="The last error (text from the service)")
    warning: bool = Field(False, description="Failed or being retried")


class DeliveryChannelItem(BaseModel):
    """A request's notices on one channel, counted."""

    channel: str
    label: str
    total: int
    counts: dict[str, int] = Field(default_factory=dict, description="Notices per status")
    text: str = Field(description='E.g. "E-mail: 3 sent · 1 failed" or "Slack: sent"')
    detail: str = Field("", description="One line per notice: recipient, notice, status, attempts, error")
    warning: bool = Field(False, description="Whether a notice on this channel failed or is being retried")


class DeliverySummary(BaseModel):
    """Where a request was delivered and whether delivery is failing."""

    text: str = Field(description='Each channel\'s line, e.g. "E-mail: 3 sent · 1 failed; Slack: sent"')
    warning: bool = Field(False, description="Whether any notice failed or is being retried")
    total: int = 0
    failed: int = 0
    retrying: int = 0
    channels: list[DeliveryChannelItem] = Field(default_factory=list)
    notices: list[DeliveryNoticeItem] = Field(
        default_factory=list, description="The newest notices, oldest first"
    )
    omitted: int = Field(0, description="Older notices not listed (the counts include them)")


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
    reject_option_title: str | None = Field(None, description="The chosen reject reason's title")
    responded_by: str | None = None
    decided_by_policy: bool = Field(
        False,
        description="Decided by a decision policy (its policy:<name>-v<version> principal), not a person",
    )
    approvers: list[str] = Field(default_factory=list)
    extra_approvers: list[str] = Field(default_factory=list, description="Approvers an escalation added")
    requester: str | None = None
    rules: list[RuleProgressItem] = Field(default_factory=list, description="Each rule's progress")
    has_rules: bool = Field(False, description="Whether the gate declared rules (else one approver list)")
    progress: str | None = Field(None, description='E.g. "ML lead 1 of 2: alice; Compliance 0 of 1"')
    answers: list[AnswerItem] = Field(default_factory=list, description="Who answered so far, in order")
    approved_by: list[str] = Field(default_factory=list, description="Who approved so far")
    dag_id: str | None = None
    dag_run_id: str | None = None
    task_id: str | None = None
    ti_url: str | None = None
    can_decide: bool = False
    decide_blocked_reason: str | None = None
    # The reviewer's card (airflow_provider_hlml.review.card), as the Approvals tab shows it.
    body_html: str = Field(
        "", description="The Markdown body rendered and sanitised (safe to insert as HTML)"
    )
    model: dict[str, str] = Field(
        default_factory=dict,
        description="model_name, model_version, mlflow_run_id, model_uri, validation_run_id, champion_version",
    )
    metrics: list[MetricRowItem] = Field(default_factory=list, description="Candidate, champion, difference")
    has_report: bool = Field(False, description="Whether the context is a validation report")
    no_champion: bool = Field(False, description="A validation report without a champion (a first version)")
    links: list[CardLinkItem] = Field(default_factory=list, description="Links into MLflow and Airflow")
    policy_note: str | None = Field(
        None,
        description="What the request's decision policy would decide and when, unless a person answers "
        "first; or why a person decides although the policy decided",
    )
    deliveries: DeliverySummary | None = Field(
        None,
        description="Where the approvals service delivered the request (e-mail, Slack); null when it "
        "does not report deliveries (the HumanLayer cloud, an older service) or could not be asked",
    )


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
    """The request after the decision (still ``pending`` after an approval its rules need more of)."""

    call_id: str
    status: str
    responded_by: str | None = None
    comment: str | None = None
    progress: str | None = Field(None, description="Each rule's progress after the answer")
    message: str = Field(description="What the reviewer is told")


class Experiments(BaseModel):
    """MLflow experiments with recent runs, and registered models."""

    experiments: list[dict[str, Any]]
    models: list[dict[str, Any]]
    #: Each protected alias that is set: holder, status (verified / unverified / reverted /
    #: unchecked) and the evidence (approvers, call id, key id, reason).
    guarded_aliases: list[dict[str, Any]] = []
    pipeline_runs: list[dict[str, Any]]
    mlflow_ui_url: str | None = None
    backends: BackendStatus


class DecisionSourceCounts(BaseModel):
    """Decided model decisions by how they were made."""

    auto_approved: int = Field(0, description="Approved by a decision policy (its policy:... principal)")
    auto_rejected: int = Field(0, description="Rejected by a decision policy")
    human: int = Field(0, description="Decided by a person the gate asked (a human intervention)")


class DecisionSourceSeries(BaseModel):
    """Per UTC day, the same as ``labels``."""

    auto_approved: list[float]
    auto_rejected: list[float]
    human: list[float]


class ModelDecisions(BaseModel):
    """Model decisions per UTC day of response, by decision policy or by a person."""

    labels: list[str] = Field(description='The days, "MM-DD", oldest first')
    series: DecisionSourceSeries
    human_rate: list[float | None] = Field(
        description="Per day: human-decided / all decided model decisions (null on a day without any)"
    )
    totals: DecisionSourceCounts = Field(description="Over the window")
    human_intervention_rate: float | None = Field(
        None, description="Over the window: human-decided / all decided model decisions"
    )
    days: int = Field(description="The window's length in days")


class Analytics(BaseModel):
    """Series behind the Analytics charts."""

    response_minutes: dict[str, Any]
    daily_decisions: dict[str, Any]
    model_decisions: ModelDecisions
    pipeline_duration_minutes: dict[str, Any]
    model_metrics: list[dict[str, Any]]
    backends: BackendStatus
