"""Many approval gates waiting in one triggerer: CPU, memory, load on the service, decision latency.

Runs N ``HumanApprovalTrigger.run()`` coroutines in one event loop, as one triggerer process
would, against a real ``hlml-approvals serve`` subprocess (SQLite). For each N it:

1. creates N pending requests and starts N triggers (one pooled aiohttp session for all);
2. lets them settle, then measures a steady-state window with nobody deciding: CPU seconds the
   process used per gate-hour, average cores, and requests per second reaching the service;
3. decides every gate at a random moment (reviewer key, over HTTP) and records the time from
   the service recording the decision (its ``responded_at``) to the trigger's event, and from
   sending the decision to the event;
4. reports peak RSS of the process holding the triggers.

By default the gates long-poll (``long_poll_seconds=25``); ``--polling`` adds a row with
long-polling off (a read every ``poll_interval``), the way the cloud API behaves.

Usage: python benchmarks/gate_scale.py [--sizes 100,1000,2000] [--window 30] [--decide-over 20]

With ``--deployment`` it measures a real deployment instead (benchmarks/_gate_scale_deployment.py):
N waiting gates of ours (parked on Airflow 3.3+) next to N native ``ApprovalOperator``s, what they
cost the triggerer, the scheduler, the API server and the approvals service while they wait, then
a burst of decisions (decision -> next task start), ratios ours / native:

    python benchmarks/gate_scale.py --deployment [--gates 2000] [--window 60] [--rate 100] [--native-first]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

# One info line per decided gate would dominate the output at 2,000 gates: set before Airflow loads.
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")

VENV_BIN = Path(sys.executable).parent
PREFIX = "/humanlayer/v1"
CONN_ID = "hlml_bench"


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
        self.root = Path(tempfile.mkdtemp(prefix="hlml-gate-bench-"))
        self.database_url = f"sqlite:///{self.root / 'approvals.db'}"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}{PREFIX}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        from airflow_provider_hlml.approvals import db, store

        db.migrate(self.database_url)
        engine = db.make_engine(self.database_url, pool_size=1)
        with db.make_sessionmaker(engine)() as session:
            self.agent_key = store.create_key(session, name="bench-airflow", role="agent")[1]
            self.reviewer_key = store.create_key(
                session, name="bench-reviewer", role="reviewer", email="reviewer@example.com"
            )[1]
        engine.dispose()
        log = open(self.root / "service.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "hlml-approvals"), "serve", "--port", str(self.port),
             "--database-url", self.database_url, "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("approvals service did not start: " + (self.root / "service.log").read_text())

    def rss_mb(self) -> float:
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)


class RequestCounter:
    """Counts the requests the gates send, by wrapping the hook's one HTTP entry point."""

    def __init__(self) -> None:
        self.count = 0

    def install(self) -> None:
        from airflow_provider_hlml.hooks.humanlayer import HumanLayerHook

        original = HumanLayerHook._arequest
        counter = self

        async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            counter.count += 1
            return await original(self, *args, **kwargs)

        HumanLayerHook._arequest = counted  # type: ignore[method-assign]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def create_calls(session: aiohttp.ClientSession, service: Service, count: int) -> list[str]:
    headers = {"Authorization": f"Bearer {service.agent_key}"}
    ids = [f"gate-bench-{uuid.uuid4().hex[:16]}" for _ in range(count)]
    sem = asyncio.Semaphore(20)

    async def one(call_id: str) -> None:
        body = {
            "run_id": "gate-bench",
            "call_id": call_id,
            "spec": {
                "fn": "model_promotion",
                "kwargs": {"subject": "Promote churn v3?", "context": {"v": 3}},
            },
        }
        async with (
            sem,
            session.post(f"{service.base_url}/function_calls", json=body, headers=headers) as resp,
        ):
            assert resp.status in (200, 201), await resp.text()

    await asyncio.gather(*(one(c) for c in ids))
    return ids


async def run_size(
    service: Service,
    counter: RequestCounter,
    size: int,
    window: float,
    decide_over: float,
    long_poll: int,
    poll_interval: float,
) -> dict[str, Any]:
    from airflow_provider_hlml.triggers.approval import HumanApprovalTrigger

    reviewer_headers = {"Authorization": f"Bearer {service.reviewer_key}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as admin:
        ids = await create_calls(admin, service, size)
        events: dict[str, float] = {}
        received_wall: dict[str, float] = {}
        responded_at: dict[str, str] = {}
        statuses: dict[str, str] = {}

        async def gate(call_id: str) -> None:
            trigger = HumanApprovalTrigger(
                call_id=call_id, humanlayer_conn_id=CONN_ID, poll_interval=poll_interval,
                long_poll_seconds=long_poll,
            )  # fmt: skip
            gen = trigger.run()
            try:
                event = await gen.__anext__()
            finally:
                await gen.aclose()
            events[call_id] = time.perf_counter()
            received_wall[call_id] = time.time()
            statuses[call_id] = event.payload["status"]
            responded_at[call_id] = event.payload.get("responded_at") or ""

        # Start the gates spread over a few seconds, as deferrals arrive at a triggerer.
        tasks = []
        for call_id in ids:
            tasks.append(asyncio.ensure_future(gate(call_id)))
            await asyncio.sleep(min(5.0, size / 400) / size)
        await asyncio.sleep(max(5.0, min(long_poll, 10)))  # settle: every gate is now waiting

        cpu0, req0, t0 = cpu_seconds(), counter.count, time.perf_counter()
        await asyncio.sleep(window)
        cpu1, req1, t1 = cpu_seconds(), counter.count, time.perf_counter()
        elapsed = t1 - t0
        service_rss = service.rss_mb()

        decided: dict[str, float] = {}

        async def decide(call_id: str) -> None:
            await asyncio.sleep(random.uniform(0, decide_over))
            body = {"approved": True, "comment": "ok"}
            for attempt in range(3):
                # Timed from sending the decision: the service wakes the waiting gate before it answers.
                decided[call_id] = time.perf_counter()
                try:
                    async with admin.post(
                        f"{service.base_url}/agent/function_calls/{call_id}/respond",
                        json=body,
                        headers=reviewer_headers,
                    ) as resp:
                        assert resp.status == 200, await resp.text()
                        return
                except aiohttp.ServerDisconnectedError:
                    # A keep-alive connection the server closed as it was reused; send again.
                    if attempt == 2:
                        raise

        await asyncio.gather(*(decide(c) for c in ids))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=max(60.0, 3 * poll_interval))

    # Recorded -> event: from the service recording the decision (its responded_at; same machine
    # and clock) to the gate's event. Sent -> event adds the time the service took to accept it.
    latencies = [
        max(0.0, received_wall[c] - datetime.fromisoformat(responded_at[c]).timestamp()) for c in ids
    ]
    sent_latencies = [max(0.0, events[c] - decided[c]) for c in ids]
    assert set(statuses.values()) == {"approved"}, statuses
    used = cpu1 - cpu0
    return {
        "gates": size,
        "mode": f"long-poll {long_poll}s" if long_poll else f"poll {poll_interval:g}s",
        "cpu_s_per_gate_hour": used / (size * elapsed / 3600),
        "avg_cores": used / elapsed,
        "service_req_s": (req1 - req0) / elapsed,
        "peak_rss_mb": peak_rss_mb(),
        "service_rss_mb": service_rss,
        "p50_s": statistics.median(latencies),
        "p95_s": percentile(latencies, 0.95),
        "sent_p50_s": statistics.median(sent_latencies),
        "sent_p95_s": percentile(sent_latencies, 0.95),
        "decisions_s": size / decide_over,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,2000")
    parser.add_argument("--window", type=float, default=30.0, help="steady-state measurement window (s)")
    parser.add_argument("--decide-over", type=float, default=20.0, help="decisions spread over this many s")
    parser.add_argument("--long-poll", type=int, default=25)
    parser.add_argument("--poll-interval", type=float, default=5.0)
    parser.add_argument("--polling", action="store_true", help="add a row per size with long-polling off")
    parser.add_argument("--deployment", action="store_true", help="measure a real deployment vs native")
    parser.add_argument("--gates", type=int, default=2000, help="--deployment: waiting gates per side")
    parser.add_argument("--rate", type=float, default=100.0, help="--deployment: decisions per second")
    parser.add_argument(
        "--ours-mode",
        default="auto",
        choices=("auto", "park", "defer"),
        help="--deployment: [hlml] wait_mode",
    )
    parser.add_argument("--native-first", action="store_true", help="--deployment: measure native first")
    args = parser.parse_args()
    if args.deployment:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _gate_scale_deployment import run as run_deployment

        run_deployment(args.gates, args.window, args.rate, args.ours_mode, args.native_first)
        return

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 16384)), hard))
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="hlml-gate-bench-home-"))
    service = Service()
    service.start()
    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps(
        {"conn_type": "humanlayer", "host": service.base_url, "password": service.agent_key}
    )
    counter = RequestCounter()
    counter.install()
    rows = []
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            modes = [args.long_poll] + ([0] if args.polling else [])
            for long_poll in modes:
                row = asyncio.run(
                    run_size(
                        service, counter, size, args.window, args.decide_over, long_poll, args.poll_interval
                    )
                )
                rows.append(row)
                print(f"  done: {row['gates']} gates, {row['mode']}", file=sys.stderr, flush=True)
    finally:
        service.stop()

    print(
        f"gate_scale: {os.cpu_count()} cores, window {args.window:g}s, decisions over {args.decide_over:g}s"
    )
    header = (
        f"{'gates':>6} {'mode':<14} {'CPU s/gate-h':>12} {'avg cores':>9} {'svc req/s':>9} "
        f"{'peak RSS MB':>11} {'svc RSS MB':>10} {'decisions/s':>11} {'p50 s':>6} {'p95 s':>6} "
        f"{'sent p50':>8} {'sent p95':>8}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['gates']:>6} {r['mode']:<14} {r['cpu_s_per_gate_hour']:>12.2f} {r['avg_cores']:>9.3f} "
            f"{r['service_req_s']:>9.1f} {r['peak_rss_mb']:>11.0f} {r['service_rss_mb']:>10.0f} "
            f"{r['decisions_s']:>11.1f} {r['p50_s']:>6.3f} {r['p95_s']:>6.3f} "
            f"{r['sent_p50_s']:>8.3f} {r['sent_p95_s']:>8.3f}"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print(
        "p50/p95: decision recorded by the service -> gate event; sent: decision sent -> gate event "
        "(includes the service's queue for writes)"
    )
    print(
        "targets: 2,000 gates < 0.2 avg cores and < 400 MB RSS; p95 decision-to-event < 1 s with long-polling"
    )


if __name__ == "__main__":
    main()
