"""change notifications: PostgreSQL tells every replica when a request changes

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26

PostgreSQL only: an ``AFTER INSERT OR UPDATE`` row trigger on ``approval_requests`` sends
``NOTIFY hlml_approvals, '<kind>:<call_id>'``. PostgreSQL delivers it when the writing
transaction commits, to every connection that listens, so each ``hlml-approvals serve`` replica
(and the service mounted in each API server) wakes its long-polls at once, whoever wrote the
change (another replica, the CLI). SQLite has no equivalent; there, and whenever the listener is
down, the service keeps finding other processes' changes by re-reading recent rows.
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

#: The channel the trigger notifies (also ``approvals/api/longpoll.py`` ``NOTIFY_CHANNEL``).
CHANNEL = "hlml_approvals"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "CREATE OR REPLACE FUNCTION hlml_approvals_notify_change() RETURNS trigger AS $$ "
        f"BEGIN PERFORM pg_notify('{CHANNEL}', NEW.kind || ':' || NEW.call_id); RETURN NULL; END; "
        "$$ LANGUAGE plpgsql"
    )
    op.execute(
        "CREATE TRIGGER approval_requests_notify_change AFTER INSERT OR UPDATE ON approval_requests "
        "FOR EACH ROW EXECUTE FUNCTION hlml_approvals_notify_change()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS approval_requests_notify_change ON approval_requests")
    op.execute("DROP FUNCTION IF EXISTS hlml_approvals_notify_change()")
