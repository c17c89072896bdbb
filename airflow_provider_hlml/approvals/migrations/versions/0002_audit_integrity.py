"""audit integrity: requests are never deleted, tables never truncated, ids never reused

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

- PostgreSQL: ``BEFORE TRUNCATE ... FOR EACH STATEMENT`` triggers refuse ``TRUNCATE`` of
  ``audit_events`` and ``approval_requests`` (row triggers never fire on TRUNCATE).
- Both databases: a ``BEFORE DELETE`` trigger refuses deleting ``approval_requests`` rows, so no
  request loses its audit trail (a plain ``sqlite3`` session has foreign keys off, and the foreign
  key of ``audit_events`` would not stop it there). Requests are cancelled, never deleted.
- Both databases: a ``BEFORE UPDATE OF id, kind, call_id, ...`` trigger refuses changing what a
  request is (its id, call id, run id, spec and creator), so it can neither be detached from its
  audit trail nor shown differently after it was approved.
- SQLite: ``approval_requests`` and ``audit_events`` are rebuilt with ``AUTOINCREMENT``, so an id is
  never handed out twice (without it SQLite reuses the largest id once its row is gone, and a new
  request would show the old request's events). PostgreSQL sequences never hand out a value twice
  already, so nothing changes there.

The owner of the tables (or a superuser) can still drop these triggers: the service should connect
as a role that does not own the tables (``hlml-approvals db grant``, docs/deployment.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_REQUEST_NOT_DELETED = "approval requests are never deleted (cancel them instead)"
_IDENTITY_FIXED = "the identity and spec of an approval request never change"
# What a request is: changing any of these would detach it from its audit trail or change what
# the reviewer approved. Deciding, cancelling and escalating change other columns only.
_IDENTITY_COLUMNS = "id, kind, call_id, run_id, fn, spec, spec_hash, requested_at, created_by_key_id, created_by"
_AUDIT_APPEND_ONLY = "audit_events is append-only"


def upgrade() -> None:
    if _dialect() == "sqlite":
        with _sqlite_foreign_keys_off():
            _rebuild_sqlite_tables(autoincrement=True)
            _create_sqlite_audit_triggers()
            op.execute(
                "CREATE TRIGGER IF NOT EXISTS approval_requests_no_delete BEFORE DELETE ON approval_requests "
                f"BEGIN SELECT RAISE(ABORT, '{_REQUEST_NOT_DELETED}'); END"
            )
            op.execute(
                "CREATE TRIGGER IF NOT EXISTS approval_requests_identity_fixed "
                f"BEFORE UPDATE OF {_IDENTITY_COLUMNS} ON approval_requests "
                f"BEGIN SELECT RAISE(ABORT, '{_IDENTITY_FIXED}'); END"
            )
    elif _dialect() == "postgresql":
        op.execute(
            "CREATE OR REPLACE FUNCTION hlml_refuse_truncate() RETURNS trigger AS $$ "
            "BEGIN RAISE EXCEPTION 'TRUNCATE of % is refused: the audit trail is kept', TG_TABLE_NAME; END; "
            "$$ LANGUAGE plpgsql"
        )
        op.execute(
            "CREATE OR REPLACE FUNCTION hlml_refuse_request_delete() RETURNS trigger AS $$ "
            f"BEGIN RAISE EXCEPTION '{_REQUEST_NOT_DELETED}'; END; $$ LANGUAGE plpgsql"
        )
        for table in ("audit_events", "approval_requests"):
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION hlml_refuse_truncate()"
            )
        op.execute(
            "CREATE TRIGGER approval_requests_no_delete BEFORE DELETE ON approval_requests "
            "FOR EACH ROW EXECUTE FUNCTION hlml_refuse_request_delete()"
        )
        op.execute(
            "CREATE OR REPLACE FUNCTION hlml_refuse_identity_change() RETURNS trigger AS $$ "
            f"BEGIN RAISE EXCEPTION '{_IDENTITY_FIXED}'; END; $$ LANGUAGE plpgsql"
        )
        op.execute(
            f"CREATE TRIGGER approval_requests_identity_fixed BEFORE UPDATE OF {_IDENTITY_COLUMNS} "
            "ON approval_requests FOR EACH ROW EXECUTE FUNCTION hlml_refuse_identity_change()"
        )


def downgrade() -> None:
    if _dialect() == "sqlite":
        with _sqlite_foreign_keys_off():
            op.execute("DROP TRIGGER IF EXISTS approval_requests_no_delete")
            op.execute("DROP TRIGGER IF EXISTS approval_requests_identity_fixed")
            _rebuild_sqlite_tables(autoincrement=False)
            _create_sqlite_audit_triggers()
    elif _dialect() == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS approval_requests_no_delete ON approval_requests")
        op.execute("DROP TRIGGER IF EXISTS approval_requests_identity_fixed ON approval_requests")
        op.execute("DROP FUNCTION IF EXISTS hlml_refuse_identity_change()")
        for table in ("audit_events", "approval_requests"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        op.execute("DROP FUNCTION IF EXISTS hlml_refuse_request_delete()")
        op.execute("DROP FUNCTION IF EXISTS hlml_refuse_truncate()")


def _dialect() -> str:
    return str(op.get_bind().dialect.name)


@contextmanager
def _sqlite_foreign_keys_off() -> Iterator[None]:
    """Rebuild tables with foreign keys off, as SQLite requires, then check and restore them.

    With foreign keys on, dropping the old ``approval_requests`` while ``audit_events`` points at it
    fails. The pragma is ignored inside a transaction, hence the autocommit blocks (they commit
    what ran before them; every step of this migration can run again).
    """
    with op.get_context().autocommit_block():
        was_on = bool(op.get_bind().exec_driver_sql("PRAGMA foreign_keys").scalar())
        op.get_bind().exec_driver_sql("PRAGMA foreign_keys=OFF")
    yield
    broken = op.get_bind().exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise RuntimeError(f"foreign keys broken by the table rebuild: {broken}")
    # Only after success: an autocommit block commits, and a failed rebuild must roll back.
    with op.get_context().autocommit_block():
        op.get_bind().exec_driver_sql(f"PRAGMA foreign_keys={'ON' if was_on else 'OFF'}")


def _rebuild_sqlite_tables(*, autoincrement: bool) -> None:
    # The rebuild copies every row with its id (and AUTOINCREMENT then starts after the largest),
    # keeps indexes and constraints, and drops the table's triggers: the caller re-creates them.
    for table in ("approval_requests", "audit_events"):
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
        ):
            pass


def _create_sqlite_audit_triggers() -> None:
    # The append-only triggers of revision 0001, lost with the old table.
    for action in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER IF NOT EXISTS audit_events_no_{action.lower()} BEFORE {action} ON audit_events "
            f"BEGIN SELECT RAISE(ABORT, '{_AUDIT_APPEND_ONLY}'); END"
        )
