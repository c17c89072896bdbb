"""Approvals service under load: status reads by concurrent pollers, and decision-to-client latency.

Starts ``hlml-approvals serve`` (SQLite, one uvicorn worker) as a subprocess, creates 1, 100 and
1,000 pending function calls and drives pollers at a fixed total rate (open loop: each poller
reads its call every ``pollers / rate`` seconds) through one pooled aiohttp client. Prints the
achieved throughput and p50/p99 latency of the status reads. Then it decides calls while clients
wait on them, once with long-polling (``?wait=30``) and once with plain polling every
``--poll-interval`` seconds, and prints how long each client took to learn the decision; a third
row decides straight in the database (as ``hlml-approvals approve`` does from another process).

The ``quorum`` section compares requests with approval rules against single-approver requests:
the server CPU of each approval POST (``.../respond``) on a single-approver request (a plain
``approvers`` list; its one approval decides it) and on a 3-rule request (ML lead x2, Compliance
x1, Product x1, group approvers; four approvals decide it), and of status reads of a pending
request of each kind. The kinds alternate within every round; medians over the rounds.

The ``replicas`` section (only when asked: it takes about two minutes) runs two ``serve``
processes, replicas A and B (one uvicorn worker each, default settings), on one fresh PostgreSQL
database (``--postgres-url``, default ``$HLML_TEST_POSTGRES_URL`` or the local server; skipped
with a message when it is not reachable). First the cross-replica wake: ``--replica-calls``
pending calls long-polled (``?wait=30``) on B while A decides them one at a time, every
``--replica-interval`` seconds; per call, the time B's long-poll returned minus the time A
answered the decision POST (and minus the time it was sent), next to waiter and decider on the
same replica, and a "without NOTIFY" baseline: a second database whose notify trigger was
dropped after migration, served by replicas without their LISTEN connection and
``HLML_APPROVALS_RECHECK_INTERVAL=0.5``, so the 0.5 s re-check is what wakes them (as before
migration 0005). Then sustained decisions: pending calls made beforehand (not timed), decided on
an open-loop schedule at each rate of ``--replica-rates`` for ``--seconds`` seconds, round-robin
over both replicas; achieved decisions/s, POST latency (p50/p95, the first and last third of the
step), errors, and the CPU use of the load generator, the replicas and the machine. Targets:
cross-replica wake p95 < 50 ms, >= 500 decisions/s without queueing.

Usage: python benchmarks/approvals_service.py [--rates 250,1000] [--seconds 10] [--decisions 30]
       python benchmarks/approvals_service.py --sections quorum [--quorum-rounds 15] [--quorum-batch 40]
       python benchmarks/approvals_service.py --sections replicas [--replica-calls 200]
           [--replica-rates 250,500,750] [--seconds 10] [--postgres-url postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _replicas

VENV_BIN = Path(sys.executable).parent
PREFIX = "/humanlayer/v1"
SECTIONS = ("reads", "decisions", "quorum")  # the default
ALL_SECTIONS = (*SECTIONS, "replicas")

# The quorum requests: three rules over three groups, four approvals to decide.
QUORUM_GROUPS = ("ml-leads", "compliance", "product")
QUORUM_RULES = [
    {"name": "ML lead", "approvers": ["group:ml-leads"], "required": 2},
    {"name": "Compliance", "approvers": ["group:compliance"], "required": 1},
    {"name": "Product", "approvers": ["group:product"], "required": 1},
]
SOLO_EMAIL = "solo@bench.example"


def gate_state(**hlml: Any) -> dict[str, Any]:
    """A ``spec.state`` as a gate writes it (``hlml`` overrides the approvers, adds rules)."""
    return {"hlml": {"approvers": [], "requester": "bench-requester", "allow_self_approval": False, **hlml}}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Service:
    """``hlml-approvals serve`` on a temp SQLite database, with an agent and a reviewer key."""

    def __init__(self, group_size: int = 4) -> None:
        self.group_size = group_size
        self.root = Path(tempfile.mkdtemp(prefix="hlml-approvals-bench-"))
        self.database_url = f"sqlite:///{self.root / 'approvals.db'}"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}{PREFIX}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        from airflow_provider_hlml.approvals import db, store

        db.migrate(self.database_url)
        engine = db.make_engine(self.database_url, pool_size=1)
        with db.make_sessionmaker(engine)() as session:
            self.agent_key = store.create_key(session, name="bench-agent", role="agent")[1]
            self.reviewer_key = store.create_key(session, name="bench-reviewer", role="reviewer")[1]
            # quorum section: one reviewer for single-approver requests, three groups of reviewers
            self.solo_key = store.create_key(session, name="solo", role="reviewer", email=SOLO_EMAIL)[1]
            self.group_keys: dict[str, list[str]] = {}
            for group in QUORUM_GROUPS:
                store.create_group(session, name=group)
                members = [f"{group}-{i + 1}" for i in range(self.group_size)]
                self.group_keys[group] = [
                    store.create_key(session, name=m, role="reviewer", email=f"{m}@bench.example")[1]
                    for m in members
                ]
                store.add_to_group(session, name=group, principals=members)
        engine.dispose()
        log = open(self.root / "service.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                str(VENV_BIN / "hlml-approvals"),
                "serve",
                "--port",
                str(self.port),
                "--database-url",
                self.database_url,
                "--log-level",
                "warning",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("approvals service did not start: " + (self.root / "service.log").read_text())

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)


async def create_calls(
    session: aiohttp.ClientSession, service: Service, count: int, state: dict[str, Any] | None = None
) -> list[str]:
    """Create ``count`` pending function calls (with ``spec.state`` when given, as a gate sends it)."""
    headers = {"Authorization": f"Bearer {service.agent_key}"}
    ids = [f"bench-{uuid.uuid4().hex[:16]}" for _ in range(count)]
    sem = asyncio.Semaphore(20)

    async def one(call_id: str) -> None:
        spec: dict[str, Any] = {
            "fn": "model_promotion",
            "kwargs": {"subject": "Promote churn", "context": {"v": 3}},
        }
        if state is not None:
            spec["state"] = state
        body = {"run_id": "bench", "call_id": call_id, "spec": spec}
        async with (
            sem,
            session.post(f"{service.base_url}/function_calls", json=body, headers=headers) as resp,
        ):
            assert resp.status == 201, await resp.text()

    await asyncio.gather(*(one(c) for c in ids))
    return ids


async def poll_load(
    session: aiohttp.ClientSession, service: Service, ids: list[str], rate: float, seconds: float
) -> dict[str, float]:
    """Open-loop pollers: ``max(len(ids), 100)`` of them, together offering ``rate`` reads per second."""
    headers = {"Authorization": f"Bearer {service.agent_key}"}
    pollers = max(len(ids), 100)
    interval = pollers / rate
    latencies: list[float] = []
    errors = 0
    started = time.monotonic()
    stop_at = started + seconds

    async def poller(index: int) -> None:
        nonlocal errors
        url = f"{service.base_url}/function_calls/{ids[index % len(ids)]}"
        next_at = started + random.uniform(0, interval)
        while next_at < stop_at:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            t0 = time.perf_counter()
            try:
                async with session.get(url, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
            latencies.append((time.perf_counter() - t0) * 1000)
            next_at += interval

    await asyncio.gather(*(poller(i) for i in range(pollers)))
    elapsed = max(seconds, time.monotonic() - started)
    return {
        "pollers": pollers,
        "interval_s": interval,
        "requests": len(latencies),
        "throughput": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 0.99),
        "errors": errors,
    }


async def decision_latency(
    session: aiohttp.ClientSession, service: Service, mode: str, decisions: int, poll_interval: float
) -> list[float]:
    """Seconds from a decision being committed to the waiting client seeing it."""
    ids = await create_calls(session, service, decisions)
    agent = {"Authorization": f"Bearer {service.agent_key}"}
    reviewer = {"Authorization": f"Bearer {service.reviewer_key}"}
    decided_at: dict[str, float] = {}
    seen_at: dict[str, float] = {}

    async def client(call_id: str) -> None:
        url = f"{service.base_url}/function_calls/{call_id}"
        params = {"wait": "30"} if mode.startswith("long-poll") else None
        while True:
            async with session.get(url, headers=agent, params=params) as resp:
                body = await resp.json()
            if body["status"]["approved"] is not None:
                seen_at[call_id] = time.monotonic()
                return
            if mode == "plain polling":
                await asyncio.sleep(poll_interval)

    async def decide(call_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        if mode == "long-poll, decided in the DB by another process":
            decided_at[call_id] = await asyncio.to_thread(_decide_in_db, service, call_id)
            return
        # measured from the moment the reviewer's request is sent (includes the respond itself)
        decided_at[call_id] = time.monotonic()
        async with session.post(
            f"{service.base_url}/agent/function_calls/{call_id}/respond",
            json={"approved": True, "comment": "bench"},
            headers=reviewer,
        ) as resp:
            assert resp.status == 200, await resp.text()

    clients = [asyncio.create_task(client(c)) for c in ids]
    await asyncio.gather(*(decide(c, 0.5 + random.uniform(0, 3)) for c in ids))
    await asyncio.gather(*clients)
    return [seen_at[c] - decided_at[c] for c in ids]


def _decide_in_db(service: Service, call_id: str) -> float:
    """Decide as ``hlml-approvals approve`` does; return the time the commit finished."""
    from airflow_provider_hlml.approvals import db, store

    engine = db.make_engine(service.database_url, pool_size=1)
    try:
        with db.make_sessionmaker(engine)() as session:
            actor = store.principal_actor(session, name=None)
            store.respond_function_call(
                session, call_id=call_id, approved=True, comment="cli", reject_option_name=None, actor=actor
            )
            return time.monotonic()
    finally:
        engine.dispose()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_clock(pid: int) -> tuple[Callable[[], float], str]:
    """A function returning the CPU seconds ``pid`` has used, and how it reads them.

    On Linux, the process's own CPU-time clock (``clock_gettime`` of
    ``MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)``, all threads, nanoseconds), since ``/proc``
    counts whole clock ticks (10 ms), coarser than one request; elsewhere ``/proc`` ticks.
    """
    clock_id = ((~pid) << 3) | 2
    try:
        time.clock_gettime(clock_id)
    except (OSError, OverflowError, AttributeError):
        return (lambda: cpu_seconds(pid)), "/proc ticks"
    return (lambda: time.clock_gettime(clock_id)), "process CPU clock, ns"


async def respond(session: aiohttp.ClientSession, service: Service, key: str, call_id: str) -> dict[str, Any]:
    async with session.post(
        f"{service.base_url}/agent/function_calls/{call_id}/respond",
        json={"approved": True, "comment": "bench"},
        headers={"Authorization": f"Bearer {key}"},
    ) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return body


async def quorum_cost(
    session: aiohttp.ClientSession, service: Service, rounds: int, batch: int, reads: int
) -> None:
    """Server CPU per approval POST and per status read: single-approver vs 3-rule requests.

    Every round creates ``batch`` requests of each kind, then runs five measurement windows, each
    ``batch`` sequential POSTs by one reviewer key (the single approval of every single-approver
    request; the 1st, 2nd, 3rd and 4th approval of every 3-rule request), the single-approver
    window moving one place each round; then two windows of ``reads`` sequential GETs of one
    pending request of each kind (the 3-rule one with 3 of its 4 approvals in), alternating which
    goes first. Round 0 is a warm-up and is not counted.
    """
    clock, clock_kind = cpu_clock(service.proc.pid)  # type: ignore[union-attr]
    single_state = gate_state(approvers=[SOLO_EMAIL])
    quorum_state = gate_state(rules=QUORUM_RULES)
    keys = service.group_keys
    steps = [keys["ml-leads"][0], keys["ml-leads"][1], keys["compliance"][0], keys["product"][0]]
    step_labels = ["1st (ML lead)", "2nd (ML lead)", "3rd (Compliance)", "4th (Product, decides)"]
    agent = {"Authorization": f"Bearer {service.agent_key}"}

    # The read targets: one pending request of each kind.
    read_single = (await create_calls(session, service, 1, state=single_state))[0]
    read_quorum = (await create_calls(session, service, 1, state=quorum_state))[0]
    for key in steps[:3]:
        assert (await respond(session, service, key, read_quorum))["status"]["approved"] is None
    read_targets = {"single": read_single, "quorum": read_quorum}

    single_ms: list[float] = []  # per round: server CPU ms per POST
    step_ms: list[list[float]] = [[] for _ in steps]
    read_ms: dict[str, list[float]] = {"single": [], "quorum": []}  # per round: CPU ms per GET
    read_latency: dict[str, list[float]] = {"single": [], "quorum": []}  # every GET, ms
    read_bytes: dict[str, int] = {}

    async def answer_window(key: str, ids: list[str], decides: bool) -> float:
        before = clock()
        for call_id in ids:
            body = await respond(session, service, key, call_id)
            assert (body["status"]["approved"] is True) == decides, body["status"]
        return (clock() - before) * 1000 / len(ids)

    async def read_window(kind: str, count: int) -> tuple[float, list[float]]:
        url = f"{service.base_url}/function_calls/{read_targets[kind]}"
        latencies: list[float] = []
        before = clock()
        for _ in range(count):
            t0 = time.perf_counter()
            async with session.get(url, headers=agent) as resp:
                data = await resp.read()
                assert resp.status == 200, data
            latencies.append((time.perf_counter() - t0) * 1000)
        read_bytes[kind] = len(data)
        return (clock() - before) * 1000 / count, latencies

    started = time.monotonic()
    for rnd in range(rounds + 1):
        warmup = rnd == 0
        size = max(5, batch // 4) if warmup else batch
        singles = await create_calls(session, service, size, state=single_state)
        quorums = await create_calls(session, service, size, state=quorum_state)
        order: list[int | None] = [0, 1, 2, 3]
        order.insert(rnd % 5, None)  # None: the single-approver window
        for step in order:
            if step is None:
                cost = await answer_window(service.solo_key, singles, decides=True)
                if not warmup:
                    single_ms.append(cost)
            else:
                cost = await answer_window(steps[step], quorums, decides=step == 3)
                if not warmup:
                    step_ms[step].append(cost)
        for kind in ("single", "quorum") if rnd % 2 else ("quorum", "single"):
            cost, latencies = await read_window(kind, max(10, reads // 4) if warmup else reads)
            if not warmup:
                read_ms[kind].append(cost)
                read_latency[kind] += latencies
    elapsed = time.monotonic() - started

    med = statistics.median
    mean_ms = [statistics.fmean(per_step) for per_step in zip(*step_ms, strict=True)]  # per round
    whole_ms = [sum(per_step) for per_step in zip(*step_ms, strict=True)]
    per_round_mean_ratio = med([q / s for q, s in zip(mean_ms, single_ms, strict=True)])
    per_round_last_ratio = med([q / s for q, s in zip(step_ms[3], single_ms, strict=True)])
    per_round_whole_ratio = med([q / s for q, s in zip(whole_ms, single_ms, strict=True)])
    print(
        f"\nquorum requests: server CPU per approval POST, {rounds} rounds x {batch} requests of each kind, "
        f"sequential POSTs, kinds alternating ({clock_kind}; {elapsed:.0f}s, load average {os.getloadavg()[0]:.1f})"
    )
    print(
        "rules of the 3-rule request: ML lead x2, Compliance x1, Product x1 (group approvers, "
        f"{service.group_size} members per group)"
    )
    print(f"{'request':<36} {'approval':<24} {'CPU ms/POST p50':>15} {'min':>7} {'max':>7} {'x single':>9}")
    s50 = med(single_ms)
    print(
        f"{'single approver (plain approvers)':<36} {'1st (decides)':<24} {s50:>15.3f} "
        f"{min(single_ms):>7.3f} {max(single_ms):>7.3f} {1.0:>9.2f}"
    )
    for label, values in zip(step_labels, step_ms, strict=True):
        print(
            f"{'3 rules (4 approvals decide)':<36} {label:<24} {med(values):>15.3f} "
            f"{min(values):>7.3f} {max(values):>7.3f} {med(values) / s50:>9.2f}"
        )
    print(
        f"{'3 rules (4 approvals decide)':<36} {'mean of the 4':<24} {med(mean_ms):>15.3f} "
        f"{min(mean_ms):>7.3f} {max(mean_ms):>7.3f} {med(mean_ms) / s50:>9.2f}"
    )
    print(
        f"per whole decision: single approver {s50:.3f} ms (1 POST), 3 rules {med(whole_ms):.3f} ms "
        f"(4 POSTs), x{med(whole_ms) / s50:.2f} (median of per-round ratios x{per_round_whole_ratio:.2f})"
    )
    verdict = "met" if per_round_mean_ratio <= 1.5 else "NOT met"
    print(
        f"ratio 3-rule/single, server CPU per approval POST (median of per-round ratios): "
        f"mean of the 4 approvals x{per_round_mean_ratio:.2f}, decision-completing approval "
        f"x{per_round_last_ratio:.2f}  (target <= 1.5 on the mean per approval: {verdict})"
    )
    print(f"\nstatus reads of one pending request, {rounds} rounds x {reads} sequential GETs of each kind")
    print(f"{'request':<36} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/GET p50':>15} {'body bytes':>11}")
    rows = {"single": "single approver, pending", "quorum": "3 rules, 3 of 4 approvals in"}
    for kind, label in rows.items():
        lat = read_latency[kind]
        print(
            f"{label:<36} {med(lat):>8.2f} {percentile(lat, 0.99):>8.2f} "
            f"{med(read_ms[kind]):>15.3f} {read_bytes[kind]:>11}"
        )
    print(
        f"{'ratio 3-rule/single':<36} {med(read_latency['quorum']) / med(read_latency['single']):>8.2f} "
        f"{percentile(read_latency['quorum'], 0.99) / percentile(read_latency['single'], 0.99):>8.2f} "
        f"{med(read_ms['quorum']) / med(read_ms['single']):>15.2f} "
        f"{read_bytes['quorum'] / read_bytes['single']:>11.2f}"
    )


# --- replicas: two `serve` processes on one PostgreSQL database ------------------------------

WAKE_TARGET_MS = 50.0
RATE_TARGET = 500.0
RESPOND_BODY: dict[str, Any] = {
    "approved": True,
    "comment": "bench",
    "requested_at": None,
    "responded_at": None,
    "reject_option_name": None,
    "slack_message_ts": None,
}


def pct(values: list[float], q: float) -> float:
    """``percentile``, or NaN when there are no values."""
    return percentile(values, q) if values else float("nan")


async def create_spread(
    session: aiohttp.ClientSession,
    replicas: list[_replicas.Replica],
    agent_key: str,
    count: int,
    concurrency: int = 50,
) -> list[str]:
    """Create ``count`` pending function calls, round-robin over ``replicas``, ``concurrency`` at a time."""
    headers = {"Authorization": f"Bearer {agent_key}"}
    ids = [f"bench-{uuid.uuid4().hex[:16]}" for _ in range(count)]
    sem = asyncio.Semaphore(concurrency)

    async def one(index: int, call_id: str) -> None:
        spec = {"fn": "model_promotion", "kwargs": {"subject": "Promote churn", "context": {"v": 3}}}
        url = f"{replicas[index % len(replicas)].base_url}/function_calls"
        async with (
            sem,
            session.post(
                url, json={"run_id": "bench", "call_id": call_id, "spec": spec}, headers=headers
            ) as resp,
        ):
            assert resp.status == 201, await resp.text()

    await asyncio.gather(*(one(i, c) for i, c in enumerate(ids)))
    return ids


async def waiting_in(session: aiohttp.ClientSession, replica: _replicas.Replica) -> int:
    """The long-polls ``replica`` holds (its ``/healthz``)."""
    async with session.get(f"{replica.root_url}/healthz") as resp:
        return int((await resp.json())["long_poll_waiters"])


async def wake_row(
    waiters: aiohttp.ClientSession,
    decider: aiohttp.ClientSession,
    wait_on: _replicas.Replica,
    decide_on: _replicas.Replica,
    keys: tuple[str, str],
    count: int,
    interval: float,
) -> dict[str, Any]:
    """Long-poll ``count`` new calls on ``wait_on`` (``?wait=30``, pooled session ``waiters``) and
    decide them on ``decide_on`` one at a time, every ``interval`` seconds.

    Per call, in milliseconds: from ``decide_on`` answering the decision POST (``after_answer``;
    negative when the waiter heard first) and from the POST being sent (``after_send``) to the
    long-poll on ``wait_on`` returning with the decision; and the POST's own latency.
    """
    agent_key, reviewer_key = keys
    ids = await create_spread(decider, [decide_on], agent_key, count, concurrency=10)
    agent = {"Authorization": f"Bearer {agent_key}"}
    reviewer = {"Authorization": f"Bearer {reviewer_key}"}
    seen_at: dict[str, float] = {}
    errors = 0

    async def waiter(call_id: str) -> None:
        nonlocal errors
        url = f"{wait_on.base_url}/function_calls/{call_id}"
        while True:
            try:
                async with waiters.get(url, headers=agent, params={"wait": "30"}) as resp:
                    body = await resp.json() if resp.status == 200 else None
            except (aiohttp.ClientError, asyncio.TimeoutError):
                body = None
            if body is None:
                errors += 1
                await asyncio.sleep(0.1)
            elif body["status"]["approved"] is not None:
                seen_at[call_id] = time.monotonic()
                return

    before = await waiting_in(decider, wait_on)
    tasks = []
    for call_id in ids:
        tasks.append(asyncio.create_task(waiter(call_id)))
        await asyncio.sleep(0.001)  # ramp up instead of all connects at once
    deadline = time.monotonic() + 60
    while await waiting_in(decider, wait_on) < before + count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the long-polls did not all reach replica {wait_on.name}")
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    sent_at: dict[str, float] = {}
    answered_at: dict[str, float] = {}
    started = time.monotonic()
    for index, call_id in enumerate(ids):
        await asyncio.sleep(max(0.0, started + index * interval - time.monotonic()))
        sent_at[call_id] = time.monotonic()
        async with decider.post(
            f"{decide_on.base_url}/agent/function_calls/{call_id}/respond",
            json=RESPOND_BODY,
            headers=reviewer,
        ) as resp:
            text = await resp.text()
            assert resp.status == 200, text
        answered_at[call_id] = time.monotonic()
    _done, pending = await asyncio.wait(tasks, timeout=40)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    seen = [c for c in ids if c in seen_at]
    return {
        "after_answer": [1000 * (seen_at[c] - answered_at[c]) for c in seen],
        "after_send": [1000 * (seen_at[c] - sent_at[c]) for c in seen],
        "post": [1000 * (answered_at[c] - sent_at[c]) for c in ids],
        "missed": count - len(seen),
        "errors": errors,
    }


def print_wake_row(label: str, r: dict[str, Any]) -> None:
    a, s = r["after_answer"], r["after_send"]
    print(
        f"{label:<62} {len(a):>5} {pct(a, 0.5):>8.1f} {pct(a, 0.95):>8.1f} {max(a, default=float('nan')):>8.1f}"
        f" {pct(s, 0.5):>8.1f} {pct(s, 0.95):>8.1f} {max(s, default=float('nan')):>8.1f}"
        f" {statistics.median(r['post']):>9.1f} {r['missed']:>7} {r['errors']:>7}"
    )


async def decision_step(
    session: aiohttp.ClientSession,
    replicas: list[_replicas.Replica],
    reviewer_key: str,
    ids: list[str],
    rate: float,
    seconds: float,
) -> dict[str, Any]:
    """Decide ``ids`` on an open-loop schedule, ``rate`` per second from now (decision ``i`` at
    ``i / rate`` s, on replica ``i % len(replicas)``), whatever the answers take.

    Latency is from the scheduled send time to the answer, so waiting for a connection or for a
    late scheduler counts too. CPU shares cover the ``seconds`` of the schedule.
    """
    headers = {"Authorization": f"Bearer {reviewer_key}"}
    total = len(ids)
    records: list[tuple[float, float, bool] | None] = [None] * total

    async def decide(index: int, scheduled: float) -> None:
        replica = replicas[index % len(replicas)]
        ok = False
        try:
            async with session.post(
                f"{replica.base_url}/agent/function_calls/{ids[index]}/respond",
                json=RESPOND_BODY,
                headers=headers,
            ) as resp:
                await resp.read()
                ok = resp.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass
        records[index] = (scheduled, time.monotonic(), ok)

    replica_before = {r.name: cpu_seconds(r.pid) for r in replicas}
    machine_before = _replicas.machine_cpu()
    client_before = time.process_time()
    t0 = time.monotonic()
    end = t0 + seconds
    tasks: list[asyncio.Task[None]] = []
    index = 0
    while index < total:
        now = time.monotonic()
        while index < total and t0 + index / rate <= now:
            tasks.append(asyncio.create_task(decide(index, t0 + index / rate)))
            index += 1
        if index < total:
            await asyncio.sleep(max(0.0, t0 + index / rate - time.monotonic()))
    await asyncio.sleep(max(0.0, end - time.monotonic()))
    wall = time.monotonic() - t0
    client_cpu = (time.process_time() - client_before) / wall
    replica_cpu = {r.name: (cpu_seconds(r.pid) - replica_before[r.name]) / wall for r in replicas}
    machine_after = _replicas.machine_cpu()
    machine_busy = (machine_after[0] - machine_before[0]) / max(1.0, machine_after[1] - machine_before[1])
    in_flight = sum(1 for t in tasks if not t.done())
    if tasks:
        _done, pending = await asyncio.wait(tasks, timeout=60)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def latencies(part: list[tuple[float, float, bool] | None]) -> list[float]:
        return [1000 * (rec[1] - rec[0]) for rec in part if rec is not None and rec[2]]

    ok = [rec for rec in records if rec is not None and rec[2]]
    lat = latencies(records)
    third = max(1, total // 3)
    return {
        "offered": rate,
        "decisions": total,
        "achieved": sum(1 for rec in ok if rec[1] <= end) / seconds,
        "p50": pct(lat, 0.5),
        "p95": pct(lat, 0.95),
        "p95_first": pct(latencies(records[:third]), 0.95),
        "p95_last": pct(latencies(records[-third:]), 0.95),
        "max": max(lat, default=float("nan")),
        "errors": total - len(ok),
        "in_flight_at_end": in_flight,
        "client_cpu": client_cpu,
        "replica_cpu": replica_cpu,
        "machine_busy": machine_busy,
    }


def sustained(step: dict[str, Any]) -> bool:
    """The step kept up: >= 95% of the offered rate done within it, no errors, and no queueing
    (the last third's p95 at most twice the first third's, plus 10 ms)."""
    return bool(
        step["achieved"] >= 0.95 * step["offered"]
        and step["errors"] == 0
        and step["p95_last"] <= 2 * step["p95_first"] + 10
    )


async def replicas_section(args: argparse.Namespace) -> None:
    """Two ``serve`` replicas on one fresh PostgreSQL database: cross-replica wake, decisions/s."""
    admin = args.postgres_url
    problem = await asyncio.to_thread(_replicas.unreachable, admin)
    if problem is not None:
        print(
            f"\nreplicas: skipped, PostgreSQL is not reachable at {_replicas.redact(admin)} ({problem}); "
            f"set --postgres-url or ${_replicas.POSTGRES_URL_VAR}"
        )
        return
    rates = [float(r) for r in args.replica_rates.split(",") if r.strip()]
    count, interval = args.replica_calls, args.replica_interval
    root = Path(tempfile.mkdtemp(prefix="hlml-replicas-bench-"))
    main_db = _replicas.FreshDatabase(admin)
    base_db = _replicas.FreshDatabase(admin, prefix="hlml_bench_nonotify")
    running: list[_replicas.Replica] = []
    wake: dict[str, dict[str, Any]] = {}
    steps: list[dict[str, Any]] = []
    timeout = aiohttp.ClientTimeout(total=120)
    try:
        url = await asyncio.to_thread(main_db.create)
        keys = await asyncio.to_thread(_replicas.prepare, url)
        a = _replicas.Replica("A", url, root / "a")
        b = _replicas.Replica("B", url, root / "b")
        running += [a, b]
        await asyncio.to_thread(_replicas.start_all, [a, b])
        version = await asyncio.to_thread(_replicas.server_version, admin)
        load = os.getloadavg()
        print(
            f"\nreplicas: 2 x hlml-approvals serve (A, B; 1 uvicorn worker each, default settings) on one "
            f"PostgreSQL {version} database, {main_db.name} at {_replicas.redact(admin).rsplit('/', 1)[0]}; "
            f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
        )
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as waiters,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=20), timeout=timeout) as decider,
        ):
            print(
                f"\ncross-replica wake: {count} pending calls long-polled (?wait=30, one pooled session), "
                f"decided one at a time every {1000 * interval:.0f} ms (milliseconds; a negative value: "
                "the waiter heard before the decider's answer arrived)"
            )
            print(
                f"{'waiter / decider':<62} {'calls':>5} {'after POST answered':>26} {'after POST sent':>26}"
                f" {'POST':>9} {'missed':>7} {'errors':>7}"
            )
            print(
                f"{'':<62} {'':>5} {'p50':>8} {'p95':>8} {'max':>8} {'p50':>8} {'p95':>8} {'max':>8}"
                f" {'p50':>9} {'':>7} {'':>7}"
            )
            # Warm-up (not counted): B's listener connects with its first long-poll.
            await wake_row(waiters, decider, b, a, keys, 5, interval)
            wake["cross"] = await wake_row(waiters, decider, b, a, keys, count, interval)
            print_wake_row("cross-replica: long-poll on B, decided on A", wake["cross"])
            wake["same"] = await wake_row(waiters, decider, b, b, keys, count, interval)
            print_wake_row("same replica (reference): long-poll and decision on B", wake["same"])
            listening = await asyncio.to_thread(main_db.listening_connections)
            if not args.no_notify_baseline:
                base_url = await asyncio.to_thread(base_db.create)
                base_keys = await asyncio.to_thread(_replicas.prepare, base_url)
                await asyncio.to_thread(base_db.drop_notify_trigger)
                recheck = {"HLML_APPROVALS_RECHECK_INTERVAL": "0.5"}
                a0 = _replicas.Replica("A0", base_url, root / "a0", env=recheck, listen=False)
                b0 = _replicas.Replica("B0", base_url, root / "b0", env=recheck, listen=False)
                running += [a0, b0]
                await asyncio.to_thread(_replicas.start_all, [a0, b0])
                await wake_row(waiters, decider, b0, a0, base_keys, 5, interval)
                wake["baseline"] = await wake_row(waiters, decider, b0, a0, base_keys, count, interval)
                base_listening = await asyncio.to_thread(base_db.listening_connections)
                print_wake_row(
                    "without NOTIFY (baseline): 0.5 s re-check, on B, decided on A", wake["baseline"]
                )
                await asyncio.to_thread(a0.stop)
                await asyncio.to_thread(b0.stop)
                await asyncio.to_thread(base_db.drop)
                print(
                    f"baseline: replicas of their own on database {base_db.name}, whose trigger "
                    f"{_replicas.NOTIFY_TRIGGER} was dropped after migration, run with "
                    "HLML_APPROVALS_RECHECK_INTERVAL=0.5 and without their LISTEN connection (app.ChangeListener "
                    "replaced in the benchmark's serve processes; product code unchanged), as before migration "
                    f"0005; LISTEN connections: {base_listening} there, {listening} on {main_db.name}"
                )
            cross_p95 = pct(wake["cross"]["after_answer"], 0.95)
            print(
                f"target: cross-replica p95 < {WAKE_TARGET_MS:.0f} ms after the POST is answered: "
                f"{cross_p95:.1f} ms, {'met' if cross_p95 < WAKE_TARGET_MS else 'NOT met'}"
            )

        warm = max(1, int(rates[0]))  # one second at the first rate, not counted
        needed = [int(rate * args.seconds) for rate in rates]
        connector = aiohttp.TCPConnector(limit=args.replica_connections, keepalive_timeout=60)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=30)
        ) as load_session:
            started = time.monotonic()
            ids = await create_spread(load_session, [a, b], keys[0], warm + sum(needed), concurrency=50)
            created_s = time.monotonic() - started
            print(
                f"\nsustained decisions over both replicas (round-robin), open loop, {args.seconds:g}s per rate, "
                f"client connector limit {args.replica_connections}; {len(ids)} pending calls created beforehand in "
                f"{created_s:.0f}s ({len(ids) / created_s:.0f}/s, not timed); warm-up 1s at {rates[0]:g}/s not counted"
            )
            print(
                "POST latency from its scheduled send time (ms); CPU as % of one core over the step "
                "(client = this load generator), machine = all cores busy"
            )
            print(
                f"{'offered/s':>9} {'decisions':>9} {'achieved/s':>10} {'p50':>7} {'p95':>7} {'p95 1st 3rd':>11}"
                f" {'p95 last 3rd':>12} {'max':>7} {'errors':>6} {'client CPU':>10} {'A CPU':>6} {'B CPU':>6}"
                f" {'machine':>7} {'load':>5} {'sustained':>9}"
            )
            await decision_step(load_session, [a, b], keys[1], ids[:warm], rates[0], 1.0)
            offset = warm
            for rate, n in zip(rates, needed, strict=True):
                await asyncio.sleep(1)
                step = await decision_step(
                    load_session, [a, b], keys[1], ids[offset : offset + n], rate, args.seconds
                )
                offset += n
                steps.append(step)
                cpu = step["replica_cpu"]
                print(
                    f"{rate:>9.0f} {n:>9} {step['achieved']:>10.0f} {step['p50']:>7.1f} {step['p95']:>7.1f}"
                    f" {step['p95_first']:>11.1f} {step['p95_last']:>12.1f} {step['max']:>7.1f} {step['errors']:>6}"
                    f" {100 * step['client_cpu']:>9.0f}% {100 * cpu['A']:>5.0f}% {100 * cpu['B']:>5.0f}%"
                    f" {100 * step['machine_busy']:>6.0f}% {os.getloadavg()[0]:>5.1f}"
                    f" {'yes' if sustained(step) else 'no':>9}"
                )
        print(
            "sustained: >= 95% of the offered rate answered within the step, no errors, and the last "
            "third's p95 <= 2x the first third's + 10 ms (no queueing)"
        )
    finally:
        for replica in running:
            await asyncio.to_thread(replica.stop)
        await asyncio.to_thread(main_db.drop)
        await asyncio.to_thread(base_db.drop)

    cross_p95 = pct(wake["cross"]["after_answer"], 0.95)
    best = max((s["offered"] for s in steps if sustained(s)), default=0.0)
    baseline = (
        f", without NOTIFY {pct(wake['baseline']['after_answer'], 0.95):.0f} ms" if "baseline" in wake else ""
    )
    print(
        f"\nreplicas summary: cross-replica wake p95 {cross_p95:.1f} ms{baseline} "
        f"(target < {WAKE_TARGET_MS:.0f} ms: {'met' if cross_p95 < WAKE_TARGET_MS else 'NOT met'}); "
        f"highest decision rate sustained {best:.0f}/s of {', '.join(f'{r:g}' for r in rates)} "
        f"(target >= {RATE_TARGET:.0f}/s: {'met' if best >= RATE_TARGET else 'NOT met'})"
    )


async def main(args: argparse.Namespace) -> None:
    sections = set(args.sections.split(","))
    unknown = sections - set(ALL_SECTIONS)
    if unknown:
        raise SystemExit(f"unknown sections {sorted(unknown)}; choose from {', '.join(ALL_SECTIONS)}")
    if sections & set(SECTIONS):
        await sqlite_sections(args, sections)
    if "replicas" in sections:
        await replicas_section(args)


async def sqlite_sections(args: argparse.Namespace, sections: set[str]) -> None:
    """The ``reads``, ``decisions`` and ``quorum`` sections, on one SQLite service."""
    service = Service(group_size=args.group_size)
    service.start()
    load = os.getloadavg()[0]
    print(
        f"approvals service benchmark: SQLite, 1 uvicorn worker, {os.cpu_count()} CPUs, load average {load:.1f}"
    )
    connector = aiohttp.TCPConnector(limit=args.connections, keepalive_timeout=60)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            pools: dict[int, list[str]] = {}
            if "reads" in sections:
                for rate in (float(r) for r in args.rates.split(",")):
                    print(
                        f"\nstatus reads, offered {rate:.0f} req/s for {args.seconds:.0f}s, "
                        f"pooled client ({args.connections} connections)"
                    )
                    print(
                        f"{'pending calls':>13} {'pollers':>8} {'interval':>9} {'requests':>9} {'req/s':>8} "
                        f"{'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'server CPU ms/req':>17} "
                        f"{'client CPU ms/req':>17} {'load':>5}"
                    )
                    for count in (1, 100, 1000):
                        if count not in pools:
                            pools[count] = await create_calls(session, service, count)
                        ids = pools[count]
                        await poll_load(session, service, ids, rate, 1.0)  # warm-up
                        cpu_before = cpu_seconds(service.proc.pid)  # type: ignore[union-attr]
                        client_before = time.process_time()
                        r = await poll_load(session, service, ids, rate, args.seconds)
                        requests = max(1, r["requests"])
                        server_cpu_ms = (cpu_seconds(service.proc.pid) - cpu_before) * 1000 / requests  # type: ignore[union-attr]
                        client_cpu_ms = (time.process_time() - client_before) * 1000 / requests
                        print(
                            f"{count:>13} {r['pollers']:>8.0f} {r['interval_s']:>8.2f}s {r['requests']:>9.0f} "
                            f"{r['throughput']:>8.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['errors']:>7.0f} "
                            f"{server_cpu_ms:>17.3f} {client_cpu_ms:>17.3f} {os.getloadavg()[0]:>5.1f}"
                        )
            if "decisions" in sections:
                waiters = await start_idle_waiters(
                    service, pools.get(1000) or await create_calls(session, service, 1000)
                )
                await asyncio.sleep(3)
                cpu_before, wall_before = cpu_seconds(service.proc.pid), time.monotonic()  # type: ignore[union-attr]
                await asyncio.sleep(5)
                idle_cpu = (cpu_seconds(service.proc.pid) - cpu_before) / (time.monotonic() - wall_before)  # type: ignore[union-attr]
                with urllib.request.urlopen(f"http://127.0.0.1:{service.port}/healthz", timeout=10) as resp:
                    waiting = json.load(resp)["long_poll_waiters"]
                print(
                    f"\n{len(waiters.tasks)} clients long-polling 1,000 pending calls ({waiting} waiting in the server): "
                    f"server CPU {100 * idle_cpu:.1f}% of one core "
                    f"({waiters.requests} requests answered in {time.monotonic() - waiters.started:.0f}s, {waiters.errors} errors)"
                )
                print(
                    f"\ndecision-to-client latency, {args.decisions} calls each, while those clients keep waiting (milliseconds)"
                )
                print(f"{'mode':<50} {'p50':>8} {'p99':>8} {'max':>8}")
                for mode in ("long-poll", "plain polling", "long-poll, decided in the DB by another process"):
                    lat = [
                        1000 * x
                        for x in await decision_latency(
                            session, service, mode, args.decisions, args.poll_interval
                        )
                    ]
                    label = (
                        f"plain polling every {args.poll_interval:g}s" if mode == "plain polling" else mode
                    )
                    print(
                        f"{label:<50} {statistics.median(lat):>8.1f} {percentile(lat, 0.99):>8.1f} {max(lat):>8.1f}"
                    )
                await waiters.stop()
            if "quorum" in sections:
                await asyncio.sleep(1)  # let closed waiters' connections settle
                await quorum_cost(session, service, args.quorum_rounds, args.quorum_batch, args.quorum_reads)
    finally:
        service.stop()


class IdleWaiters:
    """Clients that keep long-polling calls nobody decides, each on its own connection."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.tasks: list[asyncio.Task[None]] = []
        self.requests = 0
        self.errors = 0
        self.started = time.monotonic()

    async def wait_on(self, url: str, headers: dict[str, str]) -> None:
        while True:
            try:
                async with self.session.get(url, headers=headers, params={"wait": "30"}) as resp:
                    await resp.read()
                    self.requests += 1
            except aiohttp.ClientError:
                self.errors += 1
                await asyncio.sleep(1)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.session.close()


async def start_idle_waiters(service: Service, ids: list[str]) -> IdleWaiters:
    waiters = IdleWaiters(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
    headers = {"Authorization": f"Bearer {service.agent_key}"}
    for call_id in ids:
        waiters.tasks.append(
            asyncio.create_task(waiters.wait_on(f"{service.base_url}/function_calls/{call_id}", headers))
        )
        await asyncio.sleep(0.002)  # ramp up instead of 1,000 simultaneous connects
    return waiters


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rates", default="250,1000", help="comma-separated offered status reads per second, one table each"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each load step")
    parser.add_argument("--connections", type=int, default=100, help="pooled client connections")
    parser.add_argument("--decisions", type=int, default=30, help="decisions per latency mode")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="plain polling interval (s)")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated parts to run: {', '.join(ALL_SECTIONS)} (default: {','.join(SECTIONS)})",
    )
    parser.add_argument("--quorum-rounds", type=int, default=15, help="measured rounds of the quorum section")
    parser.add_argument(
        "--quorum-batch",
        type=int,
        default=40,
        help="requests of each kind per quorum round (POSTs per window)",
    )
    parser.add_argument("--quorum-reads", type=int, default=100, help="GETs of each kind per quorum round")
    parser.add_argument("--group-size", type=int, default=4, help="reviewers per group of the 3-rule request")
    parser.add_argument(
        "--postgres-url",
        default=_replicas.admin_url_default(),
        help=f"PostgreSQL admin URL of the replicas section (a database is created and dropped in it; "
        f"default ${_replicas.POSTGRES_URL_VAR} or {_replicas.DEFAULT_ADMIN_URL})",
    )
    parser.add_argument(
        "--replica-calls", type=int, default=200, help="calls long-polled per row of the cross-replica wake"
    )
    parser.add_argument(
        "--replica-interval", type=float, default=0.05, help="seconds between the wake rows' decisions"
    )
    parser.add_argument(
        "--replica-rates",
        default="250,500,750",
        help="comma-separated offered decisions per second over both replicas, --seconds each",
    )
    parser.add_argument(
        "--replica-connections", type=int, default=200, help="pooled client connections of the decision load"
    )
    parser.add_argument(
        "--no-notify-baseline",
        action="store_true",
        help="skip the replicas section's 'without NOTIFY' baseline row (two more replicas)",
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(parser.parse_args()))
