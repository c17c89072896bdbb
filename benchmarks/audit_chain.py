"""The audit chain's cost: appending at the service's decision rate, and verifying a million events.

Two parts:

1. ``append``: real decision transactions through ``store`` (``create_request`` then
   ``respond_function_call``: two transactions, two audit events, as the API makes them), once
   with the audit chain and once with ``chain.append`` replaced by a plain insert (dummy hash
   columns, no head lock, no hashing), each on a database of its own. The modes alternate within
   every round (which goes first alternates too); per round the median time of a decision; the
   medians over the rounds and their ratio. Target: chain / plain <= 1.2. On SQLite, and on
   PostgreSQL when HLML_TEST_POSTGRES_URL is set.
2. ``verify``: a valid chain of ``--events`` events (default 1,000,000, over 10,000 requests, with
   registry events) is bulk-inserted into a SQLite database, then ``hlml-approvals audit verify``
   checks it. Target: < 60 s.

    python benchmarks/audit_chain.py [--parts append,verify] [--rounds 15] [--decisions 20]
        [--events 1000000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from click.testing import CliRunner  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from airflow_provider_hlml.approvals import db, store  # noqa: E402
from airflow_provider_hlml.approvals.audit import chain  # noqa: E402
from airflow_provider_hlml.approvals.audit.cli import audit  # noqa: E402
from airflow_provider_hlml.approvals.models import AuditEvent  # noqa: E402

POSTGRES_URL_VAR = "HLML_TEST_POSTGRES_URL"
SPEC = {"fn": "model_promotion", "kwargs": {"subject": "Promote churn v3", "context": {"model_version": "3"}}}


# ---- part 1: append cost ----------------------------------------------------------------------


_plain_seq = itertools.count(1)


def _plain_append(session: Session, event: AuditEvent) -> AuditEvent:
    """``chain.append`` without the chain: the insert the service made before it."""
    event.seq, event.prev_hash, event.hash = next(_plain_seq), chain.GENESIS, chain.GENESIS
    session.add(event)
    return event


@contextmanager
def _without_chain() -> Iterator[None]:
    real = chain.append
    chain.append = _plain_append  # type: ignore[assignment]
    try:
        yield
    finally:
        chain.append = real  # type: ignore[assignment]


class Service:
    """The store on one database, with an agent and a reviewer."""

    def __init__(self, url: str) -> None:
        db.migrate(url)
        self.engine = db.make_engine(url, pool_size=2)
        self.sessions = db.make_sessionmaker(self.engine)
        with self.sessions() as session:
            store.create_key(session, name="agent", role="agent")
            store.create_key(session, name="alice", role="reviewer")
            self.agent = store.principal_actor(session, name="agent")
            self.alice = store.principal_actor(session, name="alice")

    def decide(self) -> float:
        """One decision as the API makes it (a session per request); its seconds."""
        call_id = f"bench-{uuid.uuid4().hex}"
        start = time.perf_counter()
        with self.sessions() as session:
            store.create_request(
                session,
                kind=store.FUNCTION_CALL,
                run_id="run-1",
                call_id=call_id,
                spec=SPEC,
                actor=self.agent,
            )
        with self.sessions() as session:
            store.respond_function_call(
                session,
                call_id=call_id,
                approved=True,
                comment="ok",
                reject_option_name=None,
                actor=self.alice,
            )
        return time.perf_counter() - start


def append_part(label: str, urls: tuple[str, str], rounds: int, decisions: int) -> dict[str, float]:
    chained, plain = Service(urls[0]), Service(urls[1])
    modes: dict[str, tuple[Service, Callable[[], Any]]] = {
        "chain": (chained, _no_patch),
        "plain": (plain, _without_chain),
    }
    for service, patch in modes.values():  # warm-up, not timed
        with patch():
            for _ in range(decisions):
                service.decide()
    per_round: dict[str, list[float]] = {"chain": [], "plain": []}
    for number in range(rounds):
        order = ["chain", "plain"] if number % 2 == 0 else ["plain", "chain"]
        for name in order:
            service, patch = modes[name]
            with patch():
                times = [service.decide() for _ in range(decisions)]
            per_round[name].append(statistics.median(times))
    report = chain.verify(chained.engine)
    assert report.ok, report.describe()
    chained.engine.dispose()
    plain.engine.dispose()
    with_chain = statistics.median(per_round["chain"]) * 1000
    without = statistics.median(per_round["plain"]) * 1000
    ratios = [c / p for c, p in zip(per_round["chain"], per_round["plain"], strict=True)]
    print(
        f"{label:<11} decision (create + respond) with the chain {with_chain:7.2f} ms, plain insert "
        f"{without:7.2f} ms: ratio x{with_chain / without:.3f} (median of per-round ratios "
        f"x{statistics.median(ratios):.3f}); {report.events} events chained, verified"
    )
    return {"chain_ms": with_chain, "plain_ms": without, "ratio": with_chain / without}


@contextmanager
def _no_patch() -> Iterator[None]:
    yield


@contextmanager
def _postgres_databases(count: int) -> Iterator[list[str]]:
    import psycopg2
    from sqlalchemy.engine import make_url

    admin_url = os.environ[POSTGRES_URL_VAR]
    names = [f"hlml_bench_chain_{uuid.uuid4().hex[:8]}" for _ in range(count)]
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            for name in names:
                cur.execute(f'CREATE DATABASE "{name}"')
        yield [make_url(admin_url).set(database=n).render_as_string(hide_password=False) for n in names]
    finally:
        with admin.cursor() as cur:
            for name in names:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


# ---- part 2: verify a million events ----------------------------------------------------------


def build_chain(path: Path, events: int, requests: int) -> chain.ChainHead:
    """A valid chain of ``events`` events over ``requests`` requests (every 100th a registry
    event), written straight into the SQLite file, as fast as it goes."""
    url = f"sqlite:///{path}"
    db.migrate(url)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    base = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
    stamp = "2026-12-01 00:00:00.000000"
    conn.executemany(
        "INSERT INTO approval_requests (id, kind, call_id, run_id, spec, spec_hash, state, version, "
        "requested_at, updated_at) VALUES (?, 'function_call', ?, 'run-1', '{}', 'h', 'pending', 1, ?, ?)",
        ((i, f"bulk-{i}", stamp, stamp) for i in range(1, requests + 1)),
    )
    prev, by_request = chain.GENESIS, {}
    rows = []
    for seq in range(1, events + 1):
        at = base + dt.timedelta(microseconds=seq * 1007)
        request_id = None if seq % 100 == 0 else (seq * 7919) % requests + 1
        event = (
            "alias_moved"
            if request_id is None
            else ("created", "delivered", "answered", "responded")[seq % 4]
        )
        metadata = {"channel": "email", "n": seq, "ratio": seq / 3} if seq % 3 else None
        request_prev = by_request.get(request_id) if request_id is not None else None
        digest = chain.event_hash(
            seq=seq,
            request_id=request_id,
            event=event,
            at=at,
            actor="alice",
            on_behalf_of=None,
            comment=f"comment {seq} ✓",
            metadata=metadata,
            prev=prev,
            request_prev=request_prev,
        )
        rows.append(
            (
                seq,
                request_id,
                event,
                at.strftime("%Y-%m-%d %H:%M:%S.%f"),
                "alice",
                f"comment {seq} ✓",
                None if metadata is None else json.dumps(metadata),
                seq,
                prev,
                request_prev,
                digest,
            )
        )
        if request_id is not None:
            by_request[request_id] = digest
        prev = digest
        if len(rows) == 50_000 or seq == events:
            conn.executemany(
                "INSERT INTO audit_events (id, request_id, event, at, actor, comment, metadata, seq, "
                "prev_hash, request_prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            rows.clear()
    conn.execute("UPDATE audit_chain_head SET seq = ?, hash = ? WHERE id = 1", (events, prev))
    conn.commit()
    conn.close()
    return chain.ChainHead(events, prev)


def verify_part(events: int, requests: int) -> dict[str, float]:
    path = Path(tempfile.mkdtemp(prefix="hlml-bench-chain-")) / "approvals.db"
    start = time.perf_counter()
    head = build_chain(path, events, requests)
    built = time.perf_counter() - start
    print(f"built a chain of {events:,} events over {requests:,} requests in {built:.1f} s ({path})")
    start = time.perf_counter()
    result = CliRunner().invoke(audit, ["verify", "--database-url", f"sqlite:///{path}"])
    took = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    assert f"head seq {head.seq} hash {head.hash}" in result.output
    print(
        f"hlml-approvals audit verify: {took:.1f} s ({events / took:,.0f} events/s): {result.output.strip()[:60]}..."
    )
    # And that it is not fooled: one event changed in the middle is named.
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER audit_events_no_update")
    conn.execute("UPDATE audit_events SET comment = 'edited' WHERE seq = ?", (events // 2,))
    conn.commit()
    conn.close()
    start = time.perf_counter()
    result = CliRunner().invoke(audit, ["verify", "--database-url", f"sqlite:///{path}"])
    broken = time.perf_counter() - start
    assert result.exit_code == 1, result.output
    assert f"seq {events // 2}," in result.output, result.output
    print(f"after editing seq {events // 2:,}: exit 1 in {broken:.1f} s: {result.output.strip()[:90]}...")
    path.unlink()
    return {"build_s": built, "verify_s": took}


def main(args: argparse.Namespace) -> None:
    parts = set(args.parts.split(","))
    print(f"load before: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
    if "append" in parts:
        root = Path(tempfile.mkdtemp(prefix="hlml-bench-chain-"))
        urls = (f"sqlite:///{root / 'chain.db'}", f"sqlite:///{root / 'plain.db'}")
        append_part("SQLite", urls, args.rounds, args.decisions)
        if os.environ.get(POSTGRES_URL_VAR):
            with _postgres_databases(2) as pg:
                append_part("PostgreSQL", (pg[0], pg[1]), args.rounds, args.decisions)
        else:
            print(f"PostgreSQL: skipped ({POSTGRES_URL_VAR} is not set)")
    if "verify" in parts:
        verify_part(args.events, args.requests)
    print(f"load after: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="append,verify", help="comma-separated: append, verify")
    parser.add_argument("--rounds", type=int, default=15, help="measured rounds of the append part")
    parser.add_argument("--decisions", type=int, default=20, help="decisions per mode per round")
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the chain to verify")
    parser.add_argument("--requests", type=int, default=10_000, help="requests those events belong to")
    main(parser.parse_args())
