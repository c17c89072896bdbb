"""e2e: a training task whose MLflow server goes away mid-training.

The first try signals that it is training (a marker file), then waits until the test has stopped
the MLflow server and released it; logging its metrics then fails. Retries run once the server
is back. The control directory comes from the run's conf.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from airflow.sdk import DAG

from airflow_provider_hlml.operators.mlflow import MLflowTrainOperator


def train_until_released(context: Any) -> dict[str, float]:
    control = Path(context["dag_run"].conf["control_dir"])
    try_number = context["ti"].try_number
    (control / f"started-{try_number}").touch()
    deadline = time.monotonic() + 300
    while try_number == 1 and not (control / "release").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the test never released the training task")
        time.sleep(0.2)
    return {"accuracy": 0.91, "loss": 0.2}


with DAG(
    dag_id="e2e_mlflow_outage",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    tags=["e2e"],
):
    MLflowTrainOperator(
        task_id="train",
        python_callable=train_until_released,
        experiment_name="e2e_mlflow_outage",
        retries=10,
        retry_delay=timedelta(seconds=4),
    )
