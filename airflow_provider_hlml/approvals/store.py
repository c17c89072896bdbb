"""Data access and the rules of the service, as keyword-only functions over a Session.

Every function that changes data commits its own transaction. Errors a client can cause are
raised as :class:`ServiceError` with the HTTP status to answer.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import secrets
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from sqlalchemy import Row, bindparam, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from airflow_provider_hlml.approvals.attest.sign import sign_decision
from airflow_provider_hlml.approvals.audit import chain
from airflow_provider_hlml.approvals.models import (
    ROLES,
    ApiKey,
    ApprovalRequest,
    AuditEvent,
    Group,
    GroupMember,
    Principal,
    utcnow,
)
from airflow_provider_hlml.gate.policy import (
    GROUP_PREFIX,
    Answer,
    ApprovalPolicy,
    Responder,
    is_group,
    is_policy_principal,
)
from airflow_provider_hlml.gate.state import PERSON_PREFIX, POLICY_RULE, ApprovalRule, GateState, Reminders
from airflow_provider_hlml.gate.wire import CALL_ID_TAKEN, UserInfo, spec_differences

KEY_PREFIX = "hl_"
CLI_PRINCIPAL = "cli-admin"
FUNCTION_CALL = "function_call"
HUMAN_CONTACT = "human_contact"


class ServiceError(Exception):
    """A refusal the client caused: answered with ``status`` and ``{"error": {message, code}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Actor:
    """The authenticated caller: a principal and the key it used (None for the CLI)."""

    principal_id: int
    name: str
    email: str | None
    role: str
    key_id: int | None = None


# ---- keys and principals --------------------------------------------------------------------


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create_key(session: Session, *, name: str, role: str, email: str | None = None) -> tuple[Principal, str]:
    """Create a key for principal ``name`` (created if new); return it in clear text once."""
    if role not in ROLES:
        raise ServiceError(422, "invalid_role", f"role must be one of {', '.join(ROLES)}, not {role!r}")
    check_clean({"name": name, "email": email}, "principal")
    if not name.strip():
        raise ServiceError(422, "invalid_name", "name must not be empty")
    if is_policy_principal(name):
        raise ServiceError(
            422,
            "invalid_name",
            "names starting with 'policy:' are reserved for decision policies, which hold no key",
        )
    principal = session.scalar(select(Principal).where(Principal.name == name))
    if principal is None:
        principal = Principal(name=name, email=email, role=role)
        session.add(principal)
        session.flush()
    elif principal.role != role:
        raise ServiceError(
            409, "role_conflict", f"principal {name!r} exists with role {principal.role!r}, not {role!r}"
        )
    elif email and principal.email != email:
        principal.email = email
    key = new_key()
    session.add(ApiKey(principal_id=principal.id, key_hash=hash_key(key), display_prefix=key[:10]))
    session.commit()
    return principal, key


def list_keys(session: Session) -> list[dict[str, Any]]:
    rows = session.execute(
        select(ApiKey, Principal).join(Principal, ApiKey.principal_id == Principal.id).order_by(ApiKey.id)
    ).all()
    return [
        {
            "id": key.id,
            "prefix": key.display_prefix,
            "principal": principal.name,
            "email": principal.email,
            "role": principal.role,
            "created_at": key.created_at.isoformat(),
            "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        }
        for key, principal in rows
    ]


def revoke_key(session: Session, *, key_id: int) -> None:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise ServiceError(404, "not_found", f"no API key with id {key_id}")
    key.revoked_at = key.revoked_at or utcnow()
    session.commit()


def authenticate(session: Session, *, key: str) -> Actor | None:
    row = session.execute(
        select(ApiKey.id, Principal.id, Principal.name, Principal.email, Principal.role)
        .join(Principal, ApiKey.principal_id == Principal.id)
        .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    key_id, principal_id, name, email, role = row
    return Actor(principal_id=principal_id, name=name, email=email, role=role, key_id=key_id)


def principal_actor(session: Session, *, name: str | None) -> Actor:
    """The actor the CLI answers as: principal ``name`` (must exist), or the implicit cli-admin."""
    if name is None:
        principal = session.scalar(select(Principal).where(Principal.name == CLI_PRINCIPAL))
        if principal is None:
            principal = Principal(name=CLI_PRINCIPAL, email=None, role="admin")
            session.add(principal)
            session.commit()
    else:
        principal = session.scalar(select(Principal).where(Principal.name == name))
        if principal is None:
            raise ServiceError(
                404, "not_found", f"no principal named {name!r} (create one with 'keys create')"
            )
    return Actor(principal_id=principal.id, name=principal.name, email=principal.email, role=principal.role)


# ---- groups ----------------------------------------------------------------------------------


def _group_name(name: str) -> str:
    """A group's name without the ``group:`` prefix, checked."""
    check_clean(name, "group")
    bare = name.strip()
    if bare.casefold().startswith(GROUP_PREFIX):
        bare = bare[len(GROUP_PREFIX) :].strip()
    if not bare or len(bare) > 200 or any(c.isspace() or not c.isprintable() for c in bare):
        raise ServiceError(422, "invalid_name", "a group name is 1-200 printable characters without spaces")
    return bare


def _find_group(session: Session, bare: str) -> Group | None:
    """The group called ``bare`` ignoring case, as ``group:<name>`` entries are compared.

    Compared in Python: SQL ``lower()`` folds only ASCII on SQLite and never folds like casefold().
    """
    key = bare.casefold()
    return next(
        (g for g in session.scalars(select(Group).order_by(Group.id)) if g.name.casefold() == key), None
    )


def _get_group(session: Session, name: str) -> Group:
    group = _find_group(session, _group_name(name))
    if group is None:
        raise ServiceError(404, "unknown_group", f"no group named {_group_name(name)!r}")
    return group


def create_group(session: Session, *, name: str) -> Group:
    bare = _group_name(name)
    existing = _find_group(session, bare)
    if existing is not None:
        raise ServiceError(409, "conflict", f"group {existing.name!r} already exists")
    group = Group(name=bare)
    session.add(group)
    session.commit()
    return group


def add_to_group(session: Session, *, name: str, principals: Sequence[str]) -> list[str]:
    """Add principals (by name; each must exist) to a group; return those newly added."""
    group = _get_group(session, name)
    added: list[str] = []
    for principal_name in principals:
        principal = session.scalar(select(Principal).where(Principal.name == principal_name))
        if principal is None:
            raise ServiceError(404, "not_found", f"no principal named {principal_name!r}")
        exists = session.scalar(
            select(GroupMember).where(
                GroupMember.group_id == group.id, GroupMember.principal_id == principal.id
            )
        )
        if exists is None:
            session.add(GroupMember(group_id=group.id, principal_id=principal.id))
            added.append(principal.name)
    session.commit()
    return added


def remove_from_group(session: Session, *, name: str, principals: Sequence[str]) -> list[str]:
    """Remove principals from a group (pending requests keep the members they opened with)."""
    group = _get_group(session, name)
    removed: list[str] = []
    for principal_name in principals:
        member = session.scalar(
            select(GroupMember)
            .join(Principal, GroupMember.principal_id == Principal.id)
            .where(GroupMember.group_id == group.id, Principal.name == principal_name)
        )
        if member is not None:
            session.delete(member)
            removed.append(principal_name)
    session.commit()
    return removed


def list_groups(session: Session) -> list[dict[str, Any]]:
    rows = session.execute(
        select(Group.name, Principal.name, Principal.email)
        .select_from(Group)
        .outerjoin(GroupMember, GroupMember.group_id == Group.id)
        .outerjoin(Principal, GroupMember.principal_id == Principal.id)
        .order_by(Group.name, Principal.name)
    ).all()
    groups: dict[str, list[dict[str, Any]]] = {}
    for group, member, email in rows:
        groups.setdefault(group, [])
        if member is not None:
            groups[group].append({"name": member, "email": email})
    return [{"name": g, "members": m} for g, m in groups.items()]


def resolve_groups(session: Session, entries: Sequence[str]) -> dict[str, list[str]]:
    """``group:<name>`` entries -> the names and e-mail addresses of their members now (422 if unknown)."""
    resolved: dict[str, list[str]] = {}
    for entry in entries:
        key = entry.strip().casefold()
        if key in resolved:
            continue
        bare = _group_name(entry)
        group = _find_group(session, bare)
        if group is None:
            raise ServiceError(
                422,
                "unknown_group",
                f"{entry}: no such group on this approvals service (create it with "
                f"'hlml-approvals groups create {bare}')",
            )
        identities: list[str] = []
        for name, email in session.execute(
            select(Principal.name, Principal.email)
            .join(GroupMember, GroupMember.principal_id == Principal.id)
            .where(GroupMember.group_id == group.id)
            .order_by(Principal.name)
        ):
            identities += [name] + ([email] if email else [])
        resolved[key] = identities
    return resolved


# ---- requests -------------------------------------------------------------------------------


def check_clean(value: Any, path: str = "body") -> None:
    """The service's one text rule, applied to everything before it is written.

    Refuses what no database column or JSON reader can hold back: strings that are not valid
    Unicode text (lone UTF-16 surrogates such as ``"\\ud800"``), NUL characters, and non-finite
    numbers, in values and in keys, at any depth (checked without recursion).
    """
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            _check_text(item, where)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ServiceError(422, "validation_error", f"{where}: numbers must be finite")
        elif isinstance(item, dict):
            for k, v in item.items():
                _check_text(str(k), f"{where} (a key)")
                stack.append((v, f"{where}.{_printable(str(k))}"))
        elif isinstance(item, list | tuple):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))


def _check_text(text: str, where: str) -> None:
    if "\x00" in text:
        raise ServiceError(422, "validation_error", f"{where}: must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ServiceError(
            422, "validation_error", f"{where}: not valid Unicode text (a lone UTF-16 surrogate)"
        ) from None


def _printable(text: str) -> str:
    """``text`` safe to put in an error message (which must itself be valid UTF-8)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")[:80]


def _spec_hash(run_id: str, spec: dict[str, Any]) -> str:
    blob = json.dumps({"run_id": run_id, "spec": spec}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def create_request(
    session: Session, *, kind: str, run_id: str, call_id: str, spec: dict[str, Any], actor: Actor
) -> tuple[ApprovalRequest, bool]:
    """Create a request, or return the existing one when this is the same request again.

    Creating is idempotent only for the principal that created the request and for the same
    ``run_id`` and spec: anything else is a 409 that names what differs, so nobody can create a
    request under an id that somebody else's gate will use (squatting) and have that gate adopt it.
    """
    check_clean(spec, "spec")
    check_clean(run_id, "run_id")
    check_clean(call_id, "call_id")
    digest = _spec_hash(run_id, spec)
    existing = _find(session, kind=kind, call_id=call_id)
    if existing is not None:
        return _same_or_conflict(existing, run_id, spec, digest, actor), False
    members = _members_of(session, spec) if kind == FUNCTION_CALL else None
    now = utcnow()
    row = ApprovalRequest(
        kind=kind,
        call_id=call_id,
        run_id=run_id,
        fn=str(spec.get("fn"))[:256] if kind == FUNCTION_CALL else None,
        spec=spec,
        spec_hash=digest,
        state="pending",
        requested_at=now,
        updated_at=now,
        created_by_key_id=actor.key_id,
        created_by=actor.name,
        members=members,
        answers=[],
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        # Another request created the same call_id between our read and our write.
        session.rollback()
        existing = _find(session, kind=kind, call_id=call_id)
        if existing is None:
            raise
        return _same_or_conflict(existing, run_id, spec, digest, actor), False
    created: dict[str, Any] = {"run_id": run_id}
    if members is not None:
        policy = policy_of(row)
        created["rules"] = [r.to_json() for r in policy.effective_rules]
        created["members"] = members
    _audit(session, row, "created", actor=actor, metadata=created)
    session.commit()
    # A decision policy with no override window decides at once (committed on its own: the
    # request exists either way, as created).
    apply_auto_decision(session, row)
    return row, True


def _members_of(session: Session, spec: dict[str, Any]) -> dict[str, list[str]] | None:
    """Check the approval rules a gate wrote and resolve its groups (422 when they cannot hold)."""
    raw = (spec.get("state") or {}).get("hlml") if isinstance(spec.get("state"), dict) else None
    if not isinstance(raw, dict):
        return None
    try:
        ApprovalRule.parse_all(raw.get("rules"), "spec.state.hlml.rules")
    except ValueError as exc:
        raise ServiceError(422, "validation_error", str(exc)) from None
    try:
        Reminders.parse(raw.get("reminders"))
    except ValueError as exc:
        raise ServiceError(422, "validation_error", f"spec.state.hlml.{exc}") from None
    policy = ApprovalPolicy.of_gate(GateState.from_state(spec["state"]))
    # Rules without groups are checked too: ["alice", "Alice"] or ["alice", "alice@example.com"]
    # with required 2 name one person, and such a request could never be approved.
    members = resolve_groups(session, policy.groups) if policy.groups else {}
    for rule in policy.effective_rules:
        if not rule.approvers or (rule.required == 1 and not rule.groups):
            continue  # any reviewer, or one of some named people: always possible
        people = _people_count(session, rule, members)
        if people < rule.required:
            raise ServiceError(
                422,
                "validation_error",
                f"rule {rule.name!r} requires {rule.required} approvals but its approvers are "
                f"{people} people now",
            )
    # Whoever separation of duties bars is barred under every identity of theirs: the principal
    # with that name or e-mail address adds the other one (a delegate may name either).
    barred = [f.who for f in policy.forbidden]
    if policy.requester and not policy.allow_self_approval:
        barred.append(policy.requester)
    for who in barred:
        key = PERSON_PREFIX + who.strip().casefold()
        identities = [
            identity
            for name, email in session.execute(
                select(Principal.name, Principal.email).where(
                    (func.lower(Principal.name) == who.strip().lower())
                    | (func.lower(Principal.email) == who.strip().lower())
                )
            )
            for identity in (name, email)
            if identity
        ]
        if identities:
            members[key] = identities
    return members or None


def _people_count(session: Session, rule: ApprovalRule, members: dict[str, list[str]]) -> int:
    """How many distinct people a rule's approvers are (group members counted by principal).

    A name or e-mail address of a principal counts as that principal, so a group and its member's
    name (or a member's name and e-mail address) are one person, as the policy counts them.
    """
    principal_of = {
        identity.strip().casefold(): pid
        for pid, name, email in session.execute(select(Principal.id, Principal.name, Principal.email))
        for identity in (name, email)
        if identity and identity.strip()
    }
    people: set[str] = set()
    for entry in rule.approvers:
        if is_group(entry):
            group = _find_group(session, _group_name(entry))
            if group is not None:
                people.update(
                    f"principal:{pid}"
                    for pid in session.scalars(
                        select(GroupMember.principal_id).where(GroupMember.group_id == group.id)
                    )
                )
        else:
            literal = entry.strip().casefold()
            people.add(f"principal:{principal_of[literal]}" if literal in principal_of else literal)
    return len(people)


def policy_of(row: Any) -> ApprovalPolicy:
    """The approval policy of a stored request: its gate's rules, escalations and resolved groups."""
    return ApprovalPolicy.from_state(row.spec.get("state"), row.extra_approvers, row.members)


def answers_of(row: Any) -> list[Answer]:
    """The answers a stored request collected, in order."""
    return [a for a in (Answer.from_json(r) for r in row.answers or []) if a is not None]


def _same_or_conflict(
    existing: ApprovalRequest, run_id: str, spec: dict[str, Any], digest: str, actor: Actor
) -> ApprovalRequest:
    """``existing`` when ``actor`` created it with this run_id and spec; a 409 naming the difference otherwise."""
    if existing.created_by != actor.name:
        raise ServiceError(
            409,
            CALL_ID_TAKEN,
            f"call_id {existing.call_id!r} already exists and was created by another principal; "
            "a request is only ever returned to the principal that created it",
        )
    if existing.spec_hash != digest:
        differ = spec_differences(
            {"run_id": existing.run_id, "spec": existing.spec}, {"run_id": run_id, "spec": spec}
        )
        raise ServiceError(
            409,
            CALL_ID_TAKEN,
            f"call_id {existing.call_id!r} already exists with a different {', '.join(differ) or 'content'}",
        )
    return existing


def _find(session: Session, *, kind: str, call_id: str) -> ApprovalRequest | None:
    if "\x00" in call_id:
        return None
    return session.scalar(
        select(ApprovalRequest).where(ApprovalRequest.kind == kind, ApprovalRequest.call_id == call_id)
    )


_READ_ONE = select(ApprovalRequest.__table__).where(
    ApprovalRequest.kind == bindparam("kind"), ApprovalRequest.call_id == bindparam("call_id")
)


def read_request_row(engine: Engine, *, kind: str, call_id: str) -> Row[Any]:
    """The hot read path of pollers: one Core SELECT on a pooled connection, no ORM session.

    The returned row has the same attribute names as :class:`ApprovalRequest`.
    """
    row = None
    if "\x00" not in call_id:
        with engine.connect() as conn:
            row = conn.execute(_READ_ONE, {"kind": kind, "call_id": call_id}).first()
    if row is None:
        raise _not_found(kind, call_id)
    return row


def _not_found(kind: str, call_id: str) -> ServiceError:
    noun = "function call" if kind == FUNCTION_CALL else "human contact"
    return ServiceError(404, "not_found", f"no {noun} with call_id {call_id!r}")


def get_request(session: Session, *, kind: str, call_id: str) -> ApprovalRequest:
    row = _find(session, kind=kind, call_id=call_id)
    if row is None:
        raise _not_found(kind, call_id)
    return row


def list_requests(
    session: Session,
    *,
    kind: str,
    state: str | None = None,
    run_id: str | None = None,
    fn: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 100,
    offset: int = 0,
    oldest_first: bool = False,
) -> tuple[list[ApprovalRequest], int]:
    """Requests matching the filters (time range on ``requested_at``) and the total count."""
    conditions = [ApprovalRequest.kind == kind]
    if state == "cancelled":
        conditions.append(ApprovalRequest.state == "cancelled")
    elif state is not None:
        conditions.append(ApprovalRequest.state == state)
    if run_id is not None:
        conditions.append(ApprovalRequest.run_id == run_id)
    if fn is not None:
        conditions.append(ApprovalRequest.fn == fn)
    if since is not None:
        conditions.append(ApprovalRequest.requested_at >= _as_utc(since, "query.since"))
    if until is not None:
        conditions.append(ApprovalRequest.requested_at < _as_utc(until, "query.until"))
    total = session.scalar(select(func.count()).select_from(ApprovalRequest).where(*conditions)) or 0
    order = ApprovalRequest.requested_at.asc() if oldest_first else ApprovalRequest.requested_at.desc()
    rows = session.scalars(
        select(ApprovalRequest)
        .where(*conditions)
        .order_by(order, ApprovalRequest.id)
        .limit(limit)
        .offset(offset)
    ).all()
    return list(rows), int(total)


def _as_utc(value: dt.datetime, name: str) -> dt.datetime:
    try:
        return value.astimezone(dt.timezone.utc) if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    except OverflowError:
        raise ServiceError(422, "validation_error", f"{name}: date out of range") from None


def _responder(actor: Actor, on_behalf_of: dict[str, Any] | None) -> dict[str, Any]:
    """The ``user_info`` of a decision: the person and the principal whose key made it."""
    if actor.role == "delegate":
        if not on_behalf_of or not on_behalf_of.get("name"):
            raise ServiceError(
                422,
                "validation_error",
                "body.user_info: a delegate key must name the person it answers for "
                '(user_info = {"name": ..., "email": ...})',
            )
        return {
            "name": on_behalf_of["name"],
            "email": on_behalf_of.get("email"),
            "principal": actor.name,
            "via_delegate": True,
        }
    if actor.role not in ("reviewer", "admin"):
        raise ServiceError(403, "forbidden", f"role {actor.role!r} may not respond to requests")
    return {"name": actor.name, "email": actor.email, "principal": actor.name, "via_delegate": False}


# At most this many refusals are written to one request's audit trail: enough to see who tried,
# too few for a stream of refused answers to flood the table.
MAX_AUDITED_REFUSALS = 20


def _may_respond(
    session: Session,
    row: ApprovalRequest,
    actor: Actor,
    on_behalf_of: dict[str, Any] | None,
    policy: ApprovalPolicy,
    approving: bool | None = None,
) -> dict[str, Any]:
    """The ``user_info`` of a permitted answer; a 403, audited, when ``actor`` may not answer ``row``.

    Refused: roles that may not answer; the principal that created the request (whichever of its
    keys it uses); and whoever the request's approval policy refuses (not an approver, barred by
    separation of duties, already answered, or an approval that would count toward no rule).
    """
    _check_open(row)
    try:
        user_info = _responder(actor, on_behalf_of)
    except ServiceError as exc:
        if exc.status != 403:
            raise
        _refuse(session, row, actor, exc.message, on_behalf_of=None)
    reason: str | None = None
    if any(is_policy_principal(user_info.get(k)) for k in ("name", "email", "principal")):
        # Only apply_auto_decision records a policy's answer, from the request's own auto-decision.
        reason = (
            "a 'policy:' name cannot answer through the API: a decision policy's decision is "
            "recorded by the service from the request itself"
        )
    elif row.created_by is not None and row.created_by == actor.name:
        reason = f"principal {actor.name!r} created this request and cannot respond to it"
    else:
        who = Responder.of(UserInfo.model_validate(user_info))
        reason = policy.explain(who, answers_of(row), approving)
    if reason is not None:
        _refuse(session, row, actor, reason, user_info["name"] if user_info["via_delegate"] else None)
    return user_info


def _check_owner(session: Session, row: ApprovalRequest, actor: Actor, action: str) -> None:
    """Only the principal that created a request, or an admin, may cancel or escalate it (403, audited)."""
    _check_open(row)
    if actor.role != "admin" and row.created_by != actor.name:
        _refuse(
            session,
            row,
            actor,
            f"only the principal that created this request, or an admin, may {action} it",
            on_behalf_of=None,
        )


def _refuse(
    session: Session, row: ApprovalRequest, actor: Actor, reason: str, on_behalf_of: str | None
) -> NoReturn:
    """Audit a refusal (bounded per request) and answer 403 with ``reason``."""
    refused = session.scalar(
        select(func.count())
        .select_from(AuditEvent)
        .where(AuditEvent.request_id == row.id, AuditEvent.event == "refused")
    )
    if (refused or 0) < MAX_AUDITED_REFUSALS:
        last = (refused or 0) + 1 == MAX_AUDITED_REFUSALS
        _audit(
            session,
            row,
            "refused",
            actor=actor,
            on_behalf_of=on_behalf_of,
            comment=reason,
            metadata={"further_refusals_not_audited": True} if last else None,
        )
        session.commit()
    raise ServiceError(403, "forbidden", reason)


def _check_open(row: ApprovalRequest) -> None:
    if row.state != "pending":
        raise ServiceError(409, "conflict", f"call_id {row.call_id!r} is already {row.state}")


def respond_function_call(
    session: Session,
    *,
    call_id: str,
    approved: bool,
    comment: str | None,
    reject_option_name: str | None,
    actor: Actor,
    on_behalf_of: dict[str, Any] | None = None,
) -> ApprovalRequest:
    """Approve or reject a pending function call.

    The answer joins the request's answers; the request is decided once the answers meet every
    rule of its policy (approved) or a rejection vetoes it (rejected), and stays pending otherwise
    (a partial approval, audited as ``answered``).
    """
    row, user_info, policy = _to_answer(
        session, FUNCTION_CALL, call_id, actor, on_behalf_of, [comment, reject_option_name], approved
    )
    if reject_option_name is not None and approved:
        raise ServiceError(
            422, "validation_error", "body.reject_option_name: only a rejection can name a reject option"
        )
    _check_option(reject_option_name, row.spec.get("reject_options"), "reject_option_name", "call's reject")
    if not approved and not (comment and comment.strip()):
        # The SDK's as_completed() requires a comment on every rejection.
        comment = f"Rejected ({reject_option_name})" if reject_option_name else "Rejected"
    now = utcnow()
    answer = {**user_info, "approved": approved, "comment": comment, "at": now.isoformat()}
    answers = [*(dict(a) for a in row.answers or []), answer]
    parsed = [Answer.from_json(a) for a in answers]
    tally = policy.tally([a for a in parsed if a is not None])
    rule_of = {id(a): rule for a, rule in tally.counted}
    for raw, one in zip(answers, parsed, strict=True):
        raw["rule"] = rule_of.get(id(one))
    row.answers = answers
    metadata: dict[str, Any] = {
        "approved": approved,
        "reject_option_name": reject_option_name,
        "rule": answer["rule"],
        "progress": tally.summary,
    }
    decided = tally.decided
    if decided is None:
        # Not decided yet: record the answer and wait for the others.
        return _record_response(
            session, row, state=None, actor=actor, user_info=user_info, comment=comment, metadata=metadata
        )
    row.approved = decided
    row.comment = comment
    row.reject_option_name = reject_option_name if not decided else None
    if decided:
        metadata["approvers"] = [
            {"name": a.who.label, "email": a.who.email, "rule": r} for a, r in tally.counted if r is not None
        ]
    return _record_response(
        session,
        row,
        state="approved" if decided else "rejected",
        actor=actor,
        user_info=user_info,
        comment=comment,
        metadata=metadata,
    )


#: Who the service records a decision policy's answer as (its name is the policy's principal).
POLICY_ROLE = "policy"


def auto_decision_due(row: ApprovalRequest, now: dt.datetime | None = None) -> dt.datetime | None:
    """When ``row``'s decision policy decides it, if it carries an auto-decision that may still be
    recorded (a pending function call nobody has answered); None otherwise."""
    if row.kind != FUNCTION_CALL or row.state != "pending" or row.answers:
        return None
    auto = GateState.from_state((row.spec or {}).get("state")).auto
    if auto is None:
        return None
    return _as_utc(row.requested_at, "requested_at") + dt.timedelta(seconds=auto.override_seconds)


def apply_auto_decision(session: Session, row: ApprovalRequest, *, now: dt.datetime | None = None) -> bool:
    """Record the request's own auto-decision as the answer of its decision policy, when it is due.

    The answer goes through the request's :class:`~airflow_provider_hlml.gate.policy.ApprovalPolicy`
    like any other (which accepts exactly this principal, this outcome, and no earlier answer), is
    audited with the policy's reason and evidence, signed, and committed. Returns whether it was
    recorded; False when there is none, a person answered first, or the override window is open.
    """
    due = auto_decision_due(row)
    if due is None or (now or utcnow()) < due:
        return False
    policy = policy_of(row)
    auto = policy.auto
    assert auto is not None  # auto_decision_due found it
    user_info: dict[str, Any] = {
        "name": auto.principal,
        "email": None,
        "principal": auto.principal,
        "via_delegate": False,
    }
    who = Responder.of(UserInfo.model_validate(user_info))
    reason = policy.explain(who, [], auto.approves)
    if reason is not None:  # cannot happen for a readable auto-decision; never record one refused
        raise ServiceError(409, "conflict", reason)
    now = utcnow()
    comment = auto.reason or f"Decided by {auto.principal}"
    rule = POLICY_RULE if auto.approves else None
    answer = {**user_info, "approved": auto.approves, "comment": comment, "at": now.isoformat(), "rule": rule}
    row.answers = [answer]
    row.approved = auto.approves
    row.comment = comment
    kwargs = (row.spec or {}).get("kwargs")
    context = kwargs.get("context") if isinstance(kwargs, dict) else None
    evidence = context.get("decision") if isinstance(context, dict) else None
    metadata: dict[str, Any] = {
        "approved": auto.approves,
        "reject_option_name": None,
        "rule": rule,
        "progress": f"decided by {auto.principal}",
        "decided_by_policy": auto.principal,
        "override_seconds": auto.override_seconds,
        "evidence": evidence if isinstance(evidence, dict) else None,
    }
    if auto.approves:
        metadata["approvers"] = [{"name": auto.principal, "email": None, "rule": rule}]
    actor = Actor(principal_id=0, name=auto.principal, email=None, role=POLICY_ROLE)
    _record_response(
        session,
        row,
        state="approved" if auto.approves else "rejected",
        actor=actor,
        user_info=user_info,
        comment=comment,
        metadata=metadata,
    )
    return True


def decide_by_policy(session: Session, *, call_id: str, actor: Actor) -> ApprovalRequest:
    """Record a function call's auto-decision once its override window has passed (the gate asks
    when its wait for a person ends). Only the request's creator or an admin may ask; 409 when
    the request has no auto-decision, a person answered, it is decided, or the window is open."""
    row = get_request(session, kind=FUNCTION_CALL, call_id=call_id)
    if actor.role != "admin" and row.created_by != actor.name:
        raise ServiceError(403, "forbidden", "only the principal that created this request may ask for it")
    if row.state != "pending":
        raise ServiceError(409, "conflict", f"call_id {row.call_id!r} is already {row.state}")
    due = auto_decision_due(row)
    if due is None:
        what = "a person has answered it" if row.answers else "it carries no auto-decision"
        raise ServiceError(409, "conflict", f"no decision policy decides call_id {row.call_id!r}: {what}")
    if utcnow() < due:
        raise ServiceError(409, "conflict", f"the override window is open until {due.isoformat()}")
    apply_auto_decision(session, row)
    return row


def respond_human_contact(
    session: Session,
    *,
    call_id: str,
    response: str,
    response_option_name: str | None,
    actor: Actor,
    on_behalf_of: dict[str, Any] | None = None,
) -> ApprovalRequest:
    """Answer a pending human contact."""
    row, user_info, _ = _to_answer(
        session, HUMAN_CONTACT, call_id, actor, on_behalf_of, [response, response_option_name]
    )
    _check_option(
        response_option_name, row.spec.get("response_options"), "response_option_name", "contact's response"
    )
    row.response = response
    row.response_option_name = response_option_name
    return _record_response(
        session,
        row,
        state="responded",
        actor=actor,
        user_info=user_info,
        comment=response,
        metadata={"response_option_name": response_option_name},
    )


def _to_answer(
    session: Session,
    kind: str,
    call_id: str,
    actor: Actor,
    on_behalf_of: dict[str, Any] | None,
    texts: list[Any],
    approving: bool | None = None,
) -> tuple[ApprovalRequest, dict[str, Any], ApprovalPolicy]:
    """The request ``actor`` answers (with ``texts``), the ``user_info`` of a permitted answer, and
    the request's policy (read once, for the check and for recording the answer)."""
    check_clean([*texts, on_behalf_of], "body")
    row = get_request(session, kind=kind, call_id=call_id)
    policy = policy_of(row)
    return row, _may_respond(session, row, actor, on_behalf_of, policy, approving), policy


def _check_option(name: str | None, options: Any, field: str, what: str) -> None:
    """A 422 unless ``name`` is None or the name of one of ``options``."""
    if name is None:
        return
    names = [o.get("name") for o in options or []]
    if name not in names:
        raise ServiceError(
            422, "validation_error", f"body.{field}: {name!r} is not one of this {what} options {names}"
        )


def _record_response(
    session: Session,
    row: ApprovalRequest,
    *,
    state: str | None,
    actor: Actor,
    user_info: dict[str, Any],
    comment: str | None,
    metadata: dict[str, Any],
) -> ApprovalRequest:
    """Record ``user_info``'s answer, audit it and commit: closing ``row`` as ``state`` (audited
    ``responded``), or with ``state=None`` keeping it pending for further answers (``answered``)."""
    now = utcnow()
    row.updated_at = now
    if state is not None:
        row.state = state
        row.responded_at = now
        row.user_info = user_info
    recorded = _audit(
        session,
        row,
        "responded" if state is not None else "answered",
        actor=actor,
        on_behalf_of=user_info["name"] if user_info["via_delegate"] else None,
        comment=comment,
        metadata={**metadata, "email": user_info["email"]},
    )
    if state is not None and row.kind == FUNCTION_CALL:
        # Signed in the transaction that decides: a decision is never committed unsigned. (Making
        # the first signing key flushes, which is where a concurrent decision can show up.)
        try:
            sign_decision(session, row, recorded)
        except StaleDataError:
            session.rollback()
            raise _changed_concurrently(row) from None
    _commit_change(session, row)
    return row


def escalate(
    session: Session, *, kind: str, call_id: str, escalation: dict[str, Any], actor: Actor
) -> ApprovalRequest:
    """Record an escalation; its e-mail recipients become allowed approvers too."""
    check_clean(escalation, "body")
    row = get_request(session, kind=kind, call_id=call_id)
    _check_owner(session, row, actor, "escalate")
    recipients = [r.get("address") for r in escalation.get("additional_recipients") or []]
    email_channel = (escalation.get("channel") or {}).get("email") or {}
    if email_channel.get("address"):
        recipients.append(email_channel["address"])
    recipients += [r.get("address") for r in email_channel.get("additional_recipients") or []]
    # A group among the recipients stands for its members now (their names and e-mail addresses).
    groups = resolve_groups(session, [r for r in recipients if is_group(r)])
    approvers: list[str] = []
    for r in recipients:
        approvers += groups.get(r.strip().casefold(), []) if is_group(r) else [r] if r else []
    added = [r for r in dict.fromkeys(approvers) if r not in (row.extra_approvers or [])]
    if added:
        row.extra_approvers = [*(row.extra_approvers or []), *added]
    row.updated_at = utcnow()
    _audit(
        session,
        row,
        "escalated",
        actor=actor,
        comment=escalation.get("escalation_msg"),
        metadata={"recipients": recipients, **({"members": groups} if groups else {})},
    )
    _commit_change(session, row)
    return row


def cancel(
    session: Session, *, kind: str, call_id: str, reason: str, comment: str | None, actor: Actor
) -> ApprovalRequest:
    """Cancel a pending request; ``reason="timeout"`` is recorded as *expired*."""
    check_clean(comment, "body.comment")
    row = get_request(session, kind=kind, call_id=call_id)
    _check_owner(session, row, actor, "cancel")
    now = utcnow()
    row.state = "cancelled"
    row.cancelled_at = now
    row.cancel_reason = reason
    row.updated_at = now
    _audit(
        session,
        row,
        "expired" if reason == "timeout" else "cancelled",
        actor=actor,
        comment=comment,
        metadata={"reason": reason},
    )
    _commit_change(session, row)
    return row


def _changed_concurrently(row: ApprovalRequest) -> ServiceError:
    return ServiceError(409, "conflict", f"call_id {row.call_id!r} was changed concurrently; retry")


def _commit_change(session: Session, row: ApprovalRequest) -> None:
    try:
        session.commit()
    except StaleDataError:
        session.rollback()
        raise _changed_concurrently(row) from None


def _audit(
    session: Session,
    row: ApprovalRequest,
    event: str,
    *,
    actor: Actor | None,
    on_behalf_of: str | None = None,
    comment: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append ``event`` to ``row``'s audit trail (and the audit chain), not committed; the event,
    whose ``seq`` and ``hash`` are already set."""
    return chain.append(
        session,
        AuditEvent(
            request_id=row.id,
            event=event,
            at=utcnow(),
            actor=actor.name if actor else None,
            on_behalf_of=on_behalf_of,
            comment=comment,
            event_metadata=metadata,
        ),
    )


def audit_registry_event(
    session: Session,
    event: str,
    *,
    actor: Actor | str | None,
    comment: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append an event that concerns no request (``alias_moved``, ``alias_reverted``) to the audit
    trail (and the audit chain), not committed; the event, whose ``seq`` and ``hash`` are set."""
    check_clean({"event": event, "comment": comment, "metadata": metadata}, "audit")
    return chain.append(
        session,
        AuditEvent(
            request_id=None,
            event=event,
            at=utcnow(),
            actor=actor.name if isinstance(actor, Actor) else actor,
            comment=comment,
            event_metadata=metadata,
        ),
    )


def principal_name_for_email(session: Session, email: str) -> str | None:
    """The principal with e-mail address ``email`` (case-insensitive), if exactly one has it."""
    names = session.scalars(
        select(Principal.name).where(func.lower(Principal.email) == email.strip().lower()).limit(2)
    ).all()
    return names[0] if len(names) == 1 else None


def settled_requests(
    session: Session, *, kind: str, call_ids: Sequence[str], chunk: int = 500
) -> list[ApprovalRequest]:
    """The requests among ``call_ids`` that exist and are settled (no longer pending), in the
    order named, one query per ``chunk`` ids (duplicates count once)."""
    wanted = list(dict.fromkeys(call_ids))
    found: dict[str, ApprovalRequest] = {}
    for start in range(0, len(wanted), chunk):
        for row in session.scalars(
            select(ApprovalRequest).where(
                ApprovalRequest.kind == kind,
                ApprovalRequest.call_id.in_(wanted[start : start + chunk]),
                ApprovalRequest.state != "pending",
            )
        ):
            found[row.call_id] = row
    return [found[c] for c in wanted if c in found]


def request_ids(session: Session, *, kind: str, call_ids: Sequence[str]) -> dict[str, int]:
    """The ids of the requests ``call_ids`` name (those that exist)."""
    rows = session.execute(
        select(ApprovalRequest.call_id, ApprovalRequest.id).where(
            ApprovalRequest.kind == kind, ApprovalRequest.call_id.in_(list(call_ids))
        )
    ).all()
    return {str(call_id): int(request_id) for call_id, request_id in rows}


def audit_delivery(
    session: Session,
    request_id: int,
    event: str,
    *,
    comment: str | None = None,
    metadata: dict[str, Any] | None = None,
    actor: str = "hlml-delivery",
) -> AuditEvent:
    """Add a delivery event (``delivered``, ``delivery_retry``, ``delivery_failed``,
    ``link_opened``, ``undeliverable``) to request ``request_id``'s audit trail (and the audit
    chain), not committed; the event."""
    return chain.append(
        session,
        AuditEvent(
            request_id=request_id,
            event=event,
            at=utcnow(),
            actor=actor,
            comment=comment,
            event_metadata=metadata,
        ),
    )


def audit_events(session: Session, *, kind: str, call_id: str) -> list[AuditEvent]:
    row = get_request(session, kind=kind, call_id=call_id)
    return list(
        session.scalars(
            select(AuditEvent).where(AuditEvent.request_id == row.id).order_by(AuditEvent.id)
        ).all()
    )


def changes_since(session: Session, *, since: dt.datetime) -> Sequence[tuple[str, str, int]]:
    """(kind, call_id, version) of requests changed at or after ``since``."""
    rows = session.execute(
        select(ApprovalRequest.kind, ApprovalRequest.call_id, ApprovalRequest.version).where(
            ApprovalRequest.updated_at >= since
        )
    ).all()
    return [(k, c, v) for k, c, v in rows]


def metrics(session: Session) -> dict[str, Any]:
    """Approval metrics over all function calls, computed from the database."""
    counts: dict[str, int] = dict.fromkeys(("pending", "approved", "rejected"), 0)
    for state, count in session.execute(
        select(ApprovalRequest.state, func.count())
        .where(ApprovalRequest.kind == FUNCTION_CALL, ApprovalRequest.state != "cancelled")
        .group_by(ApprovalRequest.state)
    ):
        counts[state] = int(count)
    expired = cancelled = 0
    for reason, count in session.execute(
        select(ApprovalRequest.cancel_reason, func.count())
        .where(ApprovalRequest.kind == FUNCTION_CALL, ApprovalRequest.state == "cancelled")
        .group_by(ApprovalRequest.cancel_reason)
    ):
        if reason == "timeout":
            expired += int(count)
        else:
            cancelled += int(count)
    durations = sorted(
        (responded - requested).total_seconds()
        for requested, responded in session.execute(
            select(ApprovalRequest.requested_at, ApprovalRequest.responded_at).where(
                ApprovalRequest.kind == FUNCTION_CALL, ApprovalRequest.responded_at.is_not(None)
            )
        )
        if responded is not None
    )
    decided = counts["approved"] + counts["rejected"]
    closed = decided + expired + cancelled
    total = closed + counts["pending"]
    return {
        "pending": counts["pending"],
        "total": total,
        "approved": counts["approved"],
        "rejected": counts["rejected"],
        "cancelled": cancelled,
        "expired": expired,
        "approval_rate": counts["approved"] / decided if decided else None,
        "median_response_seconds": statistics.median(durations) if durations else None,
        "p95_response_seconds": _percentile(durations, 0.95) if durations else None,
        "timeout_rate": expired / closed if closed else None,
        "cancel_rate": cancelled / closed if closed else None,
    }


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted, non-empty sequence."""
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)
