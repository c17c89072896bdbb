"""audit chain: every audit event is hash-chained, and one row holds the chain's head

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-10

- ``audit_events`` gets ``seq`` (1, 2, 3, ... across the whole trail; unique), ``prev_hash`` (the
  hash of event ``seq - 1``), ``request_prev_hash`` (the hash of the same request's previous event)
  and ``hash`` (SHA-256 of the event's canonical content with both links; see
  ``approvals/audit/chain.py``). ``request_id`` becomes nullable, for registry events that concern
  no request (``alias_moved``, ``alias_reverted``).
- ``audit_chain_head``: one row (id 1) with the ``seq`` and ``hash`` of the newest event, moved in
  the transaction that appends it; appenders lock it, so the chain never forks, and a chain that
  ends before the head was truncated.

**Events written before this revision are chained once, here, in id order.** Their hashes prove
that they have not changed *since this migration ran*, nothing about before: until then the trail
was only as trustworthy as the database and whoever could write to it (the append-only triggers
of revisions 0001 and 0002 stopped the service's role, not the tables' owner). Export the chain
right after upgrading (``hlml-approvals audit export``) to fix that starting point outside the
database.

The append-only triggers refuse the UPDATE that fills the new columns: they are dropped for the
backfill and re-created after it (on SQLite the table is also rebuilt, which drops them anyway).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

# The hash an event carries is defined by the service's code, not frozen in this file: the
# verifier must recompute exactly what the migration wrote, so both use the same function.
from airflow_provider_hlml.approvals.audit.chain import GENESIS, row_hash
from airflow_provider_hlml.approvals.models import UTCDateTime, utcnow

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_APPEND_ONLY = "audit_events is append-only"
_BATCH = 2000
_HASH_COLUMNS = ("seq", "prev_hash", "hash")

_events = sa.table(
    "audit_events",
    sa.column("id", sa.Integer()),
    sa.column("request_id", sa.Integer()),
    sa.column("event", sa.String()),
    sa.column("at", UTCDateTime()),
    sa.column("actor", sa.String()),
    sa.column("on_behalf_of", sa.String()),
    sa.column("comment", sa.Text()),
    sa.column("metadata", sa.JSON()),
    sa.column("seq", sa.Integer()),
    sa.column("prev_hash", sa.String()),
    sa.column("request_prev_hash", sa.String()),
    sa.column("hash", sa.String()),
)
_head = sa.table(
    "audit_chain_head",
    sa.column("id", sa.Integer()),
    sa.column("seq", sa.Integer()),
    sa.column("hash", sa.String()),
    sa.column("updated_at", UTCDateTime()),
)


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        # Nullable first (added in place, no rebuild), NOT NULL once every row has a value.
        batch.add_column(sa.Column("seq", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("request_prev_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("hash", sa.String(length=64), nullable=True))
    op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_audit_chain_head_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_chain_head")),
    )
    _drop_append_only_triggers()
    seq, head = _chain_existing_events()
    op.get_bind().execute(sa.insert(_head).values(id=1, seq=seq, hash=head, updated_at=utcnow()))
    _alter_audit_events(_tighten)
    _create_append_only_triggers()


def _tighten(batch: Any) -> None:
    batch.alter_column("request_id", existing_type=sa.Integer(), nullable=True)
    for column in _HASH_COLUMNS:
        batch.alter_column(column, existing_type=_type_of(column), nullable=False)
    batch.create_unique_constraint("uq_audit_events_seq", ["seq"])


def _type_of(column: str) -> sa.types.TypeEngine[Any]:
    return sa.Integer() if column == "seq" else sa.String(length=64)


def _chain_existing_events() -> tuple[int, str]:
    """Number and hash every event in id order, as ``chain.append`` would have; the head."""
    conn = op.get_bind()
    seq, prev = 0, GENESIS
    by_request: dict[int, str] = {}
    last_id = 0
    while True:
        rows = conn.execute(
            sa.select(
                _events.c.id,
                _events.c.request_id,
                _events.c.event,
                _events.c.at,
                _events.c.actor,
                _events.c.on_behalf_of,
                _events.c.comment,
                _events.c.metadata,
            )
            .where(_events.c.id > last_id)
            .order_by(_events.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            return seq, prev
        values = []
        for row in rows:
            seq += 1
            request_prev = by_request.get(row.request_id) if row.request_id is not None else None
            digest = row_hash(row, seq=seq, prev=prev, request_prev=request_prev)
            values.append(
                {
                    "b_id": row.id,
                    "b_seq": seq,
                    "b_prev": prev,
                    "b_request_prev": request_prev,
                    "b_hash": digest,
                }
            )
            if row.request_id is not None:
                by_request[row.request_id] = digest
            prev = digest
        conn.execute(
            sa.update(_events)
            .where(_events.c.id == sa.bindparam("b_id"))
            .values(
                seq=sa.bindparam("b_seq"),
                prev_hash=sa.bindparam("b_prev"),
                request_prev_hash=sa.bindparam("b_request_prev"),
                hash=sa.bindparam("b_hash"),
            ),
            values,
        )
        last_id = rows[-1].id


def downgrade() -> None:
    orphans = (
        op.get_bind()
        .execute(sa.select(sa.func.count()).select_from(_events).where(_events.c.request_id.is_(None)))
        .scalar_one()
    )
    if orphans:
        raise RuntimeError(
            f"cannot downgrade below 0006: {orphans} audit events concern no request (registry events), "
            "and revision 0005 has no place for them; the audit trail is never deleted"
        )
    _drop_append_only_triggers()
    _alter_audit_events(_loosen)
    _create_append_only_triggers()
    op.drop_table("audit_chain_head")


def _loosen(batch: Any) -> None:
    batch.drop_constraint("uq_audit_events_seq", type_="unique")
    for column in ("hash", "request_prev_hash", "prev_hash", "seq"):
        batch.drop_column(column)
    batch.alter_column("request_id", existing_type=sa.Integer(), nullable=False)


def _dialect() -> str:
    return str(op.get_bind().dialect.name)


# The append-only triggers of revisions 0001 (both databases) and 0002 (SQLite, after its rebuild).
def _drop_append_only_triggers() -> None:
    if _dialect() == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_delete")
    elif _dialect() == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_events_append_only ON audit_events")


def _create_append_only_triggers() -> None:
    if _dialect() == "sqlite":
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER IF NOT EXISTS audit_events_no_{action.lower()} BEFORE {action} ON audit_events "
                f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END"
            )
    elif _dialect() == "postgresql":
        # The function hlml_audit_events_append_only() of revision 0001 stays; only its trigger went.
        op.execute(
            "CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events "
            "FOR EACH ROW EXECUTE FUNCTION hlml_audit_events_append_only()"
        )


def _alter_audit_events(change: Any) -> None:
    """Apply ``change(batch)`` to ``audit_events``: SQLite changes nullability only by rebuilding
    the table (kept ``AUTOINCREMENT``), PostgreSQL alters it in place."""
    if _dialect() == "sqlite":
        with op.batch_alter_table(
            "audit_events", recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ) as batch:
            change(batch)
    else:
        with op.batch_alter_table("audit_events") as batch:
            change(batch)
