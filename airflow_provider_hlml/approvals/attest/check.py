"""Check every signed decision against the database: ``hlml-approvals audit verify-attestations``.

For each request with an attestation: the signature verifies with the trusted keys, the statement
names that request and its recorded decision, and the audit event it names (its ``seq`` and
``hash``) is in the chain, as that request's decision, with that hash. The statements were signed
when the decisions were made; a chain rewritten since, even one whose hashes were all recomputed
(which ``audit verify`` alone cannot see), no longer matches them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from airflow_provider_hlml.approvals.models import ApprovalRequest, AuditEvent
from airflow_provider_hlml.gate.attestation import AttestationError, KeySet, verify_envelope

__all__ = ["AttestationsReport", "check_attestations"]


@dataclass(frozen=True)
class AttestationsReport:
    checked: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        if self.ok:
            return f"attestations intact: {self.checked} signed decisions match the audit chain"
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        return f"attestation check failed: {self.problems[0]}{more}"

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "problems": self.problems,
            "description": self.describe(),
        }


def check_attestations(session: Any, keys: KeySet, *, limit_problems: int = 100) -> AttestationsReport:
    """Check every attested request (see the module docstring); ``session`` is a Session."""
    rows = session.execute(
        select(
            ApprovalRequest.id, ApprovalRequest.call_id, ApprovalRequest.state, ApprovalRequest.attestation
        )
        .where(ApprovalRequest.attestation.is_not(None))
        .order_by(ApprovalRequest.id)
    ).all()
    problems: list[str] = []
    for request_id, call_id, state, envelope in rows:
        problem = _check_one(session, keys, request_id, call_id, state, envelope)
        if problem is not None:
            problems.append(f"request {call_id}: {problem}")
            if len(problems) >= limit_problems:
                break
    return AttestationsReport(checked=len(rows), problems=problems)


def _check_one(
    session: Any, keys: KeySet, request_id: int, call_id: str, state: str, envelope: str
) -> str | None:
    try:
        statement = verify_envelope(envelope, keys)
    except AttestationError as exc:
        return str(exc)
    if statement.call_id != call_id:
        return f"its attestation is that of request {statement.call_id!r}"
    if statement.decision != state:
        return f"its attestation says {statement.decision!r}, the database {state!r}"
    link = statement.data.get("audit") or {}
    seq, digest = link.get("seq"), link.get("hash")
    event = session.execute(
        select(AuditEvent.request_id, AuditEvent.event, AuditEvent.hash).where(AuditEvent.seq == seq)
    ).first()
    if event is None:
        return f"the audit event it names (seq {seq}) is not in the chain"
    if event.request_id != request_id or event.event != "responded":
        return f"the audit event it names (seq {seq}) is not this request's decision"
    if event.hash != digest:
        return f"the audit chain was rewritten: event seq {seq} no longer has the hash the decision was signed with"
    return None
