"""Who may answer an approval request: the single source of truth for the approval policy.

The gate writes the policy into ``spec.state["hlml"]``; the service enforces it on every respond
and the trigger re-checks the decision it receives. This module is plain Python (no heavy
imports) so the trigger can use it at no cost.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ApprovalPolicy:
    """The approvers, requester and self-approval rule of one request.

    :param approvers: e-mail addresses or names allowed to respond; empty means any reviewer.
    :param requester: the user who triggered the request (the DAG run), if known.
    :param allow_self_approval: whether the requester may answer their own request.
    """

    approvers: tuple[str, ...] = ()
    requester: str | None = None
    allow_self_approval: bool = False
    extra_approvers: tuple[str, ...] = field(default=())

    @classmethod
    def from_state(
        cls, state: Mapping[str, Any] | None, extra_approvers: Iterable[str] = ()
    ) -> ApprovalPolicy:
        """Read the policy from a request's ``spec.state`` (missing parts mean "no restriction")."""
        hlml = (state or {}).get("hlml") if isinstance(state, Mapping) else None
        if not isinstance(hlml, Mapping):
            hlml = {}
        approvers = hlml.get("approvers") or ()
        if isinstance(approvers, str):
            approvers = (approvers,)
        requester = hlml.get("requester")
        return cls(
            approvers=tuple(str(a) for a in approvers if a),
            requester=str(requester) if requester else None,
            allow_self_approval=bool(hlml.get("allow_self_approval", False)),
            extra_approvers=tuple(str(a) for a in extra_approvers if a),
        )

    @property
    def restricted(self) -> bool:
        return bool(self.approvers)

    def refusal_reason(self, *, name: str | None, email: str | None) -> str | None:
        """Return why the person ``name``/``email`` may not respond, or None when they may."""
        who = _identities(name, email)
        if not who:
            return "the responder has neither a name nor an e-mail address"
        if not self.allow_self_approval and self.requester and _norm(self.requester) in who:
            return (
                f"{name or email} requested this approval and self-approval is not allowed "
                "(allow_self_approval is false)"
            )
        if self.approvers:
            allowed = {_norm(a) for a in (*self.approvers, *self.extra_approvers)}
            if not who & allowed:
                return f"{name or email} is not one of the approvers of this request: {', '.join(sorted(allowed))}"
        return None


def _norm(value: str) -> str:
    return value.strip().casefold()


def _identities(name: str | None, email: str | None) -> set[str]:
    return {_norm(v) for v in (name, email) if v and v.strip()}
