"""Trigger that waits for a decision on a HumanLayer approval request.

The event payloads, the rules that settle a request and the approval policy live in the
Airflow-free :mod:`airflow_provider_hlml.gate`; the event names are re-exported here.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_hlml import settings as hlml_settings
from airflow_provider_hlml.gate.events import (
    APPROVE,
    EVENT_STATUSES,
    REJECT,
    ApprovalCancelledEvent,
    ApprovalDecisionEvent,
    ApprovalErrorEvent,
    ApprovalEvent,
    ApprovalTimeoutEvent,
    ResponderPayload,
    decided_by,
    decision_event,
    finished_in_place,
    iso,
    link_xcoms,
    parse_time,
    settled_event,
)
from airflow_provider_hlml.gate.policy import ApprovalPolicy

if TYPE_CHECKING:
    from tenacity import RetryCallState

    from airflow_provider_hlml.gate.events import ApprovalResult
    from airflow_provider_hlml.gate.wire import GateFunctionCall, UserInfo
    from airflow_provider_hlml.hooks.humanlayer import HumanLayerHook

__all__ = [
    "APPROVE",
    "EVENT_STATUSES",
    "REJECT",
    "TRIGGER_CLASSPATH",
    "ApprovalCancelledEvent",
    "ApprovalDecisionEvent",
    "ApprovalErrorEvent",
    "ApprovalEvent",
    "ApprovalTimeoutEvent",
    "HumanApprovalTrigger",
    "ResponderPayload",
    "decision_event",
    "refusal_reason",
    "settled_event",
]

TRIGGER_CLASSPATH = "airflow_provider_hlml.triggers.approval.HumanApprovalTrigger"
MAX_BACKOFF_SECONDS = 60.0


def refusal_reason(
    user_info: UserInfo | None,
    approvers: Iterable[str],
    requester: str | None,
    allow_self_approval: bool,
) -> str | None:
    """
    Why a decision must not be accepted under the gate's policy, or ``None`` when it may.

    See :meth:`~airflow_provider_hlml.gate.policy.ApprovalPolicy.decision_refusal`.

    :param user_info: who decided, as reported by the server.
    :param approvers: allowed e-mails or principal names; empty allows any reviewer.
    :param requester: the user who triggered the DAG run.
    :param allow_self_approval: whether the requester may decide.
    """
    policy = ApprovalPolicy(
        approvers=tuple(approvers), requester=requester, allow_self_approval=allow_self_approval
    )
    return policy.decision_refusal(user_info)


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
    :param humanlayer_conn_id: Airflow connection id of type ``humanlayer`` (default
        ``[hlml] humanlayer_conn_id``).
    :param deadline: ISO-8601 UTC time after which a timeout event is sent; ``None`` waits forever.
    :param poll_interval: seconds between reads when the server does not long-poll.
    :param long_poll_seconds: ``?wait=`` seconds per read (0 disables long-polling).
    :param approvers: allowed e-mails or principal names (empty: any reviewer).
    :param requester: the user who triggered the DAG run.
    :param allow_self_approval: whether ``requester`` may decide.
    :param policy: the gate's whole approval policy (:meth:`ApprovalPolicy.to_json`: rules,
        separation of duties); when given, it supersedes ``approvers``, ``requester`` and
        ``allow_self_approval`` (kept for triggers serialized by earlier versions).
    :param escalated: whether this wait follows an escalation (reported in the timeout event).
    :param finish: what the gate handed over to end in place on an approval
        (:class:`~airflow_provider_hlml.gate.events.FinishInPlace`); then an accepted approval
        writes the gate's result as its ``return_value`` XCom, the way a worker writes it, and
        ends the task with a ``TaskSuccessEvent`` (no worker resume). ``None`` (and any other
        decision) fires the decision event, and the task resumes on a worker.
    """

    def __init__(
        self,
        *,
        call_id: str,
        humanlayer_conn_id: str | None = None,
        deadline: datetime | str | None = None,
        poll_interval: float = 5.0,
        long_poll_seconds: int = 25,
        approvers: Sequence[str] | None = None,
        requester: str | None = None,
        allow_self_approval: bool = False,
        policy: dict[str, Any] | None = None,
        escalated: bool = False,
        finish: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval}")
        self.call_id = call_id
        self.humanlayer_conn_id = humanlayer_conn_id or hlml_settings.humanlayer_conn_id()
        parsed = parse_time(deadline)
        self.deadline = parsed.isoformat() if parsed else None
        self._deadline_dt = parsed
        self.poll_interval = float(poll_interval)
        self.long_poll_seconds = max(0, int(long_poll_seconds))
        self.approvers = list(approvers or [])
        self.requester = requester
        self.allow_self_approval = bool(allow_self_approval)
        self.policy_json = dict(policy) if policy else None
        self.escalated = bool(escalated)
        self.finish = dict(finish) if finish else None
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
                "policy": self.policy_json,
                "escalated": self.escalated,
                "finish": self.finish,
            },
        )

    # ------------------------------------------------------------------ helpers
    @property
    def policy(self) -> ApprovalPolicy:
        """The gate's approval policy, as the sensor handed it over."""
        if self.policy_json is not None:
            return ApprovalPolicy.from_json(self.policy_json)
        return ApprovalPolicy(
            approvers=tuple(self.approvers),
            requester=self.requester,
            allow_self_approval=self.allow_self_approval,
        )

    def _remaining(self) -> float | None:
        if self._deadline_dt is None:
            return None
        return (self._deadline_dt - datetime.now(timezone.utc)).total_seconds()

    def _jittered(self, seconds: float) -> float:
        return seconds * random.uniform(0.9, 1.1)

    def accept(self, call: GateFunctionCall) -> ApprovalDecisionEvent | ApprovalCancelledEvent | None:
        """The event for this state of the request, or ``None`` to keep waiting."""
        event, refused = settled_event(call, self.policy)
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

    async def ending(
        self, event: ApprovalDecisionEvent | ApprovalCancelledEvent, call: GateFunctionCall
    ) -> TriggerEvent:
        """The event that ends this wait: an approval the gate may end in place writes the
        gate's result and ends the task here; anything else resumes the task on a worker."""
        result = finished_in_place(event, call, self.finish)
        ti = getattr(self, "task_instance", None)
        if result is None or ti is None:
            return TriggerEvent(dict(event))
        from airflow.triggers.base import TaskSuccessEvent

        try:
            await self._write_result(ti, result)
        except Exception as exc:
            self.log.warning(
                "Could not write the result of %s (%s): the task resumes on a worker instead.",
                self.call_id,
                exc,
            )
            return TriggerEvent(dict(event))
        self.log.info(
            "Request %s approved by %s: the gate ends here, in the triggerer, with its result "
            "(no worker resume).",
            self.call_id,
            decided_by(result),
        )
        await asyncio.to_thread(self._notify_listeners, ti)
        return TaskSuccessEvent()

    async def _write_result(self, ti: Any, result: ApprovalResult) -> None:
        """Write what a worker writes when the gate returns: its result (``return_value``),
        serialized by the configured XCom backend and stored by the execution API, and its
        extra links' XComs. (A TaskSuccessEvent's own ``xcoms`` are stored JSON-encoded twice by
        Airflow 3.3: docs/deployment.md.)"""
        from airflow.sdk.execution_time.comms import SetXCom
        from airflow.sdk.execution_time.task_runner import SUPERVISOR_COMMS
        from airflow.sdk.execution_time.xcom import XCom

        where = {"dag_id": ti.dag_id, "task_id": ti.task_id, "run_id": ti.run_id, "map_index": ti.map_index}
        if self.finish and self.finish.get("xcom", True):
            await XCom.aset(key=XCom.XCOM_RETURN_KEY, value=result, **where)
        for key, url in link_xcoms(self.finish).items():
            # As a worker's finalize() pushes extra links: the URL as is, past any custom backend.
            await SUPERVISOR_COMMS.asend(SetXCom(key=key, value=url, **where))

    def _notify_listeners(self, ti: Any) -> None:
        """Call the task-instance listeners' ``on_task_instance_success``, as a worker does when a
        task finishes (with the runtime task instance the triggerer built for this trigger)."""
        try:
            from airflow.sdk.listener import get_listener_manager

            get_listener_manager().hook.on_task_instance_success(previous_state="deferred", task_instance=ti)
        except Exception:
            self.log.exception("A task-instance listener failed on %s", self.call_id)

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
                            requested_at = iso(call.status.requested_at)
                        final = self.accept(call)
                        if final is not None:
                            yield await self.ending(final, call)
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
                    requested_at = iso(call.status.requested_at)
                event = self.accept(call)
                if event is not None:
                    self.log.info("Request %s: %s.", self.call_id, event["status"])
                    yield await self.ending(event, call)
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
