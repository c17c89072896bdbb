"""Function calls (approvals): the HumanLayer endpoints plus cancel, list, audit and long-poll."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from airflow_provider_hlml.approvals import store
from airflow_provider_hlml.approvals.api.deps import (
    CreatorActor,
    CurrentActor,
    ManagerActor,
    SessionDep,
    StateDep,
)
from airflow_provider_hlml.approvals.api.serialize import (
    audit_body,
    function_call_body,
    public_model,
    read_with_wait,
)
from airflow_provider_hlml.approvals.schemas import (
    AuditEventPublic,
    CancelRequest,
    ErrorBody,
    Escalation,
    FunctionCallCreate,
    FunctionCallPublic,
    FunctionCallRespond,
    SettledFunctionCalls,
    SettledLookup,
)
from airflow_provider_hlml.approvals.webhooks import FUNCTION_CALL_COMPLETED
from airflow_provider_hlml.gate.wire import AUTO_DECISION_PATH, REPLAYED_HEADER, SETTLED_PATH

KIND = store.FUNCTION_CALL
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (401, 403, 404, 409, 413, 422)
}
router = APIRouter(tags=["function calls"], responses=ERRORS)

WaitQuery = Annotated[
    float | None,
    Query(
        ge=0,
        le=86_400,
        allow_inf_nan=False,
        description="Long-poll: hold the answer up to this many seconds (capped at the service's "
        "maximum, 30 by default) until the call changes; decided calls return at once.",
    ),
]


@router.post("/function_calls", response_model=FunctionCallPublic, status_code=201)
def create_function_call(
    body: FunctionCallCreate, response: Response, session: SessionDep, state: StateDep, actor: CreatorActor
) -> Any:
    """Create a function call; the same call_id with the same spec returns the existing call."""
    store.check_clean(body.model_dump(), "body")
    row, created = store.create_request(
        session,
        kind=KIND,
        run_id=body.run_id,
        call_id=body.call_id,
        spec=body.spec.model_dump(mode="json"),
        actor=actor,
    )
    if not created:
        response.status_code = 200
        response.headers[REPLAYED_HEADER] = "true"
    else:
        if row.state != "pending":  # decided at once by the request's decision policy
            state.announce(KIND, row.call_id, function_call_body(row), FUNCTION_CALL_COMPLETED)
        if state.delivery is not None:
            state.delivery.wake()
    return public_model(row)


@router.post(AUTO_DECISION_PATH, response_model=FunctionCallPublic)
def decide_function_call_by_policy(
    call_id: str, session: SessionDep, state: StateDep, actor: CurrentActor
) -> Any:
    """Record the decision policy's decision the call carries, once its override window has passed
    and nobody answered (the request's creator or an admin asks; 409 otherwise)."""
    store.check_clean(call_id, "call_id")
    row = store.decide_by_policy(session, call_id=call_id, actor=actor)
    result = function_call_body(row)
    state.announce(KIND, call_id, result, FUNCTION_CALL_COMPLETED)
    return result


@router.get("/function_calls", response_model=list[FunctionCallPublic])
def list_function_calls(
    session: SessionDep,
    response: Response,
    actor: CurrentActor,
    status: Literal["pending", "approved", "rejected", "cancelled"] | None = None,
    run_id: Annotated[str | None, Query(max_length=256)] = None,
    fn: Annotated[str | None, Query(max_length=256)] = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> Any:
    """List function calls, newest first; the total count is in the ``X-Total-Count`` header."""
    store.check_clean([run_id, fn], "query")
    rows, total = store.list_requests(
        session,
        kind=KIND,
        state=status,
        run_id=run_id,
        fn=fn,
        since=since,
        until=until,
        limit=limit,
        offset=offset,
    )
    response.headers["X-Total-Count"] = str(total)
    return [public_model(r) for r in rows]


@router.get("/agent/function_calls/pending", response_model=list[FunctionCallPublic])
def pending_function_calls(
    session: SessionDep,
    actor: CurrentActor,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> Any:
    """Pending function calls, oldest first."""
    rows, _ = store.list_requests(
        session, kind=KIND, state="pending", limit=limit, offset=offset, oldest_first=True
    )
    return [public_model(r) for r in rows]


@router.post(SETTLED_PATH, response_model=SettledFunctionCalls)
def settled_function_calls(body: SettledLookup, session: SessionDep, actor: CurrentActor) -> Any:
    """The settled (decided, cancelled or expired) calls among ``call_ids``, for reconciliation:
    unknown and pending ones are left out. Every caller sees the calls ``GET
    /function_calls/{call_id}`` shows it (any valid key reads any function call)."""
    store.check_clean(body.call_ids, "body.call_ids")
    rows = store.settled_requests(session, kind=KIND, call_ids=body.call_ids)
    # Built from the rows as the response model describes them, like GET: no second validation.
    return JSONResponse({"function_calls": [function_call_body(row) for row in rows]})


@router.get("/function_calls/{call_id}", response_model=FunctionCallPublic)
async def get_function_call(
    call_id: str, state: StateDep, actor: CurrentActor, wait: WaitQuery = None
) -> Any:
    """Read a function call; ``?wait=`` long-polls until it changes."""
    # The body is built from the row as the response model describes it; skipping a second
    # validation keeps this hot path (pollers) cheap.
    return JSONResponse(await read_with_wait(state, kind=KIND, call_id=call_id, wait=wait))


@router.post("/agent/function_calls/{call_id}/respond", response_model=FunctionCallPublic)
def respond_to_function_call(
    call_id: str, body: FunctionCallRespond, session: SessionDep, state: StateDep, actor: CurrentActor
) -> Any:
    """Approve or reject. Delegates name the person they act for in ``user_info``."""
    row = store.respond_function_call(
        session,
        call_id=call_id,
        approved=body.approved,
        comment=body.comment,
        reject_option_name=body.reject_option_name,
        actor=actor,
        on_behalf_of=body.user_info.model_dump() if body.user_info else None,
    )
    result = function_call_body(row)
    state.announce(KIND, call_id, result, FUNCTION_CALL_COMPLETED)
    return result


@router.post("/agent/function_calls/{call_id}/escalate_email", response_model=FunctionCallPublic)
def escalate_function_call(
    call_id: str, body: Escalation, session: SessionDep, state: StateDep, actor: ManagerActor
) -> Any:
    """Record an escalation; its e-mail recipients become allowed approvers."""
    row = store.escalate(session, kind=KIND, call_id=call_id, escalation=body.model_dump(), actor=actor)
    result = function_call_body(row)
    state.announce(KIND, call_id, result)
    return result


@router.post("/agent/function_calls/{call_id}/cancel", response_model=FunctionCallPublic)
def cancel_function_call(
    call_id: str, body: CancelRequest, session: SessionDep, state: StateDep, actor: ManagerActor
) -> Any:
    """Cancel a pending call (``reason="timeout"`` is recorded as expired)."""
    row = store.cancel(
        session, kind=KIND, call_id=call_id, reason=body.reason, comment=body.comment, actor=actor
    )
    result = function_call_body(row)
    state.announce(KIND, call_id, result, FUNCTION_CALL_COMPLETED)
    return result


@router.get("/function_calls/{call_id}/audit", response_model=list[AuditEventPublic])
def function_call_audit(call_id: str, session: SessionDep, actor: CurrentActor) -> Any:
    """The append-only audit trail of a call, oldest first."""
    return [audit_body(e) for e in store.audit_events(session, kind=KIND, call_id=call_id)]
