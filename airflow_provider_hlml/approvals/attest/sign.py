"""The statement the service signs when a function call is decided."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from airflow_provider_hlml.approvals.attest.keys import active_signer
from airflow_provider_hlml.approvals.models import ApprovalRequest, AuditEvent
from airflow_provider_hlml.gate.attestation import STATEMENT_TYPE, iso, sign_statement
from airflow_provider_hlml.gate.state import GateState

__all__ = ["decision_statement", "sign_decision"]

#: Context keys naming the model version a request is about (``contracts.BINDING_KEYS`` + source).
_MODEL_KEYS = {"name": "model_name", "version": "model_version", "run_id": "mlflow_run_id"}
_MAX_TEXT = 200


def _short(value: Any) -> str | None:
    return None if value is None else str(value)[:_MAX_TEXT]


def _model(context: Any) -> dict[str, Any] | None:
    """The model version a request's context names, or None when it names none completely."""
    if not isinstance(context, Mapping):
        return None
    model = {k: context.get(v) for k, v in _MODEL_KEYS.items()}
    if any(v in (None, "") for v in model.values()):
        return None
    model = {k: _short(v) for k, v in model.items()}
    source = context.get("model_source") or context.get("model_uri")
    model["source"] = _short(source) if source else None
    return model


def decision_statement(row: ApprovalRequest, decision: AuditEvent) -> dict[str, Any]:
    """What is signed: the request, the decision, who decided under which rule, who asked, the
    audit event that recorded it, and the model version it is about."""
    spec = row.spec if isinstance(row.spec, Mapping) else {}
    raw_kwargs = spec.get("kwargs")
    kwargs: Mapping[str, Any] = raw_kwargs if isinstance(raw_kwargs, Mapping) else {}
    state = GateState.from_state(spec.get("state"))
    metadata = decision.event_metadata or {}
    approvers = [
        {"name": _short(a.get("name")), "email": _short(a.get("email")), "rule": _short(a.get("rule"))}
        for a in metadata.get("approvers") or []
        if isinstance(a, Mapping)
    ]
    if not approvers and row.user_info:
        approvers = [
            {
                "name": _short(row.user_info.get("name")),
                "email": _short(row.user_info.get("email")),
                "rule": _short(metadata.get("rule")),
            }
        ]
    airflow = state.airflow
    return {
        "type": STATEMENT_TYPE,
        "call_id": row.call_id,
        "run_id": row.run_id,
        "fn": row.fn,
        "decision": row.state,
        "requested_at": iso(row.requested_at),
        "decided_at": iso(row.responded_at),
        "requester": {"principal": row.created_by, "name": _short(state.requester)},
        "approvers": approvers,
        "rules_met": sorted({a["rule"] for a in approvers if a["rule"]}),
        "comment": _short(row.comment),
        "spec_hash": row.spec_hash,
        "review_digest": state.digest,
        "model": _model(kwargs.get("context")),
        "airflow": (
            {"dag_id": airflow.dag_id, "run_id": airflow.run_id, "task_id": airflow.task_id}
            if airflow is not None
            else None
        ),
        "audit": {"seq": getattr(decision, "seq", None), "hash": getattr(decision, "hash", None)},
    }


def sign_decision(session: Session, row: ApprovalRequest, decision: AuditEvent) -> str:
    """Sign the decision of ``row`` (recorded by ``decision``) and keep it on the row."""
    # No autoflush: reading the key must not flush the decision's row early, or a concurrent
    # decision's conflict would surface here instead of in the caller's commit (as a 409).
    with session.no_autoflush:
        signer = active_signer(session)
    envelope = sign_statement(
        decision_statement(row, decision), private_raw=signer.private_raw, key_id=signer.key_id
    )
    row.attestation = envelope
    return envelope
