"""The gate's part of a request: ``spec.state["hlml"]``, typed.

The sensor writes it when it creates a request; the approvals service reads the approval policy
from it, and the API server's wake path and the dashboard read which task instance is waiting.
``spec.state`` is whatever a request's creator wrote, so :meth:`GateState.from_state` checks every
level and reads what it cannot use as missing, as each reader used to do by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AUTO_OUTCOMES",
    "DUTIES",
    "GROUP_PREFIX",
    "PERSON_PREFIX",
    "POLICY_PRINCIPAL_PREFIX",
    "POLICY_RULE",
    "STATE_KEY",
    "ApprovalRule",
    "AutoDecision",
    "Forbidden",
    "GateLocation",
    "GateState",
    "Reminders",
    "is_group",
    "is_policy_principal",
]

#: The key of the gate's part in ``spec.state``.
STATE_KEY = "hlml"
#: How an approver entry names a group of the approvals service: ``group:ml-leads``.
GROUP_PREFIX = "group:"
#: How a request's resolved ``members`` name a person barred from deciding (all their identities).
PERSON_PREFIX = "person:"
#: How the principal of a decision made by a promotion decision policy is named:
#: ``policy:champion-margin-v1`` (:mod:`airflow_provider_hlml.policy.decision`). No key, person or
#: delegate may answer under such a name: only the approvals service records it, from the request's
#: own :class:`AutoDecision`.
POLICY_PRINCIPAL_PREFIX = "policy:"
#: The rule a decision policy's approval is recorded under (in the answers and the attestation).
POLICY_RULE = "decision policy"
#: The separation-of-duties roles a gate can forbid from deciding (``forbid=[...]``).
DUTIES = ("requester", "model_author")
#: Bounds of what a rule may say (the service refuses anything beyond them).
MAX_RULES = 20
MAX_REQUIRED = 50
MAX_NAME = 200


def is_policy_principal(name: Any) -> bool:
    """Whether ``name`` names a decision policy (``policy:<name>-v<version>``) rather than a person."""
    return isinstance(name, str) and name.strip().casefold().startswith(POLICY_PRINCIPAL_PREFIX)


def is_group(entry: Any) -> bool:
    """Whether an approver entry names a group (``group:<name>``)."""
    return isinstance(entry, str) and entry.strip().casefold().startswith(GROUP_PREFIX)


@dataclass(frozen=True)
class ApprovalRule:
    """One approval rule: ``required`` distinct people among ``approvers`` must approve.

    :param name: what the rule is called where reviewers see it (``"ML lead"``).
    :param approvers: names, e-mail addresses and ``group:<name>`` entries; empty: any reviewer.
    :param required: how many distinct people must approve toward this rule.
    :param veto: whether a rejection by someone who may approve toward this rule rejects the
        request (the default); with ``False`` their rejection is recorded and the request waits on.
    :param source: ``"gate"`` (the DAG's own rule) or ``"policy"`` (from ``[hlml] approval_policy_file``).
    """

    name: str
    approvers: tuple[str, ...] = ()
    required: int = 1
    veto: bool = True
    source: str = "gate"

    @classmethod
    def parse(cls, raw: Any, where: str = "rule") -> ApprovalRule:
        """A rule from its JSON (a DAG's ``approval_rules`` item or a request's state); ValueError if it is not one."""
        if isinstance(raw, ApprovalRule):
            return raw
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where}: a rule is a mapping with name, approvers and required")
        unknown = set(raw) - {"name", "approvers", "required", "veto", "source"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(map(str, unknown))}")
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
            raise ValueError(f"{where}.name: a non-empty string of at most {MAX_NAME} characters")
        approvers = raw.get("approvers", [])
        if isinstance(approvers, str):
            approvers = [approvers]
        if not isinstance(approvers, list | tuple) or not all(
            isinstance(a, str) and a.strip() and len(a) <= 320 for a in approvers
        ):
            raise ValueError(f"{where}.approvers: a list of names, e-mail addresses or group:<name> entries")
        required = raw.get("required", 1)
        if not isinstance(required, int) or isinstance(required, bool) or not 1 <= required <= MAX_REQUIRED:
            raise ValueError(f"{where}.required: an integer from 1 to {MAX_REQUIRED}")
        literal = {a.strip().casefold() for a in approvers if not is_group(a)}
        if approvers and len(literal) == len(approvers) and required > len(literal):
            raise ValueError(
                f"{where}: {name!r} requires {required} approvals but names only {len(literal)} approvers"
            )
        veto = raw.get("veto", True)
        if not isinstance(veto, bool):
            raise ValueError(f"{where}.veto: true or false")
        source = raw.get("source", "gate")
        if source not in ("gate", "policy"):
            raise ValueError(f"{where}.source: 'gate' or 'policy'")
        return cls(
            name=name.strip(),
            approvers=tuple(a.strip() for a in approvers),
            required=required,
            veto=veto,
            source=source,
        )

    @classmethod
    def parse_all(cls, raw: Any, where: str = "approval_rules") -> tuple[ApprovalRule, ...]:
        """A list of rules; ValueError naming the first problem."""
        if raw is None:
            return ()
        if not isinstance(raw, list | tuple):
            raise ValueError(f"{where}: a list of rules")
        if len(raw) > MAX_RULES:
            raise ValueError(f"{where}: at most {MAX_RULES} rules")
        return tuple(cls.parse(r, f"{where}[{i}]") for i, r in enumerate(raw))

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(a for a in self.approvers if is_group(a))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "approvers": list(self.approvers),
            "required": self.required,
            "veto": self.veto,
            "source": self.source,
        }


# What an unreadable rule in a stored state becomes: a rule nobody can meet, never "no rule".
UNREADABLE_RULE = ApprovalRule(name="(unreadable rule)", approvers=("group:\x00unreadable",), required=1)


@dataclass(frozen=True)
class Forbidden:
    """A person barred from deciding a request (separation of duties).

    :param who: their name, e-mail address or principal.
    :param duty: what they are to the approved thing: ``requester`` or ``model_author``.
    :param why: the reason in words (``"trained this model"``).
    """

    who: str
    duty: str = "model_author"
    why: str = ""

    def __post_init__(self) -> None:
        if not self.why:
            object.__setattr__(
                self,
                "why",
                "requested this approval" if self.duty == "requester" else "authored what is approved",
            )

    @classmethod
    def from_json(cls, raw: Any) -> Forbidden | None:
        if not isinstance(raw, Mapping) or not isinstance(raw.get("who"), str) or not raw["who"].strip():
            return None
        duty = raw.get("duty") if raw.get("duty") in DUTIES else "model_author"
        why = raw.get("why") if isinstance(raw.get("why"), str) else ""
        return cls(who=raw["who"], duty=str(duty), why=str(why)[:MAX_NAME])

    def to_json(self) -> dict[str, Any]:
        return {"who": self.who, "duty": self.duty, "why": self.why}


def _text(value: Any) -> str | None:
    """``value`` when it is a non-empty string, else None."""
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    """``value`` when it is an integer (not a boolean), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _names(value: Any) -> tuple[str, ...]:
    """An approver list as names: one string, or the non-empty items of a list.

    Anything else that is not empty stays a (non-matching) restriction rather than becoming
    "any reviewer".
    """
    if not value:
        return ()
    items = (value,) if isinstance(value, str) else value if isinstance(value, list | tuple) else (value,)
    return tuple(str(a) for a in items if a)


@dataclass(frozen=True)
class GateLocation:
    """The Airflow task instance (and deployment) that made a request.

    :param dag_id: DAG id.
    :param run_id: DAG run id.
    :param task_id: task id.
    :param map_index: map index (-1 when not mapped).
    :param try_number: the task-instance try that made the request.
    :param ti_url: the task instance's log URL as the gate knew it.
    :param deployment_id: the ``[hlml] deployment_id`` of the Airflow deployment.
    """

    dag_id: str | None = None
    run_id: str | None = None
    task_id: str | None = None
    map_index: int = -1
    try_number: int | None = None
    ti_url: str | None = None
    deployment_id: str | None = None

    @classmethod
    def from_json(cls, raw: Any) -> GateLocation | None:
        if not isinstance(raw, Mapping):
            return None
        map_index = _int(raw.get("map_index", -1))
        return cls(
            dag_id=_text(raw.get("dag_id")),
            run_id=_text(raw.get("run_id")),
            task_id=_text(raw.get("task_id")),
            map_index=-1 if map_index is None else map_index,
            try_number=_int(raw.get("try_number")),
            ti_url=_text(raw.get("ti_url")),
            deployment_id=_text(raw.get("deployment_id")),
        )

    @property
    def complete(self) -> bool:
        """Whether the DAG, run and task ids are all known."""
        return bool(self.dag_id and self.run_id and self.task_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "dag_id": self.dag_id,
            "run_id": self.run_id,
            "task_id": self.task_id,
            "map_index": self.map_index,
            "try_number": self.try_number,
            "ti_url": self.ti_url,
            "deployment_id": self.deployment_id,
        }


#: The longest delay a reminder ladder may name (30 days), and the most people it may escalate to.
MAX_LADDER_SECONDS = 30 * 86_400
MAX_ESCALATE_TO = 50


def _seconds(value: Any, name: str) -> float:
    if value is None:
        return 0.0
    seconds = value.total_seconds() if hasattr(value, "total_seconds") else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ValueError(f"reminders.{name}: seconds (a number or a timedelta), not {type(value).__name__}")
    if not 0 <= seconds <= MAX_LADDER_SECONDS:
        raise ValueError(f"reminders.{name}: between 0 and {MAX_LADDER_SECONDS} seconds, not {seconds}")
    return float(seconds)


@dataclass(frozen=True)
class Reminders:
    """A request's ladder over time: remind, escalate, repeat (every delay from the request's creation).

    :param remind_after: seconds until the first reminder to those who have not answered (0 = none).
    :param escalate_after: seconds until the request is escalated to ``escalate_to`` (0 = never).
    :param escalate_to: people (names, e-mail addresses) and ``group:<name>`` entries who become
        approvers too when the request escalates, and are told.
    :param repeat_every: after the last step, remind everyone who may still answer this often (0 = no).
    """

    remind_after: float = 0.0
    escalate_after: float = 0.0
    escalate_to: tuple[str, ...] = ()
    repeat_every: float = 0.0

    @classmethod
    def parse(cls, raw: Any) -> Reminders | None:
        """A ladder from a gate's ``reminders=`` or from ``spec.state.hlml.reminders``; None for
        None; a ``ValueError`` naming the field when it cannot be one."""
        if raw is None:
            return None
        if isinstance(raw, Reminders):
            return raw
        if not isinstance(raw, Mapping):
            raise ValueError(f"reminders: a mapping, not {type(raw).__name__}")
        unknown = set(raw) - {"remind_after", "escalate_after", "escalate_to", "repeat_every"}
        if unknown:
            raise ValueError(f"reminders: unknown keys {sorted(unknown)}")
        escalate_to = raw.get("escalate_to") or ()
        if isinstance(escalate_to, str):
            escalate_to = [escalate_to]
        if not isinstance(escalate_to, (list, tuple)) or not all(
            isinstance(e, str) and e.strip() and len(e) <= MAX_NAME for e in escalate_to
        ):
            raise ValueError("reminders.escalate_to: a list of names, e-mail addresses or group:<name>")
        if len(escalate_to) > MAX_ESCALATE_TO:
            raise ValueError(f"reminders.escalate_to: at most {MAX_ESCALATE_TO} entries")
        ladder = cls(
            remind_after=_seconds(raw.get("remind_after"), "remind_after"),
            escalate_after=_seconds(raw.get("escalate_after"), "escalate_after"),
            escalate_to=tuple(e.strip() for e in escalate_to),
            repeat_every=_seconds(raw.get("repeat_every"), "repeat_every"),
        )
        if ladder.escalate_after and not ladder.escalate_to:
            raise ValueError("reminders.escalate_after: needs escalate_to (whom to escalate to)")
        return ladder

    @property
    def empty(self) -> bool:
        return not (self.remind_after or self.escalate_after or self.repeat_every)

    def to_json(self) -> dict[str, Any]:
        return {
            "remind_after": self.remind_after,
            "escalate_after": self.escalate_after,
            "escalate_to": list(self.escalate_to),
            "repeat_every": self.repeat_every,
        }


#: The decisions a policy can make for a gate.
AUTO_OUTCOMES = ("approve", "reject")
#: The longest override window a request may carry (seconds).
MAX_OVERRIDE_SECONDS = 30 * 86_400.0


@dataclass(frozen=True)
class AutoDecision:
    """A decision the gate's decision policy made, which the approvals service records for it.

    :param outcome: ``approve`` or ``reject``.
    :param principal: who the decision is recorded as: ``policy:<name>-v<version>``.
    :param reason: why, in words (shown to reviewers, written to the audit trail).
    :param override_seconds: how long after the request opens a person may still decide instead
        (0: the service records the policy's decision when the request is created).

    The evidence itself (metrics, intervals, the policy's version) is in the request's context,
    which the review digest and the attestation cover.
    """

    outcome: str
    principal: str
    reason: str = ""
    override_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.outcome not in AUTO_OUTCOMES:
            raise ValueError(f"auto.outcome must be one of {', '.join(AUTO_OUTCOMES)}; got {self.outcome!r}")
        if (
            not is_policy_principal(self.principal)
            or len(self.principal) > MAX_NAME
            or any(c.isspace() or not c.isprintable() for c in self.principal)
        ):
            raise ValueError(
                f"auto.principal must be 'policy:<name>-v<version>'; got {self.principal[:80]!r}"
            )
        seconds = self.override_seconds
        if isinstance(seconds, bool) or not 0 <= seconds <= MAX_OVERRIDE_SECONDS:
            raise ValueError(f"auto.override_seconds must be from 0 to {MAX_OVERRIDE_SECONDS:.0f}")

    @property
    def approves(self) -> bool:
        return self.outcome == "approve"

    @classmethod
    def from_json(cls, raw: Any) -> AutoDecision | None:
        """Read ``state.hlml.auto``; anything malformed reads as no auto-decision (a person decides)."""
        if not isinstance(raw, Mapping):
            return None
        try:
            seconds = raw.get("override_seconds", 0)
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
                return None
            return cls(
                outcome=str(raw.get("outcome")),
                principal=str(raw.get("principal")),
                reason=str(raw.get("reason") or "")[:2000],
                override_seconds=float(seconds),
            )
        except ValueError:
            return None

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "principal": self.principal,
            "reason": self.reason,
            "override_seconds": self.override_seconds,
        }


@dataclass(frozen=True)
class GateState:
    """The approval policy and the origin a gate writes into ``spec.state["hlml"]``.

    :param approvers: e-mail addresses or names allowed to respond; empty means any reviewer.
    :param requester: the user who triggered the DAG run, if known.
    :param allow_self_approval: whether the requester may answer their own request.
    :param airflow: the task instance that made the request (None when the creator was no gate).
    :param rules: the approval rules that must all be met (empty: ``approvers`` is the one rule).
    :param forbid: the duties barred from deciding (``requester``, ``model_author``).
    :param forbidden: the people barred, with their duty (separation of duties).
    :param digest: SHA-256 of what the reviewer was shown (:mod:`~airflow_provider_hlml.gate.digest`).
    :param reminders: the gate's ladder over time (None: the service's default).
    :param timeout: seconds from the request's creation until the gate stops waiting (escalation
        included), if it has a timeout: one-click links expire then, and no reminder is sent later.
    :param auto: the decision the gate's decision policy made, if it made one (see
        :class:`AutoDecision`); the service records it unless a person answers first.
    :param auto_declined: why the gate asks a person although its decision policy decided (the
        approval policy file forbids it, the server cannot record it); reviewers see it.
    """

    approvers: tuple[str, ...] = ()
    requester: str | None = None
    allow_self_approval: bool = False
    airflow: GateLocation | None = field(default=None)
    rules: tuple[ApprovalRule, ...] = ()
    forbid: tuple[str, ...] = ()
    forbidden: tuple[Forbidden, ...] = ()
    digest: str | None = None
    reminders: Reminders | None = None
    timeout: float | None = None
    auto: AutoDecision | None = None
    auto_declined: str | None = None

    @classmethod
    def from_state(cls, state: Any) -> GateState:
        """Read a request's ``spec.state``; a missing or malformed part reads as missing."""
        raw = state.get(STATE_KEY) if isinstance(state, Mapping) else None
        if not isinstance(raw, Mapping):
            return cls()
        requester = raw.get("requester")
        rules: list[ApprovalRule] = []
        raw_rules = raw.get("rules")
        for item in raw_rules if isinstance(raw_rules, list) else [] if raw_rules is None else [raw_rules]:
            try:
                rules.append(ApprovalRule.parse(item))
            except ValueError:
                rules.append(UNREADABLE_RULE)
        raw_forbidden = raw.get("forbidden")
        forbidden = (
            [Forbidden.from_json(f) for f in raw_forbidden if f] if isinstance(raw_forbidden, list) else []
        )
        raw_forbid = raw.get("forbid")
        return cls(
            approvers=_names(raw.get("approvers")),
            requester=str(requester) if requester else None,
            allow_self_approval=bool(raw.get("allow_self_approval", False)),
            airflow=GateLocation.from_json(raw.get("airflow")),
            rules=tuple(rules),
            forbid=tuple(d for d in raw_forbid if d in DUTIES) if isinstance(raw_forbid, list) else (),
            forbidden=tuple(f for f in forbidden if f is not None),
            digest=_text(raw.get("digest")),
            reminders=_reminders(raw.get("reminders")),
            timeout=_positive(raw.get("timeout")),
            auto=AutoDecision.from_json(raw.get("auto")),
            auto_declined=_text(raw.get("auto_declined")),
        )

    def to_state(self) -> dict[str, Any]:
        """The ``spec.state`` a gate sends: ``{"hlml": {...}}`` (the wire format)."""
        hlml: dict[str, Any] = {
            "approvers": list(self.approvers),
            "requester": self.requester,
            "allow_self_approval": self.allow_self_approval,
        }
        if self.rules:
            hlml["rules"] = [r.to_json() for r in self.rules]
        if self.forbid:
            hlml["forbid"] = list(self.forbid)
        if self.forbidden:
            hlml["forbidden"] = [f.to_json() for f in self.forbidden]
        if self.digest:
            hlml["digest"] = self.digest
        if self.airflow is not None:
            hlml["airflow"] = self.airflow.to_json()
        if self.reminders is not None:
            hlml["reminders"] = self.reminders.to_json()
        if self.timeout:
            hlml["timeout"] = self.timeout
        if self.auto is not None:
            hlml["auto"] = self.auto.to_json()
        if self.auto_declined:
            hlml["auto_declined"] = self.auto_declined
        return {STATE_KEY: hlml}


def _positive(raw: Any) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 < raw < 10**9:
        return None
    return float(raw)


def _reminders(raw: Any) -> Reminders | None:
    try:
        return Reminders.parse(raw)
    except ValueError:
        return None
