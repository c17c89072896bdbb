"""Overhead of MLflowTrainOperator over a plain MLflow training script.

The same scikit-learn training (RandomForest on a generated table; params, metrics and the model
with signature + input example logged to a real ``mlflow server``) runs

* as a plain MLflow script (``mlflow.start_run`` + ``log_params`` / ``log_metrics`` / ``log_model``),
* inside ``MLflowTrainOperator.execute`` (timed around ``execute`` itself), in a DAG run by
  ``dag.test()`` (its total wall time is reported separately: that part is Airflow's, not the
  operator's).

Both variants run in the same interpreter, interleaved (alternating which goes first), after one
warm-up each; medians of ``--repeats`` runs are printed side by side with the ratio, then the
fastest run of each, the median of the per-pair ratios and the load average (both lines are less
sensitive to other load on the machine). Target: operator overhead < 5 % of the plain script's wall
time.

Usage: ``python benchmarks/train_overhead.py [--repeats 5] [--rows 4000]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_HOME = Path(tempfile.mkdtemp(prefix="hlml-bench-airflow-"))
os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(_HOME / "dags"))
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
os.environ.setdefault("AIRFLOW__HLML__WORKFLOW_LOGGING_ENABLED", "False")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ.pop("MLFLOW_TRACKING_URI", None)

N_ESTIMATORS = 120


def make_data(rows: int) -> Any:
    import pandas as pd
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=rows, n_features=20, n_informative=8, random_state=0)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])
    return frame, y


def fit(frame: Any, y: Any) -> tuple[Any, dict[str, float]]:
    from sklearn.ensemble import RandomForestClassifier

    model = RandomForestClassifier(n_estimators=N_ESTIMATORS, max_depth=8, random_state=0, n_jobs=1)
    model.fit(frame, y)
    return model, {"train_accuracy": float(model.score(frame, y))}


def plain_script(url: str, experiment: str, frame: Any, y: Any) -> float:
    """The training a user would write without Airflow; returns its wall time."""
    import mlflow
    from mlflow.models import infer_signature

    start = time.perf_counter()
    mlflow.set_tracking_uri(url)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="plain"):
        mlflow.log_params({"n_estimators": N_ESTIMATORS, "max_depth": 8})
        model, metrics = fit(frame, y)
        mlflow.log_metrics(metrics)
        example = frame.head(3)
        signature = infer_signature(example, model.predict(example))
        mlflow.sklearn.log_model(
            model,
            name="model",
            signature=signature,
            input_example=example,
            skops_trusted_types=["sklearn.tree._tree.Tree"],  # what a plain script must spell out
            # The same requirements the operator's log_model writes, so both sides do the same work.
            pip_requirements=mlflow.sklearn.get_default_pip_requirements(include_skops=True),
        )
    elapsed = time.perf_counter() - start
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return elapsed


def operator_dag(experiment: str, frame: Any, y: Any) -> Any:
    import pendulum
    from airflow.sdk import DAG

    from airflow_provider_hlml.operators.mlflow import MLflowTrainOperator, TrainResult

    class TimedTrainOperator(MLflowTrainOperator):
        def execute(self, context: Any) -> dict[str, Any]:
            start = time.perf_counter()
            result = super().execute(context)
            context["ti"].xcom_push(key="execute_seconds", value=time.perf_counter() - start)
            return result

    def train() -> TrainResult:
        model, metrics = fit(frame, y)
        return TrainResult(metrics=metrics, model=model, input_example=frame.head(3))

    dag_id = f"bench_{uuid.uuid4().hex[:8]}"
    with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC")) as dag:
        TimedTrainOperator(
            task_id="train",
            python_callable=train,
            experiment_name=experiment,
            params={"n_estimators": N_ESTIMATORS, "max_depth": 8},
        )
    return dag


def run_operator(experiment: str, frame: Any, y: Any) -> tuple[float, float]:
    """(seconds inside execute, seconds of the whole dag.test())."""
    from tests.unit.operators.dagrun_helpers import run_dag, task_states, xcom_value

    dag = operator_dag(experiment, frame, y)
    start = time.perf_counter()
    dag_run = run_dag(dag)
    total = time.perf_counter() - start
    if task_states(dag_run) != {"train": "success"}:
        raise RuntimeError(f"benchmark DAG run failed: {task_states(dag_run)}")
    return float(xcom_value(dag_run, "train", "execute_seconds")), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, default=4000)
    args = parser.parse_args()

    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        check=True,
        capture_output=True,
        env=os.environ.copy(),
    )
    from tests.fixtures.mlflow_server import start_mlflow_server

    server = start_mlflow_server(Path(tempfile.mkdtemp(prefix="hlml-bench-mlflow-")))
    os.environ["AIRFLOW_CONN_MLFLOW_DEFAULT"] = f'{{"conn_type": "mlflow", "host": "{server.url}"}}'
    try:
        frame, y = make_data(args.rows)
        plain_exp, op_exp = "bench-plain", "bench-operator"
        plain_script(server.url, plain_exp, frame, y)  # warm-up: imports, experiment creation
        run_operator(op_exp, frame, y)
        plain_times, exec_times, total_times = [], [], []
        for i in range(args.repeats):
            # Alternate which side goes first, so neither always follows the other's garbage.
            if i % 2:
                execute_s, total_s = run_operator(op_exp, frame, y)
                plain_times.append(plain_script(server.url, plain_exp, frame, y))
            else:
                plain_times.append(plain_script(server.url, plain_exp, frame, y))
                execute_s, total_s = run_operator(op_exp, frame, y)
            exec_times.append(execute_s)
            total_times.append(total_s)
    finally:
        server.process.stop()

    plain = statistics.median(plain_times)
    execute = statistics.median(exec_times)
    total = statistics.median(total_times)
    overhead = execute - plain
    best_plain, best_execute = min(plain_times), min(exec_times)
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"train_overhead: rows={args.rows} n_estimators={N_ESTIMATORS} repeats={args.repeats} (medians)")
    print(f"  plain MLflow script           {plain:8.3f} s")
    print(f"  MLflowTrainOperator.execute   {execute:8.3f} s")
    print(
        f"  operator overhead             {overhead:+8.3f} s  ratio {overhead / plain:+.1%} of plain (target < 5%)"
    )
    print(f"  dag.test() total              {total:8.3f} s  (Airflow's own share: {total - execute:.3f} s)")
    print(f"  execute / plain               {execute / plain:8.3f}x")
    print(
        f"  fastest of each               plain {best_plain:.3f} s, execute {best_execute:.3f} s "
        f"({(best_execute - best_plain) / best_plain:+.1%})"
    )
    paired = statistics.median((e - p) / p for p, e in zip(plain_times, exec_times, strict=True))
    print(f"  median of per-pair overheads  {paired:+.1%} (each pair ran back to back)")
    print(f"  load average at the end       {load} (1 / 5 / 15 min, {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
