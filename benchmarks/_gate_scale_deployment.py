"""``gate_scale.py --deployment``: N waiting gates of ours next to N native ones, on a real deployment.

One deployment (``airflow api-server``, ``scheduler``, ``dag-processor``, ``triggerer``,
LocalExecutor; PostgreSQL metadata DB when HLML_TEST_POSTGRES_URL is set) with a standalone
approvals service on its own database that pushes its decisions to the API server (signed
webhooks, the production layout of docker-compose.yml). DAGs ``bench_scale_hlml`` and
``bench_scale_native`` (tests/e2e/dags/e2e_gate_scale.py) map N lanes of "gate, then a trivial
task"; they run one after the other, and for each:

1. every gate waits (ours parks in ``awaiting_input`` with ``[hlml] wait_mode`` auto, or
   defers with ``--ours-mode defer``; the native ``ApprovalOperator`` parks);
2. a steady-state window with nobody deciding: CPU (cores) of the triggerer, the scheduler, the
   API server and the approvals service (process trees, from /proc), requests per second reaching
   the service (through a counting proxy in front of it), and the scheduler's loop time (its
   ``scheduler.scheduler_loop_duration`` StatsD timer, received on a local UDP socket);
3. a burst of decisions at ``--rate`` per second (ours: a reviewer answers through the service's
   HumanLayer API; native: Airflow's ``PATCH .../hitlDetails``), then decision -> start of that
   lane's next task, p50 / p95.

Prints both sides and the ratios ours / native (targets: <= 1.1 on each cost, 0 steady-state
requests to the service, <= 1.0 on latency).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from airflow_provider_hlml.utils.ids import approval_call_id  # noqa: E402
from tests.fixtures.airflow_stack import (  # noqa: E402
    AirflowStack,
    MetadataDatabases,
    StackConfig,
    postgres_available,
    start_airflow_stack,
    wait_until,
)
from tests.fixtures.approvals import ApprovalsService, make_keys  # noqa: E402
from tests.fixtures.mlflow_server import start_mlflow_server  # noqa: E402
from tests.fixtures.processes import free_port  # noqa: E402

OURS = "bench_scale_hlml"
NATIVE = "bench_scale_native"
GATE = "lane.gate"
AFTER = "lane.after"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))] if ordered else float("nan")


# ---- measuring ------------------------------------------------------------------------------


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of a process and all its descendants, alive now."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


class StatsdSink:
    """A UDP socket receiving Airflow's StatsD metrics; keeps the scheduler's loop timings."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.loops: list[tuple[float, float]] = []  # (received at, milliseconds)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.5)
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            for line in data.decode(errors="replace").splitlines():
                name, _, rest = line.partition(":")
                if name.endswith("scheduler.scheduler_loop_duration") and rest.endswith("|ms"):
                    with contextlib.suppress(ValueError):
                        self.loops.append((time.monotonic(), float(rest[:-3])))

    def loops_between(self, start: float, end: float) -> list[float]:
        return [ms for at, ms in self.loops if start <= at <= end]

    def close(self) -> None:
        self._stop = True
        self.sock.close()


class CountingProxy:
    """An HTTP reverse proxy in front of the approvals service that counts the requests it passes."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.port = free_port()
        self.count = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()
        self._ready.wait(30)

    def _serve(self) -> None:
        from aiohttp import ClientSession, ClientTimeout, web

        async def handle(request: web.Request) -> web.StreamResponse:
            self.count += 1
            body = await request.read()
            headers = {
                k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
            }
            async with session.request(
                request.method, self.target + request.rel_url.raw_path_qs, data=body, headers=headers
            ) as resp:
                payload = await resp.read()
                keep = {
                    k: v
                    for k, v in resp.headers.items()
                    if k.lower() in ("content-type", "idempotent-replayed")
                }
                return web.Response(status=resp.status, body=payload, headers=keep)

        async def main() -> None:
            nonlocal session
            session = ClientSession(timeout=ClientTimeout(total=None))
            app = web.Application(client_max_size=4 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._ready.set()
            await asyncio.Event().wait()

        session: Any = None
        self._loop.run_until_complete(main())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# ---- one side -------------------------------------------------------------------------------


def _count(engine: Any, dag_id: str, run_id: str, task_id: str, state: str) -> int:
    from sqlalchemy import text

    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM task_instance WHERE dag_id = :d AND run_id = :r "
                    "AND task_id = :t AND state = :s"
                ),
                {"d": dag_id, "r": run_id, "t": task_id, "s": state},
            ).scalar_one()
        )


def _starts(engine: Any, dag_id: str, run_id: str) -> dict[int, float]:
    from sqlalchemy import text

    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT map_index, start_date FROM task_instance WHERE dag_id = :d AND run_id = :r "
                "AND task_id = :t AND start_date IS NOT NULL"
            ),
            {"d": dag_id, "r": run_id, "t": AFTER},
        ).all()
    return {
        int(m): (s if s.tzinfo else s.replace(tzinfo=__import__("datetime").timezone.utc)).timestamp()
        for m, s in rows
    }


async def _burst(count: int, rate: float, send: Any) -> dict[int, float]:
    """Send ``count`` decisions at ``rate`` per second; returns when each was sent (epoch s)."""
    sent: dict[int, float] = {}
    start = time.monotonic() + 0.2
    errors: list[str] = []

    async def one(i: int) -> None:
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        sent[i] = time.time()
        try:
            await send(i)
        except Exception as exc:  # reported, and the lane is left out
            errors.append(f"{i}: {exc}")
            sent.pop(i, None)

    await asyncio.gather(*(one(i) for i in range(count)))
    if errors:
        print(f"  {len(errors)} decisions failed, e.g. {errors[:3]}", file=sys.stderr)
    return sent


def run_side(
    stack: AirflowStack,
    engine: Any,
    sink: StatsdSink,
    proxy: CountingProxy,
    service: ApprovalsService,
    *,
    dag_id: str,
    count: int,
    window: float,
    rate: float,
) -> dict[str, Any]:
    import httpx

    api = stack.api
    api.wait_for_dag(dag_id, timeout=300)
    api.unpause(dag_id)
    run_id = api.trigger(dag_id, conf={"count": count})
    waiting_state = (
        "deferred"
        if dag_id == OURS and stack.env.get("AIRFLOW__HLML__WAIT_MODE") == "defer"
        else "awaiting_input"
    )
    started = time.monotonic()
    wait_until(
        lambda: _count(engine, dag_id, run_id, GATE, waiting_state) >= count,
        6 * 3600,
        f"{count} gates of {dag_id} {waiting_state}",
        interval=2.0,
    )
    to_wait = time.monotonic() - started
    print(f"  [{dag_id}] {count} gates {waiting_state} after {to_wait:.0f}s; settling", flush=True)
    time.sleep(15)  # the last workers exit, the scheduler goes idle

    pids = {name: stack.processes[name].pid for name in ("triggerer", "scheduler", "api-server")}
    pids["approvals service"] = service.process.pid if service.process is not None else 0
    cpu0 = {name: tree_cpu_seconds(pid) for name, pid in pids.items()}
    req0 = proxy.count
    t0 = time.monotonic()
    time.sleep(window)
    t1 = time.monotonic()
    cpu1 = {name: tree_cpu_seconds(pid) for name, pid in pids.items()}
    req1 = proxy.count
    loops = sink.loops_between(t0, t1)
    row: dict[str, Any] = {
        "dag_id": dag_id,
        "count": count,
        "to_wait_s": to_wait,
        "cores": {name: (cpu1[name] - cpu0[name]) / (t1 - t0) for name in pids},
        "service_req_s": (req1 - req0) / (t1 - t0),
        "loop_ms_p50": statistics.median(loops) if loops else float("nan"),
        "loop_ms_mean": statistics.fmean(loops) if loops else float("nan"),
        "loops": len(loops),
    }

    if dag_id == OURS:
        client = httpx.AsyncClient(
            base_url=service.base_url, headers={"Authorization": f"Bearer {service.reviewer_key}"}, timeout=60
        )

        async def send(i: int) -> None:
            call_id = approval_call_id(dag_id, run_id, GATE, i, 1)
            resp = await client.post(
                f"/agent/function_calls/{call_id}/respond",
                json={"approved": True, "comment": "benchmark", "requested_at": None, "responded_at": None,
                      "reject_option_name": None, "slack_message_ts": None},
            )  # fmt: skip
            resp.raise_for_status()
    else:
        token = api.token()
        client = httpx.AsyncClient(
            base_url=stack.api_url + "/api/v2", headers={"Authorization": f"Bearer {token}"}, timeout=60
        )

        async def send(i: int) -> None:
            resp = await client.patch(
                f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{GATE}/{i}/hitlDetails",
                json={"chosen_options": ["Approve"]},
            )
            resp.raise_for_status()

    async def burst() -> dict[int, float]:
        try:
            return await _burst(count, rate, send)
        finally:
            await client.aclose()

    sent = asyncio.run(burst())
    wait_until(
        lambda: len(_starts(engine, dag_id, run_id)) >= len(sent),
        6 * 3600,
        f"{len(sent)} downstream tasks of {dag_id} to start",
        interval=2.0,
    )
    starts = _starts(engine, dag_id, run_id)
    latencies = [starts[i] - sent[i] for i in sent if i in starts]
    row.update(p50=percentile(latencies, 0.5), p95=percentile(latencies, 0.95), decided=len(sent))
    run = wait_until(
        lambda: (r := api.dag_run(dag_id, run_id))["state"] in ("success", "failed") and r,
        3600,
        f"{dag_id} to end",
        2.0,
    )
    row["run_state"] = run["state"]
    print(f"  [{dag_id}] {row}", flush=True)
    return row


def _ratio(ours: float, native: float) -> str:
    if native <= 0 or native != native:
        return "  n/a"
    return f"{ours / native:5.2f}"


def run(count: int, window: float, rate: float, ours_mode: str, native_first: bool = False) -> None:
    from sqlalchemy import create_engine

    workdir = Path(tempfile.mkdtemp(prefix="hlml-bench-scale-"))
    databases = MetadataDatabases(workdir)
    database = "postgresql" if postgres_available() else "sqlite"
    mlflow = start_mlflow_server(workdir / "mlflow")
    approvals_db = databases.empty_postgres("hlml_bench_scale") if database == "postgresql" else (
        f"sqlite:///{workdir / 'approvals.db'}"
    )  # fmt: skip
    service = ApprovalsService(database_url=approvals_db, root=workdir, port=free_port())
    make_keys(service)
    secret = secrets.token_urlsafe(24)
    sink = StatsdSink()
    stack: AirflowStack | None = None
    keep = False
    try:
        service.start()
        proxy = CountingProxy(f"http://127.0.0.1:{service.port}")
        extra_env = {
            "AIRFLOW__HLML__WEBHOOK_SECRET": secret,
            "AIRFLOW__HLML__WAIT_MODE": ours_mode,
            "AIRFLOW__CORE__MAX_MAP_LENGTH": str(max(1024, count)),
            "AIRFLOW__CORE__PARALLELISM": "16",
            "AIRFLOW__TRIGGERER__CAPACITY": str(max(1000, count + 10)),
            "AIRFLOW__METRICS__STATSD_ON": "True",
            "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
            "AIRFLOW__METRICS__STATSD_PORT": str(sink.port),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        }
        config = StackConfig(
            mlflow_url=mlflow.url,
            approvals_base_url=proxy.url + "/humanlayer/v1",
            agent_key=service.agent_key,
            delegate_key=service.delegate_key,
            webhook_secret=secret,
        )
        stack = start_airflow_stack(
            workdir / "stack",
            databases,
            config,
            database=database,
            extra_env=extra_env,
            include_examples=False,
        )
        service.extra_env = {
            "HLML_APPROVALS_WEBHOOK_URLS": stack.webhook_url,
            "HLML_APPROVALS_WEBHOOK_SECRET": secret,
        }
        service.restart()
        engine = create_engine(stack.sql_alchemy_conn)
        order = (NATIVE, OURS) if native_first else (OURS, NATIVE)
        rows = {
            dag_id: run_side(
                stack, engine, sink, proxy, service, dag_id=dag_id, count=count, window=window, rate=rate
            )
            for dag_id in order
        }
        ours, native = rows[OURS], rows[NATIVE]
        print()
        print(
            f"gate_scale --deployment: {count} waiting gates each side, {database} metadata DB, LocalExecutor, "
            f"{os.cpu_count()} cores; ours {ours_mode} (wait_mode); {order[0]} first; window {window:g}s; "
            f"decisions at {rate:g}/s; "
            f"load average now {os.getloadavg()[0]:.1f}"
        )
        print(f"{'while waiting':<34} {'ours':>10} {'native':>10} {'ratio':>6}")
        for name in ("triggerer", "scheduler", "api-server", "approvals service"):
            print(
                f"  {name + ' CPU (cores)':<32} {ours['cores'][name]:>10.4f} {native['cores'][name]:>10.4f} "
                f"{_ratio(ours['cores'][name], native['cores'][name])}"
            )
        print(f"  {'service requests/s':<32} {ours['service_req_s']:>10.2f} {native['service_req_s']:>10.2f}")
        print(
            f"  {'scheduler loop ms (median)':<32} {ours['loop_ms_p50']:>10.2f} {native['loop_ms_p50']:>10.2f} "
            f"{_ratio(ours['loop_ms_p50'], native['loop_ms_p50'])}"
        )
        print(
            f"  {'scheduler loop ms (mean)':<32} {ours['loop_ms_mean']:>10.2f} {native['loop_ms_mean']:>10.2f} "
            f"{_ratio(ours['loop_ms_mean'], native['loop_ms_mean'])}"
        )
        print(f"  {'time until all wait (s)':<32} {ours['to_wait_s']:>10.0f} {native['to_wait_s']:>10.0f}")
        print("decision -> next task start")
        for q in ("p50", "p95"):
            print(f"  {q:<32} {ours[q]:>9.2f}s {native[q]:>9.2f}s {_ratio(ours[q], native[q])}")
        print(f"runs: ours {ours['run_state']}, native {native['run_state']}")
        print(
            "targets: costs ours/native <= 1.1, 0 steady-state requests to the service, latency ratio <= 1.0"
        )
    except BaseException:
        keep = True
        if stack is not None:
            for name, proc in stack.processes.items():
                print(f"--- {name} log tail ---\n{proc.log_tail(30)}", file=sys.stderr)
        print(f"gate_scale --deployment failed; logs kept in {workdir}", file=sys.stderr)
        raise
    finally:
        if stack is not None:
            stack.stop()
        service.stop()
        sink.close()
        mlflow.process.stop()
        databases.drop_all()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
