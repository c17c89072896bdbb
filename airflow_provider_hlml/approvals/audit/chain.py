"""The audit chain: each audit event carries the SHA-256 of its content and of the event before it.

An event's **canonical content** is the JSON object (sorted keys, no spaces, UTF-8, not
ASCII-escaped) of its ``seq``, ``request_id``, ``event``, ``at`` (ISO-8601 UTC with
microseconds, ``2026-12-10T09:30:00.123456Z``), ``actor``, ``on_behalf_of``, ``comment``,
``metadata``, ``prev`` (the hash of event ``seq - 1``; :data:`GENESIS` for event 1) and
``request_prev`` (the hash of the same request's previous event; null for a request's first event
and for events tied to no request). Its **hash** is the SHA-256 of that content, in hex.

:func:`append` is the only way events are written: it numbers the event, links it and moves the
one-row chain head (``audit_chain_head``) in the caller's transaction, under a lock on the head
row, so concurrent appenders (threads, replicas) form one chain and never fork it.

:func:`verify` walks the chain in ``seq`` order and names the first break. The row ``id`` is not
hashed (the database assigns it when the row is inserted, after the hash is made), but ids must
grow with ``seq``: the service inserts its events in that order, under the head's lock.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

from sqlalchemy import Connection, Engine, Table, bindparam, func, insert, select, update
from sqlalchemy import cast as sql_cast
from sqlalchemy.orm import Session, make_transient_to_detached

from airflow_provider_hlml.approvals.models import ApprovalRequest, AuditChainHead, AuditEvent, utcnow

#: The ``prev`` of the first event.
GENESIS = "0" * 64
#: The id of the chain head's single row.
HEAD_ID = 1
#: Where :func:`append` keeps, per session, the hashes it linked (see :class:`_Pending`).
_PENDING_KEY = "hlml_audit_chain"
_HASH = re.compile(r"[0-9a-f]{64}")

BreakKind = Literal["content_changed", "deleted", "reordered", "truncated", "forged", "rewritten"]

#: What each kind of break says (the first words of :meth:`Break.describe`).
CONTENT_CHANGED = "content changed"
REORDERED = "out of order / prev link broken (reordered or inserted)"
FORGED = "event without a valid hash (forged or written around the service)"

_events = cast("Table", AuditEvent.__table__)
_head = cast("Table", AuditChainHead.__table__)
_requests = cast("Table", ApprovalRequest.__table__)
#: The columns :func:`verify` reads, in the order :meth:`ChainWalk.step` unpacks them.
EVENT_COLUMNS = (
    _events.c.id,
    _events.c.seq,
    _events.c.request_id,
    _events.c.event,
    _events.c.at,
    _events.c.actor,
    _events.c.on_behalf_of,
    _events.c.comment,
    _events.c.metadata,
    _events.c.prev_hash,
    _events.c.request_prev_hash,
    _events.c.hash,
)


# The statements of append(), built once: building them per call costs more than running them.
_newest_of_request = (
    select(_events.c.hash)
    .where(_events.c.request_id == bindparam("request_id"))
    .order_by(_events.c.seq.desc())
    .limit(1)
    .scalar_subquery()
)
_newest_seq = select(func.max(_events.c.seq)).scalar_subquery()
_take_write_lock = update(_head).where(_head.c.id == HEAD_ID).values(seq=_head.c.seq)
_LOCK_HEAD = {
    # SQLite has no row locks: a no-op UPDATE takes the database's write lock (waiting for other
    # writers up to the busy timeout) and RETURNING reads the head under it.
    "sqlite": _take_write_lock.returning(_head.c.seq, _head.c.hash, _newest_of_request, _newest_seq),
    "postgresql": select(_head.c.seq, _head.c.hash, _newest_of_request, _newest_seq)
    .where(_head.c.id == HEAD_ID)
    .with_for_update(of=_head),
}
_read_head_and_request = select(_head.c.seq, _head.c.hash, _newest_of_request, _newest_seq).where(
    _head.c.id == HEAD_ID
)
_read_newest_of_request = select(_newest_of_request)
_move_head = (
    update(_head)
    .where(_head.c.id == HEAD_ID, _head.c.seq == bindparam("old_seq"), _head.c.hash == bindparam("old_hash"))
    .values(
        seq=bindparam("new_seq"),
        hash=bindparam("new_hash"),
        updated_at=bindparam("new_at", type_=_head.c.updated_at.type),
    )
)
# The same, from a guessed head: it moves only if the guess is right, as the statement sees the
# database under the lock (every event up to the head visible, the request's newest as guessed).
_move_guessed_head = _move_head.where(
    _newest_seq == bindparam("old_seq"),
    _newest_of_request.is_not_distinct_from(bindparam("request_prev", type_=_events.c.hash.type)),
)
#: The columns of an event that ``append`` writes (all but the id), and the attribute of each
#: whose name differs.
_ATTRIBUTE_OF = {"metadata": "event_metadata"}
_EVENT_VALUES = tuple(c for c in _events.c if c.name != "id")


def _move_and_insert(move: Any) -> Any:
    """PostgreSQL: ``move`` and the event's INSERT in one statement (one round trip): the event is
    inserted only if the head moved (``WITH moved AS (UPDATE ...) INSERT ... SELECT ... FROM
    moved``). The casts give each value its column's type (an INSERT ... SELECT does not infer it)."""
    moved = move.returning(_head.c.seq).cte("moved")
    values = select(
        *(sql_cast(bindparam(f"e_{c.name}", type_=c.type), c.type) for c in _EVENT_VALUES)
    ).select_from(moved)
    return insert(_events).from_select(list(_EVENT_VALUES), values).add_cte(moved).returning(_events.c.id)


_MOVE_AND_INSERT = {False: _move_and_insert(_move_head), True: _move_and_insert(_move_guessed_head)}


class ChainConflict(RuntimeError):
    """The chain head moved between reading and updating it (a stale read), or is missing."""


@dataclass(frozen=True)
class ChainHead:
    """The last link of a chain: its ``seq`` (0 for an empty chain) and ``hash``."""

    seq: int
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash}


@dataclass(frozen=True)
class Break:
    """The first place a chain is broken: what is wrong, and the event where it shows.

    :param kind: ``content_changed``, ``deleted``, ``reordered``, ``truncated``, ``forged`` or
        ``rewritten`` (the database no longer holds an exported head).
    :param message: what is wrong, in words (e.g. ``missing event(s) seq 4..6 (deleted)``).
    :param event_id: the row id of the event where the break shows (None when there is none).
    :param seq: that event's ``seq``.
    :param request_id: its request's row id (None for an event tied to no request).
    :param call_id: its request's call id, when known.
    :param event: its event name (``created``, ``responded``, ...).
    :param detail: the evidence (the hashes that differ).
    """

    kind: BreakKind
    message: str
    event_id: int | None = None
    seq: int | None = None
    request_id: int | None = None
    call_id: str | None = None
    event: str | None = None
    detail: str = ""

    def describe(self) -> str:
        where = ", ".join(
            f"{name} {value}"
            for name, value in (
                ("event id", self.event_id),
                ("seq", self.seq),
                ("request", self.call_id or self.request_id),
                ("event", self.event),
            )
            if value is not None
        )
        text = f"{self.message}: {where}" if where else self.message
        return f"{text} ({self.detail})" if self.detail else text

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "message": self.message,
            "event_id": self.event_id,
            "seq": self.seq,
            "request_id": self.request_id,
            "call_id": self.call_id,
            "event": self.event,
            "detail": self.detail,
            "description": self.describe(),
        }


@dataclass(frozen=True)
class VerifyReport:
    """The result of a verification: how many events were checked, the head, the first break."""

    events: int
    head: ChainHead | None
    first_break: Break | None = None
    call_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.first_break is None

    def describe(self) -> str:
        if self.first_break is not None:
            return f"chain broken: {self.first_break.describe()}"
        scope = f"request {self.call_id}: " if self.call_id else ""
        head = f"head seq {self.head.seq} hash {self.head.hash}" if self.head else "no head"
        return f"chain intact: {scope}{self.events} events, {head}"

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "head": self.head.to_json() if self.head else None,
            "call_id": self.call_id,
            "break": self.first_break.to_json() if self.first_break else None,
            "description": self.describe(),
        }


# ---- content and hash -------------------------------------------------------------------------


def format_at(at: dt.datetime) -> str:
    """``at`` as hashed: ISO-8601 in UTC with microseconds (a naive time is taken as UTC)."""
    at = at.replace(tzinfo=None) if at.tzinfo is None else at.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return at.isoformat(timespec="microseconds") + "Z"


def canonical_content(
    *,
    seq: int,
    request_id: int | None,
    event: str,
    at: dt.datetime | str,
    actor: str | None,
    on_behalf_of: str | None,
    comment: str | None,
    metadata: Mapping[str, Any] | None,
    prev: str,
    request_prev: str | None,
) -> bytes:
    """The bytes an event's hash is made of (``at`` as a datetime, or already :func:`format_at`-ed)."""
    content = {
        "seq": seq,
        "request_id": request_id,
        "event": event,
        "at": at if isinstance(at, str) else format_at(at),
        "actor": actor,
        "on_behalf_of": on_behalf_of,
        "comment": comment,
        "metadata": metadata,
        "prev": prev,
        "request_prev": request_prev,
    }
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # surrogatepass: a lone surrogate must not make an event unhashable (check_clean refuses them).
    return text.encode("utf-8", "surrogatepass")


def event_hash(**content: Any) -> str:
    """The SHA-256 (hex) of :func:`canonical_content` of ``content``."""
    return hashlib.sha256(canonical_content(**content)).hexdigest()


def row_hash(row: Any, *, seq: int | None = None, prev: str | None = None, request_prev: Any = ...) -> str:
    """The hash of an ``audit_events`` row (a Core row of :data:`EVENT_COLUMNS` or the like);
    ``seq``, ``prev`` and ``request_prev`` replace the row's own when given (chaining it anew)."""
    return event_hash(
        seq=row.seq if seq is None else seq,
        request_id=row.request_id,
        event=row.event,
        at=row.at,
        actor=row.actor,
        on_behalf_of=row.on_behalf_of,
        comment=row.comment,
        metadata=row.metadata,
        prev=row.prev_hash if prev is None else prev,
        request_prev=row.request_prev_hash if request_prev is ... else request_prev,
    )


def hash_of(event: AuditEvent) -> str:
    """The hash ``event`` should carry, recomputed from its columns."""
    return event_hash(
        seq=event.seq,
        request_id=event.request_id,
        event=event.event,
        at=event.at,
        actor=event.actor,
        on_behalf_of=event.on_behalf_of,
        comment=event.comment,
        metadata=event.event_metadata,
        prev=event.prev_hash,
        request_prev=event.request_prev_hash,
    )


# ---- append -----------------------------------------------------------------------------------


@dataclass
class _Pending:
    """What this session linked last: the head it left, each request's newest hash, and the
    transaction it did it in (which holds the head's lock until it ends)."""

    head: ChainHead
    transaction: Any
    requests: dict[int, str] = field(default_factory=dict)


@dataclass
class _Remembered:
    """The head this process linked last, per database, and the newest hash of the requests it
    linked: a guess, right as long as no other process appended since."""

    head: ChainHead
    requests: dict[int, str] = field(default_factory=dict)


#: Per database URL. Only a guess: a wrong one costs a statement, never a wrong link.
_REMEMBERED: dict[Any, _Remembered] = {}
_REMEMBER_AT_MOST = 4096


def append(session: Session, event: AuditEvent) -> AuditEvent:
    """Link ``event`` (new, not yet added to a session) to the chain and add it to ``session``
    (not committed); return it.

    Sets ``seq``, ``prev_hash``, ``request_prev_hash`` and ``hash`` now (``at`` too, if unset),
    so the caller can read (and sign) them before the commit, and moves the chain head in the
    same transaction, which then holds the head row's lock until it ends (a row lock on
    PostgreSQL, the database's write lock on SQLite): concurrent appenders, in any process,
    queue there and form one chain. The head only moves from the head the event was linked to
    (``UPDATE ... WHERE seq = :old AND hash = :old``), so a stale read never forks the chain.

    As a rule this costs one statement: the move itself, from the head this process linked last
    (guarded so that it moves only if that is still the head, every event up to it is visible and
    the request's newest event is the one remembered). When another process appended since, the
    head is locked and read (``SELECT ... FOR UPDATE``; on SQLite an ``UPDATE ... RETURNING``)
    and then moved: two statements more. On PostgreSQL the statement that moves the head also
    inserts the event, so ``event.id`` is set on return and the session holds the event as a
    persistent object (after a rollback it is gone, like any row the transaction wrote); on
    SQLite the event is inserted when the session flushes. Nothing else of the session is flushed
    here.
    """
    if event.at is None:
        event.at = utcnow()
    # The caller's pending changes flush when it commits, as without the chain: an autoflush here
    # would raise its errors (a concurrent decision's StaleDataError) from the middle of auditing.
    with session.no_autoflush:
        return _append(session, event)


def _append(session: Session, event: AuditEvent) -> AuditEvent:
    # Core statements on the session's connection: the ORM's execute() would cost more than the
    # chain itself (this runs for every event, inside the decision's transaction).
    conn = session.connection()
    request_id = event.request_id
    pending = session.info.get(_PENDING_KEY)
    if not isinstance(pending, _Pending):
        pending = None
    if pending is not None and pending.transaction is session.get_transaction():
        # This transaction moved the head before and holds its lock: nobody else moved it since.
        request_prev: str | None = None
        if request_id in pending.requests:
            request_prev = pending.requests[request_id]
        elif request_id is not None:
            request_prev = conn.execute(_read_newest_of_request, {"request_id": request_id}).scalar()
        linked = _link(conn, event, pending.head, request_prev, guessed=False)
    else:
        remembered = _REMEMBERED.get(conn.engine.url)
        linked = remembered is not None and _link(
            conn, event, remembered.head, remembered.requests.get(request_id or 0), guessed=True
        )
    if not linked:
        # Rolled back to a savepoint, or another process appended: lock the head, read, link.
        head, request_prev = _lock_head(conn, request_id, pending)
        if not _link(conn, event, head, request_prev, guessed=False):
            raise ChainConflict(f"the audit chain head moved from seq {head.seq} while appending; retry")
    if event.id is not None:
        # Inserted already (PostgreSQL): the session holds it as the row it is.
        make_transient_to_detached(event)
    session.add(event)
    linked_to = ChainHead(event.seq - 1, event.prev_hash)
    if pending is None or pending.head != linked_to:
        pending = _Pending(linked_to, session.get_transaction())
    pending.head = ChainHead(event.seq, event.hash)
    pending.transaction = session.get_transaction()
    if request_id is not None:
        pending.requests[request_id] = event.hash
    session.info[_PENDING_KEY] = pending
    _remember(conn, pending.head, request_id, event.hash)
    return event


def _link(
    conn: Connection, event: AuditEvent, head: ChainHead, request_prev: str | None, *, guessed: bool
) -> bool:
    """Number, link and hash ``event`` after ``head``, and move the head to it; False (and the head
    unmoved) if ``head`` is not the head, or with ``guessed`` if the guess was wrong."""
    event.seq = head.seq + 1
    event.prev_hash = head.hash
    event.request_prev_hash = request_prev if event.request_id is not None else None
    event.hash = hash_of(event)
    params = {
        "old_seq": head.seq,
        "old_hash": head.hash,
        "new_seq": event.seq,
        "new_hash": event.hash,
        "new_at": event.at,
    }
    if guessed:
        params.update(request_id=event.request_id, request_prev=event.request_prev_hash)
    if conn.dialect.name == "postgresql":
        # Moved and inserted by one statement, or neither: the chain costs no round trip of its
        # own when the guess is right.
        params.update(
            {f"e_{c.name}": getattr(event, _ATTRIBUTE_OF.get(c.name, c.name)) for c in _EVENT_VALUES}
        )
        inserted = conn.execute(_MOVE_AND_INSERT[guessed], params).first()
        if inserted is None:
            return False
        event.id = inserted[0]
        return True
    moved = conn.execute(_move_guessed_head if guessed else _move_head, params)
    return bool(moved.rowcount == 1)


def _remember(conn: Connection, head: ChainHead, request_id: int | None, digest: str) -> None:
    known = _REMEMBERED.get(conn.engine.url)
    if known is None or len(known.requests) >= _REMEMBER_AT_MOST:
        known = _REMEMBERED[conn.engine.url] = _Remembered(head)
    if request_id is not None:
        known.requests[request_id] = digest
    known.head = head


def _lock_head(
    conn: Connection, request_id: int | None, pending: _Pending | None
) -> tuple[ChainHead, str | None]:
    """The head, locked until the transaction ends (``SELECT ... FOR UPDATE`` on PostgreSQL, the
    database's write lock on SQLite), and the newest hash of request ``request_id``: one
    statement, as a rule."""
    params = {"request_id": request_id}
    query = _LOCK_HEAD.get(conn.dialect.name)
    if query is None or (conn.dialect.name == "sqlite" and not conn.dialect.update_returning):
        if conn.dialect.name == "sqlite":  # SQLite before 3.35: no RETURNING
            conn.execute(_take_write_lock)
        query = _read_head_and_request
    row = conn.execute(query, params).first()
    if row is None:
        raise ChainConflict("the audit chain has no head row: run 'hlml-approvals migrate'")
    head = ChainHead(int(row[0]), str(row[1]))
    request_prev = row[2] if request_id is not None else None
    if isinstance(pending, _Pending) and pending.head == head:
        # Nobody appended since this session did: what it linked (maybe not flushed) is newest.
        return head, pending.requests.get(request_id, request_prev) if request_id is not None else None
    if request_id is not None and row[3] != head.seq:
        # On PostgreSQL a statement that waited for the lock returns the head as committed after
        # the wait, but the rest as of its start: the request's newest event may have been
        # committed meanwhile, so read it again (a new statement sees it).
        request_prev = conn.execute(_read_newest_of_request, params).scalar()
    return head, request_prev


def read_head(conn: Connection) -> ChainHead | None:
    """The chain head as the database holds it (None if its row is missing)."""
    row = conn.execute(select(_head.c.seq, _head.c.hash).where(_head.c.id == HEAD_ID)).first()
    return None if row is None else ChainHead(int(row[0]), str(row[1]))


# ---- verify -----------------------------------------------------------------------------------


class ChainWalk:
    """Checks events handed to :meth:`step` in ``seq`` order; used on the database and on exports.

    Per event, in this order (the first failing check names the break): the hash is a SHA-256 hex
    digest (else *forged*); ``seq`` is the next number (else *deleted*: the numbers skipped);
    ``prev_hash`` is the previous event's hash, its id is larger and ``request_prev_hash`` is the
    same request's previous hash (else *reordered*); the hash matches the content (else *content
    changed*).
    """

    def __init__(self) -> None:
        self.count = 0
        self.head = ChainHead(0, GENESIS)
        self.last_id: int | None = None
        self.last_event: str | None = None
        self.last_request: int | None = None
        self.requests: dict[int, str] = {}

    def step(self, row: Sequence[Any]) -> Break | None:
        (
            event_id,
            seq,
            request_id,
            event,
            at,
            actor,
            on_behalf_of,
            comment,
            metadata,
            prev,
            request_prev,
            digest,
        ) = row
        here: dict[str, Any] = {"event_id": event_id, "seq": seq, "request_id": request_id, "event": event}
        if not isinstance(digest, str) or not _HASH.fullmatch(digest) or not isinstance(seq, int):
            return Break("forged", FORGED, detail=f"hash {digest!r}", **here)
        expected = self.head.seq + 1
        if seq != expected:
            if seq > expected:
                return Break("deleted", f"missing event(s) seq {expected}..{seq - 1} (deleted)", **here)
            return Break("reordered", REORDERED, detail=f"seq {seq} again after seq {self.head.seq}", **here)
        if prev != self.head.hash:
            return Break(
                "reordered",
                REORDERED,
                detail=f"prev_hash {prev} but event seq {self.head.seq} has hash {self.head.hash}",
                **here,
            )
        if self.last_id is not None and event_id is not None and event_id <= self.last_id:
            return Break(
                "reordered",
                REORDERED,
                detail=f"id {event_id} after id {self.last_id} of seq {seq - 1}",
                **here,
            )
        if request_prev != (None if request_id is None else self.requests.get(request_id)):
            return Break(
                "reordered",
                REORDERED,
                detail=f"request_prev_hash {request_prev} is not the hash of the request's previous event",
                **here,
            )
        actual = event_hash(
            seq=seq,
            request_id=request_id,
            event=event,
            at=at,
            actor=actor,
            on_behalf_of=on_behalf_of,
            comment=comment,
            metadata=metadata,
            prev=prev,
            request_prev=request_prev,
        )
        if actual != digest:
            return Break(
                "content_changed",
                CONTENT_CHANGED,
                detail=f"hash {digest}, content hashes to {actual}",
                **here,
            )
        self.count += 1
        self.head = ChainHead(seq, digest)
        self.last_id, self.last_event, self.last_request = event_id, event, request_id
        if request_id is not None:
            self.requests[request_id] = digest
        return None

    def finish(self, head: ChainHead | None) -> Break | None:
        """The break at the chain's end: it must end exactly at ``head``."""
        last: dict[str, Any] = {
            "event_id": self.last_id,
            "seq": self.head.seq or None,
            "request_id": self.last_request,
            "event": self.last_event,
        }
        if head is None:
            return Break(
                "truncated", f"chain ends at seq {self.head.seq} but there is no head (truncated)", **last
            )
        if self.head.seq < head.seq:
            return Break(
                "truncated",
                f"chain ends at seq {self.head.seq} but the head says {head.seq} (truncated)",
                **last,
            )
        if self.head.hash != head.hash:
            return Break(
                "content_changed",
                CONTENT_CHANGED,
                detail=f"the head says hash {head.hash} for seq {head.seq}, the event has {self.head.hash}",
                **last,
            )
        return None


@contextmanager
def connected(source: Session | Connection | Engine) -> Iterator[Connection]:
    """A connection of ``source``: a session's own, a connection as is, or a new one of an engine."""
    if isinstance(source, Session):
        yield source.connection()
    elif isinstance(source, Connection):
        yield source
    else:
        with source.connect() as conn:
            yield conn


def verify(
    source: Session | Connection | Engine,
    *,
    call_id: str | None = None,
    kind: str | None = None,
    against: ChainHead | None = None,
    batch: int = 20_000,
) -> VerifyReport:
    """Verify the whole chain (streamed in ``seq`` order), or with ``call_id`` the events of that
    request (of ``kind``, or of either kind), and name the first break.

    The whole chain is read up to the head read first; events appended meanwhile are left to the
    next run, but an event beyond the head that the head does not account for is *forged*. With
    ``against`` (an exported head), an intact chain must still hold that head (:func:`compare`).
    """
    with connected(source) as conn:
        if call_id is not None:
            return _verify_request(conn, call_id, kind)
        head = read_head(conn)
        walk = ChainWalk()
        rows = conn.execution_options(yield_per=batch).execute(
            select(*EVENT_COLUMNS).where(_events.c.seq <= (head.seq if head else 0)).order_by(_events.c.seq)
        )
        try:
            for row in rows:
                if (found := walk.step(row)) is not None:
                    return VerifyReport(walk.count, head, _named(conn, found))
        finally:
            rows.close()
        found = walk.finish(head) or _beyond_head(conn, head)
        if found is None and against is not None:
            found = compare(conn, against)
        return VerifyReport(walk.count, head, _named(conn, found) if found else None)


def _beyond_head(conn: Connection, head: ChainHead | None) -> Break | None:
    """An event the head does not account for: numbered past it, or not numbered at all."""
    last = head.seq if head else 0
    # Two queries, each answered by the index on seq (an OR of both would scan the table).
    row = conn.execute(select(*EVENT_COLUMNS).where(_events.c.seq.is_(None)).limit(1)).first()
    if row is None:
        row = conn.execute(
            select(*EVENT_COLUMNS).where(_events.c.seq > last).order_by(_events.c.seq).limit(1)
        ).first()
    if row is None:
        return None
    now = read_head(conn)
    if row.seq is not None and now is not None and row.seq <= now.seq:
        return None  # appended (through the service) while we verified
    return Break(
        "forged",
        FORGED,
        event_id=row.id,
        seq=row.seq,
        request_id=row.request_id,
        event=row.event,
        detail=f"seq {row.seq} is past the head (seq {last})" if row.seq is not None else "no seq",
    )


def compare(source: Session | Connection | Engine, exported: ChainHead) -> Break | None:
    """The break, if the database chain no longer holds ``exported`` (a head exported earlier) at the
    same ``seq`` with the same hash: the chain was truncated or rewritten since. Check the chain
    itself with :func:`verify` (``against=`` does both)."""
    with connected(source) as conn:
        head = read_head(conn)
        if head is None or head.seq < exported.seq:
            return Break(
                "truncated",
                f"chain ends at seq {head.seq if head else 0} but the export's head is seq {exported.seq} "
                "(truncated since the export)",
            )
        row = conn.execute(select(*EVENT_COLUMNS).where(_events.c.seq == exported.seq)).first()
        if row is None:
            return Break(
                "deleted", f"missing event(s) seq {exported.seq}..{exported.seq} (deleted since the export)"
            )
        if row.hash != exported.hash:
            return Break(
                "rewritten",
                "the chain no longer holds the exported head (rewritten since the export)",
                event_id=row.id,
                seq=row.seq,
                request_id=row.request_id,
                event=row.event,
                detail=f"hash {row.hash}, the export says {exported.hash}",
            )
        return None


def _named(conn: Connection, found: Break) -> Break:
    """``found`` with its request's call id."""
    if found.request_id is None or found.call_id is not None:
        return found
    call_id = conn.execute(select(_requests.c.call_id).where(_requests.c.id == found.request_id)).scalar()
    return replace(found, call_id=call_id)


def _verify_request(conn: Connection, call_id: str, kind: str | None) -> VerifyReport:
    """Each event of the request(s) ``call_id`` is intact, linked to its neighbours in the chain
    (one point lookup each way) and to the request's previous event; none is missing in between."""
    query = select(_requests.c.id).where(_requests.c.call_id == call_id)
    if kind is not None:
        query = query.where(_requests.c.kind == kind)
    request_ids = conn.execute(query.order_by(_requests.c.id)).scalars().all()
    if not request_ids:
        raise LookupError(f"no request with call_id {call_id!r}")
    head = read_head(conn)
    count = 0
    for request_id in request_ids:
        last: Any = None
        for row in conn.execute(
            select(*EVENT_COLUMNS).where(_events.c.request_id == request_id).order_by(_events.c.seq)
        ):
            found = _check_request_event(conn, row, last, head)
            if found is not None:
                return VerifyReport(count, head, replace(found, call_id=call_id), call_id=call_id)
            count += 1
            last = row
    return VerifyReport(count, head, call_id=call_id)


def _check_request_event(conn: Connection, row: Any, last: Any, head: ChainHead | None) -> Break | None:
    here: dict[str, Any] = {
        "event_id": row.id,
        "seq": row.seq,
        "request_id": row.request_id,
        "event": row.event,
    }
    if not isinstance(row.hash, str) or not _HASH.fullmatch(row.hash) or row.seq is None:
        return Break("forged", FORGED, detail=f"hash {row.hash!r}", **here)
    if head is None or row.seq > head.seq:
        return Break("forged", FORGED, detail=f"seq {row.seq} is past the head", **here)
    before = (
        (0, GENESIS, None)
        if row.seq == 1
        else conn.execute(
            select(_events.c.seq, _events.c.hash, _events.c.id).where(_events.c.seq == row.seq - 1)
        ).first()
    )
    if before is None:
        return _gap_break(conn, 0, row.seq, here) or Break("reordered", REORDERED, **here)
    if before[1] != row.prev_hash or (before[2] is not None and before[2] >= row.id):
        return Break(
            "reordered",
            REORDERED,
            detail=f"prev_hash {row.prev_hash}, seq {before[0]} has {before[1]}",
            **here,
        )
    if row.request_prev_hash != (last.hash if last is not None else None):
        if last is None:
            return Break(
                "deleted",
                f"missing event(s) of this request before seq {row.seq} (deleted)",
                detail=f"request_prev_hash {row.request_prev_hash}, but this is the request's first event",
                **here,
            )
        return _gap_break(conn, last.seq, row.seq, here) or Break(
            "reordered",
            REORDERED,
            detail=f"request_prev_hash {row.request_prev_hash}, the request's previous event has {last.hash}",
            **here,
        )
    actual = row_hash(row)
    if actual != row.hash:
        return Break(
            "content_changed", CONTENT_CHANGED, detail=f"hash {row.hash}, content hashes to {actual}", **here
        )
    if row.seq < head.seq:
        after = conn.execute(select(_events.c.prev_hash).where(_events.c.seq == row.seq + 1)).first()
        if after is None:
            return _gap_break(conn, row.seq, head.seq + 1, here)
        if after[0] != row.hash:
            return Break(
                "content_changed",
                CONTENT_CHANGED,
                detail=f"rehashed: the next event links to {after[0]}, not to {row.hash}",
                **here,
            )
    elif row.hash != head.hash:
        return Break("content_changed", CONTENT_CHANGED, detail=f"the head says {head.hash}", **here)
    return None


def _gap_break(conn: Connection, low: int, high: int, here: dict[str, Any]) -> Break | None:
    """The first numbers missing strictly between ``low`` and ``high``, as a *deleted* break."""
    expected = low + 1
    for (seq,) in conn.execute(
        select(_events.c.seq).where(_events.c.seq > low, _events.c.seq < high).order_by(_events.c.seq)
    ):
        if seq != expected:
            break
        expected += 1
    else:
        seq = high
    if seq == expected:
        return None
    return Break("deleted", f"missing event(s) seq {expected}..{seq - 1} (deleted)", **here)
