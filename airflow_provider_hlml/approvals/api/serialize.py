"""Database rows to wire bodies, and the long-poll read shared by both request kinds."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool

from airflow_provider_hlml.approvals import store
from airflow_provider_hlml.approvals.api.deps import ServiceState
from airflow_provider_hlml.approvals.models import ApprovalRequest, AuditEvent
from airflow_provider_hlml.approvals.schemas import (
    AuditEventPublic,
    FunctionCallPublic,
    HumanContactPublic,
)


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _body(row: ApprovalRequest, **answer: Any) -> dict[str, Any]:
    """A request as the API returns it; ``answer`` holds the fields of its kind's status.

    Beside the SDK's fields, ``status`` carries extension fields the unmodified SDK ignores: who
    answered (``user_info``), the approvers an escalation added (``extra_approvers``, which count
    with the gate's approvers) and the cancellation.
    """
    return {
        "run_id": row.run_id,
        "call_id": row.call_id,
        "spec": row.spec,
        "status": {
            "requested_at": _iso(row.requested_at),
            "responded_at": _iso(row.responded_at),
            **answer,
            "user_info": row.user_info,
            "extra_approvers": list(row.extra_approvers or []),
            "cancelled_at": _iso(row.cancelled_at),
            "cancel_reason": row.cancel_reason,
        },
    }


def function_call_body(row: ApprovalRequest) -> dict[str, Any]:
    """A function call's body; ``status`` also reports its answers and each rule's progress."""
    tally = store.policy_of(row).tally(store.answers_of(row))
    return _body(
        row,
        approved=row.approved,
        comment=row.comment,
        reject_option_name=row.reject_option_name,
        slack_message_ts=None,
        answers=list(row.answers or []),
        rules=[p.to_json() for p in tally.rules],
        members=dict(row.members or {}),
    )


def human_contact_body(row: ApprovalRequest) -> dict[str, Any]:
    return _body(row, response=row.response, response_option_name=row.response_option_name)


def body_for(row: ApprovalRequest) -> dict[str, Any]:
    return function_call_body(row) if row.kind == store.FUNCTION_CALL else human_contact_body(row)


def public_model(row: ApprovalRequest) -> FunctionCallPublic | HumanContactPublic:
    if row.kind == store.FUNCTION_CALL:
        return FunctionCallPublic.model_validate(function_call_body(row))
    return HumanContactPublic.model_validate(human_contact_body(row))


def audit_body(event: AuditEvent) -> AuditEventPublic:
    return AuditEventPublic(
        event=event.event,
        at=event.at,
        actor=event.actor,
        on_behalf_of=event.on_behalf_of,
        comment=event.comment,
        metadata=event.event_metadata,
    )


@dataclass(frozen=True)
class Snapshot:
    body: dict[str, Any]
    version: int
    open: bool


def read_snapshot(state: ServiceState, *, kind: str, call_id: str) -> Snapshot:
    row: Any = store.read_request_row(state.engine, kind=kind, call_id=call_id)
    return Snapshot(body=body_for(row), version=row.version, open=row.state == "pending")


async def read_with_wait(
    state: ServiceState, *, kind: str, call_id: str, wait: float | None
) -> dict[str, Any]:
    """Read a request; with ``wait``, hold the answer until it changes, is closed, or time is up."""

    async def read() -> Snapshot:
        if state.inline_reads:
            return read_snapshot(state, kind=kind, call_id=call_id)
        return await run_in_threadpool(read_snapshot, state, kind=kind, call_id=call_id)

    if not wait:
        return (await read()).body
    deadline = time.monotonic() + min(wait, state.settings.max_wait_seconds)
    first: Snapshot | None = None
    while True:
        async with state.hub.subscribe((kind, call_id)) as changed:
            current = await read()
            first = first or current
            if not current.open or current.version != first.version or time.monotonic() >= deadline:
                return current.body
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), deadline - time.monotonic())
