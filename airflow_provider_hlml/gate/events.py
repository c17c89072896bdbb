"""What the gate's waiting path reports: trigger events, and the gate's result built from them.

The trigger yields these events, the API server's wake path submits the same ones, and the sensor
turns a decision into its XCom result (:class:`ApprovalResult`), so every path settles a request
with the same rules (:func:`settled_event`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from typing_extensions import NotRequired

from airflow_provider_hlml.gate.state import GateState, is_policy_principal

if TYPE_CHECKING:
    from airflow_provider_hlml.gate.policy import ApprovalPolicy
    from airflow_provider_hlml.gate.wire import GateFunctionCall

__all__ = [
    "APPROVE",
    "EVENT_STATUSES",
    "REJECT",
    "ApprovalCancelledEvent",
    "ApprovalDecisionEvent",
    "ApprovalErrorEvent",
    "ApprovalEvent",
    "ApprovalResult",
    "ApprovalTimeoutEvent",
    "ApproverRecord",
    "FinishInPlace",
    "ResponderPayload",
    "approval_result",
    "decided_by",
    "decision_event",
    "finished_in_place",
    "iso",
    "link_xcoms",
    "parse_time",
    "settled_event",
]

APPROVE = "Approve"
REJECT = "Reject"


class ResponderPayload(TypedDict):
    """Who decided (native HITL's ``HITLUser`` keys ``id``/``name`` plus e-mail and delegate)."""

    id: str | None
    name: str | None
    email: str | None
    via_delegate: str | bool | None


class ApproverRecord(TypedDict):
    """One person whose approval counted toward a decision, and the rule it counted toward."""

    name: str | None
    email: str | None
    rule: str | None
    at: str | None


class FinishInPlace(TypedDict):
    """What a waiting gate hands over so that an approval can end it where the decision lands
    (the triggerer, or the API server's wake path) instead of resuming it on a worker.

    The gate puts it in its trigger's kwargs or its parked ``next_kwargs`` only when ending in
    place gives exactly what ``execute_complete`` would (see
    ``HumanApprovalSensor.finish_in_place``); without it, every decision resumes the task.
    """

    approval_url: str | None
    """The result's ``approval_url``, as the gate computes it."""
    xcom: bool
    """Whether the result is pushed as the ``return_value`` XCom (the gate's ``do_xcom_push``)."""
    links: NotRequired[dict[str, str]]
    """The operator extra links' XComs (``xcom_key`` -> URL): a worker pushes them when the task
    finishes, and the UI reads them from there."""


class ApprovalDecisionEvent(TypedDict):
    """A reviewer approved or rejected the request."""

    status: Literal["approved", "rejected"]
    call_id: str
    approved: bool
    comment: str | None
    reject_option: str | None
    responded_by_user: ResponderPayload | None
    responded_at: str | None
    requested_at: str | None
    context: NotRequired[Any]
    """The request context as sent (read with the decision, so the task need not read it again)."""
    approvals: NotRequired[list[ApproverRecord]]
    """Every approval that counted, with its rule (the approvals service reports them)."""
    review_digest: NotRequired[str | None]
    """The digest of what the reviewers were shown, as the request carries it."""
    branch: NotRequired[str]
    """Which branch decided (:func:`decision_branch`), read where the request was known."""
    branch_reason: NotRequired[str]


class ApprovalTimeoutEvent(TypedDict):
    """The deadline passed without an accepted decision."""

    status: Literal["timeout"]
    call_id: str
    deadline: str
    escalated: bool
    requested_at: str | None


class ApprovalCancelledEvent(TypedDict):
    """The request was cancelled on the server (not by this gate's own timeout handling)."""

    status: Literal["cancelled"]
    call_id: str
    reason: str | None
    cancelled_at: str | None


class ApprovalErrorEvent(TypedDict):
    """Waiting cannot go on: a wrong key (401/403), a missing request (404), a bad answer."""

    status: Literal["error"]
    call_id: str
    message: str
    http_status: int | None


ApprovalEvent = ApprovalDecisionEvent | ApprovalTimeoutEvent | ApprovalCancelledEvent | ApprovalErrorEvent
EVENT_STATUSES = frozenset({"approved", "rejected", "timeout", "cancelled", "error"})


class ApprovalResult(TypedDict):
    """A gate's XCom result (``return_value``): native HITL keys plus HumanLayer's."""

    approved: bool
    chosen_options: list[str]
    reject_option: str | None
    comment: str | None
    responded_by_user: ResponderPayload | None
    responded_at: str | None
    requested_at: str | None
    response_seconds: float | None
    call_id: str
    approval_url: str | None
    context: Any
    """The request context as sent."""
    timed_out: bool
    """The outcome came from the gate's ``on_timeout`` policy, not from a person."""
    approvals: list[ApproverRecord]
    """Every approval that counted toward the decision and the rule each met (empty when unknown)."""
    review_digest: str | None
    """The digest of what the reviewers were shown (:mod:`..gate.digest`), when the request has one."""
    branch: str
    """``auto_approve`` / ``auto_reject`` (the request's decision policy decided) or ``human``."""
    branch_reason: str
    """Why that branch: the policy's reason, or why a person decided."""


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def parse_time(value: datetime | str | None) -> datetime | None:
    """An ISO-8601 time (or datetime) as an aware datetime; naive values are UTC."""
    if value is None or value == "":
        return None
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def decision_event(call: GateFunctionCall) -> ApprovalDecisionEvent | None:
    """The decision event for a decided request, ``None`` while it is pending."""
    status = call.status
    if status is None or status.approved is None:
        return None
    responder: ResponderPayload | None = None
    if status.user_info is not None:
        info = status.user_info
        responder = ResponderPayload(
            id=info.principal or info.email or info.name,
            name=info.name,
            email=info.email,
            via_delegate=info.via_delegate,
        )
    event = ApprovalDecisionEvent(
        status="approved" if status.approved else "rejected",
        call_id=call.call_id,
        approved=bool(status.approved),
        comment=status.comment,
        reject_option=status.reject_option_name,
        responded_by_user=responder,
        responded_at=iso(status.responded_at),
        requested_at=iso(status.requested_at),
        context=call.spec.kwargs.get("context"),
        approvals=approver_records(call),
        review_digest=GateState.from_state(call.spec.state).digest,
    )
    event["branch"], event["branch_reason"] = decision_branch(event, call)
    return event


def approver_records(call: GateFunctionCall) -> list[ApproverRecord]:
    """The approvals that counted toward a decided request, with their rules.

    From the approvals service's ``status.answers``; a server without them reports one person,
    ``status.user_info``, whose approval decided alone.
    """
    status = call.status
    if status is None or not status.approved:
        return []
    if status.answers:
        return [
            ApproverRecord(name=a.name, email=a.email, rule=a.rule, at=a.at)
            for a in status.answers
            if a.approved and a.rule is not None
        ]
    info = status.user_info
    if info is None:
        return []
    return [ApproverRecord(name=info.name, email=info.email, rule=None, at=iso(status.responded_at))]


def settled_event(
    call: GateFunctionCall, policy: ApprovalPolicy
) -> tuple[ApprovalDecisionEvent | ApprovalCancelledEvent | None, str | None]:
    """
    What a read of the request settles: ``(event, None)``, ``(None, refusal_reason)`` or ``(None, None)``.

    Shared by the trigger, the sensor's synchronous check and the API server's wake path, so all
    apply the same rules. The approvers an escalation added on the server (``extra_approvers``)
    count, as the server counted them when it accepted the decision.

    :param call: the request as read from the server.
    :param policy: the gate's approval policy.
    """
    status = call.status
    if status is None:
        return None, None
    event = decision_event(call)
    if event is not None:
        refused = (
            policy.escalated_to(status.extra_approvers)
            .with_members(status.members)
            .decision_refusal(
                status.user_info,
                [a.model_dump() for a in status.answers or []],
                approved=bool(status.approved),
            )
        )
        return (None, refused) if refused else (event, None)
    if status.is_cancelled:
        return (
            ApprovalCancelledEvent(
                status="cancelled",
                call_id=call.call_id,
                reason=status.cancel_reason,
                cancelled_at=iso(status.cancelled_at),
            ),
            None,
        )
    return None, None


def decision_branch(
    event: Mapping[str, Any], call: GateFunctionCall | None, timed_out: bool = False
) -> tuple[str, str]:
    """Which branch decided a request (``auto_approve``, ``auto_reject`` or ``human``) and why."""
    approved = bool(event.get("approved"))
    responder = event.get("responded_by_user") or {}
    who = (responder.get("id") or responder.get("name")) if isinstance(responder, Mapping) else None
    if not timed_out and is_policy_principal(who):
        reason = event.get("comment") or f"decided by {who}"
        return ("auto_approve" if approved else "auto_reject"), str(reason)
    gate = GateState.from_state(call.spec.state) if call is not None else GateState()
    if timed_out:
        return "human", "no decision in time: the gate's on_timeout policy decided"
    if gate.auto is not None:
        return "human", (
            f"a person decided within the override window (the decision policy {gate.auto.principal} "
            f"would have decided '{gate.auto.outcome}': {gate.auto.reason})"
        )
    if gate.auto_declined:
        return "human", gate.auto_declined
    return "human", "a person decided (no decision policy decided this request)"


def approval_result(
    event: ApprovalDecisionEvent | dict[str, Any],
    call: GateFunctionCall | None,
    *,
    approval_url: str | None,
    timed_out: bool = False,
    sent_context: Any = None,
) -> ApprovalResult:
    """
    The gate's XCom result for a decision.

    :param event: the decision (approved or rejected).
    :param call: the request as read from the server, when known.
    :param approval_url: where a reviewer decides on the request.
    :param timed_out: the outcome came from the gate's ``on_timeout`` policy.
    :param sent_context: the request context as sent, when neither the event nor ``call`` has it.
    """
    approved = bool(event["approved"])
    requested_at = parse_time(event.get("requested_at"))
    if requested_at is None and call is not None and call.status is not None:
        requested_at = call.status.requested_at
    responded_at = parse_time(event.get("responded_at"))
    seconds = (responded_at - requested_at).total_seconds() if responded_at and requested_at else None
    if event.get("context") is not None:
        sent_context = event["context"]
    elif call is not None and call.spec.kwargs.get("context") is not None:
        sent_context = call.spec.kwargs.get("context")
    if not timed_out and event.get("branch") and call is None:
        branch, branch_reason = str(event["branch"]), str(event.get("branch_reason") or "")
    else:
        branch, branch_reason = decision_branch(event, call, timed_out)
    return ApprovalResult(
        approved=approved,
        chosen_options=[APPROVE if approved else REJECT],
        reject_option=event.get("reject_option"),
        comment=event.get("comment"),
        responded_by_user=event.get("responded_by_user"),
        responded_at=responded_at.isoformat() if responded_at else None,
        requested_at=requested_at.isoformat() if requested_at else None,
        response_seconds=seconds,
        call_id=event["call_id"],
        approval_url=approval_url,
        context=sent_context,
        timed_out=timed_out,
        approvals=list(event.get("approvals") or (approver_records(call) if call is not None else [])),
        review_digest=event.get("review_digest")
        or (GateState.from_state(call.spec.state).digest if call is not None else None),
        branch=branch,
        branch_reason=branch_reason,
    )


def finished_in_place(
    event: ApprovalDecisionEvent | ApprovalCancelledEvent | dict[str, Any] | None,
    call: GateFunctionCall | None,
    finish: FinishInPlace | dict[str, Any] | None,
) -> ApprovalResult | None:
    """
    The gate's result when ``event`` lets it end in place, ``None`` when the task must resume on
    a worker.

    Only an accepted approval ends in place: a rejection fails the task or skips its downstream
    tasks, a timeout applies ``on_timeout`` and an escalation waits again, all of which need the
    operator. The result is the one ``execute_complete`` returns for the same event
    (:func:`approval_result`), so downstream tasks cannot tell the two paths apart.

    :param event: the event the policy accepted (:func:`settled_event`).
    :param call: the request as read.
    :param finish: what the gate handed over (``None``: the gate resumes on a worker).
    """
    if not finish or event is None or event.get("status") != "approved" or event.get("approved") is not True:
        return None
    if event.get("context") is None and (call is None or call.spec.kwargs.get("context") is None):
        return None  # the result would need the task to rebuild the context it sent
    url = finish.get("approval_url")
    return approval_result(dict(event), call, approval_url=url if isinstance(url, str) else None)


def link_xcoms(finish: FinishInPlace | Mapping[str, Any] | None) -> dict[str, str]:
    """The extra links' XComs a gate handed over (only string keys and values are kept)."""
    links = (finish or {}).get("links")
    if not isinstance(links, dict):
        return {}
    return {k: v for k, v in links.items() if isinstance(k, str) and k and isinstance(v, str) and v}


def decided_by(event: ApprovalDecisionEvent | dict[str, Any] | ApprovalResult) -> str:
    """Who decided, for a log line: the name and e-mail the server reported, or "an unnamed reviewer"."""
    user = event.get("responded_by_user") or {}
    name, email = user.get("name"), user.get("email")
    if name and email and name != email:
        return f"{name} <{email}>"
    return str(name or email or "an unnamed reviewer")
