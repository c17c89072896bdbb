"""Helpers of the benchmarks that answer two gates of one DAG run side by side (not a benchmark)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from datetime import datetime
from typing import Any


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[index]


def summary(name: str, values: list[float], width: int = 28) -> str:
    """One line: count, p50, p95, mean, min and max of ``values`` (seconds)."""
    return (
        f"{name:<{width}} n={len(values):<3} p50={percentile(values, 0.5):6.2f}s  "
        f"p95={percentile(values, 0.95):6.2f}s  mean={statistics.fmean(values):6.2f}s  "
        f"min={min(values):6.2f}s  max={max(values):6.2f}s"
    )


def ratios(ours: list[float], theirs: list[float]) -> str:
    """``p50=... p95=...``: ``ours`` over ``theirs`` at both quantiles."""
    p50 = percentile(ours, 0.5) / percentile(theirs, 0.5)
    p95 = percentile(ours, 0.95) / percentile(theirs, 0.95)
    return f"p50={p50:.2f}  p95={p95:.2f}"


def started_at(stack: Any, dag_id: str, run_id: str, task_id: str) -> float:
    """When ``task_id`` of the run started (Unix seconds), waiting for it to start."""
    from tests.fixtures.airflow_stack import wait_until

    def started() -> float | None:
        for ti in stack.api.task_instances(dag_id, run_id):
            if ti["task_id"] == task_id and ti["start_date"] and ti["state"] in ("running", "success"):
                return datetime.fromisoformat(ti["start_date"].replace("Z", "+00:00")).timestamp()
        return None

    return float(wait_until(started, 180, f"{task_id} to start", interval=0.1))


def answer_both(
    round_number: int, first: Callable[[], float], second: Callable[[], float]
) -> tuple[float, float]:
    """Answer two gates one after the other, ``first`` first in even rounds, ``second`` in odd
    ones (so neither always has the quiet machine); their latencies, as (first, second)."""
    if round_number % 2 == 0:
        a = first()
        return a, second()
    b = second()
    return first(), b


def check_run(stack: Any, dag_id: str, run_id: str, gate: str, comment: str) -> None:
    """The run succeeded and ``gate``'s result carries the decision's comment."""
    api = stack.api
    result = api.wait_for_run(dag_id, run_id, timeout=240)
    if result["state"] != "success":
        raise RuntimeError(f"run {run_id} ended {result['state']}:\n{stack.diagnose(dag_id, run_id)}")
    if api.xcom(dag_id, run_id, gate).get("comment") != comment:
        raise RuntimeError(f"run {run_id}: the result of {gate} does not carry the decision")
