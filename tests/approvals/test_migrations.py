"""The schema comes only from the Alembic migrations, and matches the models exactly."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import DatabaseError

from airflow_provider_hlml.approvals import db
from airflow_provider_hlml.approvals.models import Base


def _sqlite_url() -> str:
    return f"sqlite:///{Path(tempfile.mkdtemp(prefix='hlml-migrations-')) / 'empty.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_database_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return _sqlite_url()
    url: str = request.getfixturevalue("postgres_database_url")
    return url


class TestMigrations:
    def test_upgrade_head_has_no_drift(self, empty_database_url: str) -> None:
        db.migrate(empty_database_url)
        engine = db.make_engine(empty_database_url, pool_size=1)
        try:
            with engine.connect() as conn:
                diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
                tables = set(inspect(conn).get_table_names())
        finally:
            engine.dispose()
        assert diff == []
        assert {"principals", "api_keys", "approval_requests", "audit_events", "alembic_version"} <= tables
        current, head = db.schema_status(empty_database_url)
        assert current == head

    def test_audit_trail_is_append_only(self, empty_database_url: str) -> None:
        db.migrate(empty_database_url)
        call_id = {"call_id": f"append-only-{uuid.uuid4().hex}"}
        engine = db.make_engine(empty_database_url, pool_size=1)
        try:
            with engine.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO approval_requests (kind, call_id, run_id, spec, spec_hash, state, version, "
                        "requested_at, updated_at) VALUES ('function_call', :call_id, 'r', '{}', 'h', "
                        "'pending', 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                    ),
                    call_id,
                )
                conn.execute(
                    text(
                        "INSERT INTO audit_events (request_id, event, at) "
                        "SELECT id, 'created', CURRENT_TIMESTAMP FROM approval_requests WHERE call_id = :call_id"
                    ),
                    call_id,
                )
            for statement in ("UPDATE audit_events SET event = 'forged'", "DELETE FROM audit_events"):
                with pytest.raises(DatabaseError, match="append-only"), engine.begin() as conn:
                    conn.execute(text(statement))
            with engine.connect() as conn:
                events = conn.execute(
                    text(
                        "SELECT event FROM audit_events JOIN approval_requests r ON r.id = request_id "
                        "WHERE r.call_id = :call_id"
                    ),
                    call_id,
                )
                assert events.scalars().all() == ["created"]
        finally:
            engine.dispose()

    def test_guard_triggers_are_installed(self, empty_database_url: str) -> None:
        db.migrate(empty_database_url)
        engine = db.make_engine(empty_database_url, pool_size=1)
        try:
            with engine.connect() as conn:
                if engine.dialect.name == "sqlite":
                    query = "SELECT tbl_name, name FROM sqlite_master WHERE type = 'trigger'"
                else:
                    query = (
                        "SELECT tgrelid::regclass::text, tgname FROM pg_trigger "
                        "WHERE NOT tgisinternal AND tgenabled <> 'D'"
                    )
                triggers = {tuple(row) for row in conn.execute(text(query))}
        finally:
            engine.dispose()
        expected = {
            ("approval_requests", "approval_requests_no_delete"),
            ("approval_requests", "approval_requests_identity_fixed"),
        }
        if engine.dialect.name == "sqlite":
            expected |= {
                ("audit_events", "audit_events_no_update"),
                ("audit_events", "audit_events_no_delete"),
            }
        else:
            expected |= {
                ("audit_events", "audit_events_append_only"),
                ("audit_events", "audit_events_no_truncate"),
                ("approval_requests", "approval_requests_no_truncate"),
                # Not a guard: it tells every replica when a request changes (NOTIFY).
                ("approval_requests", "approval_requests_notify_change"),
            }
        assert triggers == expected

    def test_sqlite_autoincrement_matches_the_models(self) -> None:
        # Autogenerate does not compare table options, so check AUTOINCREMENT (ids never reused) here.
        from sqlalchemy.dialects import sqlite
        from sqlalchemy.schema import CreateTable

        url = _sqlite_url()
        db.migrate(url)
        engine = db.make_engine(url, pool_size=1)
        try:
            with engine.connect() as conn:
                ddl: dict[str, str] = dict(
                    conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'table'")).all()
                )
        finally:
            engine.dispose()
        for name, table in Base.metadata.tables.items():
            in_models = "AUTOINCREMENT" in str(CreateTable(table).compile(dialect=sqlite.dialect()))
            assert ("AUTOINCREMENT" in ddl[name]) == in_models, name
        assert {name for name in Base.metadata.tables if "AUTOINCREMENT" in ddl[name]} == {
            "approval_requests",
            "audit_events",
        }

    def test_downgrade_to_base_and_back(self) -> None:
        url = _sqlite_url()
        db.migrate(url)
        command.downgrade(db.alembic_config(url), "base")
        assert db.schema_status(url)[0] is None
        db.migrate(url)
        assert db.schema_status(url)[0] == db.schema_status(url)[1]
