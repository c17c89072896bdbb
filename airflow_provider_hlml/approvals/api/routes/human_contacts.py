"""Human contacts (free-text questions): ``/contact_requests`` and its ``/human_contacts`` alias."""

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
from airflow_provider_hlml.approvals.api.routes.function_calls import ERRORS, WaitQuery
from airflow_provider_hlml.approvals.api.serialize import (
    audit_body,
    human_contact_body,
    public_model,
    read_with_wait,
)
from airflow_provider_hlml.approvals.schemas import (
    AuditEventPublic,
    CancelRequest,
    Escalation,
    HumanContactCreate,
    HumanContactPublic,
    HumanContactRespond,
)
from airflow_provider_hlml.approvals.webhooks import HUMAN_CONTACT_COMPLETED
from airflow_provider_hlml.gate.wire import REPLAYED_HEADER

KIND = store.HUMAN_CONTACT
router = APIRouter(tags=["human contacts"], responses=ERRORS)


@router.post("/contact_requests", response_model=HumanContactPublic, status_code=201)
@router.post("/human_contacts", response_model=HumanContactPublic, status_code=201, include_in_schema=False)
def create_human_contact(
    body: HumanContactCreate, response: Response, session: SessionDep, actor: CreatorActor
) -> Any:
    """Create a human contact; the same call_id with the same spec returns the existing one."""
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
    return public_model(row)


@router.get("/contact_requests", response_model=list[HumanContactPublic])
@router.get("/human_contacts", response_model=list[HumanContactPublic], include_in_schema=False)
def list_human_contacts(
    session: SessionDep,
    response: Response,
    actor: CurrentActor,
    status: Literal["pending", "responded", "cancelled"] | None = None,
    run_id: Annotated[str | None, Query(max_length=256)] = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> Any:
    """List human contacts, newest first; the total count is in the ``X-Total-Count`` header."""
    store.check_clean(run_id, "query.run_id")
    rows, total = store.list_requests(
        session, kind=KIND, state=status, run_id=run_id, since=since, until=until, limit=limit, offset=offset
    )
    response.headers["X-Total-Count"] = str(total)
    return [public_model(r) for r in rows]


@router.get("/agent/human_contacts/pending", response_model=list[HumanContactPublic])
def pending_human_contacts(
    session: SessionDep,
    actor: CurrentActor,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> Any:
    """Pending human contacts, oldest first."""
    rows, _ = store.list_requests(
        session, kind=KIND, state="pending", limit=limit, offset=offset, oldest_first=True
    )
    return [public_model(r) for r in rows]


@router.get("/contact_requests/{call_id}", response_model=HumanContactPublic)
@router.get("/human_contacts/{call_id}", response_model=HumanContactPublic, include_in_schema=False)
async def get_human_contact(
    call_id: str, state: StateDep, actor: CurrentActor, wait: WaitQuery = None
) -> Any:
    """Read a human contact; ``?wait=`` long-polls until it changes."""
    # The body is built from the row as the response model describes it; skipping a second
    # validation keeps this hot path (pollers) cheap.
    return JSONResponse(await read_with_wait(state, kind=KIND, call_id=call_id, wait=wait))


@router.post("/agent/human_contacts/{call_id}/respond", response_model=HumanContactPublic)
def respond_to_human_contact(
    call_id: str, body: HumanContactRespond, session: SessionDep, state: StateDep, actor: CurrentActor
) -> Any:
    """Answer a human contact. Delegates name the person they act for in ``user_info``."""
    row = store.respond_human_contact(
        session,
        call_id=call_id,
        response=body.response,
        response_option_name=body.response_option_name,
        actor=actor,
        on_behalf_of=body.user_info.model_dump() if body.user_info else None,
    )
    result = human_contact_body(row)
    state.announce(KIND, call_id, result, HUMAN_CONTACT_COMPLETED)
    return result


@router.post("/agent/human_contacts/{call_id}/escalate_email", response_model=HumanContactPublic)
def escalate_human_contact(
    call_id: str, body: Escalation, session: SessionDep, state: StateDep, actor: ManagerActor
) -> Any:
    """Record an escalation; its e-mail recipients become allowed responders."""
    row = store.escalate(session, kind=KIND, call_id=call_id, escalation=body.model_dump(), actor=actor)
    state.hub.notify_threadsafe((KIND, call_id))
    return human_contact_body(row)


@router.post("/agent/human_contacts/{call_id}/cancel", response_model=HumanContactPublic)
def cancel_human_contact(
    call_id: str, body: CancelRequest, session: SessionDep, state: StateDep, actor: ManagerActor
) -> Any:
    """Cancel a pending human contact."""
    row = store.cancel(
        session, kind=KIND, call_id=call_id, reason=body.reason, comment=body.comment, actor=actor
    )
    result = human_contact_body(row)
    state.announce(KIND, call_id, result, HUMAN_CONTACT_COMPLETED)
    return result


@router.get("/contact_requests/{call_id}/audit", response_model=list[AuditEventPublic])
def human_contact_audit(call_id: str, session: SessionDep, actor: CurrentActor) -> Any:
    """The append-only audit trail of a human contact, oldest first."""
    return [audit_body(e) for e in store.audit_events(session, kind=KIND, call_id=call_id)]
