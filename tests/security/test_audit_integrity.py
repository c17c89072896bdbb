"""The audit trail survives whoever holds the service's database login (migration 0002, ``db grant``).

Every test runs against a real database and fails on the schema of revision 0001 alone: a plain
``sqlite3`` session (foreign keys off) could delete a request and a new request took its id and its
events; PostgreSQL's ``TRUNCATE`` passed the row triggers; and the service ran as the owner, who
can disable any trigger.
"""

from __future__ import annotations

import sqlite3
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from airflow_provider_hlml.approvals import db, store
from airflow_provider_hlml.approvals.cli import main
from tests.fixtures.approvals import API_PREFIX, start_approvals_service
from tests.security.conftest import call_body

NEVER_DELETED = "never deleted"
APPEND_ONLY = "append-only"
IDENTITY_FIXED = "identity and spec of an approval request never change"


def _sqlite_url() -> str:
    return f"sqlite:///{Path(tempfile.mkdtemp(prefix='hlml-audit-integrity-')) / 'approvals.db'}"


def _sqlite_path(url: str) -> str:
    database = make_url(url).database
    assert database
    return database


def _create_request(database_url: str, call_id: str | None = None) -> tuple[int, str]:
    """Create a function call with the service's own code; return its row id and call_id."""
    body = call_body(call_id)
    engine = db.make_engine(database_url, pool_size=1)
    try:
        with db.make_sessionmaker(engine)() as session:
            agent = store.principal_actor(session, name=None)
            row, created = store.create_request(
                session,
                kind=store.FUNCTION_CALL,
                run_id=body["run_id"],
                call_id=body["call_id"],
                spec=body["spec"],
                actor=agent,
            )
            assert created
            return row.id, row.call_id
    finally:
        engine.dispose()


def _audit_of(database_url: str, call_id: str) -> list[tuple[int, str]]:
    engine = db.make_engine(database_url, pool_size=1)
    try:
        with db.make_sessionmaker(engine)() as session:
            return [
                (e.id, e.event)
                for e in store.audit_events(session, kind=store.FUNCTION_CALL, call_id=call_id)
            ]
    finally:
        engine.dispose()


def _refused(database_url: str, statement: str, match: str) -> None:
    """``statement`` fails with an error matching ``match``, and changes nothing."""
    engine = db.make_engine(database_url, pool_size=1)
    try:
        with pytest.raises(DBAPIError, match=match), engine.begin() as conn:
            conn.execute(text(statement))
    finally:
        engine.dispose()


def _counts(database_url: str) -> tuple[int, int]:
    engine = db.make_engine(database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            requests = conn.execute(text("SELECT count(*) FROM approval_requests")).scalar_one()
            events = conn.execute(text("SELECT count(*) FROM audit_events")).scalar_one()
            return int(requests), int(events)
    finally:
        engine.dispose()


class TestSqliteAuditIntegrity:
    @pytest.fixture
    def database_url(self) -> str:
        url = _sqlite_url()
        db.migrate(url)
        return url

    def test_plain_sqlite3_cannot_delete_a_request_or_rewrite_its_audit(self, database_url: str) -> None:
        request_id, call_id = _create_request(database_url)
        conn = sqlite3.connect(_sqlite_path(database_url))
        try:
            assert conn.execute("PRAGMA foreign_keys").fetchone() == (0,), "a plain session has FKs off"
            for statement, match in (
                ("DELETE FROM approval_requests", NEVER_DELETED),
                (f"DELETE FROM approval_requests WHERE id = {request_id}", NEVER_DELETED),
                ("DELETE FROM audit_events", APPEND_ONLY),
                ("UPDATE audit_events SET event = 'forged'", APPEND_ONLY),
                (f"UPDATE approval_requests SET id = id + 1000 WHERE id = {request_id}", IDENTITY_FIXED),
                ("UPDATE approval_requests SET spec = '{}'", IDENTITY_FIXED),
                ("UPDATE approval_requests SET call_id = 'other'", IDENTITY_FIXED),
            ):
                with pytest.raises(sqlite3.DatabaseError, match=match):
                    conn.execute(statement)
                conn.rollback()
        finally:
            conn.close()
        assert _audit_of(database_url, call_id)[0][1] == "created"
        assert _counts(database_url) == (1, 1)

    def test_ids_are_never_reused_even_when_a_row_goes(self, database_url: str) -> None:
        _, first = _create_request(database_url)
        latest_id, latest = _create_request(database_url)
        latest_audit = _audit_of(database_url, latest)
        conn = sqlite3.connect(_sqlite_path(database_url))
        try:
            # Whoever can write the file can drop the trigger; even then the id is not handed out again.
            with conn:
                conn.execute("DROP TRIGGER IF EXISTS approval_requests_no_delete")
                conn.execute("DELETE FROM approval_requests WHERE id = ?", (latest_id,))
            new_id, new = _create_request(database_url)
            assert new_id > latest_id
            new_audit = _audit_of(database_url, new)
            assert [event for _, event in new_audit] == ["created"], "a new request shows only its own events"
            assert {i for i, _ in new_audit}.isdisjoint(i for i, _ in latest_audit)
            assert [event for _, event in _audit_of(database_url, first)] == ["created"]
            sequences = dict(conn.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
            assert sequences == {"approval_requests": new_id, "audit_events": new_audit[-1][0]}
        finally:
            conn.close()


@pytest.fixture
def fresh_postgres_url(postgres_database_url: str) -> Iterator[str]:
    """An empty PostgreSQL database of its own (on the server of ``postgres_database_url``)."""
    name = f"hlml_audit_{uuid.uuid4().hex[:10]}"
    admin = db.make_engine(postgres_database_url, pool_size=1).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(postgres_database_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.mark.postgres
class TestPostgresAuditIntegrity:
    def test_truncate_and_delete_are_refused(self, fresh_postgres_url: str) -> None:
        url = fresh_postgres_url
        db.migrate(url)
        _, call_id = _create_request(url)
        _refused(url, "TRUNCATE audit_events", "TRUNCATE of audit_events is refused")
        # Every table that references the requests, so the guard (not a foreign key) refuses it.
        _refused(
            url,
            "TRUNCATE approval_requests, audit_events, request_steps, deliveries, action_tokens",
            "is refused",
        )
        _refused(url, "TRUNCATE approval_requests CASCADE", "TRUNCATE of approval_requests is refused")
        _refused(url, "TRUNCATE principals, api_keys CASCADE", "is refused")
        _refused(url, "DELETE FROM approval_requests", NEVER_DELETED)
        _refused(url, "DELETE FROM audit_events", APPEND_ONLY)
        _refused(url, "UPDATE approval_requests SET id = id + 1000", IDENTITY_FIXED)
        _refused(url, "UPDATE approval_requests SET spec = '{}'", IDENTITY_FIXED)
        assert _counts(url) == (1, 1)
        assert [event for _, event in _audit_of(url, call_id)] == ["created"]

    def test_service_runs_as_a_granted_role_that_cannot_disable_the_triggers(
        self, fresh_postgres_url: str, tmp_path: Path
    ) -> None:
        owner_url = fresh_postgres_url
        role = f"hlml App-{uuid.uuid4().hex[:8]}"  # mixed case, a space and a dash: quoted, never raw
        owner = db.make_engine(owner_url, pool_size=1)
        with owner.begin() as conn:
            conn.exec_driver_sql(f"CREATE ROLE \"{role}\" LOGIN PASSWORD 'app-secret'")
        service = None
        try:
            result = CliRunner().invoke(main, ["migrate", "--database-url", owner_url])
            assert result.exit_code == 0, result.output
            result = CliRunner().invoke(main, ["db", "grant", role, "--database-url", owner_url])
            assert result.exit_code == 0, result.output
            assert "DELETE" not in result.output
            assert "TRUNCATE" not in result.output

            # The URL form docker-compose uses: the password comes from a pgpass file.
            passfile = tmp_path / "pgpass"
            passfile.write_text(f"*:*:*:{role}:app-secret\n")
            passfile.chmod(0o600)
            app_url = (
                make_url(owner_url)
                .set(username=role, password=None, query={"passfile": str(passfile)})
                .render_as_string(hide_password=False)
            )
            with db.make_engine(app_url, pool_size=1).connect() as conn:
                assert conn.execute(text("SELECT current_user")).scalar_one() == role
            for statement, match in (
                ("ALTER TABLE audit_events DISABLE TRIGGER ALL", "must be owner"),
                (
                    "ALTER TABLE approval_requests DISABLE TRIGGER approval_requests_no_delete",
                    "must be owner",
                ),
                ("DROP TRIGGER audit_events_no_truncate ON audit_events", "must be owner"),
                ("DROP TABLE audit_events", "must be owner"),
                ("TRUNCATE audit_events", "permission denied"),
                ("TRUNCATE approval_requests CASCADE", "permission denied"),
                ("DELETE FROM approval_requests", "permission denied"),
                ("DELETE FROM audit_events", "permission denied"),
                ("UPDATE audit_events SET event = 'forged'", "permission denied"),
                ("UPDATE approval_requests SET call_id = 'stolen'", "permission denied"),
            ):
                _refused(app_url, statement, match)

            # The service works as that role: keys, a request, a decision, a cancel, the audit.
            service = start_approvals_service(app_url, tmp_path / "service")
            agent = httpx.Client(
                base_url=service.root_url + API_PREFIX,
                headers={"Authorization": f"Bearer {service.agent_key}"},
                timeout=60,
            )
            reviewer = httpx.Client(
                base_url=service.root_url + API_PREFIX,
                headers={"Authorization": f"Bearer {service.reviewer_key}"},
                timeout=60,
            )
            approved, cancelled = call_body(), call_body()
            for body in (approved, cancelled):
                assert agent.post("/function_calls", json=body).status_code == 201
            path = f"/agent/function_calls/{approved['call_id']}"
            resp = reviewer.post(f"{path}/respond", json={"approved": True, "comment": "fine"})
            assert resp.status_code == 200, resp.text
            assert resp.json()["status"]["approved"] is True
            resp = agent.post(f"/agent/function_calls/{cancelled['call_id']}/cancel", json={})
            assert resp.status_code == 200, resp.text
            audit = agent.get(f"/function_calls/{approved['call_id']}/audit")
            assert audit.status_code == 200, audit.text
            assert [(e["event"], e["comment"]) for e in audit.json()] == [
                ("created", None),
                ("responded", "fine"),
            ]
            cancelled_audit = agent.get(f"/function_calls/{cancelled['call_id']}/audit").json()
            assert [e["event"] for e in cancelled_audit] == ["created", "cancelled"]
            agent.close()
            reviewer.close()
        finally:
            if service is not None:
                service.stop()
            with owner.begin() as conn:
                conn.exec_driver_sql(f'DROP OWNED BY "{role}"')
                conn.exec_driver_sql(f'DROP ROLE "{role}"')
            owner.dispose()


class TestMigrationKeepsRows:
    @pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
    def database_url(self, request: pytest.FixtureRequest) -> str:
        if request.param == "sqlite":
            return _sqlite_url()
        url: str = request.getfixturevalue("fresh_postgres_url")
        return url

    def test_upgrade_from_0001_keeps_rows_and_ids(self, database_url: str) -> None:
        db.migrate(database_url, "0001")
        engine = db.make_engine(database_url, pool_size=1)

        def snapshot() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            with engine.connect() as conn:
                requests = conn.execute(text("SELECT id, call_id FROM approval_requests ORDER BY id")).all()
                events = conn.execute(
                    text("SELECT id, request_id, event FROM audit_events ORDER BY id")
                ).all()
            return [tuple(r) for r in requests], [tuple(e) for e in events]

        try:
            with engine.begin() as conn:
                for call_id in ("before-a", "before-b"):
                    request_id = conn.execute(
                        text(
                            "INSERT INTO approval_requests (kind, call_id, run_id, spec, spec_hash, state, "
                            "version, requested_at, updated_at) VALUES ('function_call', :call_id, 'r', '{}', "
                            "'h', 'pending', 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP) RETURNING id"
                        ),
                        {"call_id": call_id},
                    ).scalar_one()
                    for event in ("created", "escalated"):
                        conn.execute(
                            text(
                                "INSERT INTO audit_events (request_id, event, at) VALUES (:r, :e, CURRENT_TIMESTAMP)"
                            ),
                            {"r": request_id, "e": event},
                        )
            before = snapshot()
            assert (len(before[0]), len(before[1])) == (2, 4)

            db.migrate(database_url)
            current, head = db.schema_status(database_url)
            assert current == head
            assert snapshot() == before
            _refused(database_url, "DELETE FROM approval_requests", NEVER_DELETED)
            _refused(database_url, "UPDATE audit_events SET event = 'forged'", APPEND_ONLY)
            new_id, _ = _create_request(database_url)
            assert new_id > max(request_id for request_id, _ in before[0])

            # And back: 0001's schema, the same rows, its append-only triggers still there.
            command.downgrade(db.alembic_config(database_url), "0001")
            assert snapshot()[1][:4] == before[1]
            _refused(database_url, "DELETE FROM audit_events", APPEND_ONLY)
            db.migrate(database_url)
            assert snapshot()[0][:2] == before[0]
        finally:
            engine.dispose()
