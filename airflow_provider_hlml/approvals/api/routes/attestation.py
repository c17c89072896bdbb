"""Signed decisions: a call's attestation, and the public keys that verify it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from airflow_provider_hlml.approvals import store
from airflow_provider_hlml.approvals.api.deps import CurrentActor, SessionDep
from airflow_provider_hlml.approvals.api.routes.function_calls import ERRORS
from airflow_provider_hlml.approvals.attest.keys import active_signer, key_set
from airflow_provider_hlml.gate.attestation import KEYS_PATH

router = APIRouter(tags=["attestations"], responses=ERRORS)


@router.get("/function_calls/{call_id}/attestation")
def function_call_attestation(call_id: str, session: SessionDep, actor: CurrentActor) -> dict[str, Any]:
    """The signed statement of a call's decision (``attestation`` is null while it is pending,
    after a cancellation, and for calls decided before the service signed decisions)."""
    row = store.get_request(session, kind=store.FUNCTION_CALL, call_id=call_id)
    return {"call_id": row.call_id, "state": row.state, "attestation": row.attestation}


@router.get(KEYS_PATH)
def public_keys(session: SessionDep) -> dict[str, Any]:
    """Every key the service signs or signed with, and its status (no authentication: public
    keys are for whoever serves a model). The first key is made here if none exists yet."""
    keys = key_set(session)
    if not keys.keys:
        active_signer(session)
        session.commit()
        keys = key_set(session)
    return {"service": "hlml-approvals", **keys.to_document()}
