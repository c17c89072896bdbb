"""Who may answer an approval request: the one home of the approval policy.

The gate writes the policy into ``spec.state["hlml"]`` (:class:`~airflow_provider_hlml.gate.state.GateState`);
an escalation adds approvers (the service reports them in ``status.extra_approvers``). The
approvals service enforces the policy on every answer, the trigger and the API server's wake path
re-check the decision they receive, and the dashboard decides whether to offer the buttons: all
with :class:`ApprovalPolicy`, so they cannot disagree.

A responder is known by up to four identities: a name, an e-mail address, the principal of the key
that answered and (on the dashboard) an Airflow user id. The approvers are satisfied when any of
them is listed; the requester is refused self-approval when any of them is the requester.
Comparison ignores case and surrounding blanks.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from airflow_provider_hlml.gate.state import GateState

if TYPE_CHECKING:
    from airflow_provider_hlml.gate.wire import UserInfo

__all__ = ["ApprovalPolicy", "Refusal", "Responder", "names_any"]


def _norm(value: str) -> str:
    return value.strip().casefold()


def _identities(values: Iterable[Any]) -> frozenset[str]:
    return frozenset(_norm(v) for v in values if isinstance(v, str) and v.strip())


def names_any(identities: Iterable[Any], names: Iterable[Any]) -> bool:
    """Whether one of ``names`` (names, e-mail addresses, ids) is one of ``identities``."""
    return bool(_identities(identities) & _identities(names))


@dataclass(frozen=True)
class Responder:
    """Someone answering a request, by every identity known of them.

    :param name: the person's name.
    :param email: their e-mail address.
    :param principal: the principal of the key that answers.
    :param user_id: their Airflow user id (the dashboard knows it).
    """

    name: str | None = None
    email: str | None = None
    principal: str | None = None
    user_id: str | None = None

    @classmethod
    def of(cls, user_info: UserInfo) -> Responder:
        """The person who decided, as a server reported them.

        A delegate key's principal is the delegate (a service answering for the person), not the
        person, so it is no identity of theirs: the approvals service judges a delegate's answer
        by the name and e-mail address it names, and so does everyone else.
        """
        return cls(
            name=user_info.name,
            email=user_info.email,
            principal=None if user_info.via_delegate else user_info.principal,
        )

    @property
    def identities(self) -> frozenset[str]:
        return _identities((self.name, self.email, self.principal, self.user_id))

    @property
    def label(self) -> str:
        return self.name or self.email or self.principal or self.user_id or "?"


class Refusal(enum.Enum):
    """Why a responder may not answer."""

    NO_IDENTITY = "no_identity"
    SELF_APPROVAL = "self_approval"
    NOT_AN_APPROVER = "not_an_approver"


@dataclass(frozen=True)
class ApprovalPolicy:
    """The approvers, requester and self-approval rule of one request.

    :param approvers: e-mail addresses or names allowed to respond; empty means any reviewer.
    :param requester: the user who triggered the request (the DAG run), if known.
    :param allow_self_approval: whether the requester may answer their own request.
    :param extra_approvers: approvers added by an escalation; they extend a restricted list only.
    """

    approvers: tuple[str, ...] = ()
    requester: str | None = None
    allow_self_approval: bool = False
    extra_approvers: tuple[str, ...] = field(default=())

    @classmethod
    def from_state(cls, state: Any, extra_approvers: Iterable[str] | None = ()) -> ApprovalPolicy:
        """Read the policy from a request's ``spec.state`` (missing parts mean "no restriction")."""
        return cls.of_gate(GateState.from_state(state), extra_approvers)

    @classmethod
    def of_gate(cls, gate: GateState, extra_approvers: Iterable[str] | None = ()) -> ApprovalPolicy:
        """The policy a gate wrote, with the approvers an escalation added."""
        return cls(
            approvers=gate.approvers,
            requester=gate.requester,
            allow_self_approval=gate.allow_self_approval,
        ).escalated_to(extra_approvers)

    def escalated_to(self, extra_approvers: Iterable[str] | None) -> ApprovalPolicy:
        """This policy with ``extra_approvers`` added (the recipients of an escalation)."""
        added = tuple(str(a) for a in extra_approvers or () if a and str(a) not in self.extra_approvers)
        return replace(self, extra_approvers=(*self.extra_approvers, *added)) if added else self

    @property
    def restricted(self) -> bool:
        return bool(self.approvers)

    @property
    def allowed(self) -> tuple[str, ...]:
        """Everyone who may decide, as written (empty: any reviewer), each once."""
        if not self.approvers:
            return ()
        return tuple(dict.fromkeys((*self.approvers, *self.extra_approvers)))

    def is_requester(self, who: Responder) -> bool:
        """Whether ``who`` triggered the request (always False when self-approval is allowed)."""
        return bool(
            not self.allow_self_approval and self.requester and names_any(who.identities, [self.requester])
        )

    def is_approver(self, who: Responder) -> bool:
        """Whether ``who`` is one of the approvers (always True when anyone may decide)."""
        return not self.approvers or names_any(who.identities, self.allowed)

    def refusal(self, who: Responder) -> Refusal | None:
        """Why ``who`` may not respond, or None when they may."""
        if not who.identities:
            return Refusal.NO_IDENTITY
        if self.is_requester(who):
            return Refusal.SELF_APPROVAL
        if not self.is_approver(who):
            return Refusal.NOT_AN_APPROVER
        return None

    def refusal_reason(
        self,
        *,
        name: str | None = None,
        email: str | None = None,
        principal: str | None = None,
        user_id: str | None = None,
    ) -> str | None:
        """Why the person with these identities may not respond (a sentence), or None when they may."""
        return self.explain(Responder(name=name, email=email, principal=principal, user_id=user_id))

    def explain(self, who: Responder) -> str | None:
        """:meth:`refusal` as the sentence the service answers with."""
        refusal = self.refusal(who)
        if refusal is Refusal.NO_IDENTITY:
            return "the responder has neither a name nor an e-mail address"
        if refusal is Refusal.SELF_APPROVAL:
            return (
                f"{who.label} requested this approval and self-approval is not allowed "
                "(allow_self_approval is false)"
            )
        if refusal is Refusal.NOT_AN_APPROVER:
            allowed = ", ".join(sorted({_norm(a) for a in self.allowed}))
            return f"{who.label} is not one of the approvers of this request: {allowed}"
        return None

    def decision_refusal(self, user_info: UserInfo | None) -> str | None:
        """Why a decision a server reports must not be accepted, or None when it may.

        A server that does not report who decided (the HumanLayer cloud) is trusted to have
        enforced its own channel rules.
        """
        if user_info is None or not (user_info.name or user_info.email or user_info.principal):
            return None
        who = Responder.of(user_info)
        if not who.identities:
            # Only a delegate's principal was reported: judge by it rather than trust blindly.
            who = Responder(principal=user_info.principal)
        return self.explain(who)
