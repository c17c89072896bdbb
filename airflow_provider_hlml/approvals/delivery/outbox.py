"""The delivery outbox: what is to be sent, to whom and when, kept in the service's database.

Everything here is a keyword function over a Session, like :mod:`..store`. The database is the
only state: a request's planned notices (``deliveries``), its timed steps (``request_steps``:
reminders, escalations, the "pending too long" alert) and the open alert episodes. Any replica may
do any of the work; a row is *claimed* first (a lease, so a replica that dies releases it), and a
step's effects commit with its ``done_at``, so each step runs once across replicas and restarts.
A notice is sent at least once: a replica that dies after the channel accepted a message and
before recording it leaves the notice to be sent again when its lease ends.

Decisions never pass through here: a one-click link or a Slack button ends in
:func:`..store.respond_function_call`, like every other answer. What *was* decided leaves through
here, though: :func:`plan_decisions` adds a ``decision`` notice per webhook URL for every request
settled recently, however it was settled, so the webhook receivers hear of each decision at least
once, until they acknowledge it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from airflow_provider_hlml.approvals import store
from airflow_provider_hlml.approvals.channels.base import Recipient
from airflow_provider_hlml.approvals.models import (
    ActionToken,
    AlertEpisode,
    ApprovalRequest,
    Delivery,
    Principal,
    RequestStep,
    utcnow,
)
from airflow_provider_hlml.approvals.settings import ApprovalsSettings
from airflow_provider_hlml.gate.policy import ApprovalPolicy, Responder
from airflow_provider_hlml.gate.state import GateState, Reminders, is_group

#: The names decisions and escalations made by the service's own machinery are recorded under.
LADDER_ACTOR = store.Actor(principal_id=0, name="hlml-ladder", email=None, role="admin")
EMAIL_LINK_ACTOR = store.Actor(principal_id=0, name="hlml-email-link", email=None, role="delegate")
SLACK_ACTOR = store.Actor(principal_id=0, name="hlml-slack", email=None, role="delegate")
#: Who delivery audit events are recorded as.
DELIVERY_ACTOR = "hlml-delivery"

#: The "more than N pending" alert's key (one open episode at a time).
PENDING_COUNT_ALERT = "pending_count"
#: Step actions.
PLAN, REMIND, ESCALATE, ALERT = "plan", "remind", "escalate", "alert"
#: Seconds a claim holds before another replica may take the work over.
LEASE_SECONDS = 120.0
#: Longest wait between two attempts of one notice.
MAX_BACKOFF_SECONDS = 600.0
#: Requests decided longer ago than this get no update of their Slack messages.
OUTCOME_WINDOW = dt.timedelta(days=1)
#: The channel, and the notice, of a settled request's webhook notification.
WEBHOOK, DECISION = "webhook", "decision"


@dataclass(frozen=True)
class Config:
    """What the outbox needs of the service's settings."""

    channels: frozenset[str]
    slack_channel: str = ""
    ladder: Reminders | None = None
    alert_to: tuple[str, ...] = ()
    alert_pending_seconds: float = 0.0
    alert_pending_count: int = 0
    max_reminders: int = 5
    links: bool = False
    link_ttl_seconds: float = 0.0
    link_default_ttl_seconds: float = 7 * 86_400.0
    attempts: int = 8
    webhook_urls: tuple[str, ...] = ()
    webhook_attempts: int = 40
    webhook_window_seconds: float = 86_400.0

    @classmethod
    def of(cls, settings: ApprovalsSettings, channels: Iterable[str]) -> Config:
        ladder = Reminders(
            remind_after=settings.remind_after_seconds,
            escalate_after=settings.escalate_after_seconds if settings.escalate_to_list else 0.0,
            escalate_to=tuple(settings.escalate_to_list),
            repeat_every=settings.repeat_every_seconds,
        )
        return cls(
            channels=frozenset(channels),
            slack_channel=settings.slack_channel,
            ladder=None if ladder.empty else ladder,
            alert_to=tuple(settings.alert_to_list),
            alert_pending_seconds=settings.alert_pending_seconds,
            alert_pending_count=settings.alert_pending_count,
            max_reminders=settings.max_reminders,
            links=bool(settings.public_url) and "email" in channels,
            link_ttl_seconds=settings.link_ttl_seconds,
            link_default_ttl_seconds=settings.link_default_ttl_seconds,
            attempts=settings.delivery_attempts,
            webhook_urls=tuple(settings.webhook_url_list) if WEBHOOK in channels else (),
            webhook_attempts=settings.webhook_attempts,
            webhook_window_seconds=settings.webhook_window_seconds,
        )

    def attempts_of(self, channel: str) -> int:
        """Sends of one notice on ``channel`` before it is given up."""
        return self.webhook_attempts if channel == WEBHOOK else self.attempts


def _dedupe_key(
    request_id: int | None, episode_id: int | None, channel: str, recipient: str, notice: str, step: int
) -> str:
    blob = f"{request_id or ''}|{episode_id or ''}|{channel}|{recipient.casefold()}|{notice}|{step}"
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


def _delivery(
    recipient: Recipient,
    notice: str,
    *,
    now: dt.datetime,
    request_id: int | None = None,
    episode_id: int | None = None,
    step: int = 0,
    ref: str | None = None,
) -> Delivery:
    return Delivery(
        dedupe_key=_dedupe_key(request_id, episode_id, recipient.channel, recipient.address, notice, step),
        request_id=request_id,
        episode_id=episode_id,
        channel=recipient.channel,
        recipient=recipient.address[:320],
        recipient_name=(recipient.name or None) and recipient.name[:200] if recipient.name else None,
        notice=notice,
        step=step,
        state="pending",
        attempts=0,
        due_at=now,
        created_at=now,
        ref=ref,
    )


# ---- recipients -----------------------------------------------------------------------------


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _looks_like_email(value: str) -> bool:
    local, _, domain = value.rpartition("@")
    return bool(local) and "." in domain and not any(c.isspace() or c in "<>,;\"'" for c in value)


def _principals(session: Session) -> tuple[dict[str, str], dict[str, str]]:
    """(e-mail -> principal name, principal name -> e-mail), both keyed case-insensitively."""
    by_email: dict[str, str] = {}
    by_name: dict[str, str] = {}
    for name, email in session.execute(select(Principal.name, Principal.email)):
        if email:
            by_email[email.strip().casefold()] = name
            by_name[name.strip().casefold()] = email.strip()
    return by_email, by_name


def _identities_to_emails(
    identities: Iterable[str], members: dict[str, Any], by_name: dict[str, str]
) -> list[str]:
    """The e-mail addresses of approver entries: addresses as they are, principals' addresses,
    and a group's members (as the request resolved them when it opened)."""
    emails: list[str] = []
    for entry in identities:
        if not isinstance(entry, str) or not entry.strip():
            continue
        if is_group(entry):
            for member in members.get(entry.strip().casefold(), []) or []:
                emails += _identities_to_emails([member], {}, by_name)
            continue
        entry = entry.strip()
        if _looks_like_email(entry):
            emails.append(entry)
        elif entry.casefold() in by_name:
            emails.append(by_name[entry.casefold()])
    return list(dict.fromkeys(emails))


def email_recipients(
    session: Session,
    row: ApprovalRequest,
    extra: Sequence[str] = (),
    principals: tuple[dict[str, str], dict[str, str]] | None = None,
) -> list[Recipient]:
    """Who gets a request by e-mail: its contact channel's addresses, then its approvers' (group
    members' included), or only ``extra`` (an escalation's people) when given.

    :param principals: :func:`_principals` when the caller read them already (a batch).
    """
    by_email, by_name = principals if principals is not None else _principals(session)
    members = dict(row.members or {})
    if extra:
        if any(is_group(e) for e in extra):
            members.update(store.resolve_groups(session, [e for e in extra if is_group(e)]))
        addresses = _identities_to_emails(extra, members, by_name)
    else:
        email = _mapping(_mapping(row.spec.get("channel")).get("email"))
        contact = [email.get("address")] + [
            r.get("address") for r in email.get("additional_recipients") or [] if isinstance(r, dict)
        ]
        policy = store.policy_of(row)
        approvers = [a for rule in policy.effective_rules for a in rule.approvers]
        addresses = _identities_to_emails(
            [a for a in contact if isinstance(a, str)] + approvers, members, by_name
        )
    seen: dict[str, Recipient] = {}
    for address in addresses:
        if _looks_like_email(address) and address.casefold() not in seen:
            seen[address.casefold()] = Recipient("email", address, by_email.get(address.casefold()))
    return list(seen.values())


def slack_recipients(row: ApprovalRequest, default_channel: str) -> list[Recipient]:
    """The Slack channel or user of the request's contact channel, else the service's default."""
    slack = _mapping(_mapping(row.spec.get("channel")).get("slack"))
    raw = slack.get("channel_or_user_id")
    target = (raw.strip() if isinstance(raw, str) else "") or default_channel.strip()
    return [Recipient("slack", target[:320])] if target else []


def alert_recipients(config: Config) -> list[Recipient]:
    out: list[Recipient] = []
    for entry in config.alert_to:
        if entry.casefold().startswith("slack:"):
            if "slack" in config.channels and entry[6:].strip():
                out.append(Recipient("slack", entry[6:].strip()))
        elif "email" in config.channels and _looks_like_email(entry):
            out.append(Recipient("email", entry))
    return out


def may_answer(row: ApprovalRequest, recipient: Recipient, policy: ApprovalPolicy | None = None) -> bool:
    """Whether the request's policy would let ``recipient`` approve now (they get one-click links)."""
    who = Responder(name=recipient.name or recipient.address, email=recipient.address)
    policy = policy if policy is not None else store.policy_of(row)
    return policy.explain(who, store.answers_of(row), True) is None


# ---- planning (step 0) ----------------------------------------------------------------------


def unplanned_requests(session: Session, *, limit: int = 200) -> list[int]:
    """Pending function calls whose delivery is not planned yet, oldest first."""
    planned = exists().where(RequestStep.request_id == ApprovalRequest.id, RequestStep.step == 0)
    return list(
        session.scalars(
            select(ApprovalRequest.id)
            .where(
                ApprovalRequest.kind == store.FUNCTION_CALL,
                ApprovalRequest.state == "pending",
                ~planned,
            )
            .order_by(ApprovalRequest.id)
            .limit(limit)
        )
    )


def _deadline(row: ApprovalRequest) -> dt.datetime | None:
    """When the request's gate stops waiting (its ``timeout`` from creation), if it has one."""
    timeout = GateState.from_state(row.spec.get("state")).timeout
    return row.requested_at + dt.timedelta(seconds=timeout) if timeout else None


def _ladder_steps(
    row: ApprovalRequest, config: Config
) -> list[tuple[str, dt.datetime, dict[str, Any] | None]]:
    """(action, due, params) of a request's timed steps, in order of their due time."""
    start = row.requested_at
    deadline = _deadline(row)
    gate = GateState.from_state(row.spec.get("state"))
    ladder = gate.reminders if gate.reminders is not None else config.ladder
    steps: list[tuple[str, dt.datetime, dict[str, Any] | None]] = []
    if ladder is not None:
        reminders = 0
        if ladder.remind_after and config.max_reminders:
            steps.append((REMIND, start + dt.timedelta(seconds=ladder.remind_after), None))
            reminders += 1
        if ladder.escalate_after and ladder.escalate_to:
            steps.append(
                (
                    ESCALATE,
                    start + dt.timedelta(seconds=ladder.escalate_after),
                    {"to": list(ladder.escalate_to)},
                )
            )
        if ladder.repeat_every:
            last = max(ladder.remind_after, ladder.escalate_after)
            while reminders < config.max_reminders:
                last += ladder.repeat_every
                steps.append((REMIND, start + dt.timedelta(seconds=last), None))
                reminders += 1
    if config.alert_pending_seconds and alert_recipients(config):
        steps.append((ALERT, start + dt.timedelta(seconds=config.alert_pending_seconds), None))
    steps.sort(key=lambda s: s[1])
    return [s for s in steps if deadline is None or s[1] < deadline]


def plan_request(
    session: Session,
    row: ApprovalRequest,
    config: Config,
    *,
    now: dt.datetime,
    principals: tuple[dict[str, str], dict[str, str]] | None = None,
) -> int:
    """Add a request's step 0 (done now), its first notices and its timed steps to ``session``
    (not committed); the number of notices planned."""
    session.add(RequestStep(request_id=row.id, step=0, action=PLAN, due_at=now, done_at=now, outcome="done"))
    recipients: list[Recipient] = []
    if "email" in config.channels:
        recipients += email_recipients(session, row, principals=principals)
    if "slack" in config.channels:
        recipients += slack_recipients(row, config.slack_channel)
    for recipient in recipients:
        session.add(_delivery(recipient, "request", now=now, request_id=row.id))
    for number, (action, due, params) in enumerate(_ladder_steps(row, config), start=1):
        session.add(RequestStep(request_id=row.id, step=number, action=action, due_at=due, params=params))
    if not recipients:
        store.audit_delivery(
            session,
            row.id,
            "undeliverable",
            comment="no recipient on a configured channel (no e-mail address, Slack channel or approver with one)",
            metadata={"channels": sorted(config.channels)},
        )
    return len(recipients)


def plan_new_requests(session: Session, config: Config) -> int:
    """Plan every unplanned pending request; several at a time, one by one after a conflict
    (another replica planned some of them first)."""
    ids = unplanned_requests(session)
    if not ids:
        return 0
    now = utcnow()
    planned = 0
    principals = _principals(session)
    try:
        rows = list(session.scalars(select(ApprovalRequest).where(ApprovalRequest.id.in_(ids))))
        with session.no_autoflush:
            for row in rows:
                planned += plan_request(session, row, config, now=now, principals=principals)
        session.commit()
        return planned
    except IntegrityError:
        session.rollback()
    planned = 0
    for request_id in ids:
        one = session.get(ApprovalRequest, request_id)
        if one is None or one.state != "pending":
            continue
        try:
            planned += plan_request(session, one, config, now=now)
            session.commit()
        except IntegrityError:
            session.rollback()
    return planned


# ---- timed steps ----------------------------------------------------------------------------


def claim_due_steps(session: Session, *, now: dt.datetime, limit: int = 50) -> list[int]:
    """Claim due, undone steps for :data:`LEASE_SECONDS`; the ids this worker now holds."""
    ids = list(
        session.scalars(
            select(RequestStep.id)
            .where(
                RequestStep.done_at.is_(None),
                RequestStep.due_at <= now,
                (RequestStep.claimed_until.is_(None)) | (RequestStep.claimed_until < now),
            )
            .order_by(RequestStep.due_at)
            .limit(limit)
        )
    )
    mine = []
    lease = now + dt.timedelta(seconds=LEASE_SECONDS)
    for step_id in ids:
        result = session.execute(
            update(RequestStep)
            .where(
                RequestStep.id == step_id,
                RequestStep.done_at.is_(None),
                (RequestStep.claimed_until.is_(None)) | (RequestStep.claimed_until < now),
            )
            .values(claimed_until=lease)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            mine.append(step_id)
    session.commit()
    return mine


def _answered(row: ApprovalRequest) -> set[str]:
    out: set[str] = set()
    for answer in row.answers or []:
        for key in ("name", "email"):
            if isinstance(answer.get(key), str):
                out.add(answer[key].strip().casefold())
    return out


def run_step(session: Session, step_id: int, config: Config) -> str:
    """Run one claimed step; its effects and ``done_at`` commit together. Returns its outcome."""
    step = session.get(RequestStep, step_id)
    if step is None or step.done_at is not None:
        return "gone"
    row = session.get(ApprovalRequest, step.request_id)
    now = utcnow()
    step.done_at = now
    if row is None or row.state != "pending":
        step.outcome = "skipped"
        session.commit()
        return "skipped"
    step.outcome = "done"
    if step.action == REMIND:
        answered = _answered(row)
        sent = session.execute(
            select(Delivery.channel, Delivery.recipient, Delivery.recipient_name).where(
                Delivery.request_id == row.id, Delivery.notice.in_(("request", "escalation"))
            )
        ).all()
        for channel, address, name in dict.fromkeys(sent):
            if address.casefold() in answered or (name and name.casefold() in answered):
                continue
            session.add(
                _delivery(
                    Recipient(channel, address, name), "reminder", now=now, request_id=row.id, step=step.step
                )
            )
        session.commit()
    elif step.action == ESCALATE:
        people = [p for p in (step.params or {}).get("to", []) if isinstance(p, str)]
        recipients = email_recipients(session, row, people) if "email" in config.channels else []
        if "slack" in config.channels:
            recipients += slack_recipients(row, config.slack_channel)
        for recipient in recipients:
            session.add(_delivery(recipient, "escalation", now=now, request_id=row.id, step=step.step))
        pending_for = int((now - row.requested_at).total_seconds() // 60)
        try:
            # Commits the step, its notices and the escalation (audited) in one transaction.
            store.escalate(
                session,
                kind=row.kind,
                call_id=row.call_id,
                escalation={
                    "escalation_msg": f"No decision after {pending_for} min: escalated by the reminder ladder",
                    "additional_recipients": [{"address": p} for p in people],
                },
                actor=LADDER_ACTOR,
            )
        except store.ServiceError:
            session.rollback()
            step = session.get(RequestStep, step_id)
            if step is not None and step.done_at is None:
                step.done_at, step.outcome = utcnow(), "skipped"
                session.commit()
            return "skipped"
    elif step.action == ALERT:
        for recipient in alert_recipients(config):
            session.add(_delivery(recipient, "alert", now=now, request_id=row.id, step=step.step))
        session.commit()
    else:
        step.outcome = "unknown"
        session.commit()
    return step.outcome or "done"


# ---- alerts over all requests ---------------------------------------------------------------


def check_pending_count(session: Session, config: Config, *, now: dt.datetime) -> str | None:
    """Open the "more than N pending" episode (and plan its alert) when the count passes N, close it
    when it falls back; ``"opened"``, ``"closed"`` or None."""
    if not config.alert_pending_count or not alert_recipients(config):
        return None
    pending = session.scalar(
        select(func.count())
        .select_from(ApprovalRequest)
        .where(ApprovalRequest.kind == store.FUNCTION_CALL, ApprovalRequest.state == "pending")
    )
    episode = session.scalar(select(AlertEpisode).where(AlertEpisode.open_key == PENDING_COUNT_ALERT))
    if (pending or 0) > config.alert_pending_count and episode is None:
        episode = AlertEpisode(
            alert=PENDING_COUNT_ALERT,
            open_key=PENDING_COUNT_ALERT,
            opened_at=now,
            details={"pending": pending, "threshold": config.alert_pending_count},
        )
        session.add(episode)
        try:
            session.flush()
            for recipient in alert_recipients(config):
                session.add(_delivery(recipient, "alert", now=now, episode_id=episode.id))
            session.commit()
        except IntegrityError:
            session.rollback()  # another replica opened it first
            return None
        return "opened"
    if (pending or 0) <= config.alert_pending_count and episode is not None:
        episode.open_key = None
        episode.closed_at = now
        session.commit()
        return "closed"
    session.rollback()
    return None


# ---- outcomes (updating sent messages) ------------------------------------------------------


def plan_outcomes(session: Session, *, channels: Iterable[str], now: dt.datetime) -> int:
    """An ``outcome`` notice for every sent request message on an updatable channel whose request
    was decided (from any channel) since :data:`OUTCOME_WINDOW`, once."""
    channels = list(channels)
    if not channels:
        return 0
    done = aliased(Delivery)
    outcome = (
        select(done.id)
        .where(
            done.request_id == Delivery.request_id,
            done.channel == Delivery.channel,
            done.recipient == Delivery.recipient,
            done.notice == "outcome",
        )
        .correlate(Delivery)
    )
    rows = session.execute(
        select(
            Delivery.channel, Delivery.recipient, Delivery.recipient_name, Delivery.ref, Delivery.request_id
        )
        .join(ApprovalRequest, ApprovalRequest.id == Delivery.request_id)
        .where(
            Delivery.channel.in_(channels),
            Delivery.notice == "request",
            Delivery.state == "sent",
            Delivery.ref.is_not(None),
            ApprovalRequest.state != "pending",
            ApprovalRequest.updated_at >= now - OUTCOME_WINDOW,
            ~outcome.exists(),
        )
        .limit(200)
    ).all()
    added = 0
    for channel, address, name, ref, request_id in rows:
        session.add(
            _delivery(Recipient(channel, address, name), "outcome", now=now, request_id=request_id, ref=ref)
        )
        added += 1
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        return 0
    return added


# ---- decisions (webhooks) ---------------------------------------------------------------------


def plan_decisions(
    session: Session, config: Config, *, now: dt.datetime, since: dt.datetime | None = None, limit: int = 500
) -> tuple[int, bool]:
    """A ``decision`` notice per webhook URL for every request settled (no longer pending) since
    ``since`` (default, and never before: the start of the webhook window), once.

    The request rows are the record of what was decided, so a decision nobody announced (made
    with the CLI, or while no worker ran) is planned like any other. The ``updated_at`` index
    bounds the scan (a settled request never changes again); the dedupe key keeps replicas that
    plan the same decision at once from planning it twice. Returns (notices planned, whether
    ``limit`` requests were found: there may be more).
    """
    urls = list({url.casefold(): url for url in config.webhook_urls}.values())
    if not urls:
        return 0, False
    start = now - dt.timedelta(seconds=config.webhook_window_seconds)
    if since is not None and since > start:
        start = since
    missing = [
        ~exists().where(
            Delivery.request_id == ApprovalRequest.id,
            Delivery.channel == WEBHOOK,
            Delivery.notice == DECISION,
            Delivery.recipient == url,
        )
        for url in urls
    ]
    ids = list(
        session.scalars(
            select(ApprovalRequest.id)
            .where(
                ApprovalRequest.updated_at >= start,
                ApprovalRequest.state != "pending",
                or_(*missing),
            )
            .order_by(ApprovalRequest.updated_at, ApprovalRequest.id)
            .limit(limit)
        )
    )
    if not ids:
        session.rollback()
        return 0, False
    done = set(
        session.execute(
            select(Delivery.request_id, Delivery.recipient).where(
                Delivery.request_id.in_(ids), Delivery.channel == WEBHOOK, Delivery.notice == DECISION
            )
        ).tuples()
    )
    wanted = [(request_id, url) for request_id in ids for url in urls if (request_id, url) not in done]
    try:
        for request_id, url in wanted:
            session.add(_delivery(Recipient(WEBHOOK, url), DECISION, now=now, request_id=request_id))
        session.commit()
        return len(wanted), len(ids) >= limit
    except IntegrityError:
        session.rollback()  # another replica planned some of them first: one at a time
    planned = 0
    for request_id, url in wanted:
        session.add(_delivery(Recipient(WEBHOOK, url), DECISION, now=now, request_id=request_id))
        try:
            session.commit()
            planned += 1
        except IntegrityError:
            session.rollback()
    return planned, len(ids) >= limit


# ---- sending ----------------------------------------------------------------------------------


@dataclass
class Job:
    """One claimed notice, with what the worker needs to build and send it."""

    delivery_id: int
    request_id: int | None
    episode_id: int | None
    channel: str
    recipient: Recipient
    notice: str
    step: int
    attempts: int
    ref: str | None
    links: dict[str, str] = field(default_factory=dict)
    #: The request's wire body, state, creation time and kind when the job was claimed.
    body: dict[str, Any] | None = None
    state: str | None = None
    requested_at: dt.datetime | None = None
    kind: str | None = None


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def link_expiry(row: ApprovalRequest, config: Config, now: dt.datetime) -> dt.datetime:
    """When a one-click link made now for ``row`` expires."""
    if config.link_ttl_seconds:
        return now + dt.timedelta(seconds=config.link_ttl_seconds)
    return _deadline(row) or now + dt.timedelta(seconds=config.link_default_ttl_seconds)


def claim_deliveries(
    session: Session,
    config: Config,
    *,
    worker: str,
    now: dt.datetime,
    body_of: Callable[[ApprovalRequest], Mapping[str, Any]],
    limit: int = 100,
) -> list[Job]:
    """Claim due notices for this worker and, for e-mail to people who may answer, make their
    one-click tokens (stored hashed; the raw tokens live only in the returned jobs). Each job
    carries its request as it is now (``body_of(row)``), so sending reads nothing more. Only
    notices of the channels this worker has are claimed (replicas may be configured apart)."""
    due = (
        select(Delivery.id)
        .where(
            Delivery.state == "pending",
            Delivery.channel.in_(sorted(config.channels)),
            Delivery.due_at <= now,
            (Delivery.claimed_until.is_(None)) | (Delivery.claimed_until < now),
        )
        .order_by(Delivery.due_at, Delivery.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list(session.scalars(due))
    if not ids:
        session.rollback()
        return []
    session.execute(
        update(Delivery)
        .where(
            Delivery.id.in_(ids),
            Delivery.state == "pending",
            (Delivery.claimed_until.is_(None)) | (Delivery.claimed_until < now),
        )
        .values(claimed_until=now + dt.timedelta(seconds=LEASE_SECONDS), claimed_by=worker)
        .execution_options(synchronize_session=False)
    )
    claimed = list(
        session.scalars(
            select(Delivery).where(Delivery.id.in_(ids), Delivery.claimed_by == worker).order_by(Delivery.id)
        )
    )
    jobs: list[Job] = []
    wanted = {d.request_id for d in claimed if d.request_id is not None}
    requests = {
        r.id: r for r in session.scalars(select(ApprovalRequest).where(ApprovalRequest.id.in_(wanted)))
    }
    bodies: dict[int, dict[str, Any]] = {}
    policies: dict[int, ApprovalPolicy] = {}
    for d in claimed:
        job = Job(
            delivery_id=d.id,
            request_id=d.request_id,
            episode_id=d.episode_id,
            channel=d.channel,
            recipient=Recipient(d.channel, d.recipient, d.recipient_name),
            notice=d.notice,
            step=d.step,
            attempts=d.attempts,
            ref=d.ref,
        )
        row = requests.get(d.request_id) if d.request_id is not None else None
        if row is not None:
            if row.id not in bodies:
                bodies[row.id] = dict(body_of(row))
            job.body = bodies[row.id]
            job.state = row.state
            job.requested_at = row.requested_at
            job.kind = row.kind
        if (
            config.links
            and row is not None
            and row.state == "pending"
            and d.channel == "email"
            and d.notice in ("request", "reminder", "escalation")
            and may_answer(row, job.recipient, policies.setdefault(row.id, store.policy_of(row)))
        ):
            expires = link_expiry(row, config, now)
            if expires > now:
                for action in ("approve", "reject"):
                    token = new_token()
                    session.add(
                        ActionToken(
                            token_hash=hash_token(token),
                            request_id=row.id,
                            delivery_id=d.id,
                            recipient=d.recipient,
                            recipient_name=d.recipient_name,
                            action=action,
                            created_at=now,
                            expires_at=expires,
                        )
                    )
                    job.links[action] = token
        jobs.append(job)
    session.commit()
    return jobs


@dataclass(frozen=True)
class Result:
    """What became of one job: ``sent`` (with the channel's ``ref``), ``skipped`` (no longer
    needed), or failed with ``error`` (``retryable`` or not)."""

    job: Job
    outcome: str
    ref: str | None = None
    error: str | None = None
    retryable: bool = False


def backoff_seconds(attempts: int) -> float:
    """Wait before attempt ``attempts + 1``: 2, 4, 8, ... seconds, at most :data:`MAX_BACKOFF_SECONDS`."""
    return float(min(MAX_BACKOFF_SECONDS, 2 ** max(1, attempts)))


def record_results(session: Session, results: Sequence[Result], config: Config) -> None:
    """Record every result (state, attempts, backoff) and audit it on its request, in one commit."""
    now = utcnow()
    updates: list[dict[str, Any]] = []
    for result in results:
        job = result.job
        attempts = job.attempts + (0 if result.outcome == "skipped" else 1)
        values: dict[str, Any] = {"attempts": attempts, "claimed_until": None, "claimed_by": None}
        meta = {
            "channel": job.channel,
            "recipient": job.recipient.address,
            "notice": job.notice,
            "step": job.step,
            "attempt": attempts,
        }
        event: str | None
        if result.outcome == "sent":
            values.update(state="sent", sent_at=now, ref=result.ref or job.ref, last_error=None)
            event = "delivered"
        elif result.outcome == "skipped":
            values.update(state="skipped")
            event = None
        elif result.retryable and attempts < config.attempts_of(job.channel):
            values.update(
                state="pending",
                due_at=now + dt.timedelta(seconds=backoff_seconds(attempts)),
                last_error=(result.error or "")[:2000],
            )
            event = "delivery_retry"
            meta["retry_in_seconds"] = backoff_seconds(attempts)
        else:
            values.update(state="failed", last_error=(result.error or "")[:2000])
            event = "delivery_failed"
        updates.append({"id": job.delivery_id, **values})
        if event is not None and job.request_id is not None:
            store.audit_delivery(
                session,
                job.request_id,
                event,
                comment=result.error[:2000] if result.error else None,
                metadata=meta,
            )
    # Each result sets its own columns: one UPDATE per set of columns, by primary key, in a batch.
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in updates:
        by_columns.setdefault(tuple(sorted(row)), []).append(row)
    for rows in by_columns.values():
        session.execute(update(Delivery), rows)
    session.commit()


def deliveries_of(session: Session, request_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """Each request's notices, oldest first, as the API shows them."""
    out: dict[int, list[dict[str, Any]]] = {i: [] for i in request_ids}
    if not request_ids:
        return out
    for d in session.scalars(
        select(Delivery).where(Delivery.request_id.in_(request_ids)).order_by(Delivery.id)
    ):
        out.setdefault(d.request_id or 0, []).append(
            {
                "channel": d.channel,
                "recipient": d.recipient,
                "notice": d.notice,
                "step": d.step,
                "state": d.state,
                "attempts": d.attempts,
                "sent_at": d.sent_at.isoformat() if d.sent_at else None,
                "next_attempt_at": d.due_at.isoformat() if d.state == "pending" else None,
                "error": d.last_error,
            }
        )
    return out


# ---- one-click tokens -----------------------------------------------------------------------


@dataclass(frozen=True)
class TokenView:
    """What a one-click link stands for, or why it cannot be used (``problem``, with the HTTP status)."""

    request: ApprovalRequest | None
    token: ActionToken | None
    problem: str | None = None
    status: int = 200


def read_token(session: Session, token: str, *, now: dt.datetime) -> TokenView:
    """The request and token a one-click link names; a problem when unknown, expired, used, or
    when the request is no longer pending."""
    if not token or len(token) > 128 or not token.isascii():
        return TokenView(None, None, "This link is not valid.", 404)
    row = session.scalar(select(ActionToken).where(ActionToken.token_hash == hash_token(token)))
    if row is None:
        return TokenView(None, None, "This link is not valid.", 404)
    request = session.get(ApprovalRequest, row.request_id)
    if row.used_at is not None:
        return TokenView(request, row, "This link has been used already: each link works once.", 410)
    if row.expires_at <= now:
        return TokenView(request, row, "This link has expired.", 410)
    if request is None or request.state != "pending":
        state = request.state if request is not None else "gone"
        return TokenView(
            request, row, f"This request is {state} already: there is nothing left to decide.", 409
        )
    return TokenView(request, row)


def use_token(session: Session, token: ActionToken, *, now: dt.datetime) -> bool:
    """Mark ``token`` used (not committed: it commits with the decision); False when another
    request used it first."""
    result = session.execute(
        update(ActionToken)
        .where(ActionToken.id == token.id, ActionToken.used_at.is_(None), ActionToken.expires_at > now)
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


#: At most this many ``link_opened`` events per request (mail scanners open links too).
MAX_AUDITED_OPENS = 50


def audit_link_opened(session: Session, token: ActionToken) -> None:
    """Audit that a one-click link's confirmation page was shown (bounded per request); commits."""
    from airflow_provider_hlml.approvals.models import AuditEvent

    opened = session.scalar(
        select(func.count())
        .select_from(AuditEvent)
        .where(AuditEvent.request_id == token.request_id, AuditEvent.event == "link_opened")
    )
    if (opened or 0) < MAX_AUDITED_OPENS:
        store.audit_delivery(
            session,
            token.request_id,
            "link_opened",
            metadata={"recipient": token.recipient, "action": token.action, "channel": "email"},
        )
        session.commit()
