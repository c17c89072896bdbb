"""Who may answer an approval request, and when it is decided: the one home of the approval policy.

The gate writes the policy into ``spec.state["hlml"]`` (:class:`~airflow_provider_hlml.gate.state.GateState`);
an escalation adds approvers (the service reports them in ``status.extra_approvers``). The
approvals service enforces the policy on every answer, the trigger and the API server's wake path
re-check the decision they receive, and the dashboard decides whether to offer the buttons: all
with :class:`ApprovalPolicy`, so they cannot disagree.

**Rules.** A policy is a list of :class:`ApprovalRule` s, all of which must be met: each names who
may approve toward it (names, e-mail addresses and ``group:<name>`` entries; empty means any
reviewer) and how many distinct people it needs. A plain approver list is one rule, "one of
these". Each person counts once per request, toward one rule: approvals are assigned to rules by
a maximum matching (the earliest approvals and the first rules first), so a member of two groups
fills whichever rule still needs them and :meth:`ApprovalPolicy.tally` always names the same rule
for the same answers. A rejection ends the request unless every rule its author is eligible for
says ``veto: false``.

**Separation of duties.** The people in :attr:`ApprovalPolicy.forbidden` (the DAG run's
requester, the model's author) may not answer at all, whichever rule lists them.

**Decisions by a decision policy.** A gate whose validation stage decided by evidence (a clear win
or a clear regression, :mod:`airflow_provider_hlml.policy.decision`) writes that decision into its
request (:class:`~airflow_provider_hlml.gate.state.AutoDecision`). The approvals service records
it as the answer of the policy's principal (``policy:<name>-v<version>``), which decides the
request on its own: one answer, by that principal, matching the request's outcome, and only while
no person has answered (a person answering within the override window decides instead). Nobody
else may answer under a ``policy:`` name: a key, a person or a delegate naming one is refused.

A responder is known by up to four identities: a name, an e-mail address, the principal of the key
that answered and (on the dashboard) an Airflow user id. A rule lists a responder when any of them
is listed; a forbidden person is refused when any of them matches. Comparison ignores case and
surrounding blanks. Groups are resolved by the approvals service when a request opens
(:attr:`ApprovalPolicy.members`); an unresolved group lists nobody.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_provider_hlml.gate.state import (
    DUTIES,
    GROUP_PREFIX,
    PERSON_PREFIX,
    POLICY_PRINCIPAL_PREFIX,
    UNREADABLE_RULE,
    ApprovalRule,
    AutoDecision,
    Forbidden,
    GateState,
    is_group,
    is_policy_principal,
)

if TYPE_CHECKING:
    from airflow_provider_hlml.gate.wire import UserInfo

__all__ = [
    "DUTIES",
    "GROUP_PREFIX",
    "POLICY_PRINCIPAL_PREFIX",
    "Answer",
    "ApprovalPolicy",
    "ApprovalRule",
    "AutoDecision",
    "Forbidden",
    "Refusal",
    "Responder",
    "RuleProgress",
    "Tally",
    "is_group",
    "is_policy_principal",
    "names_any",
]


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
    def of(cls, user_info: UserInfo | Mapping[str, Any]) -> Responder:
        """The person who decided, as a server reported them.

        A delegate key's principal is the delegate (a service answering for the person), not the
        person, so it is no identity of theirs: the approvals service judges a delegate's answer
        by the name and e-mail address it names, and so does everyone else.
        """
        get = user_info.get if isinstance(user_info, Mapping) else lambda k: getattr(user_info, k, None)
        text = {
            k: v if isinstance(v, str) else None for k in ("name", "email", "principal") for v in [get(k)]
        }
        return cls(
            name=text["name"],
            email=text["email"],
            principal=None if get("via_delegate") else text["principal"],
        )

    @cached_property
    def identities(self) -> frozenset[str]:
        return _identities((self.name, self.email, self.principal, self.user_id))

    @property
    def label(self) -> str:
        return self.name or self.email or self.principal or self.user_id or "?"

    def same_person(self, other: Responder) -> bool:
        """Whether ``other`` shares an identity with this responder."""
        return bool(self.identities & other.identities)

    @property
    def claims_policy(self) -> bool:
        """Whether any identity of this responder is a decision policy's name (``policy:...``)."""
        return any(is_policy_principal(i) for i in self.identities)

    def is_policy(self, principal: str) -> bool:
        """Whether this responder is exactly the policy ``principal``: no other identity, no e-mail."""
        return bool(self.identities) and self.identities == _identities((principal,)) and self.email is None


@dataclass(frozen=True)
class Answer:
    """One person's answer to a request (the service keeps them in ``status.answers``).

    :param who: the person who answered.
    :param approved: approve (True) or reject (False).
    :param at: when (ISO 8601), as the server recorded it.
    :param comment: their comment.
    """

    who: Responder
    approved: bool
    at: str | None = None
    comment: str | None = None

    @classmethod
    def from_json(cls, raw: Any) -> Answer | None:
        """An answer as the service reports it; None when it is not one."""
        if not isinstance(raw, Mapping) or not isinstance(raw.get("approved"), bool):
            return None
        at, comment = raw.get("at"), raw.get("comment")
        return cls(
            who=Responder.of(raw),
            approved=raw["approved"],
            at=at if isinstance(at, str) else None,
            comment=comment if isinstance(comment, str) else None,
        )


class Refusal(enum.Enum):
    """Why a responder may not answer."""

    NO_IDENTITY = "no_identity"
    SELF_APPROVAL = "self_approval"
    MODEL_AUTHOR = "model_author"
    NOT_AN_APPROVER = "not_an_approver"
    ALREADY_ANSWERED = "already_answered"
    WOULD_NOT_COUNT = "would_not_count"
    #: A ``policy:`` name that is not this request's own auto-decision (or is, too late or reversed).
    NOT_THE_POLICY = "not_the_policy"


@dataclass(frozen=True)
class RuleProgress:
    """How far one rule is: who approved toward it, of how many needed."""

    rule: ApprovalRule
    approved_by: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.approved_by)

    @property
    def met(self) -> bool:
        return self.count >= self.rule.required

    @property
    def summary(self) -> str:
        """E.g. ``"ML lead 1 of 2: alice"``."""
        who = f": {', '.join(self.approved_by)}" if self.approved_by else ""
        return f"{self.rule.name} {self.count} of {self.rule.required}{who}"

    def to_json(self) -> dict[str, Any]:
        return {**self.rule.to_json(), "approved_by": list(self.approved_by), "met": self.met}


@dataclass(frozen=True)
class Tally:
    """Where a request stands given its answers.

    :param rules: each rule's progress, in rule order.
    :param counted: per approval (in answer order), the rule name it counts toward, or None.
    :param vetoed_by: the rejection that decides the request, if any.
    :param by_policy: the decision policy's answer that decides the request, if any.
    """

    rules: tuple[RuleProgress, ...]
    counted: tuple[tuple[Answer, str | None], ...]
    vetoed_by: Answer | None = None
    by_policy: Answer | None = None

    @property
    def met(self) -> bool:
        return all(p.met for p in self.rules)

    @property
    def approvals(self) -> int:
        return sum(p.count for p in self.rules)

    @property
    def decided(self) -> bool | None:
        """True (approved), False (rejected) or None (still pending)."""
        if self.by_policy is not None:
            return self.by_policy.approved
        if self.vetoed_by is not None:
            return False
        return True if self.met else None

    @property
    def summary(self) -> str:
        """E.g. ``"ML lead 1 of 2: alice; Compliance 0 of 1"``."""
        if self.by_policy is not None:
            return f"decided by {self.by_policy.who.label}"
        return "; ".join(p.summary for p in self.rules)


def _assign(eligible: Sequence[Sequence[int]], capacity: Sequence[int]) -> list[int | None]:
    """A maximum assignment of approvals to rules (Kuhn's augmenting paths, with capacities).

    Approvals are placed in order, each trying the rules in order; an earlier approval moves to
    another rule it is eligible for when that lets a later one count. Deterministic.
    """
    holders: list[list[int]] = [[] for _ in capacity]
    assigned: list[int | None] = [None] * len(eligible)

    def place(a: int, seen: set[int]) -> bool:
        for r in eligible[a]:
            if r in seen:
                continue
            seen.add(r)
            if len(holders[r]) < capacity[r]:
                holders[r].append(a)
                assigned[a] = r
                return True
            for other in list(holders[r]):
                if place(other, seen):
                    holders[r].remove(other)
                    holders[r].append(a)
                    assigned[a] = r
                    return True
        return False

    for a in range(len(eligible)):
        place(a, set())
    return assigned


@dataclass(frozen=True)
class ApprovalPolicy:
    """The rules, the forbidden people and the escalation approvers of one request.

    :param approvers: e-mail addresses, names or ``group:`` entries allowed to respond ("one of
        these"); empty means any reviewer. Ignored when ``rules`` are given.
    :param requester: the user who triggered the request (the DAG run), if known.
    :param allow_self_approval: whether the requester may answer their own request.
    :param extra_approvers: approvers added by an escalation; they may approve toward every rule
        of a restricted policy.
    :param rules: the rules that must all be met (see :class:`ApprovalRule`).
    :param forbidden: people who may not answer (separation of duties).
    :param members: ``group:<name>`` -> the identities of its members when the request opened.
    :param auto: the decision policy's decision the request carries, if any.
    """

    approvers: tuple[str, ...] = ()
    requester: str | None = None
    allow_self_approval: bool = False
    extra_approvers: tuple[str, ...] = field(default=())
    rules: tuple[ApprovalRule, ...] = ()
    forbidden: tuple[Forbidden, ...] = ()
    members: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    auto: AutoDecision | None = None

    @classmethod
    def from_state(
        cls,
        state: Any,
        extra_approvers: Iterable[str] | None = (),
        members: Mapping[str, Iterable[str]] | None = None,
    ) -> ApprovalPolicy:
        """Read the policy from a request's ``spec.state`` (missing parts mean "no restriction")."""
        return cls.of_gate(GateState.from_state(state), extra_approvers, members)

    @classmethod
    def of_gate(
        cls,
        gate: GateState,
        extra_approvers: Iterable[str] | None = (),
        members: Mapping[str, Iterable[str]] | None = None,
    ) -> ApprovalPolicy:
        """The policy a gate wrote, with the approvers an escalation added and the groups resolved."""
        return (
            cls(
                approvers=gate.approvers,
                requester=gate.requester,
                allow_self_approval=gate.allow_self_approval,
                rules=gate.rules,
                forbidden=gate.forbidden,
                auto=gate.auto,
            )
            .escalated_to(extra_approvers)
            .with_members(members)
        )

    def to_json(self) -> dict[str, Any]:
        """The policy as JSON (what the sensor hands the trigger)."""
        return {
            "approvers": list(self.approvers),
            "requester": self.requester,
            "allow_self_approval": self.allow_self_approval,
            "extra_approvers": list(self.extra_approvers),
            "rules": [r.to_json() for r in self.rules],
            "forbidden": [f.to_json() for f in self.forbidden],
            **({"auto": self.auto.to_json()} if self.auto is not None else {}),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ApprovalPolicy:
        gate = GateState.from_state({"hlml": raw})
        return cls.of_gate(gate, raw.get("extra_approvers") or ())

    def escalated_to(self, extra_approvers: Iterable[str] | None) -> ApprovalPolicy:
        """This policy with ``extra_approvers`` added (the recipients of an escalation)."""
        added = tuple(str(a) for a in extra_approvers or () if a and str(a) not in self.extra_approvers)
        return replace(self, extra_approvers=(*self.extra_approvers, *added)) if added else self

    def with_members(self, members: Mapping[str, Iterable[str]] | None) -> ApprovalPolicy:
        """This policy with its groups resolved (``group:<name>`` -> member identities)."""
        if not members:
            return self
        resolved = {
            str(k).strip().casefold(): tuple(str(v) for v in vs if isinstance(v, str))
            for k, vs in members.items()
            if isinstance(vs, list | tuple)
        }
        return replace(self, members={**self.members, **resolved})

    # ---- the rules ----------------------------------------------------------------------------
    @cached_property
    def effective_rules(self) -> tuple[ApprovalRule, ...]:
        """The rules to meet: the gate's rules, or the approver list as one "one of these" rule."""
        if self.rules:
            return self.rules
        return (
            ApprovalRule(name="Approvers" if self.approvers else "Any reviewer", approvers=self.approvers),
        )

    @property
    def groups(self) -> tuple[str, ...]:
        """Every ``group:<name>`` entry the policy names (to resolve), each once, in order."""
        entries = [a for r in self.effective_rules for a in r.approvers]
        entries += list(self.extra_approvers)
        return tuple(dict.fromkeys(_norm(a) for a in entries if is_group(a)))

    @property
    def is_quorum(self) -> bool:
        """Whether deciding takes more than one approval or more than the plain approver list."""
        return bool(self.rules) and (len(self.rules) > 1 or self.rules[0].required > 1)

    @property
    def restricted(self) -> bool:
        return any(r.approvers for r in self.effective_rules)

    def _people(self, names: Iterable[str]) -> list[str]:
        """Names with groups replaced by their members' identities."""
        out: list[str] = []
        for name in names:
            if is_group(name):
                out.extend(self.members.get(_norm(name), ()))
            else:
                out.append(name)
        return out

    @cached_property
    def _rule_identities(self) -> tuple[frozenset[str] | None, ...]:
        """Per rule, the identities that may approve toward it (None: anyone), computed once."""
        extra = _identities(self._people(self.extra_approvers))
        return tuple(
            _identities(self._people(rule.approvers)) | extra if rule.approvers else None
            for rule in self.effective_rules
        )

    def _eligible_rules(self, who: Responder) -> list[int]:
        identities = who.identities
        return [i for i, people in enumerate(self._rule_identities) if people is None or identities & people]

    @property
    def allowed(self) -> tuple[str, ...]:
        """Everyone who may decide, as written (empty: any reviewer), each once."""
        if not self.restricted:
            return ()
        written = [a for r in self.effective_rules for a in r.approvers]
        return tuple(dict.fromkeys((*written, *self.extra_approvers)))

    def tally(self, answers: Iterable[Answer]) -> Tally:
        """Where a request stands after ``answers`` (in the order they were given)."""
        rules = self.effective_rules
        answers = list(answers)
        by_policy = self.policy_answer(answers)
        if by_policy is not None:
            progress = tuple(RuleProgress(rule, ()) for rule in rules)
            return Tally(rules=progress, counted=((by_policy, None),), by_policy=by_policy)
        approvals: list[Answer] = []
        vetoed_by: Answer | None = None
        for answer in answers:
            if answer.who.claims_policy:
                continue  # never a person's answer; counts only as the request's own auto-decision
            if any(answer.who.same_person(a.who) for a in approvals):
                continue  # each person counts once
            if answer.approved:
                approvals.append(answer)
            elif vetoed_by is None:
                eligible = self._eligible_rules(answer.who)
                if not eligible or any(rules[i].veto for i in eligible):
                    vetoed_by = answer
        # An unreadable rule holds no approval: not even an escalation's approvers can meet it.
        capacity = [0 if rule == UNREADABLE_RULE else rule.required for rule in rules]
        assigned = _assign([self._eligible_rules(a.who) for a in approvals], capacity)
        progress = tuple(
            RuleProgress(rule, tuple(a.who.label for a, r in zip(approvals, assigned, strict=True) if r == i))
            for i, rule in enumerate(rules)
        )
        counted = tuple(
            (a, rules[r].name if r is not None else None) for a, r in zip(approvals, assigned, strict=True)
        )
        return Tally(rules=progress, counted=counted, vetoed_by=vetoed_by)

    def policy_answer(self, answers: Sequence[Answer]) -> Answer | None:
        """The answer of this request's decision policy, when it is the first and only answer and
        says what the request's auto-decision says."""
        auto = self.auto
        if auto is None or len(answers) != 1:
            return None
        (answer,) = answers
        if answer.who.is_policy(auto.principal) and answer.approved is auto.approves:
            return answer
        return None

    # ---- who may answer ---------------------------------------------------------------------
    def _person(self, who: str) -> list[str]:
        """Every identity of a barred person: as written, plus those the service resolved."""
        return [who, *self.members.get(PERSON_PREFIX + _norm(who), ())]

    def is_requester(self, who: Responder) -> bool:
        """Whether ``who`` triggered the request (always False when self-approval is allowed)."""
        return bool(
            not self.allow_self_approval
            and self.requester
            and names_any(who.identities, self._person(self.requester))
        )

    def forbidden_as(self, who: Responder) -> Forbidden | None:
        """The separation-of-duties entry that bars ``who``, if any."""
        if self.is_requester(who):
            return Forbidden(who=str(self.requester), duty="requester")
        for entry in self.forbidden:
            if names_any(who.identities, self._person(entry.who)):
                return entry
        return None

    def is_approver(self, who: Responder) -> bool:
        """Whether ``who`` may approve toward at least one rule (always True when anyone may)."""
        return bool(self._eligible_rules(who))

    def refusal(
        self, who: Responder, answers: Sequence[Answer] = (), approving: bool | None = None
    ) -> Refusal | None:
        """Why ``who`` may not respond (now that ``answers`` were given), or None when they may.

        :param approving: True when ``who`` approves: an approval that would count toward no rule
            (every rule they are eligible for is already met) is refused.
        """
        if not who.identities:
            return Refusal.NO_IDENTITY
        if who.claims_policy:
            auto = self.auto
            if (
                auto is None
                or not who.is_policy(auto.principal)
                or answers
                or (approving is not None and approving is not auto.approves)
            ):
                return Refusal.NOT_THE_POLICY
            return None
        barred = self.forbidden_as(who)
        if barred is not None:
            return Refusal.SELF_APPROVAL if barred.duty == "requester" else Refusal.MODEL_AUTHOR
        if not self.is_approver(who):
            return Refusal.NOT_AN_APPROVER
        if any(who.same_person(a.who) for a in answers):
            return Refusal.ALREADY_ANSWERED
        if approving and answers:
            before = self.tally(answers).approvals
            if self.tally([*answers, Answer(who, True)]).approvals <= before:
                return Refusal.WOULD_NOT_COUNT
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

    def explain(
        self, who: Responder, answers: Sequence[Answer] = (), approving: bool | None = None
    ) -> str | None:
        """:meth:`refusal` as the sentence the service answers with."""
        refusal = self.refusal(who, answers, approving)
        if refusal is None:
            return None
        if refusal is Refusal.NO_IDENTITY:
            return "the responder has neither a name nor an e-mail address"
        if refusal is Refusal.SELF_APPROVAL:
            return (
                f"{who.label} requested this approval and self-approval is not allowed "
                "(allow_self_approval is false)"
            )
        if refusal is Refusal.MODEL_AUTHOR:
            barred = self.forbidden_as(who)
            why = barred.why if barred else "is the author of what is approved"
            return f"{who.label} {why}: separation of duties bars them from deciding (forbid model_author)"
        if refusal is Refusal.NOT_AN_APPROVER:
            allowed = ", ".join(sorted({_norm(a) for a in self.allowed}))
            return f"{who.label} is not one of the approvers of this request: {allowed}"
        if refusal is Refusal.ALREADY_ANSWERED:
            return f"{who.label} has already answered this request; each person counts once"
        if refusal is Refusal.NOT_THE_POLICY:
            if self.auto is not None and who.is_policy(self.auto.principal) and answers:
                return f"{who.label} may not decide: a person answered within the override window"
            return (
                f"{who.label} may not answer: a '{POLICY_PRINCIPAL_PREFIX}' name is recorded only by the "
                "approvals service, as the request's own decision policy"
            )
        met = [p.rule.name for p in self.tally(answers).rules if p.met]
        return (
            f"{who.label}'s approval would not count: every rule they may approve toward is already met "
            f"({', '.join(met)})"
        )

    def block_reason(self, who: Responder, answers: Sequence[Answer] = ()) -> str | None:
        """Why ``who`` cannot decide now, in the reviewer's words (the dashboard's hint)."""
        refusal = self.refusal(who, answers)
        if refusal is Refusal.SELF_APPROVAL:
            return "You triggered this run and self-approval is off for this gate"
        if refusal is Refusal.MODEL_AUTHOR:
            barred = self.forbidden_as(who)
            return f"You {barred.why if barred else 'authored what is approved'} (separation of duties)"
        if refusal is Refusal.NOT_AN_APPROVER:
            return "Only these approvers may decide: " + ", ".join(self.allowed)
        if refusal is Refusal.ALREADY_ANSWERED:
            return "You have already answered; each person counts once"
        if refusal is not None:
            return self.explain(who, answers)
        return None

    def decision_refusal(
        self, user_info: UserInfo | None, answers: Any = None, approved: bool = True
    ) -> str | None:
        """Why a decision a server reports must not be accepted, or None when it may.

        With ``answers`` (the approvals service's ``status.answers``) every answer is judged and an
        approval must meet every rule; without them the one person in ``user_info`` decided. A
        server that does not report who decided (the HumanLayer cloud) is trusted to have enforced
        its own channel rules for a plain approver list; rules with counts are never taken on trust.
        """
        parsed = [a for a in (Answer.from_json(r) for r in answers or ()) if a is not None]
        if not parsed:
            if user_info is None or not (user_info.name or user_info.email or user_info.principal):
                if self.is_quorum:
                    return "the server does not report the approvals, so the rules cannot be checked"
                return None
            who = Responder.of(user_info)
            if not who.identities:
                # Only a delegate's principal was reported: judge by it rather than trust blindly.
                who = Responder(principal=user_info.principal)
            parsed = [Answer(who, approved)]
        seen: list[Answer] = []
        for answer in parsed:
            reason = self.explain(answer.who, seen, answer.approved if answer.who.claims_policy else None)
            if reason is not None:
                return reason
            seen.append(answer)
        tally = self.tally(parsed)
        if tally.decided is not approved:
            if approved:
                return f"the rules are not met: {tally.summary}"
            return "no rejection in the reported answers decides this request"
        return None
