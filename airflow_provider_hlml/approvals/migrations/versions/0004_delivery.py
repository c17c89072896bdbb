"""delivery: notices to reviewers, one-click tokens, timed steps and alert episodes

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

- ``deliveries``: each notice (a request, a reminder, an escalation, an outcome, an alert) to
  each recipient on each channel, with its state, attempts and the channel's message reference.
- ``action_tokens``: the one-click links' tokens (SHA-256 only), bound to a request, a recipient
  and an action, expiring and single-use.
- ``request_steps``: the timed steps of a request (planning, reminders, escalations, the
  "pending too long" alert), each run once across replicas and restarts.
- ``alert_episodes``: operational alerts, one open episode per alert at a time.

Requests that are pending when this revision is applied are delivered when the service first
runs with a channel configured.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "request_steps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        _ts("due_at", nullable=False),
        sa.Column("params", sa.JSON(), nullable=True),
        _ts("claimed_until"),
        _ts("done_at"),
        sa.Column("outcome", sa.String(20), nullable=True),
        sa.ForeignKeyConstraint(
            ["request_id"], ["approval_requests.id"], name="fk_request_steps_request_id_approval_requests"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_request_steps"),
        sa.UniqueConstraint("request_id", "step", name="uq_request_steps_request_id_step"),
    )
    op.create_index("ix_request_steps_done_at_due_at", "request_steps", ["done_at", "due_at"])
    op.create_table(
        "alert_episodes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alert", sa.String(64), nullable=False),
        sa.Column("open_key", sa.String(64), nullable=True),
        _ts("opened_at", nullable=False),
        _ts("closed_at"),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_alert_episodes"),
        sa.UniqueConstraint("open_key", name="uq_alert_episodes_open_key"),
    )
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dedupe_key", sa.String(64), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=True),
        sa.Column("episode_id", sa.Integer(), nullable=True),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("recipient", sa.String(320), nullable=False),
        sa.Column("recipient_name", sa.String(200), nullable=True),
        sa.Column("notice", sa.String(20), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _ts("due_at", nullable=False),
        _ts("claimed_until"),
        sa.Column("claimed_by", sa.String(32), nullable=True),
        _ts("created_at", nullable=False),
        _ts("sent_at"),
        sa.Column("ref", sa.String(256), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["request_id"], ["approval_requests.id"], name="fk_deliveries_request_id_approval_requests"
        ),
        sa.ForeignKeyConstraint(
            ["episode_id"], ["alert_episodes.id"], name="fk_deliveries_episode_id_alert_episodes"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_deliveries"),
        sa.UniqueConstraint("dedupe_key", name="uq_deliveries_dedupe_key"),
    )
    op.create_index("ix_deliveries_state_due_at", "deliveries", ["state", "due_at"])
    op.create_index("ix_deliveries_request_id", "deliveries", ["request_id"])
    op.create_table(
        "action_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("delivery_id", sa.Integer(), nullable=True),
        sa.Column("recipient", sa.String(320), nullable=False),
        sa.Column("recipient_name", sa.String(200), nullable=True),
        sa.Column("action", sa.String(20), nullable=False),
        _ts("created_at", nullable=False),
        _ts("expires_at", nullable=False),
        _ts("used_at"),
        sa.ForeignKeyConstraint(
            ["request_id"], ["approval_requests.id"], name="fk_action_tokens_request_id_approval_requests"
        ),
        sa.ForeignKeyConstraint(
            ["delivery_id"], ["deliveries.id"], name="fk_action_tokens_delivery_id_deliveries"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_action_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_action_tokens_token_hash"),
    )
    op.create_index("ix_action_tokens_request_id", "action_tokens", ["request_id"])


def downgrade() -> None:
    op.drop_index("ix_action_tokens_request_id", table_name="action_tokens")
    op.drop_table("action_tokens")
    op.drop_index("ix_deliveries_request_id", table_name="deliveries")
    op.drop_index("ix_deliveries_state_due_at", table_name="deliveries")
    op.drop_table("deliveries")
    op.drop_table("alert_episodes")
    op.drop_index("ix_request_steps_done_at_due_at", table_name="request_steps")
    op.drop_table("request_steps")
