"""Extra link from a task instance to the MLflow run it wrote (URL pushed to XCom in ``execute``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context
    from airflow.sdk.types import TaskInstanceKey

#: XCom key under which the MLflow operators store the run's UI URL.
MLFLOW_RUN_URL_XCOM_KEY = "mlflow_run_url"


class MLflowRunLink(BaseOperatorLink):
    """The "MLflow run" button: the MLflow UI page of the run this task instance logged to."""

    name = "MLflow run"

    @staticmethod
    def persist(context: Context, url: str | None) -> None:
        """Store ``url`` for this task instance (no-op when the tracking URI has no UI)."""
        if url:
            context["ti"].xcom_push(key=MLFLOW_RUN_URL_XCOM_KEY, value=url)

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        """The run's URL, or ``""`` when the task stopped before its MLflow run started."""
        from airflow.sdk.execution_time.xcom import XCom

        # ``XCom.get_value`` logs an error-level "XCom not found" for a task that failed before
        # ``persist``; that reads like a second problem. ``get_all`` answers "nothing" quietly.
        stored = XCom.get_all(
            key=MLFLOW_RUN_URL_XCOM_KEY, dag_id=ti_key.dag_id, task_id=ti_key.task_id, run_id=ti_key.run_id
        )
        if not stored:
            return ""
        url = (
            stored[0] if ti_key.map_index < 0 else XCom.get_value(ti_key=ti_key, key=MLFLOW_RUN_URL_XCOM_KEY)
        )
        return str(url) if url else ""
