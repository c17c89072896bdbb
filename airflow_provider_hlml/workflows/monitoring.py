"""The monitoring stage: metrics of the deployed model version, logged to MLflow as a run.

Used by :func:`~airflow_provider_hlml.workflows.builder.build_ml_workflow_dag` for ``monitoring``
stages and by the hand-written churn DAG, through a ``PythonOperator`` calling
:func:`log_monitoring_metrics`. MLflow is imported only when the task runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from airflow_provider_hlml import audit

log = logging.getLogger(__name__)

__all__ = ["collect_upstream_metrics", "log_monitoring_metrics"]


def collect_upstream_metrics(outputs: Sequence[Mapping[str, Any] | None]) -> dict[str, float]:
    """Metric values from training outputs (``metrics: {name: value}``) and validation reports
    (``metrics: {name: {"candidate": value, ...}}``); later outputs win.

    :param outputs: XCom return values of earlier stages, oldest first.
    """
    values: dict[str, float] = {}
    for output in outputs:
        metrics = output.get("metrics") if isinstance(output, Mapping) else None
        if not isinstance(metrics, Mapping):
            continue
        for name, value in metrics.items():
            if isinstance(value, Mapping):
                value = value.get("candidate")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values[str(name)] = float(value)
    return values


def _model_of_run(
    outputs: Sequence[Mapping[str, Any] | None], model_name: str
) -> tuple[str | None, str | None]:
    """The model version and MLflow run id this DAG run produced, from the newest upstream output
    naming one (each stage output is a :class:`~airflow_provider_hlml.contracts.ModelReference`)."""
    for output in reversed(outputs):
        if not isinstance(output, Mapping):
            continue
        version = output.get("model_version")
        if version is not None and output.get("model_name", model_name) == model_name:
            run_id = output.get("mlflow_run_id")
            return str(version), (str(run_id) if run_id else None)
    return None, None


def log_monitoring_metrics(
    *,
    model_name: str,
    experiment_name: str,
    metrics: Sequence[str],
    upstream_task_ids: Sequence[str] = (),
    metrics_callable: str | Callable[..., Any] | None = None,
    callable_kwargs: Mapping[str, Any] | None = None,
    alias: str | None = "champion",
    mlflow_conn_id: str | None = None,
    ti: Any = None,
    dag_run: Any = None,
    **context: Any,
) -> dict[str, Any]:
    """Compute (or collect) the monitoring metrics and log them to MLflow as a ``monitoring`` run.

    :param model_name: registered model that was deployed.
    :param experiment_name: MLflow experiment of the monitoring run.
    :param metrics: names of the metrics to log; a missing one fails the task.
    :param upstream_task_ids: earlier stages whose XCom outputs supply the model version and,
        without ``metrics_callable``, the metric values.
    :param metrics_callable: function (or import path) computing metrics; called with the
        parameters it names among ``model_name``, ``model_version``, ``model_uri``, ``context``
        plus ``callable_kwargs``.
    :param callable_kwargs: extra keyword arguments of ``metrics_callable``.
    :param alias: alias the deployment set; ``model_uri`` is ``models:/<name>@<alias>`` when given.
    :param mlflow_conn_id: MLflow connection; default ``[hlml] mlflow_conn_id``.
    :return: ``{"run_id", "experiment_id", "model_name", "model_version", "model_uri", "metrics"}``.
    """
    from airflow_provider_hlml.hooks.mlflow import MLflowHook
    from airflow_provider_hlml.operators.mlflow_runs import call_with_supported_kwargs, log_batch
    from airflow_provider_hlml.settings import mlflow_conn_id as default_mlflow_conn_id
    from airflow_provider_hlml.workflows.spec import resolve_callable

    outputs: list[Mapping[str, Any] | None] = (
        [ti.xcom_pull(task_ids=task_id) for task_id in upstream_task_ids] if ti is not None else []
    )
    version, source_run_id = _model_of_run(outputs, model_name)
    hook = MLflowHook(mlflow_conn_id=mlflow_conn_id or default_mlflow_conn_id())
    if alias:
        resolved = hook.client.get_model_version_by_alias(model_name, alias)
        version = str(resolved.version)
        model_uri = f"models:/{model_name}@{alias}"
    else:
        model_uri = f"models:/{model_name}/{version}" if version else ""

    if metrics_callable is not None:
        fn = resolve_callable(metrics_callable) if isinstance(metrics_callable, str) else metrics_callable
        available = {
            "model_name": model_name,
            "model_version": version,
            "model_uri": model_uri,
            "context": {"ti": ti, "dag_run": dag_run, **context},
            **dict(callable_kwargs or {}),
        }
        with hook.fluent():
            produced = call_with_supported_kwargs(fn, available)
        if not isinstance(produced, Mapping):
            raise TypeError(
                f"the monitoring callable must return a dict of metrics, got {type(produced).__name__}"
            )
        values = {str(k): float(v) for k, v in produced.items() if isinstance(v, (int, float))}
    else:
        values = collect_upstream_metrics(outputs)

    missing = [name for name in metrics if name not in values]
    if missing:
        raise ValueError(
            f"monitoring metrics {missing} were not produced; available: {sorted(values) or 'none'}"
        )
    selected = {name: values[name] for name in metrics}

    experiment_id = hook.get_or_create_experiment(experiment_name)
    tags = {
        audit.HLML_STAGE: "monitoring",
        audit.MONITORED_MODEL_NAME: model_name,
        audit.MONITORED_MODEL_VERSION: str(version or ""),
    }
    if source_run_id:
        tags[audit.MONITORED_SOURCE_RUN_ID] = source_run_id
    if dag_run is not None:
        tags[audit.AIRFLOW_DAG_ID] = str(dag_run.dag_id)
        tags[audit.AIRFLOW_RUN_ID] = str(dag_run.run_id)
    client = hook.client
    run = client.create_run(
        experiment_id,
        run_name=f"monitoring-{model_name}-v{version}",
        tags=tags,
    )
    log_batch(client, run.info.run_id, metrics=selected)
    client.set_terminated(run.info.run_id)
    log.info(
        "Logged monitoring metrics of %s v%s to MLflow run %s: %s",
        model_name,
        version,
        run.info.run_id,
        selected,
    )
    return {
        "run_id": run.info.run_id,
        "experiment_id": experiment_id,
        "model_name": model_name,
        "model_version": version,
        "model_uri": model_uri,
        "metrics": selected,
    }
