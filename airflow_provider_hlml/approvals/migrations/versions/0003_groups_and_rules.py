"""groups and approval rules: groups of principals, a request's resolved members and its answers

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

- ``groups`` and ``group_members``: named groups of principals (``hlml-approvals groups ...``),
  written ``group:<name>`` among a request's approvers.
- ``approval_requests.members``: each group a request names, resolved to its members' names and
  e-mail addresses when the request opens. It joins the columns that never change (the
  ``approval_requests_identity_fixed`` trigger of revision 0002), so a later membership change
  cannot alter a pending request's rules.
- ``approval_requests.answers``: every answer given so far (a request with rules collects several
  approvals before it is decided).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_IDENTITY_FIXED = "the identity and spec of an approval request never change"
_OLD_COLUMNS = "id, kind, call_id, run_id, fn, spec, spec_hash, requested_at, created_by_key_id, created_by"
_NEW_COLUMNS = f"{_OLD_COLUMNS}, members"


def upgrade() -> None:
    op.create_table(
        "groups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_groups"),
        sa.UniqueConstraint("name", name="uq_groups_name"),
    )
    op.create_table(
        "group_members",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("principal_id", sa.Integer(), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"], name="fk_group_members_group_id_groups"),
        sa.ForeignKeyConstraint(
            ["principal_id"], ["principals.id"], name="fk_group_members_principal_id_principals"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_group_members"),
        sa.UniqueConstraint("group_id", "principal_id", name="uq_group_members_group_id_principal_id"),
    )
    op.create_index("ix_group_members_group_id", "group_members", ["group_id"])
    op.create_index("ix_group_members_principal_id", "group_members", ["principal_id"])
    op.add_column("approval_requests", sa.Column("members", sa.JSON(), nullable=True))
    op.add_column("approval_requests", sa.Column("answers", sa.JSON(), nullable=True))
    _identity_trigger(_NEW_COLUMNS)


def downgrade() -> None:
    _identity_trigger(_OLD_COLUMNS)
    # A plain DROP COLUMN (SQLite 3.35+ has it too) keeps the table, its AUTOINCREMENT and its
    # triggers; a batch rebuild would not.
    op.drop_column("approval_requests", "answers")
    op.drop_column("approval_requests", "members")
    op.drop_index("ix_group_members_principal_id", table_name="group_members")
    op.drop_index("ix_group_members_group_id", table_name="group_members")
    op.drop_table("group_members")
    op.drop_table("groups")


def _identity_trigger(columns: str) -> None:
    """(Re)create the trigger that refuses changing what a request is, over ``columns``."""
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS approval_requests_identity_fixed")
        op.execute(
            "CREATE TRIGGER approval_requests_identity_fixed "
            f"BEFORE UPDATE OF {columns} ON approval_requests "
            f"BEGIN SELECT RAISE(ABORT, '{_IDENTITY_FIXED}'); END"
        )
    elif op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS approval_requests_identity_fixed ON approval_requests")
        op.execute(
            f"CREATE TRIGGER approval_requests_identity_fixed BEFORE UPDATE OF {columns} "
            "ON approval_requests FOR EACH ROW EXECUTE FUNCTION hlml_refuse_identity_change()"
        )
