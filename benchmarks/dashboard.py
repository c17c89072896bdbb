"""Dashboard latency in a real Airflow API server, next to Airflow's own REST API.

Starts ``airflow api-server`` (SQLite, one worker) with the ``hlml`` plugin and the embedded
approvals service, creates pending approval requests for a DAG in batches (10, then 300 in all)
and times, for each size, the dashboard's JSON and HTML endpoints as a logged-in user (median and
p95 of ``--requests`` sequential calls) beside ``GET /api/v2/dags`` of the same server.

Usage: python benchmarks/dashboard.py [--requests 20]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.browser.dashboard_stack import start_dashboard_server  # noqa: E402
from tests.fixtures.airflow_stack import MetadataDatabases  # noqa: E402

DAG_ID = "hlml_dashboard_bench"
DAG = textwrap.dedent(
    f"""
    import pendulum
    from airflow.sdk import DAG
    from airflow.providers.standard.operators.empty import EmptyOperator

    with DAG("{DAG_ID}", schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False):
        EmptyOperator(task_id="approve")
    """
)
ENDPOINTS = {
    "airflow GET /api/v2/dags": "/api/v2/dags",
    "GET /hlml/api/approvals?status=pending": "/hlml/api/approvals?status=pending",
    "GET /hlml/api/overview": "/hlml/api/overview",
    "GET /hlml/approvals (HTML)": "/hlml/approvals",
}


def timed(client: httpx.Client, path: str, n: int) -> list[float]:
    client.get(path).raise_for_status()  # warm-up
    out = []
    for _ in range(n):
        start = time.perf_counter()
        client.get(path).raise_for_status()
        out.append((time.perf_counter() - start) * 1000)
    return out


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="hlml-bench-dashboard-"))
    (workdir / "dags").mkdir()
    (workdir / "dags" / "bench_dag.py").write_text(DAG)
    databases = MetadataDatabases(workdir)
    server = start_dashboard_server(workdir, databases.sqlite(workdir / "airflow.db"))
    try:
        print(f"dashboard latency, ms ({args.requests} sequential requests each, user 'approver')")
        print(f"{'pending requests':>16} | {'endpoint':<40} | {'median':>8} | {'p95':>8} | {'x airflow':>9}")
        created = 0
        with server.client("approver") as client:
            for size in (10, 300):
                while created < size:
                    server.create_gate_request(
                        call_id=f"bench-{uuid.uuid4().hex[:12]}", dag_id=DAG_ID, approvers=["approver"]
                    )
                    created += 1
                baseline = None
                for label, path in ENDPOINTS.items():
                    samples = timed(client, path, args.requests)
                    median = statistics.median(samples)
                    baseline = baseline or median
                    print(
                        f"{size:>16} | {label:<40} | {median:>8.1f} | {p95(samples):>8.1f} | {median / baseline:>9.1f}"
                    )
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
