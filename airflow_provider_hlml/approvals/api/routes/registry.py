"""Model-registry events in the audit chain: what the alias guard found and did.

``POST {prefix}/hlml/registry_events`` (agent or admin key) appends one event that concerns no
request (``alias_moved``: a protected alias found on a version without a valid attestation;
``alias_reverted``: the guard moved it back) to the hash-chained audit trail, through
:func:`~airflow_provider_hlml.approvals.store.audit_registry_event`; ``GET`` lists the latest,
newest first, optionally of one model.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from airflow_provider_hlml.approvals import store
from airflow_provider_hlml.approvals.api.deps import CreatorActor, CurrentActor, SessionDep
from airflow_provider_hlml.approvals.api.routes.function_calls import ERRORS
from airflow_provider_hlml.approvals.models import AuditEvent
from airflow_provider_hlml.gate.wire import REGISTRY_EVENTS_PATH

router = APIRouter(tags=["registry events"], responses=ERRORS)

Name = Annotated[str, Field(min_length=1, max_length=256)]
Version = Annotated[str, Field(min_length=1, max_length=64)]
Short = Annotated[str, Field(max_length=256)]
#: Registry events scanned by a listing (the newest); older ones stay in the chain and its export.
MAX_SCANNED = 5000


class RegistryEventCreate(BaseModel):
    """One alias-guard event: which alias of which model, the version found and why."""

    model_config = ConfigDict(extra="forbid")

    event: Literal["alias_moved", "alias_reverted"]
    model: Name
    alias: Name
    version: Version | None = None
    reverted_to: Version | None = None
    reason: str | None = Field(default=None, max_length=4000)
    #: How the guard learnt of it: ``webhook`` or ``reconcile``.
    source: Literal["webhook", "reconcile"] = "reconcile"
    #: Evidence of the version reverted to: its attestation's request, key and approvers.
    call_id: Short | None = None
    key_id: Short | None = None
    approvers: list[Short] = Field(default_factory=list, max_length=50)


class RegistryEventPublic(BaseModel):
    seq: int
    hash: str
    event: str
    at: str
    actor: str | None = None
    comment: str | None = None
    metadata: dict[str, Any] | None = None


def _public(event: AuditEvent) -> RegistryEventPublic:
    return RegistryEventPublic(
        seq=event.seq,
        hash=event.hash,
        event=event.event,
        at=event.at.isoformat(),
        actor=event.actor,
        comment=event.comment,
        metadata=event.event_metadata,
    )


@router.post(REGISTRY_EVENTS_PATH, status_code=201, response_model=RegistryEventPublic)
def record_registry_event(body: RegistryEventCreate, session: SessionDep, actor: CreatorActor) -> Any:
    """Append an alias-guard event to the audit chain."""
    metadata = body.model_dump(exclude={"event", "reason"}, exclude_none=True)
    event = store.audit_registry_event(
        session, body.event, actor=actor, comment=body.reason, metadata=metadata
    )
    session.commit()
    return _public(event)


@router.get(REGISTRY_EVENTS_PATH, response_model=list[RegistryEventPublic])
def list_registry_events(
    session: SessionDep,
    actor: CurrentActor,
    model: Annotated[str | None, Query(max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> Any:
    """The latest registry events, newest first (of ``model`` only, when given)."""
    rows = session.scalars(
        select(AuditEvent)
        .where(AuditEvent.request_id.is_(None))
        .order_by(AuditEvent.seq.desc())
        .limit(MAX_SCANNED)
    ).all()
    found = [e for e in rows if model is None or (e.event_metadata or {}).get("model") == model]
    return [_public(e) for e in found[:limit]]
