"""Approvals service under load: status reads by concurrent pollers, and decision-to-client latency.

Starts ``hlml-approvals serve`` (SQLite, one uvicorn worker) as a subprocess, creates 1, 100 and
1,000 pending function calls and drives pollers at a fixed total rate (open loop: each poller
reads its call every ``pollers / rate`` seconds) through one pooled aiohttp client. Prints the
achieved throughput and p50/p99 latency of the status reads. Then it decides calls while clients
wait on them, once with long-polling (``?wait=30``) and once with plain polling every
``--poll-interval`` seconds, and prints how long each client took to learn the decision; a third
row decides straight in the database (as ``hlml-approvals approve`` does from another process).

Usage: python benchmarks/approvals_service.py [--rates 250,1000] [--seconds 10] [--decisions 30]
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
from pathlib import Path

import aiohttp

VENV_BIN = Path(sys.executable).parent
PREFIX = "/humanlayer/v1"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Service:
    """``hlml-approvals serve`` on a temp SQLite database, with an agent and a reviewer key."""

    def __init__(self) -> None:
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


async def create_calls(session: aiohttp.ClientSession, service: Service, count: int) -> list[str]:
    headers = {"Authorization": f"Bearer {service.agent_key}"}
    ids = [f"bench-{uuid.uuid4().hex[:16]}" for _ in range(count)]
    sem = asyncio.Semaphore(20)

    async def one(call_id: str) -> None:
        body = {
            "run_id": "bench",
            "call_id": call_id,
            "spec": {"fn": "model_promotion", "kwargs": {"subject": "Promote churn", "context": {"v": 3}}},
        }
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


async def main(args: argparse.Namespace) -> None:
    service = Service()
    service.start()
    load = os.getloadavg()[0]
    print(
        f"approvals service benchmark: SQLite, 1 uvicorn worker, {os.cpu_count()} CPUs, load average {load:.1f}"
    )
    connector = aiohttp.TCPConnector(limit=args.connections, keepalive_timeout=60)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            pools: dict[int, list[str]] = {}
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
                label = f"plain polling every {args.poll_interval:g}s" if mode == "plain polling" else mode
                print(
                    f"{label:<50} {statistics.median(lat):>8.1f} {percentile(lat, 0.99):>8.1f} {max(lat):>8.1f}"
                )
            await waiters.stop()
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
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(parser.parse_args()))
