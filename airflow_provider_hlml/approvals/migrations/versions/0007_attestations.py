"""attestations: the service's signing keys, and each decision's signed statement

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-11

- ``signing_keys``: the Ed25519 keys decisions are signed with (one active; see
  ``approvals/attest/keys.py``). The first key is made when the service starts, not here: a service that
  reads its key from a file never has a private key in the database.
- ``approval_requests.attestation``: the signed statement of a decision, written once with it (a
  trigger refuses changing it afterwards, as revision 0002's refuse changing what a request is).
  Requests decided before this revision have none (they were not signed when decided, and are not
  signed after the fact: a signature dated later would attest nothing the service saw).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_ATTESTATION_FIXED = "the attestation of a decision never changes"


def upgrade() -> None:
    op.create_table(
        "signing_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("public_key", sa.String(64), nullable=False),
        sa.Column("private_key", sa.String(64), nullable=True),
        sa.Column("source", sa.String(20), nullable=False),
        sa.Column("active", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_signing_keys")),
        sa.UniqueConstraint("key_id", name=op.f("uq_signing_keys_key_id")),
        sa.UniqueConstraint("active", name=op.f("uq_signing_keys_active")),
    )
    # No batch mode: SQLite can add a nullable column in place (a table rebuild would drop the
    # triggers of revision 0002).
    op.add_column("approval_requests", sa.Column("attestation", sa.Text(), nullable=True))
    # Written once, with the decision: a trigger refuses changing or removing it afterwards.
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "CREATE TRIGGER IF NOT EXISTS approval_requests_attestation_fixed "
            "BEFORE UPDATE OF attestation ON approval_requests WHEN OLD.attestation IS NOT NULL "
            f"BEGIN SELECT RAISE(ABORT, '{_ATTESTATION_FIXED}'); END"
        )
    elif op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE OR REPLACE FUNCTION hlml_refuse_attestation_change() RETURNS trigger AS $$ "
            f"BEGIN RAISE EXCEPTION '{_ATTESTATION_FIXED}'; END; $$ LANGUAGE plpgsql"
        )
        op.execute(
            "CREATE TRIGGER approval_requests_attestation_fixed BEFORE UPDATE OF attestation "
            "ON approval_requests FOR EACH ROW WHEN (OLD.attestation IS NOT NULL) "
            "EXECUTE FUNCTION hlml_refuse_attestation_change()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS approval_requests_attestation_fixed")
    elif op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS approval_requests_attestation_fixed ON approval_requests")
        op.execute("DROP FUNCTION IF EXISTS hlml_refuse_attestation_change()")
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE approval_requests DROP COLUMN attestation")
    else:
        op.drop_column("approval_requests", "attestation")
    op.drop_table("signing_keys")
