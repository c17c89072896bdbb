"""e2e: a scheduled DAG whose middle task defers to the triggerer (no provider code involved)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.providers.standard.operators.python import PythonOperator
from airflow.providers.standard.triggers.temporal import DateTimeTrigger
from airflow.sdk import DAG, BaseOperator, Context


class DeferForSeconds(BaseOperator):
    """Defers to the triggerer for ``seconds``, then returns how long it was away."""

    def __init__(self, *, seconds: float, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.seconds = seconds

    def execute(self, context: Context) -> None:
        started = datetime.now(timezone.utc)
        self.defer(
            trigger=DateTimeTrigger(moment=started + timedelta(seconds=self.seconds)),
            method_name="resume",
            kwargs={"started": started.isoformat()},
        )

    def resume(self, context: Context, event: object = None, started: str = "") -> float:
        return (datetime.now(timezone.utc) - datetime.fromisoformat(started)).total_seconds()


with DAG(
    dag_id="e2e_smoke",
    schedule="@daily",
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    tags=["e2e"],
):
    first = PythonOperator(task_id="first", python_callable=lambda: "ok")
    # Long enough for the scheduler to process the worker's exit before the trigger fires: a
    # trigger that fires first hits an Airflow 3.3 race (the task is marked failed while queued).
    wait = DeferForSeconds(task_id="wait_in_triggerer", seconds=10)
    last = PythonOperator(task_id="last", python_callable=lambda: "done")
    first >> wait >> last
