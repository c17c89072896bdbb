"""Database tables of the approvals service (SQLAlchemy 2.0 declarative models).

The schema is created and changed only by the Alembic migrations in ``migrations/``; a test checks
that these models and the migrations never drift apart.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ROLES = ("agent", "reviewer", "admin", "delegate")
KINDS = ("function_call", "human_contact")
STATES = ("pending", "approved", "rejected", "responded", "cancelled")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp stored in UTC and always returned timezone-aware (SQLite keeps no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        value = value.astimezone(dt.timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UTCDateTime, dict[str, Any]: JSON}


class Principal(Base):
    """A person or system that holds API keys: an agent, a reviewer, an admin or a trusted delegate."""

    __tablename__ = "principals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    email: Mapped[str | None] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Group(Base):
    """A named group of principals, written ``group:<name>`` among a request's approvers."""

    __tablename__ = "groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class GroupMember(Base):
    """A principal's membership of a group (resolved when a request opens, then fixed on it)."""

    __tablename__ = "group_members"
    __table_args__ = (
        UniqueConstraint("group_id", "principal_id", name="uq_group_members_group_id_principal_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id"), index=True)
    principal_id: Mapped[int] = mapped_column(ForeignKey("principals.id"), index=True)
    added_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """An API key, stored only as the SHA-256 of its (high-entropy) secret."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    principal_id: Mapped[int] = mapped_column(ForeignKey("principals.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    display_prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column()


class ApprovalRequest(Base):
    """A function call (approval) or a human contact, with its current status."""

    __tablename__ = "approval_requests"
    __table_args__ = (
        UniqueConstraint("kind", "call_id", name="uq_approval_requests_kind_call_id"),
        Index("ix_approval_requests_kind_state_requested_at", "kind", "state", "requested_at"),
        Index("ix_approval_requests_updated_at", "updated_at"),
        Index("ix_approval_requests_run_id", "run_id"),
        # Ids are never reused, so a new request never inherits an old request's audit trail
        # (PostgreSQL sequences never reuse a value; SQLite needs AUTOINCREMENT).
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    call_id: Mapped[str] = mapped_column(String(256))
    run_id: Mapped[str] = mapped_column(String(256))
    fn: Mapped[str | None] = mapped_column(String(256))
    spec: Mapped[dict[str, Any]] = mapped_column()
    spec_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(20), default="pending")
    version: Mapped[int] = mapped_column(Integer, default=1)
    requested_at: Mapped[dt.datetime] = mapped_column()
    updated_at: Mapped[dt.datetime] = mapped_column()
    responded_at: Mapped[dt.datetime | None] = mapped_column()
    approved: Mapped[bool | None] = mapped_column(Boolean)
    comment: Mapped[str | None] = mapped_column(Text)
    reject_option_name: Mapped[str | None] = mapped_column(String(256))
    response: Mapped[str | None] = mapped_column(Text)
    response_option_name: Mapped[str | None] = mapped_column(String(256))
    user_info: Mapped[dict[str, Any] | None] = mapped_column()
    cancelled_at: Mapped[dt.datetime | None] = mapped_column()
    cancel_reason: Mapped[str | None] = mapped_column(String(20))
    extra_approvers: Mapped[list[str] | None] = mapped_column(JSON)
    created_by_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"))
    created_by: Mapped[str | None] = mapped_column(String(200))
    # The members of each group the request names, as they were when it opened:
    # ``{"group:ml-leads": ["alice", "alice@example.com", ...]}``. Never changes afterwards.
    members: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Every answer so far, in order (a request with approval rules collects several):
    # ``[{"name", "email", "principal", "via_delegate", "approved", "comment", "at", "rule"}]``.
    answers: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    # The signed statement of the decision (a DSSE envelope, JSON; see gate/attestation.py),
    # written once, in the transaction that decides the request.
    attestation: Mapped[str | None] = mapped_column(Text)

    # Optimistic locking: two concurrent decisions cannot both win.
    __mapper_args__ = {"version_id_col": version}


class AuditEvent(Base):
    """One entry of the append-only audit trail (never updated or deleted): a request's event, or
    a registry event tied to no request (``request_id`` NULL).

    Every event is a link of one hash chain (``approvals/audit/chain.py``): ``seq`` numbers the
    events 1, 2, 3, ...; ``hash`` is the SHA-256 of the event's content with ``prev_hash`` (the
    hash of event ``seq - 1``) and ``request_prev_hash`` (the hash of the same request's previous
    event). Written only through ``chain.append``.
    """

    __tablename__ = "audit_events"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int | None] = mapped_column(ForeignKey("approval_requests.id"), index=True)
    event: Mapped[str] = mapped_column(String(20))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    actor: Mapped[str | None] = mapped_column(String(200))
    on_behalf_of: Mapped[str | None] = mapped_column(String(320))
    comment: Mapped[str | None] = mapped_column(Text)
    event_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata")
    seq: Mapped[int] = mapped_column(Integer, unique=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    request_prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditChainHead(Base):
    """The audit chain's last link (one row, ``id`` 1): the ``seq`` and ``hash`` of the newest
    event, updated in the transaction that appends it. Appenders lock this row, so the chain never
    forks; a chain that ends before the head was truncated."""

    __tablename__ = "audit_chain_head"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[dt.datetime] = mapped_column()


class RequestStep(Base):
    """One timed step of a request's delivery: planning it (step 0), a reminder, an escalation,
    or a "pending too long" alert. Each step runs once, whichever replica claims it first; its
    effects commit together with ``done_at``, so a restart neither forgets nor repeats it."""

    __tablename__ = "request_steps"
    __table_args__ = (
        UniqueConstraint("request_id", "step", name="uq_request_steps_request_id_step"),
        Index("ix_request_steps_done_at_due_at", "done_at", "due_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("approval_requests.id"))
    step: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(20))
    due_at: Mapped[dt.datetime] = mapped_column()
    # The step's parameters (who an escalation goes to, the reminder's number).
    params: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    claimed_until: Mapped[dt.datetime | None] = mapped_column()
    done_at: Mapped[dt.datetime | None] = mapped_column()
    outcome: Mapped[str | None] = mapped_column(String(20))


class AlertEpisode(Base):
    """An operational alert that is firing (``open_key`` set) or has ended (``open_key`` NULL).

    The unique ``open_key`` lets only one episode of an alert be open at a time, across replicas:
    an alert fires once when its episode opens, not on every check.
    """

    __tablename__ = "alert_episodes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert: Mapped[str] = mapped_column(String(64))
    open_key: Mapped[str | None] = mapped_column(String(64), unique=True)
    opened_at: Mapped[dt.datetime] = mapped_column()
    closed_at: Mapped[dt.datetime | None] = mapped_column()
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Delivery(Base):
    """One notice to one recipient on one channel, sent by whichever replica claims it.

    ``state``: ``pending`` (due at ``due_at``; retried with backoff), ``sent``, ``failed`` (gave
    up), ``skipped`` (no longer needed: the request was decided first).
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_state_due_at", "state", "due_at"),
        Index("ix_deliveries_request_id", "request_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # SHA-256 of (request or episode, channel, recipient, notice, step): each notice is made once.
    dedupe_key: Mapped[str] = mapped_column(String(64), unique=True)
    request_id: Mapped[int | None] = mapped_column(ForeignKey("approval_requests.id"))
    episode_id: Mapped[int | None] = mapped_column(ForeignKey("alert_episodes.id"))
    channel: Mapped[str] = mapped_column(String(20))
    recipient: Mapped[str] = mapped_column(String(320))
    # The principal the recipient is (whom a one-click answer is recorded as), when known.
    recipient_name: Mapped[str | None] = mapped_column(String(200))
    notice: Mapped[str] = mapped_column(String(20))
    step: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[dt.datetime] = mapped_column()
    claimed_until: Mapped[dt.datetime | None] = mapped_column()
    # Which worker holds the claim (a random id per worker): a claim is read back by it.
    claimed_by: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column()
    # What the channel needs to update the message (Slack ``channel:ts``, e-mail Message-ID).
    ref: Mapped[str | None] = mapped_column(String(256))
    last_error: Mapped[str | None] = mapped_column(Text)


class ActionToken(Base):
    """A one-click link's token, stored only as its SHA-256: bound to a request, a recipient and
    an action, expiring, and used at most once."""

    __tablename__ = "action_tokens"
    __table_args__ = (Index("ix_action_tokens_request_id", "request_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("approval_requests.id"))
    delivery_id: Mapped[int | None] = mapped_column(ForeignKey("deliveries.id"))
    recipient: Mapped[str] = mapped_column(String(320))
    recipient_name: Mapped[str | None] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column()
    used_at: Mapped[dt.datetime | None] = mapped_column()


class SigningKey(Base):
    """An Ed25519 key the service signs decisions with (``approvals/attest/keys.py``).

    Exactly one key is active (``active`` = 1; NULL otherwise, so the unique constraint allows
    one). A key generated by the service keeps its private half here (``private_key``, raw,
    base64); a key read from ``HLML_APPROVALS_SIGNING_KEY_FILE`` is recorded by its public half
    only. Rotating retires the active key (its signatures stay valid); revoking a key makes
    every statement it signed fail verification.
    """

    __tablename__ = "signing_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[str] = mapped_column(String(64), unique=True)
    public_key: Mapped[str] = mapped_column(String(64))
    private_key: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(20))
    active: Mapped[int | None] = mapped_column(Integer, unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    retired_at: Mapped[dt.datetime | None] = mapped_column()
    revoked_at: Mapped[dt.datetime | None] = mapped_column()
