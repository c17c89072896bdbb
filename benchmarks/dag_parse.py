"""DAG-parse time of each example DAG next to an EmptyOperator DAG of the same shape.

For every file in ``dags/`` the benchmark writes a twin DAG file with the same DAG ids, task ids
and dependencies, every task an ``EmptyOperator``. Each file is then parsed by ``DagBag`` in a
fresh interpreter (so first-import costs of the provider's modules count, as in the
dag-processor's child process), several times in alternation, and the medians are printed side
by side. The preamble common to both (``import airflow`` and ``DagBag``) is not timed.

A second pair of columns ("warm") re-parses each file in a process that has already imported
its modules, as a dag-processor or worker does after its first parse: that isolates the cost of
building the DAG itself from the one-off cost of importing the operators.

Usage: ``python benchmarks/dag_parse.py [--runs N]``. Target: every ratio within 1.10.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"
TARGET_RATIO = 1.10

_PARSE = """
import json, sys, time
from airflow.dag_processing.dagbag import DagBag
start = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
elapsed = time.perf_counter() - start
assert not bag.import_errors, bag.import_errors
print(json.dumps({"seconds": elapsed, "dags": len(bag.dag_ids), "tasks": sum(len(d.tasks) for d in bag.dags.values())}))
"""

# Warm: the modules are already imported (as in a dag-processor or worker that parsed the file
# before); only the DAG file itself is executed again, which is what re-parsing costs.
_PARSE_WARM = """
import json, statistics, sys, time
from airflow.dag_processing.dagbag import DagBag
DagBag(dag_folder=sys.argv[1])
times = []
for _ in range(int(sys.argv[2])):
    start = time.perf_counter()
    bag = DagBag(dag_folder=sys.argv[1])
    times.append(time.perf_counter() - start)
assert not bag.import_errors, bag.import_errors
print(json.dumps({"seconds": statistics.median(times)}))
"""

_SHAPE = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
print(json.dumps({
    dag_id: {
        "schedule": dag.schedule if isinstance(dag.schedule, (str, type(None))) else str(dag.schedule),
        "tasks": {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks},
    }
    for dag_id, dag in bag.dags.items()
}))
"""


def _env(home: Path) -> dict[str, str]:
    # Installed code runs from cached bytecode (pip and `make install` compile it), so the cold
    # parse measures importing the modules, not compiling their source on every run, also where
    # PYTHONDONTWRITEBYTECODE is set.
    inherited = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {
        **inherited,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
    }


def _run(code: str, path: Path, env: dict[str, str], *extra: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", code, str(path), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"parsing {path} failed:\n{result.stderr[-2000:]}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def empty_twin(shape: dict, target: Path) -> None:
    """Write a DAG file with the same DAGs, task ids and dependencies, all EmptyOperators."""
    lines = [
        '"""Same shape as an example DAG (DAG ids, task ids, dependencies), every task an EmptyOperator."""',
        "from datetime import datetime, timezone",
        "from airflow.providers.standard.operators.empty import EmptyOperator",
        "from airflow.sdk import DAG",
        "",
    ]
    for index, (dag_id, dag) in enumerate(shape.items()):
        lines.append(
            f"with DAG({dag_id!r}, schedule={dag['schedule']!r}, "
            "start_date=datetime(2024, 1, 1, tzinfo=timezone.utc), catchup=False) as dag_%d:" % index
        )
        lines.append("    t = {}")
        for task_id in dag["tasks"]:
            lines.append(f"    t[{task_id!r}] = EmptyOperator(task_id={task_id!r})")
        for task_id, upstream in dag["tasks"].items():
            for up in upstream:
                lines.append(f"    t[{up!r}] >> t[{task_id!r}]")
        lines.append("")
    target.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7, help="fresh interpreters per file (default 7)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hlml-dag-parse-") as tmp:
        root = Path(tmp)
        env = _env(root / "home")
        rows = []
        for dag_file in sorted(DAGS.glob("*.py")):
            twin = root / f"empty_{dag_file.name}"
            empty_twin(_run(_SHAPE, dag_file, env), twin)
            example_times: list[float] = []
            empty_times: list[float] = []
            for _ in range(args.runs):  # alternate, so load on the machine hits both alike
                example = _run(_PARSE, dag_file, env)
                empty = _run(_PARSE, twin, env)
                example_times.append(example["seconds"])
                empty_times.append(empty["seconds"])
            warm_example = _run(_PARSE_WARM, dag_file, env, str(args.runs))["seconds"]
            warm_empty = _run(_PARSE_WARM, twin, env, str(args.runs))["seconds"]
            rows.append(
                (
                    dag_file.name,
                    example["tasks"],
                    statistics.median(example_times),
                    statistics.median(empty_times),
                    warm_example,
                    warm_empty,
                )
            )

    print(
        f"DAG-parse time per file, median of {args.runs} (python {sys.version.split()[0]}, {os.cpu_count()} CPUs)"
    )
    print("cold = fresh interpreter (first import of every module); warm = modules already imported")
    print(
        f"{'file':<28} {'tasks':>5} | {'cold ms':>8} {'empty ms':>8} {'ratio':>6} | "
        f"{'warm ms':>8} {'empty ms':>8} {'ratio':>6}"
    )
    for name, tasks, cold, cold_empty, warm, warm_empty in rows:
        print(
            f"{name:<28} {tasks:>5} | {cold * 1000:>8.1f} {cold_empty * 1000:>8.1f} {cold / cold_empty:>6.2f} | "
            f"{warm * 1000:>8.1f} {warm_empty * 1000:>8.1f} {warm / warm_empty:>6.2f}"
        )
    worst_cold = max(r[2] / r[3] for r in rows)
    worst_warm = max(r[4] / r[5] for r in rows)
    for label, worst in (("cold", worst_cold), ("warm", worst_warm)):
        verdict = "within" if worst <= TARGET_RATIO else "OVER"
        print(f"worst {label} ratio {worst:.2f} ({verdict} the {TARGET_RATIO:.2f} target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
