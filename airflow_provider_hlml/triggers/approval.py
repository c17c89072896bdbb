"""Trigger that waits for a decision on a HumanLayer approval request, and its event payloads."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from airflow.triggers.base import BaseTrigger, TriggerEvent
from typing_extensions import NotRequired

if TYPE_CHECKING:
    from tenacity import RetryCallState

    from airflow_provider_hlml.hooks.humanlayer import HumanLayerHook
    from airflow_provider_hlml.utils.wire import GateFunctionCall, UserInfo

TRIGGER_CLASSPATH = "airflow_provider_hlml.triggers.approval.HumanApprovalTrigger"
MAX_BACKOFF_SECONDS = 60.0
APPROVE = "Approve"
REJECT = "Reject"


class ResponderPayload(TypedDict):
    """Who decided (native HITL's ``HITLUser`` keys ``id``/``name`` plus e-mail and delegate)."""

    id: str | None
    name: str | None
    email: str | None
    via_delegate: str | bool | None


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


def refusal_reason(
    user_info: UserInfo | None,
    approvers: Iterable[str],
    requester: str | None,
    allow_self_approval: bool,
) -> str | None:
    """
    Why a decision must not be accepted under the gate's policy, or ``None`` when it may.

    The rule itself is the approvals service's :class:`~airflow_provider_hlml.approvals.policy.ApprovalPolicy`
    (one source of truth). A server that does not report who decided (the cloud) is trusted to
    have enforced its own channel rules.

    :param user_info: who decided, as reported by the server.
    :param approvers: allowed e-mails or principal names; empty allows any reviewer.
    :param requester: the user who triggered the DAG run.
    :param allow_self_approval: whether the requester may decide.
    """
    from airflow_provider_hlml.approvals.policy import ApprovalPolicy

    if user_info is None or not (user_info.name or user_info.email or user_info.principal):
        return None
    policy = ApprovalPolicy(
        approvers=tuple(approvers), requester=requester, allow_self_approval=allow_self_approval
    )
    reason = policy.refusal_reason(name=user_info.name or user_info.principal, email=user_info.email)
    if reason is not None and user_info.principal and user_info.principal != user_info.name:
        # The principal is an identity too: accept when it alone matches.
        alt = policy.refusal_reason(name=user_info.principal, email=user_info.email)
        reason = None if alt is None and not _is_requester(user_info, policy) else reason
    return reason


def _is_requester(user_info: UserInfo, policy: Any) -> bool:
    if policy.allow_self_approval or not policy.requester:
        return False
    who = {v.strip().casefold() for v in (user_info.name, user_info.email, user_info.principal) if v}
    return bool(policy.requester.strip().casefold() in who)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_deadline(value: datetime | str | None) -> datetime | None:
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
    return ApprovalDecisionEvent(
        status="approved" if status.approved else "rejected",
        call_id=call.call_id,
        approved=bool(status.approved),
        comment=status.comment,
        reject_option=status.reject_option_name,
        responded_by_user=responder,
        responded_at=_iso(status.responded_at),
        requested_at=_iso(status.requested_at),
        context=call.spec.kwargs.get("context"),
    )


def approval_result(
    event: ApprovalDecisionEvent | dict[str, Any],
    call: GateFunctionCall | None,
    *,
    timed_out: bool = False,
    sent_context: Any = None,
) -> dict[str, Any]:
    """
    The gate's XCom result for a decision (native HITL keys plus HumanLayer's).

    Kept next to the event it is built from, so the event carries everything the result needs.

    :param event: the decision (approved or rejected).
    :param call: the request as read from the server, when known.
    :param timed_out: the outcome came from the gate's ``on_timeout`` policy.
    :param sent_context: the request context as sent, when neither the event nor ``call`` has it.
    """
    from airflow_provider_hlml.links.approval import approval_url

    approved = bool(event["approved"])
    requested_at = _parse_deadline(event.get("requested_at"))
    if requested_at is None and call is not None and call.status is not None:
        requested_at = call.status.requested_at
    responded_at = _parse_deadline(event.get("responded_at"))
    seconds = (responded_at - requested_at).total_seconds() if responded_at and requested_at else None
    if event.get("context") is not None:
        sent_context = event["context"]
    elif call is not None and call.spec.kwargs.get("context") is not None:
        sent_context = call.spec.kwargs.get("context")
    return {
        "approved": approved,
        "chosen_options": [APPROVE if approved else REJECT],
        "reject_option": event.get("reject_option"),
        "comment": event.get("comment"),
        "responded_by_user": event.get("responded_by_user"),
        "responded_at": responded_at.isoformat() if responded_at else None,
        "requested_at": requested_at.isoformat() if requested_at else None,
        "response_seconds": seconds,
        "call_id": event["call_id"],
        "approval_url": approval_url(event["call_id"]),
        "context": sent_context,
        "timed_out": timed_out,
    }


def settled_event(
    call: GateFunctionCall,
    approvers: Iterable[str],
    requester: str | None,
    allow_self_approval: bool,
) -> tuple[ApprovalDecisionEvent | ApprovalCancelledEvent | None, str | None]:
    """
    What a read of the request settles: ``(event, None)``, ``(None, refusal_reason)`` or ``(None, None)``.

    Shared by the trigger and the sensor's synchronous check so both apply the same rules.

    :param call: the request as read from the server.
    :param approvers: allowed e-mails or principal names.
    :param requester: the user who triggered the DAG run.
    :param allow_self_approval: whether ``requester`` may decide.
    """
    status = call.status
    if status is None:
        return None, None
    event = decision_event(call)
    if event is not None:
        refused = refusal_reason(status.user_info, approvers, requester, allow_self_approval)
        return (None, refused) if refused else (event, None)
    if status.is_cancelled:
        return (
            ApprovalCancelledEvent(
                status="cancelled",
                call_id=call.call_id,
                reason=status.cancel_reason,
                cancelled_at=_iso(status.cancelled_at),
            ),
            None,
        )
    return None, None


class HumanApprovalTrigger(BaseTrigger):
    """
    Wait for a decision on one HumanLayer approval request.

    The request already exists (the sensor creates it before deferring), so the trigger only
    reads it and is safe to re-create any number of times. It long-polls servers that support
    ``?wait=`` and falls back to polling every ``poll_interval`` (with jitter) on those that
    ignore it; it backs off exponentially on 5xx / 429 / network errors without failing, stops at
    once on 401 / 403 / 404 or a non-JSON answer, ignores (and logs) decisions by people the
    policy does not allow, and enforces ``deadline`` itself.

    :param call_id: HumanLayer call id of the request.
    :param humanlayer_conn_id: Airflow connection id of type ``humanlayer``.
    :param deadline: ISO-8601 UTC time after which a timeout event is sent; ``None`` waits forever.
    :param poll_interval: seconds between reads when the server does not long-poll.
    :param long_poll_seconds: ``?wait=`` seconds per read (0 disables long-polling).
    :param approvers: allowed e-mails or principal names (empty: any reviewer).
    :param requester: the user who triggered the DAG run.
    :param allow_self_approval: whether ``requester`` may decide.
    :param escalated: whether this wait follows an escalation (reported in the timeout event).
    """

    def __init__(
        self,
        *,
        call_id: str,
        humanlayer_conn_id: str = "humanlayer_default",
        deadline: datetime | str | None = None,
        poll_interval: float = 5.0,
        long_poll_seconds: int = 25,
        approvers: Sequence[str] | None = None,
        requester: str | None = None,
        allow_self_approval: bool = False,
        escalated: bool = False,
    ) -> None:
        super().__init__()
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval}")
        self.call_id = call_id
        self.humanlayer_conn_id = humanlayer_conn_id
        parsed = _parse_deadline(deadline)
        self.deadline = parsed.isoformat() if parsed else None
        self._deadline_dt = parsed
        self.poll_interval = float(poll_interval)
        self.long_poll_seconds = max(0, int(long_poll_seconds))
        self.approvers = list(approvers or [])
        self.requester = requester
        self.allow_self_approval = bool(allow_self_approval)
        self.escalated = bool(escalated)
        self._refused_logged: set[str] = set()

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            TRIGGER_CLASSPATH,
            {
                "call_id": self.call_id,
                "humanlayer_conn_id": self.humanlayer_conn_id,
                "deadline": self.deadline,
                "poll_interval": self.poll_interval,
                "long_poll_seconds": self.long_poll_seconds,
                "approvers": self.approvers,
                "requester": self.requester,
                "allow_self_approval": self.allow_self_approval,
                "escalated": self.escalated,
            },
        )

    # ------------------------------------------------------------------ helpers
    def _remaining(self) -> float | None:
        if self._deadline_dt is None:
            return None
        return (self._deadline_dt - datetime.now(timezone.utc)).total_seconds()

    def _jittered(self, seconds: float) -> float:
        return seconds * random.uniform(0.9, 1.1)

    def accept(self, call: GateFunctionCall) -> ApprovalDecisionEvent | ApprovalCancelledEvent | None:
        """The event for this state of the request, or ``None`` to keep waiting."""
        event, refused = settled_event(call, self.approvers, self.requester, self.allow_self_approval)
        if refused is not None:
            status = call.status
            key = f"{status.responded_at if status else None}|{refused}"
            if key not in self._refused_logged:
                self._refused_logged.add(key)
                self.log.warning("Ignoring the decision on %s: %s. Still waiting.", self.call_id, refused)
        elif (
            event is not None
            and event["status"] != "cancelled"
            and call.status
            and call.status.user_info is None
        ) and (self.approvers or self.requester):
            self.log.warning(
                "The server does not report who decided %s; the approver policy is left to it.",
                self.call_id,
            )
        return event

    async def _read(self, hook: HumanLayerHook, wait: float | None) -> GateFunctionCall:
        """One read, retried with exponential backoff and jitter on retryable errors until the deadline."""
        from tenacity import AsyncRetrying, retry_if_exception, wait_exponential_jitter

        from airflow_provider_hlml.hooks.humanlayer import HumanLayerError

        base_wait = wait_exponential_jitter(
            multiplier=min(1.0, self.poll_interval),
            max=MAX_BACKOFF_SECONDS,
            jitter=min(1.0, self.poll_interval),
        )

        def bounded_wait(state: RetryCallState) -> float:
            remaining = self._remaining()
            delay = base_wait(state)
            return delay if remaining is None else max(0.0, min(delay, remaining))

        def past_deadline(state: RetryCallState) -> bool:
            remaining = self._remaining()
            return remaining is not None and remaining <= 0

        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.log.warning(
                "Reading %s failed (attempt %d), retrying in %.1fs: %s",
                self.call_id,
                state.attempt_number,
                state.upcoming_sleep,
                exc,
            )

        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda e: isinstance(e, HumanLayerError) and e.retryable),
            wait=bounded_wait,
            stop=past_deadline,
            before_sleep=log_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                remaining = self._remaining()
                poll_wait = wait if remaining is None or wait is None else min(wait, max(0.0, remaining))
                return await hook.aget_function_call(self.call_id, wait=poll_wait or None)
        raise AssertionError("unreachable")  # pragma: no cover

    def _timeout_event(self, requested_at: str | None) -> ApprovalTimeoutEvent:
        return ApprovalTimeoutEvent(
            status="timeout",
            call_id=self.call_id,
            deadline=self.deadline or "",
            escalated=self.escalated,
            requested_at=requested_at,
        )

    async def on_kill(self) -> None:
        """A user marked or cleared the waiting task: withdraw the request so nobody decides it."""
        from airflow_provider_hlml.hooks.humanlayer import HumanLayerError, HumanLayerHook

        hook = HumanLayerHook(humanlayer_conn_id=self.humanlayer_conn_id)
        try:
            call = await hook.aget_function_call(self.call_id)
            if call.status is not None and (call.status.approved is not None or call.status.is_cancelled):
                # Settled already: the decision reached Airflow another way (the API server
                # delivered it), and Airflow is retiring this trigger. Nothing to withdraw.
                return
            await hook.acancel(
                self.call_id, reason="killed", comment="The Airflow task was stopped by a user."
            )
        except HumanLayerError as exc:
            self.log.warning("Could not cancel %s: %s", self.call_id, exc)

    # ---------------------------------------------------------------------- run
    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_provider_hlml.hooks.humanlayer import HumanLayerError, HumanLayerHook

        hook = HumanLayerHook(humanlayer_conn_id=self.humanlayer_conn_id)
        requested_at: str | None = None
        async with hook.asession_scope():
            while True:
                remaining = self._remaining()
                if remaining is not None and remaining <= 0:
                    # A decision that landed just before the deadline still wins.
                    try:
                        call = await hook.aget_function_call(self.call_id)
                    except HumanLayerError as exc:
                        self.log.warning("Final read of %s before timing out failed: %s", self.call_id, exc)
                    else:
                        if call.status is not None and requested_at is None:
                            requested_at = _iso(call.status.requested_at)
                        final = self.accept(call)
                        if final is not None:
                            yield TriggerEvent(dict(final))
                            return
                    self.log.info("No accepted decision on %s by %s.", self.call_id, self.deadline)
                    yield TriggerEvent(dict(self._timeout_event(requested_at)))
                    return

                started = time.monotonic()
                try:
                    call = await self._read(hook, wait=self.long_poll_seconds or None)
                except HumanLayerError as exc:
                    if exc.retryable:
                        continue  # the deadline passed while backing off
                    yield TriggerEvent(
                        dict(
                            ApprovalErrorEvent(
                                status="error",
                                call_id=self.call_id,
                                message=str(exc),
                                http_status=exc.http_status,
                            )
                        )
                    )
                    return
                if call.status is not None and requested_at is None:
                    requested_at = _iso(call.status.requested_at)
                event = self.accept(call)
                if event is not None:
                    self.log.info("Request %s: %s.", self.call_id, event["status"])
                    yield TriggerEvent(dict(event))
                    return
                # Still pending, or a refused decision (which the server returns without waiting).
                decided = call.status is not None and call.status.approved is not None
                elapsed = time.monotonic() - started
                if decided:
                    pause = self._jittered(self.poll_interval)
                elif self.long_poll_seconds and elapsed >= 0.8 * min(
                    self.long_poll_seconds, remaining or 1e9
                ):
                    pause = 0.0  # the server held the read: long-polling works, ask again at once
                else:
                    # The server ignores ?wait= (the cloud) or answered on another change: poll.
                    pause = self._jittered(self.poll_interval) - elapsed
                remaining = self._remaining()
                if remaining is not None:
                    pause = min(pause, max(0.0, remaining))
                if pause > 0:
                    await asyncio.sleep(pause)
