"""The service's engine on PostgreSQL: pooled connections are checked only after sitting idle."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from airflow_provider_hlml.approvals import db


def _backend_pid(engine: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(engine: Any, pid: int) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        conn.commit()


class TestPooledConnections:
    def test_an_idle_connection_killed_by_the_database_is_replaced_unseen(
        self, empty_postgres_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(db, "IDLE_PING_SECONDS", 0.0)  # every checkout counts as after idling
        engine = db.make_engine(empty_postgres_url, pool_size=1)
        admin = db.make_engine(empty_postgres_url, pool_size=1)
        try:
            first = _backend_pid(engine)
            _terminate(admin, first)  # a database restart, as the pooled connection sees it
            # The checkout pings the dead connection, the pool replaces it: the caller sees nothing.
            second = _backend_pid(engine)
            assert second != first
        finally:
            engine.dispose()
            admin.dispose()

    def test_a_connection_in_use_a_moment_ago_is_handed_out_without_a_round_trip(
        self, empty_postgres_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(db, "IDLE_PING_SECONDS", 3600.0)
        engine = db.make_engine(empty_postgres_url, pool_size=1)
        admin = db.make_engine(empty_postgres_url, pool_size=1)
        try:
            first = _backend_pid(engine)
            _terminate(admin, first)
            # Not pinged (it was in use just now): the dead connection fails its first use, and
            # the pool then replaces it.
            with pytest.raises(DBAPIError, match=r"terminat|closed|server"):
                _backend_pid(engine)
            assert _backend_pid(engine) != first
        finally:
            engine.dispose()
            admin.dispose()
