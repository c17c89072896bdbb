"""Decision-to-downstream-start latency through a real scheduler and triggerer.

Starts a real deployment (``airflow api-server``, ``scheduler``, ``dag-processor``, ``triggerer``,
LocalExecutor; PostgreSQL when HLML_TEST_POSTGRES_URL is set, else SQLite) and an MLflow server,
then runs DAG ``e2e_latency`` (tests/e2e/dags/e2e_latency.py) ROUNDS times. Each run has two
gates side by side:

- ``hlml_gate``: this provider's HumanApprovalSensor, approved by a reviewer key through the
  HumanLayer API of the approvals service; it defers to the triggerer in ``standalone`` mode and
  parks in ``awaiting_input`` (Airflow 3.3+) where the service pushes decisions (``webhook``,
  ``mounted``);
- ``native_gate``: Airflow's ApprovalOperator (providers-standard HITL), approved through Airflow's
  REST API (``PATCH .../taskInstances/{task_id}/{map_index}/hitlDetails``).

Once both wait, they are answered one after the other (the order alternates between rounds);
the latency of a gate is the start of the task after it minus the moment its answer was sent.

Each mode is a fresh deployment; both gates are measured in the same runs of each mode:

- ``standalone``: a standalone approvals service; the decision reaches Airflow through the trigger
  (the service pushes nothing, so ``[hlml] wait_mode`` auto defers);
- ``webhook``: the same, plus the service's webhook to ``/hlml/webhooks/humanlayer`` (signed);
- ``mounted``: the approvals service mounted in the API server (the embedded default);
- ``celery``: ``webhook`` on the CeleryExecutor (``--celery-workers``, 2 by default, two slots
  each; Redis broker; PostgreSQL needed).

An approved gate of ours ends where the decision lands (``[hlml] finish_in_place``, on by
default): in the API server that received it (``webhook``, ``mounted``, ``celery``: the gate
parks) or in the triggerer (``standalone``), with no resume on a worker; ``--no-finish-in-place``
measures the resume on a worker instead.

Prints both distributions, where the time went, and the ratio hlml / native at p50 and p95
(target <= 0.8 with finish_in_place, <= 1.0 without).

    python benchmarks/e2e_latency.py [--rounds 20] [--modes standalone,webhook,mounted,celery]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from _side_by_side import answer_both, check_run, percentile, ratios, started_at, summary  # noqa: E402

from airflow_provider_hlml.utils.ids import approval_call_id  # noqa: E402
from tests.fixtures.airflow_stack import (  # noqa: E402
    AirflowStack,
    HumanLayerApi,
    MetadataDatabases,
    StackConfig,
    postgres_available,
    redis_available,
    start_airflow_stack,
)
from tests.fixtures.approvals import ApprovalsService, make_keys  # noqa: E402
from tests.fixtures.mlflow_server import start_mlflow_server  # noqa: E402
from tests.fixtures.processes import free_port  # noqa: E402

DAG_ID = "e2e_latency"
SETTLE_SECONDS = 1.0  # after the scheduler has seen both workers exit


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


PHASES = (
    "decision -> gate scheduled (the decision has reached Airflow)",
    "gate scheduled -> gate queued",
    "gate queued -> gate done (resume on a worker)",
    "gate done -> next task started",
)


def _phases(stack: AirflowStack, run_id: str, gate: str, after: str, sent: float) -> list[float | None]:
    """Where the latency of one gate went, from Airflow's task-instance timestamps.

    A gate the triggerer ends itself is never scheduled or queued again: those phases are None.
    """
    tis = {ti["task_id"]: ti for ti in stack.api.task_instances(DAG_ID, run_id)}
    scheduled = _ts(tis[gate].get("scheduled_when"))
    queued = _ts(tis[gate].get("queued_when"))
    done = _ts(tis[gate].get("end_date"))
    started = _ts(tis[after].get("start_date"))
    resumed = scheduled is not None and scheduled > sent - 1.0
    return [
        (scheduled - sent) if resumed and scheduled is not None else None,
        (queued - scheduled) if resumed and queued is not None and scheduled is not None else None,
        (done - queued) if resumed and done is not None and queued is not None else None,
        (started - done) if started is not None and done is not None else None,
    ]


MODES = ("standalone", "webhook", "mounted", "celery")


def run(
    rounds: int, mode: str, finish_in_place: bool = True, celery_workers: int = 2
) -> tuple[list[float], list[float]]:
    """Measure ``rounds`` runs on a fresh deployment in ``mode``; returns (hlml, native) latencies."""
    workdir = Path(tempfile.mkdtemp(prefix="hlml-bench-e2e-"))
    databases = MetadataDatabases(workdir)
    database = "postgresql" if postgres_available() else "sqlite"
    executor = "CeleryExecutor" if mode == "celery" else "LocalExecutor"
    if mode == "celery" and (database != "postgresql" or not redis_available()):
        raise SystemExit("e2e_latency: the celery mode needs PostgreSQL and Redis")
    mlflow = start_mlflow_server(workdir / "mlflow")
    keys = ApprovalsService(
        database_url=f"sqlite:///{workdir / 'approvals.db'}", root=workdir, port=free_port()
    )
    make_keys(keys)
    mounted = mode.startswith("mounted")
    approvals = None if mounted else keys.start()
    secret = secrets.token_urlsafe(24)
    stack: AirflowStack | None = None
    extra_env = {
        "AIRFLOW__HLML__WEBHOOK_SECRET": secret,
        "AIRFLOW__HLML__FINISH_IN_PLACE": str(finish_in_place),
    }
    reviewer: HumanLayerApi | None = None
    keep = False
    try:
        config = StackConfig(
            mlflow_url=mlflow.url,
            approvals_base_url="" if mounted else keys.base_url,
            agent_key=keys.agent_key,
            delegate_key=keys.delegate_key,
            mounted_approvals_db=keys.database_url if mounted else "",
        )
        stack = start_airflow_stack(
            workdir / "stack",
            databases,
            config,
            database=database,
            executor=executor,
            workers=celery_workers,
            extra_env=extra_env,
        )
        if mode in ("webhook", "celery") and approvals is not None:
            approvals.extra_env = {
                "HLML_APPROVALS_WEBHOOK_URLS": f"{stack.api_url}/hlml/webhooks/humanlayer",
                "HLML_APPROVALS_WEBHOOK_SECRET": secret,
            }
            approvals.restart()
        reviewer = HumanLayerApi(stack.approvals_base_url, keys.reviewer_key)
        api = stack.api
        api.wait_for_dag(DAG_ID)
        api.unpause(DAG_ID)
        ours: list[float] = []
        native: list[float] = []
        # where the time went, per phase (see PHASES)
        ours_phases: list[list[float | None]] = []
        native_phases: list[list[float | None]] = []
        sent_at: dict[str, float] = {}
        for n in range(rounds):
            run_id = api.trigger(DAG_ID)
            # Ours parks like the native gate where the service pushes decisions to Airflow.
            ours_state = "deferred" if mode == "standalone" else "awaiting_input"
            stack.wait_until_parked(DAG_ID, run_id, "hlml_gate", ours_state)
            stack.wait_until_parked(DAG_ID, run_id, "native_gate", "awaiting_input")
            time.sleep(SETTLE_SECONDS)
            call_id = approval_call_id(DAG_ID, run_id, "hlml_gate", -1, 1)

            def answer_ours(run_id: str = run_id, call_id: str = call_id) -> float:
                assert reviewer is not None
                assert stack is not None
                sent = sent_at["hlml_gate"] = time.time()
                reviewer.respond(call_id, approved=True, comment="benchmark")
                return started_at(stack, DAG_ID, run_id, "after_hlml") - sent

            def answer_native(run_id: str = run_id) -> float:
                assert stack is not None
                sent = sent_at["native_gate"] = time.time()
                resp = api.request(
                    "PATCH",
                    f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/native_gate/-1/hitlDetails",
                    json={"chosen_options": ["Approve"]},
                )
                resp.raise_for_status()
                return started_at(stack, DAG_ID, run_id, "after_native") - sent

            ours_latency, native_latency = answer_both(n, answer_ours, answer_native)
            ours.append(ours_latency)
            native.append(native_latency)
            check_run(stack, DAG_ID, run_id, "hlml_gate", "benchmark")
            ours_phases.append(_phases(stack, run_id, "hlml_gate", "after_hlml", sent_at["hlml_gate"]))
            native_phases.append(
                _phases(stack, run_id, "native_gate", "after_native", sent_at["native_gate"])
            )
            print(
                f"[{mode}] round {n + 1}/{rounds}: hlml {ours[-1]:.2f}s  native {native[-1]:.2f}s", flush=True
            )

        print()
        how = "ends in place" if finish_in_place else "resumes on a worker"
        print(
            f"e2e decision -> downstream task start ({mode}; {database}, {executor}"
            f"{f' x {celery_workers}' if mode == 'celery' else ''}, {rounds} rounds; "
            f"an approved hlml gate {how})"
        )
        print(summary("HumanApprovalSensor (hlml)", ours))
        print(summary("ApprovalOperator (native)", native))
        print("where the time went (medians; '-' = the phase does not happen):")
        for i, phase in enumerate(PHASES):
            cells = []
            for rows in (ours_phases, native_phases):
                values = [r[i] for r in rows if r[i] is not None]
                cells.append(f"{statistics.median(values):6.2f}s" if values else "     -")
            print(f"  {phase:<62} hlml {cells[0]}  native {cells[1]}")
        print(f"ratio hlml/native [{mode}]: {ratios(ours, native)}  (target <= {target(finish_in_place)})")
        print(flush=True)
        return ours, native
    except BaseException:
        if stack is not None:
            for name, proc in stack.processes.items():
                print(f"--- {name} log tail ---\n{proc.log_tail(40)}", file=sys.stderr)
        # Keep the logs (the processes are stopped below) for a look at what went wrong.
        print(f"e2e_latency: {mode} failed; logs kept in {workdir}", file=sys.stderr)
        keep = True
        raise
    finally:
        if reviewer is not None:
            reviewer.close()
        if stack is not None:
            stack.stop()
        if approvals is not None:
            approvals.stop()
        mlflow.process.stop()
        databases.drop_all()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def target(finish_in_place: bool) -> str:
    return "0.8" if finish_in_place else "1.0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("HLML_BENCH_ROUNDS", "20")))
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument(
        "--no-finish-in-place",
        dest="finish_in_place",
        action="store_false",
        help="[hlml] finish_in_place = False: approved gates resume on a worker (the previous behaviour)",
    )
    parser.add_argument(
        "--celery-workers",
        type=int,
        default=2,
        help="Celery workers of the celery mode (2 slots each), as the e2e suite runs it (default 2)",
    )
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"--modes: unknown {', '.join(unknown)} (choose from {', '.join(MODES)})")
    results = {mode: run(args.rounds, mode, args.finish_in_place, args.celery_workers) for mode in modes}
    print(
        "summary: decision -> downstream task start, p50 / p95 "
        f"(ratio hlml/native; target <= {target(args.finish_in_place)})"
    )
    for mode, (ours, native) in results.items():
        print(
            f"  {mode:<12} hlml {percentile(ours, 0.5):5.2f}s / {percentile(ours, 0.95):5.2f}s   "
            f"native {percentile(native, 0.5):5.2f}s / {percentile(native, 0.95):5.2f}s   {ratios(ours, native)}"
        )


if __name__ == "__main__":
    main()
