"""Fixtures of the adversarial suite: the approvals service on SQLite and PostgreSQL, one client per role."""

from __future__ import annotations

from tests.approvals.conftest import (  # noqa: F401  (fixtures, registered by being imported here)
    Api,
    as_admin,
    as_agent,
    as_alice,
    as_bob,
    as_delegate,
    call_body,
    new_call_id,
    policy_state,
    postgres_approvals_service,
    postgres_database_url,
    service,
)
