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
from airflow_provider_hlml.approvals.audit import chain
from airflow_provider_hlml.approvals.models import AuditEvent, Base


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
                request_id = conn.execute(
                    text("SELECT id FROM approval_requests WHERE call_id = :call_id"), call_id
                ).scalar_one()
            with db.make_sessionmaker(engine)() as session:
                # Through the chain: this database may be shared with the session's service.
                chain.append(session, AuditEvent(request_id=request_id, event="created"))
                session.commit()
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
            ("approval_requests", "approval_requests_attestation_fixed"),
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


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_database_url(request: pytest.FixtureRequest) -> str:
    """An empty database of this test's own (it is migrated to an old revision, not to head)."""
    if request.param == "sqlite":
        return _sqlite_url()
    url: str = request.getfixturevalue("empty_postgres_url")
    return url


class TestAuditChainMigration:
    """Revision 0006 chains the events written before it, once, in id order."""

    def test_upgrade_chains_the_events_written_before_it(self, fresh_database_url: str) -> None:
        url = fresh_database_url
        db.migrate(url, "0005")
        engine = db.make_engine(url, pool_size=1)
        try:
            with engine.begin() as conn:
                for call_id in ("old-1", "old-2"):
                    conn.execute(
                        text(
                            "INSERT INTO approval_requests (kind, call_id, run_id, spec, spec_hash, state, "
                            "version, requested_at, updated_at) VALUES ('function_call', :c, 'r', '{}', 'h', "
                            "'pending', 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                        ),
                        {"c": call_id},
                    )
                ids = dict(conn.execute(text("SELECT call_id, id FROM approval_requests")).all())
                # Interleaved, as the trail of two requests answered at the same time is.
                for call_id, event, comment, metadata in (
                    ("old-1", "created", None, '{"run_id": "r"}'),
                    ("old-2", "created", None, None),
                    ("old-1", "responded", "ja, gerne ✓", '{"approved": true, "progress": 0.5}'),
                    ("old-2", "cancelled", None, '{"reason": "cancelled"}'),
                    ("old-1", "delivered", None, None),
                ):
                    conn.execute(
                        text(
                            "INSERT INTO audit_events (request_id, event, at, comment, metadata) "
                            "VALUES (:r, :e, CURRENT_TIMESTAMP, :c, :m)"
                        ),
                        {"r": ids[call_id], "e": event, "c": comment, "m": metadata},
                    )
            db.migrate(url)

            report = chain.verify(engine)
            assert report.ok, report.describe()
            assert report.events == 5
            with engine.connect() as conn:
                rows = conn.execute(
                    text("SELECT id, seq, request_id, hash, request_prev_hash FROM audit_events ORDER BY id")
                ).all()
            assert [r.seq for r in rows] == [1, 2, 3, 4, 5], "chained in id order"
            assert report.head == chain.ChainHead(5, rows[-1].hash)
            assert [r.request_prev_hash for r in rows] == [
                None,
                None,
                rows[0].hash,
                rows[1].hash,
                rows[2].hash,
            ]
            for call_id in ("old-1", "old-2"):
                assert chain.verify(engine, call_id=call_id).ok

            # The service appends after them, and the trail is still append-only.
            with db.make_sessionmaker(engine)() as session:
                appended = chain.append(session, AuditEvent(request_id=ids["old-2"], event="delivered"))
                assert (appended.seq, appended.request_prev_hash) == (6, rows[3].hash)
                session.commit()
            assert chain.verify(engine).ok
            with pytest.raises(DatabaseError, match="append-only"), engine.begin() as conn:
                conn.execute(text("UPDATE audit_events SET comment = 'edited'"))
        finally:
            engine.dispose()

    def test_downgrade_keeps_the_events_and_upgrading_again_rechains_them(
        self, fresh_database_url: str
    ) -> None:
        url = fresh_database_url
        db.migrate(url)
        engine = db.make_engine(url, pool_size=1)
        try:
            with engine.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO approval_requests (kind, call_id, run_id, spec, spec_hash, state, version, "
                        "requested_at, updated_at) VALUES ('function_call', 'c', 'r', '{}', 'h', 'pending', 1, "
                        "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                    )
                )
                request_id = conn.execute(text("SELECT id FROM approval_requests")).scalar_one()
            with db.make_sessionmaker(engine)() as session:
                for event in ("created", "responded"):
                    chain.append(session, AuditEvent(request_id=request_id, event=event))
                registry = chain.append(session, AuditEvent(request_id=None, event="alias_moved"))
                session.commit()
            # Revision 0005 has no place for an event of no request, and the trail is never deleted.
            with pytest.raises(RuntimeError, match="1 audit events concern no request"):
                command.downgrade(db.alembic_config(url), "0005")
            with engine.begin() as conn:
                if engine.dialect.name == "sqlite":
                    conn.exec_driver_sql("DROP TRIGGER audit_events_no_delete")
                else:
                    conn.exec_driver_sql("DROP TRIGGER audit_events_append_only ON audit_events")
                conn.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": registry.id})
            command.downgrade(db.alembic_config(url), "0005")
            with engine.connect() as conn:
                columns = {c["name"] for c in inspect(conn).get_columns("audit_events")}
                assert not columns & {"seq", "prev_hash", "request_prev_hash", "hash"}
                assert "audit_chain_head" not in inspect(conn).get_table_names()
                assert conn.execute(text("SELECT event FROM audit_events ORDER BY id")).scalars().all() == [
                    "created",
                    "responded",
                ]
            with pytest.raises(DatabaseError, match="append-only"), engine.begin() as conn:
                conn.execute(text("DELETE FROM audit_events"))
            db.migrate(url)
            report = chain.verify(engine)
            assert (report.ok, report.events) == (True, 2), report.describe()
        finally:
            engine.dispose()
