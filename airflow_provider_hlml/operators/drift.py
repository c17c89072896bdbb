"""The monitoring stage's drift check: the deployed model's inputs and predictions now against its
training reference, logged to MLflow. It reports; it never moves an alias."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_hlml import audit
from airflow_provider_hlml.hooks.mlflow import MLflowHook
from airflow_provider_hlml.links.mlflow import MLflowRunLink
from airflow_provider_hlml.operators.data import as_1d_array, load_frame
from airflow_provider_hlml.operators.mlflow_runs import (
    airflow_identity_tags,
    error_text,
    log_batch,
    push_run_link,
    quiet_skops_module_scan,
    terminate_run,
)
from airflow_provider_hlml.policy.drift import MAX_FEATURE_NAME, MAX_FEATURES, DriftPolicy
from airflow_provider_hlml.settings import mlflow_conn_id as default_mlflow_conn_id
from airflow_provider_hlml.utils.names import check_alias, check_model_name

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import Context

    from airflow_provider_hlml.contracts import DriftMonitorResult
    from airflow_provider_hlml.policy.drift import DriftReport

__all__ = ["DriftMonitorOperator", "drift_metrics"]

#: An MLflow alias (MLflow's own rule, without its reserved ``latest`` / ``v<n>`` forms).
#: Characters kept in a metric name made from a feature name (others become ``_``).
_METRIC_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
#: MLflow's bound on a metric key is 250 characters.
_MAX_METRIC_KEY = 250


def _metric_key(prefix: str, name: str, taken: set[str]) -> str:
    """``prefix + name`` as a valid, unique MLflow metric key."""
    base = (prefix + _METRIC_UNSAFE.sub("_", name))[: _MAX_METRIC_KEY - 6]
    key, n = base, 1
    while key in taken:
        n += 1
        key = f"{base}_{n}"
    taken.add(key)
    return key


def drift_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """The MLflow metrics of a drift report (``DriftReport.to_json()``): ``drift.psi.<feature>``,
    ``drift.p_value.<feature>`` (feature names made metric-safe), ``drift.predictions.psi`` /
    ``.p_value``, ``drift.drifted_features``, ``drift.detected`` (1 or 0), and ``live.<metric>``
    / ``reference.<metric>`` where the live metric was measured."""
    taken: set[str] = set()
    metrics: dict[str, float] = {
        "drift.detected": 1.0 if report.get("drifted") else 0.0,
        "drift.drifted_features": float(len(report.get("drifted_features") or [])),
    }
    taken.update(metrics)
    for name, row in (report.get("features") or {}).items():
        for field in ("psi", "p_value"):
            if isinstance(row.get(field), float | int):
                metrics[_metric_key(f"drift.{field}.", str(name), taken)] = float(row[field])
    predictions = report.get("predictions") or {}
    for field in ("psi", "p_value"):
        if isinstance(predictions.get(field), float | int):
            metrics[f"drift.predictions.{field}"] = float(predictions[field])
    live = report.get("live_metric") or {}
    if isinstance(live.get("value"), float | int):
        metrics[f"live.{live['metric']}"] = float(live["value"])
    if isinstance(live.get("reference_value"), float | int):
        metrics[f"reference.{live['metric']}"] = float(live["reference_value"])
    return metrics


class DriftMonitorOperator(BaseOperator):
    """
    Measure drift of the model version holding ``alias``: its inputs and predictions on the
    ``current`` rows against the ``reference`` rows (its training data), and its live metric
    where the current rows have labels, under a
    :class:`~airflow_provider_hlml.policy.drift.DriftPolicy` (see :mod:`..policy.drift`: a
    feature is drifted when its PSI reaches ``psi_threshold`` *and* its two-sample test's p-value
    is below ``p_value``).

    The alias is resolved once and that exact version (``models:/<name>/<version>``) is loaded,
    so the report names the version it measured even if the alias moves meanwhile. The report is
    logged as a ``monitoring`` run in MLflow (the source run's experiment unless
    ``experiment_name`` is given): metrics ``drift.psi.<feature>``, ``drift.p_value.<feature>``,
    ``drift.predictions.psi``, ``live.<metric>`` (:func:`drift_metrics`), the report as the
    artifact ``drift.json``, and the tags ``hlml.model_name``, ``hlml.model_version``,
    ``hlml.model_alias``, ``hlml.source_run_id`` and ``hlml.drift_detected``.

    The operator only reports. What to do about drift is a person's decision:
    :func:`~airflow_provider_hlml.workflows.drift.drift_response_tasks` asks for it and carries
    it out.

    :param model_name: registered model (templated).
    :param alias: the alias whose holder is measured (templated; default ``champion``).
    :param reference: the training reference rows: a callable returning a pandas DataFrame (it
        may take ``context``) or a local CSV / Parquet path (templated).
    :param current: the rows the model sees now, in the same form (templated).
    :param label_column: the label column, where it exists: in ``current`` it gives the live
        metric, in ``reference`` the metric's reference value (templated). Never a feature.
    :param features: the columns to compare; default every column of ``reference`` but the label.
    :param drift_policy: a :class:`~airflow_provider_hlml.policy.drift.DriftPolicy` or its
        mapping (checked when the DAG is parsed); default ``DriftPolicy()``.
    :param experiment_name: MLflow experiment of the monitoring run (templated).
    :param mlflow_conn_id: MLflow connection; default ``[hlml] mlflow_conn_id``.

    XCom return value: a :class:`~airflow_provider_hlml.contracts.DriftMonitorResult` (the
    report, ``model_name``, ``model_version``, ``mlflow_run_id``, ``monitoring_run_id``,
    ``drifted``, ``rollback_version``).
    """

    template_fields: Sequence[str] = (
        "model_name",
        "alias",
        "reference",
        "current",
        "label_column",
        "experiment_name",
    )
    operator_extra_links = (MLflowRunLink(),)
    ui_color = "#e8e3f3"

    def __init__(
        self,
        *,
        model_name: str,
        reference: Callable[..., pd.DataFrame] | str | os.PathLike[str],
        current: Callable[..., pd.DataFrame] | str | os.PathLike[str],
        alias: str = "champion",
        label_column: str | None = None,
        features: Sequence[str] | None = None,
        drift_policy: DriftPolicy | Mapping[str, Any] | None = None,
        experiment_name: str | None = None,
        mlflow_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_name = model_name
        self.alias = alias
        # Airflow calls callables found in template fields at render time: a callable is kept
        # out of the templated attribute (which then only holds a path).
        self.reference_callable = reference if callable(reference) else None
        self.reference = None if callable(reference) else reference
        self.current_callable = current if callable(current) else None
        self.current = None if callable(current) else current
        self.label_column = label_column
        if features is not None:
            if isinstance(features, str) or not features or len(features) > MAX_FEATURES:
                raise ValueError(f"features must be a list of 1-{MAX_FEATURES} column names")
            if any(not isinstance(f, str) or not f or len(f) > MAX_FEATURE_NAME for f in features):
                raise ValueError(f"features: column names of 1-{MAX_FEATURE_NAME} characters")
        self.features = list(features) if features is not None else None
        self.drift_policy = DriftPolicy() if drift_policy is None else DriftPolicy.from_mapping(drift_policy)
        self.experiment_name = experiment_name
        self.mlflow_conn_id = mlflow_conn_id or default_mlflow_conn_id()

    def _frames(self, context: Context) -> tuple[pd.DataFrame, pd.DataFrame]:
        reference = load_frame(
            self.reference_callable or self.reference, context, what="reference", task_id=self.task_id
        )
        current = load_frame(
            self.current_callable or self.current, context, what="current", task_id=self.task_id
        )
        return reference, current

    def _feature_names(self, reference: pd.DataFrame) -> list[str]:
        if self.features is not None:
            return list(self.features)
        return [c for c in reference.columns if c != self.label_column]

    def execute(self, context: Context) -> DriftMonitorResult:
        import mlflow
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_provider_hlml.policy.drift import DriftError, drift_report

        name, alias = check_model_name(self.model_name), check_alias(self.alias)
        label = self.label_column or None
        if label is not None and (not isinstance(label, str) or len(label) > MAX_FEATURE_NAME):
            raise ValueError(f"label_column must be a column name, got {str(label)[:80]!r}")
        reference, current = self._frames(context)
        hook = MLflowHook(self.mlflow_conn_id)
        with hook.fluent():
            holder = hook.alias_holder(name, alias)
            if holder is None:
                raise AirflowFailException(f"@{alias} of {name!r} is not set: no deployed model to monitor")
            version, source_run_id = str(holder.version), holder.run_id
            rollback_version = (holder.tags or {}).get(audit.previous_holder_tag(alias)) or None
            with quiet_skops_module_scan():
                model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
            reference_predictions = as_1d_array(model.predict(_model_input(reference, label)))
            current_predictions = as_1d_array(model.predict(_model_input(current, label)))
            try:
                report = drift_report(
                    reference,
                    current,
                    features=self._feature_names(reference),
                    reference_predictions=reference_predictions,
                    current_predictions=current_predictions,
                    labels=current[label] if label and label in current.columns else None,
                    reference_labels=reference[label] if label and label in reference.columns else None,
                    policy=self.drift_policy,
                )
            except DriftError as exc:
                raise AirflowFailException(f"drift of {name} v{version} cannot be measured: {exc}") from None
            self.log.info("Drift of %s v%s (@%s): %s", name, version, alias, report.reason)
            experiment_id, run_id = self._log_run(
                hook, context, report, name=name, alias=alias, version=version, source_run_id=source_run_id
            )
        return {
            **report.to_json(),  # type: ignore[typeddict-item]
            "model_name": name,
            "model_version": version,
            "mlflow_run_id": source_run_id,
            "model_uri": f"models:/{name}/{version}",
            "alias": alias,
            "experiment_id": experiment_id,
            "monitoring_run_id": run_id,
            "monitoring_run_url": hook.ui_url_for_run(experiment_id, run_id),
            "rollback_version": rollback_version,
        }

    def _log_run(
        self,
        hook: MLflowHook,
        context: Context,
        report: DriftReport,
        *,
        name: str,
        alias: str,
        version: str,
        source_run_id: str | None,
    ) -> tuple[str, str]:
        """Log the report as a ``monitoring`` run: (experiment id, run id)."""
        client = hook.client
        if self.experiment_name:
            experiment_id = hook.get_or_create_experiment(self.experiment_name)
        elif source_run_id:
            experiment_id = client.get_run(source_run_id).info.experiment_id
        else:
            experiment_id = hook.get_or_create_experiment("hlml-monitoring")
        tags = {
            **airflow_identity_tags(context),
            audit.HLML_STAGE: "monitoring",
            audit.MONITORED_MODEL_NAME: name,
            audit.MONITORED_MODEL_VERSION: version,
            audit.MONITORED_ALIAS: alias,
            audit.DRIFT_DETECTED: str(report.drifted).lower(),
        }
        if source_run_id:
            tags[audit.MONITORED_SOURCE_RUN_ID] = source_run_id
        run = client.create_run(experiment_id, run_name=f"drift-{name}-v{version}", tags=tags)
        run_id = run.info.run_id
        push_run_link(context, hook, experiment_id, run_id)
        payload = report.to_json()
        try:
            log_batch(client, run_id, metrics=drift_metrics(payload))
            client.log_dict(run_id, {**payload, "model_name": name, "model_version": version}, "drift.json")
        except BaseException as exc:
            with contextlib.suppress(Exception):
                terminate_run(client, run_id, "FAILED", error_text(exc))
            raise
        client.set_terminated(run_id)
        return str(experiment_id), run_id


def _model_input(frame: pd.DataFrame, label: str | None) -> pd.DataFrame:
    """The rows as the model takes them: every column but the label."""
    return frame.drop(columns=[label]) if label and label in frame.columns else frame
