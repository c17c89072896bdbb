"""The audit chain (approvals/audit/): every change made to the audit trail behind the service's
back is found, and named, by ``verify``; exports verify offline and hold the database to them.

Each test builds a real history through the store (requests created, decided, cancelled, answered,
delivered, a registry event) on SQLite and PostgreSQL, then tampers with it in raw SQL as the
tables' owner would: with the append-only triggers dropped where they would refuse it.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text
from sqlalchemy.engine import Engine, make_url

from airflow_provider_hlml.approvals import db, store
from airflow_provider_hlml.approvals.audit import chain
from airflow_provider_hlml.approvals.audit.cli import audit
from airflow_provider_hlml.approvals.audit.export import export, exported_head, verify_export
from airflow_provider_hlml.approvals.models import AuditEvent

#: The events _history makes: 4 function calls x 2, a human contact x 2, a delivery, a registry event.
N_EVENTS = 12
SPEC = {"fn": "model_promotion", "kwargs": {"subject": "Promote churn v3", "context": {"version": "3"}}}


@dataclass(frozen=True)
class Event:
    id: int
    seq: int
    call_id: str | None
    event: str


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """A new, migrated database of this test's own."""
    if request.param == "sqlite":
        url = f"sqlite:///{Path(tempfile.mkdtemp(prefix='hlml-audit-chain-')) / 'approvals.db'}"
    else:
        url = request.getfixturevalue("empty_postgres_url")
    db.migrate(url)
    return url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = db.make_engine(database_url, pool_size=4)
    try:
        yield engine
    finally:
        engine.dispose()


def _history(engine: Engine) -> list[str]:
    """Requests created, approved, rejected, cancelled and answered, a delivery and a registry
    event, all through the store; the call ids in the order made."""
    call_ids = []
    with db.make_sessionmaker(engine)() as session:
        store.create_key(session, name="agent", role="agent")
        store.create_key(session, name="alice", role="reviewer", email="alice@example.com")
        agent = store.principal_actor(session, name="agent")
        alice = store.principal_actor(session, name="alice")
        for outcome in ("approve", "reject", "cancel", "approve"):
            call_id = f"chain-{outcome}-{uuid.uuid4().hex[:8]}"
            row, created = store.create_request(
                session, kind=store.FUNCTION_CALL, run_id="run-1", call_id=call_id, spec=SPEC, actor=agent
            )
            assert created
            call_ids.append(call_id)
            if outcome == "cancel":
                store.cancel(
                    session,
                    kind=store.FUNCTION_CALL,
                    call_id=call_id,
                    reason="timeout",
                    comment=None,
                    actor=agent,
                )
            else:
                store.respond_function_call(
                    session,
                    call_id=call_id,
                    approved=outcome == "approve",
                    comment="ship it ✓" if outcome == "approve" else "not this one",
                    reject_option_name=None,
                    actor=alice,
                )
        contact = f"chain-contact-{uuid.uuid4().hex[:8]}"
        row, _ = store.create_request(
            session,
            kind=store.HUMAN_CONTACT,
            run_id="run-1",
            call_id=contact,
            spec={"msg": "why?"},
            actor=agent,
        )
        call_ids.append(contact)
        store.respond_human_contact(
            session, call_id=contact, response="because: ünïcode", response_option_name=None, actor=alice
        )
        store.audit_delivery(session, row.id, "delivered", metadata={"channel": "email", "seconds": 0.25})
        session.commit()
        store.audit_registry_event(
            session, "alias_moved", actor="alice", metadata={"alias": "champion", "from": "2", "to": "3"}
        )
        session.commit()
    return call_ids


def _events(engine: Engine) -> list[Event]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT e.id, e.seq, r.call_id, e.event FROM audit_events e "
                "LEFT JOIN approval_requests r ON r.id = e.request_id ORDER BY e.seq"
            )
        ).all()
    return [Event(*row) for row in rows]


def _tamper(engine: Engine, *statements: str, params: dict[str, Any] | None = None) -> None:
    """Run ``statements`` as the tables' owner, with the append-only triggers dropped first."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS audit_events_no_update")
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS audit_events_no_delete")
        else:
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS audit_events_append_only ON audit_events")
        for statement in statements:
            conn.execute(text(statement), params or {})


def _assert_names(found: chain.Break | None, event: Event, kind: str, message: str) -> None:
    assert found is not None, "the tampering went unnoticed"
    assert (found.kind, found.event_id, found.seq, found.call_id, found.event) == (
        kind,
        event.id,
        event.seq,
        event.call_id,
        event.event,
    ), found.describe()
    assert message in found.describe()
    for part in (f"event id {event.id}", f"seq {event.seq}", f"event {event.event}"):
        assert part in found.describe()


def _rehash_everything(engine: Engine) -> None:
    """What an attacker who knows the algorithm does after editing: recompute every hash and link,
    and move the head, so the chain is consistent again."""
    with engine.begin() as conn:
        rows = conn.execute(select(*chain.EVENT_COLUMNS).order_by(AuditEvent.__table__.c.seq)).all()
        prev, by_request = chain.GENESIS, {}
        for row in rows:
            request_prev = by_request.get(row.request_id)
            digest = chain.row_hash(row, prev=prev, request_prev=request_prev)
            conn.execute(
                text(
                    "UPDATE audit_events SET prev_hash = :p, request_prev_hash = :rp, hash = :h WHERE id = :id"
                ),
                {"p": prev, "rp": request_prev, "h": digest, "id": row.id},
            )
            if row.request_id is not None:
                by_request[row.request_id] = digest
            prev = digest
        conn.execute(
            text("UPDATE audit_chain_head SET seq = :s, hash = :h WHERE id = 1"),
            {"s": rows[-1].seq, "h": prev},
        )


class TestAppend:
    def test_a_fresh_history_verifies(self, engine: Engine) -> None:
        call_ids = _history(engine)
        events = _events(engine)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert [e.id for e in events] == sorted(e.id for e in events)
        assert events[-1] == Event(events[-1].id, len(events), None, "alias_moved")
        report = chain.verify(engine)
        assert report.ok, report.describe()
        assert report.events == len(events) == N_EVENTS
        assert report.describe().startswith(
            f"chain intact: {len(events)} events, head seq {len(events)} hash "
        )
        for call_id in call_ids:
            one = chain.verify(engine, call_id=call_id)
            assert one.ok, one.describe()
            assert one.events == sum(e.call_id == call_id for e in events)
        with pytest.raises(LookupError, match="no request with call_id"):
            chain.verify(engine, call_id="nobody")

    def test_seq_and_hash_are_set_at_call_time_and_chain_before_the_commit(self, engine: Engine) -> None:
        _history(engine)
        before = chain.verify(engine).head
        assert before is not None
        with db.make_sessionmaker(engine)() as session, session.no_autoflush:
            request_id = session.execute(text("SELECT min(id) FROM approval_requests")).scalar_one()
            first = store.audit_delivery(session, request_id, "delivered", metadata={"n": 1})
            second = store.audit_delivery(session, request_id, "link_opened", metadata={"n": 2})
            assert (first.seq, first.prev_hash) == (before.seq + 1, before.hash)
            assert (second.seq, second.prev_hash) == (before.seq + 2, first.hash)
            assert second.request_prev_hash == first.hash
            if engine.dialect.name == "sqlite":
                assert first.id is None, "neither is flushed yet"
            else:
                # Inserted by the statement that moved the head, so already numbered in order.
                assert first.id is not None
                assert second.id is not None
                assert second.id > first.id
            assert chain.hash_of(second) == second.hash
            session.commit()
        assert chain.verify(engine).ok

    def test_a_rolled_back_append_leaves_no_trace(self, engine: Engine) -> None:
        _history(engine)
        before = chain.verify(engine).head
        assert before is not None
        with db.make_sessionmaker(engine)() as session:
            gone = store.audit_registry_event(session, "alias_moved", actor="x")
            assert gone.seq == before.seq + 1
            session.rollback()
            kept = store.audit_registry_event(session, "alias_reverted", actor="x")
            assert (kept.seq, kept.prev_hash) == (before.seq + 1, before.hash)
            session.commit()
        report = chain.verify(engine)
        assert report.ok, report.describe()
        assert report.head == chain.ChainHead(before.seq + 1, kept.hash)

    def test_appenders_in_other_processes_never_break_a_link(self, engine: Engine, database_url: str) -> None:
        # Each process links from the head it appended last; another engine on the same database
        # (a different URL) is what another process or replica is to this one.
        _history(engine)
        url = make_url(database_url)
        if url.get_backend_name() == "sqlite":
            assert url.database
            other_url = url.set(database=str(Path(url.database).parent / "." / Path(url.database).name))
        else:
            other_url = url.update_query_dict({"application_name": "another-replica"})
        other = db.make_engine(other_url.render_as_string(hide_password=False), pool_size=2)
        with engine.connect() as conn:
            first, second = conn.execute(
                text("SELECT id FROM approval_requests ORDER BY id LIMIT 2")
            ).scalars()

        def deliver(on: Engine, request_id: int) -> AuditEvent:
            with db.make_sessionmaker(on)() as session:
                event = store.audit_delivery(session, request_id, "delivered")
                session.commit()
                return event

        try:
            here = deliver(engine, first)
            there = deliver(other, first)
            assert (there.prev_hash, there.request_prev_hash) == (here.hash, here.hash)
            elsewhere = deliver(engine, second)
            assert elsewhere.prev_hash == there.hash
            # This process last linked the first request at ``here``; the other process since.
            again = deliver(engine, first)
            assert (again.prev_hash, again.request_prev_hash) == (elsewhere.hash, there.hash)
        finally:
            other.dispose()
        report = chain.verify(engine)
        assert report.ok, report.describe()
        assert report.events == N_EVENTS + 4

    def test_a_savepoint_rolled_back_takes_its_links_with_it(self, engine: Engine) -> None:
        _history(engine)
        with engine.connect() as conn:
            request_id = conn.execute(text("SELECT min(id) FROM approval_requests")).scalar_one()
        with db.make_sessionmaker(engine)() as session:
            kept = store.audit_delivery(session, request_id, "delivered")
            savepoint = session.begin_nested()
            store.audit_delivery(session, request_id, "delivery_retry")
            savepoint.rollback()
            after = store.audit_delivery(session, request_id, "delivery_failed")
            assert (after.seq, after.prev_hash, after.request_prev_hash) == (
                kept.seq + 1,
                kept.hash,
                kept.hash,
            )
            session.commit()
        report = chain.verify(engine)
        assert report.ok, report.describe()
        assert report.events == N_EVENTS + 2

    def test_concurrent_appenders_form_one_chain(self, engine: Engine) -> None:
        _history(engine)
        with engine.connect() as conn:
            requests = (
                conn.execute(text("SELECT id FROM approval_requests ORDER BY id LIMIT 2")).scalars().all()
            )
        start = threading.Barrier(2)
        errors: list[BaseException] = []

        def append_50(worker: int) -> None:
            try:
                start.wait()
                for i in range(50):
                    with db.make_sessionmaker(engine)() as session:
                        # Both workers write to both requests: the per-request links interleave too.
                        store.audit_delivery(
                            session, requests[i % 2], "delivered", metadata={"worker": worker, "i": i}
                        )
                        session.commit()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=append_50, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        report = chain.verify(engine)
        assert report.ok, report.describe()
        assert report.events == N_EVENTS + 100
        with engine.connect() as conn:
            call_ids = conn.execute(
                text("SELECT call_id FROM approval_requests ORDER BY id LIMIT 2")
            ).scalars()
            for call_id in call_ids:
                assert chain.verify(conn, call_id=call_id).ok


class TestVerifyFindsTampering:
    def test_an_update_with_the_triggers_dropped(self, engine: Engine) -> None:
        _history(engine)
        target = _events(engine)[3]
        _tamper(engine, f"UPDATE audit_events SET comment = 'approved, honest' WHERE id = {target.id}")
        _assert_names(chain.verify(engine).first_break, target, "content_changed", "content changed")

    def test_a_delete(self, engine: Engine) -> None:
        _history(engine)
        events = _events(engine)
        _tamper(engine, f"DELETE FROM audit_events WHERE id IN ({events[4].id}, {events[5].id})")
        _assert_names(
            chain.verify(engine).first_break, events[6], "deleted", "missing event(s) seq 5..6 (deleted)"
        )

    def test_a_reorder_of_two_events_seq(self, engine: Engine) -> None:
        _history(engine)
        events = _events(engine)
        a, b = events[2], events[3]
        _tamper(
            engine,
            f"UPDATE audit_events SET seq = -1 WHERE id = {a.id}",
            f"UPDATE audit_events SET seq = {a.seq} WHERE id = {b.id}",
            f"UPDATE audit_events SET seq = {b.seq} WHERE id = {a.id}",
        )
        moved = Event(b.id, a.seq, b.call_id, b.event)
        _assert_names(chain.verify(engine).first_break, moved, "reordered", chain.REORDERED)

    def test_a_swap_of_two_events_whole_content(self, engine: Engine) -> None:
        # Every column but the id swapped: the chain reads the same in seq order, but not in id
        # order (which the API lists a request's trail in).
        _history(engine)
        events = _events(engine)
        a, b = events[2], events[3]
        columns = "request_id, event, at, actor, on_behalf_of, comment, metadata, seq, prev_hash, request_prev_hash, hash"
        with engine.connect() as conn:
            rows = {
                r[0]: dict(r._mapping)
                for r in conn.execute(
                    text(f"SELECT id, {columns} FROM audit_events WHERE id IN ({a.id}, {b.id})")
                )
            }
        assignments = ", ".join(f"{c.strip()} = :{c.strip()}" for c in columns.split(","))
        _tamper(engine, f"UPDATE audit_events SET seq = -seq WHERE id IN ({a.id}, {b.id})")
        for this, other in ((a, b), (b, a)):
            values = {k: v for k, v in rows[other.id].items() if k != "id"}
            if engine.dialect.name == "postgresql":
                values["metadata"] = json.dumps(values["metadata"])
            _tamper(engine, f"UPDATE audit_events SET {assignments} WHERE id = {this.id}", params=values)
        found = chain.verify(engine).first_break
        _assert_names(found, Event(a.id, a.seq + 1, b.call_id, b.event), "reordered", chain.REORDERED)

    def test_a_truncated_tail(self, engine: Engine) -> None:
        _history(engine)
        events = _events(engine)
        _tamper(engine, f"DELETE FROM audit_events WHERE seq > {events[-4].seq}")
        _assert_names(
            chain.verify(engine).first_break,
            events[-4],
            "truncated",
            f"chain ends at seq {events[-4].seq} but the head says {events[-1].seq} (truncated)",
        )

    @pytest.mark.parametrize("moves_head", [False, True], ids=["head-kept", "head-moved"])
    def test_a_forged_event_appended_with_raw_sql(self, engine: Engine, moves_head: bool) -> None:
        call_ids = _history(engine)
        head = chain.verify(engine).head
        assert head is not None
        forged = hashlib.sha256(b"looks like a hash").hexdigest()
        with engine.begin() as conn:
            request_id = conn.execute(
                text("SELECT id FROM approval_requests WHERE call_id = :c"), {"c": call_ids[1]}
            ).scalar_one()
            request_prev = conn.execute(
                text("SELECT hash FROM audit_events WHERE request_id = :r ORDER BY seq DESC LIMIT 1"),
                {"r": request_id},
            ).scalar_one()
            # Linked as the service would link it; only the hash cannot be right without the code.
            conn.execute(
                text(
                    "INSERT INTO audit_events (request_id, event, at, actor, comment, seq, prev_hash, "
                    "request_prev_hash, hash) VALUES (:r, 'responded', CURRENT_TIMESTAMP, 'alice', "
                    "'approved after all', :s, :p, :rp, :h)"
                ),
                {"r": request_id, "s": head.seq + 1, "p": head.hash, "rp": request_prev, "h": forged},
            )
            if moves_head:
                conn.execute(text("UPDATE audit_chain_head SET seq = seq + 1, hash = :h"), {"h": forged})
        new = _events(engine)[-1]
        assert (new.seq, new.call_id) == (head.seq + 1, call_ids[1])
        found = chain.verify(engine).first_break
        if moves_head:
            _assert_names(found, new, "content_changed", "content changed")
        else:
            _assert_names(found, new, "forged", chain.FORGED)
            assert "past the head" in found.describe()  # type: ignore[union-attr]

    def test_per_request_verify_checks_that_request_only(self, engine: Engine) -> None:
        call_ids = _history(engine)
        events = _events(engine)
        approved, rejected = call_ids[0], call_ids[1]
        target = next(e for e in events if e.call_id == rejected and e.event == "responded")
        _tamper(engine, f"UPDATE audit_events SET comment = 'fine by me' WHERE id = {target.id}")
        assert chain.verify(engine, call_id=approved).ok
        report = chain.verify(engine, call_id=rejected, kind=store.FUNCTION_CALL)
        _assert_names(report.first_break, target, "content_changed", "content changed")
        assert report.call_id == rejected

    def test_per_request_verify_finds_a_deleted_event_of_the_request(self, engine: Engine) -> None:
        call_ids = _history(engine)
        events = _events(engine)
        created = next(e for e in events if e.call_id == call_ids[2] and e.event == "created")
        after = next(e for e in events if e.call_id == call_ids[2] and e.event == "expired")
        _tamper(engine, f"DELETE FROM audit_events WHERE id = {created.id}")
        _assert_names(
            chain.verify(engine, call_id=call_ids[2]).first_break,
            after,
            "deleted",
            f"missing event(s) seq {created.seq}..{created.seq} (deleted)",
        )

    def test_per_request_verify_finds_a_rehashed_event(self, engine: Engine) -> None:
        # Edited and given a matching hash: the next event still links to the old hash.
        call_ids = _history(engine)
        events = _events(engine)
        target = next(e for e in events if e.call_id == call_ids[0] and e.event == "responded")
        _tamper(engine, f"UPDATE audit_events SET comment = 'rubber stamp' WHERE id = {target.id}")
        with engine.connect() as conn:
            row = conn.execute(
                select(*chain.EVENT_COLUMNS).where(AuditEvent.__table__.c.id == target.id)
            ).one()
        digest = chain.row_hash(row)
        _tamper(engine, f"UPDATE audit_events SET hash = '{digest}' WHERE id = {target.id}")
        _assert_names(
            chain.verify(engine, call_id=call_ids[0]).first_break, target, "content_changed", "rehashed"
        )
        following = _events(engine)[target.seq]  # the event after it, which still links to the old hash
        _assert_names(chain.verify(engine).first_break, following, "reordered", chain.REORDERED)


class TestExport:
    def test_export_verifies_offline_and_holds_the_database_to_its_head(self, engine: Engine) -> None:
        _history(engine)
        buffer = io.StringIO()
        summary = export(engine, buffer)
        lines = buffer.getvalue().splitlines()
        assert json.loads(lines[-1]) == {"head": summary.head.to_json()}
        assert summary.events == len(lines) - 1 == N_EVENTS
        first = json.loads(lines[0])
        assert set(first) >= {"id", "seq", "request_id", "call_id", "event", "at", "prev_hash", "hash"}
        assert first["prev_hash"] == chain.GENESIS
        assert json.loads(lines[-2])["call_id"] is None, "the registry event concerns no request"
        report = verify_export(lines)
        assert report.ok, report.describe()
        assert (report.events, report.head) == (N_EVENTS, summary.head)
        assert chain.compare(engine, summary.head) is None
        assert chain.verify(engine, against=summary.head).ok

        # Someone with the database edits an event and recomputes the whole chain: consistent again,
        # so the database alone cannot tell, but the exported head can.
        target = _events(engine)[2]
        _tamper(engine, f"UPDATE audit_events SET comment = 'rewritten' WHERE id = {target.id}")
        _rehash_everything(engine)
        assert chain.verify(engine).ok, "a consistent rewrite is invisible without an outside anchor"
        report = chain.verify(engine, against=summary.head)
        assert report.first_break is not None
        assert report.first_break.kind == "rewritten"
        assert report.first_break.seq == summary.head.seq
        assert "rewritten since the export" in report.describe()

    def test_compare_finds_a_chain_cut_back_before_the_export(self, engine: Engine) -> None:
        _history(engine)
        buffer = io.StringIO()
        head = export(engine, buffer).head
        events = _events(engine)
        _tamper(
            engine,
            f"DELETE FROM audit_events WHERE seq > {events[-3].seq}",
            f"UPDATE audit_chain_head SET seq = {events[-3].seq}, "
            f"hash = (SELECT hash FROM audit_events WHERE seq = {events[-3].seq})",
        )
        assert chain.verify(engine).ok
        found = chain.compare(engine, head)
        assert found is not None
        assert found.kind == "truncated"
        assert "truncated since the export" in found.describe()

    def test_a_tampered_export_fails_offline(self, engine: Engine) -> None:
        _history(engine)
        buffer = io.StringIO()
        export(engine, buffer)
        lines = buffer.getvalue().splitlines()
        edited = json.loads(lines[5])
        edited["comment"] = "edited in the bucket"
        found = verify_export([*lines[:5], json.dumps(edited), *lines[6:]]).first_break
        assert found is not None
        assert (found.kind, found.seq, found.call_id) == ("content_changed", 6, edited["call_id"])
        found = verify_export([*lines[:5], *lines[6:]]).first_break
        assert found is not None
        assert (found.kind, found.message) == ("deleted", "missing event(s) seq 6..6 (deleted)")
        found = verify_export(lines[:-1]).first_break
        assert found is not None
        assert found.kind == "truncated"
        found = verify_export([*lines[:-3], lines[-1]]).first_break
        assert found is not None
        assert found.kind == "truncated"
        assert (
            f"chain ends at seq {N_EVENTS - 2} but the head says {N_EVENTS} (truncated)" in found.describe()
        )


class TestCli:
    def test_verify_export_and_verify_export(self, engine: Engine, database_url: str, tmp_path: Path) -> None:
        call_ids = _history(engine)
        runner = CliRunner()
        url = ["--database-url", database_url]
        result = runner.invoke(audit, ["verify", *url])
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"chain intact: {N_EVENTS} events, head seq {N_EVENTS} hash ")

        exported = tmp_path / "audit.jsonl"
        result = runner.invoke(audit, ["export", *url, "--output", str(exported)])
        assert result.exit_code == 0, result.output
        with exported.open() as lines:
            head = exported_head(lines)
        assert head.seq == N_EVENTS
        result = runner.invoke(audit, ["verify-export", str(exported)])
        assert (result.exit_code, result.output.split(":")[0]) == (0, "chain intact")
        result = runner.invoke(audit, ["verify", *url, "--against", str(exported)])
        assert result.exit_code == 0, result.output
        assert f"holds the head of {exported}" in result.output

        target = _events(engine)[1]
        _tamper(engine, f"UPDATE audit_events SET actor = 'mallory' WHERE id = {target.id}")
        result = runner.invoke(audit, ["verify", *url])
        assert result.exit_code == 1
        assert result.output.startswith(
            f"chain broken: content changed: event id {target.id}, seq 2, request {target.call_id}, "
            f"event {target.event}"
        )
        result = runner.invoke(audit, ["verify", *url, "--json"])
        assert result.exit_code == 1
        data = json.loads(result.output)
        assert (data["ok"], data["break"]["kind"], data["break"]["event_id"]) == (
            False,
            "content_changed",
            target.id,
        )
        assert target.call_id == call_ids[0]
        result = runner.invoke(audit, ["verify", *url, "--call-id", call_ids[1]])
        assert result.exit_code == 0, result.output
        result = runner.invoke(audit, ["verify", *url, "--call-id", target.call_id or ""])
        assert result.exit_code == 1
        result = runner.invoke(audit, ["verify", *url, "--call-id", "nobody"])
        assert result.exit_code == 1
        assert "no request with call_id 'nobody'" in result.output

        bad = tmp_path / "bad.jsonl"
        bad.write_text("not json\n")
        result = runner.invoke(audit, ["verify-export", str(bad)])
        assert result.exit_code == 1
        assert "line 1 is not JSON" in result.output


class TestAttestationsHoldTheChain:
    """The signed decisions embed the chain position and hash of the event that recorded them: a
    chain rewritten with every hash recomputed passes ``audit verify`` but not them."""

    def _verify_attestations(self, database_url: str) -> tuple[int, str]:
        from click.testing import CliRunner

        from airflow_provider_hlml.approvals.cli import main

        result = CliRunner().invoke(main, ["audit", "verify-attestations", "--database-url", database_url])
        return result.exit_code, result.output

    def test_a_rehashed_chain_no_longer_matches_the_signed_decisions(
        self, engine: Engine, database_url: str
    ) -> None:
        call_ids = _history(engine)
        code, out = self._verify_attestations(database_url)
        assert code == 0, out
        assert "attestations intact: 3 signed decisions match the audit chain" in out
        # The owner rewrites the first approval's comment and recomputes the whole chain and head.
        approved = next(e for e in _events(engine) if e.call_id == call_ids[0] and e.event == "responded")
        _tamper(
            engine,
            "UPDATE audit_events SET comment = 'rubber stamp' WHERE id = :id",
            params={"id": approved.id},
        )
        _rehash_everything(engine)
        assert chain.verify(engine).ok  # consistent again: the chain alone cannot tell
        code, out = self._verify_attestations(database_url)
        assert code == 1
        assert f"request {call_ids[0]}: the audit chain was rewritten: event seq {approved.seq}" in out

    def test_an_attestation_moved_to_another_request_is_refused(
        self, engine: Engine, database_url: str
    ) -> None:
        call_ids = _history(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "DROP TRIGGER IF EXISTS approval_requests_attestation_fixed"
                + (" ON approval_requests" if engine.dialect.name == "postgresql" else "")
            )
            first = conn.execute(
                text("SELECT attestation FROM approval_requests WHERE call_id = :c"), {"c": call_ids[0]}
            ).scalar_one()
            conn.execute(
                text("UPDATE approval_requests SET attestation = :a WHERE call_id = :c"),
                {"a": first, "c": call_ids[3]},
            )
        code, out = self._verify_attestations(database_url)
        assert code == 1
        assert f"request {call_ids[3]}: its attestation is that of request '{call_ids[0]}'" in out
