"""The validation stage: evaluate a model and check thresholds, absolute and against the champion."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

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
from airflow_provider_hlml.policy.decision import DecisionPolicy
from airflow_provider_hlml.settings import mlflow_conn_id as default_mlflow_conn_id
from airflow_provider_hlml.utils.thresholds import METRIC_ALIASES, THRESHOLD_KEYS, parse_thresholds

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import Context

    from airflow_provider_hlml import contracts

__all__ = ["MLflowValidateOperator"]


def _split_models_uri(model_uri: str) -> tuple[str, str] | None:
    """``models:/name/version`` -> (name, version); other URIs -> None."""
    if not model_uri.startswith("models:/"):
        return None
    rest = model_uri[len("models:/") :].strip("/")
    if "/" not in rest:
        return None
    name, ref = rest.rsplit("/", 1)
    return (name, ref) if ref.isdigit() else None


class MLflowValidateOperator(BaseOperator):
    """
    Evaluate a model on validation data and check metric thresholds, absolute and against the
    version currently holding ``baseline_alias`` (``mlflow.models.evaluate`` +
    ``mlflow.validate_evaluation_results``).

    The report (a :class:`~airflow_provider_hlml.contracts.ValidationReport`, also the XCom
    return value and the natural ``context`` of an approval gate)::

        {"passed", "metrics": {name: {"candidate", "champion", "threshold", "passed", "reason"}},
         "model_name", "model_version", "mlflow_run_id", "model_uri", "champion_version",
         "validation_run_id"}

    ``mlflow_run_id`` is the run that produced the candidate model. When no version holds the
    alias yet (first model), only absolute thresholds are checked.

    :param model_uri: candidate model (``models:/name/version``, ``runs:/...`` or a logged model
        URI) (templated).
    :param data: a callable returning a pandas DataFrame (it may take ``context``), or a path to a
        CSV / Parquet file (templated).
    :param target: label column in ``data``.
    :param thresholds: ``{metric: {"threshold", "min_absolute_change", "min_relative_change",
        "greater_is_better"}}``; a plain number means ``{"threshold": n}``. Short names such as
        ``accuracy``, ``f1``, ``rmse`` map to MLflow's metric names. Checked when the DAG is
        defined, with the workflow spec's rules (``utils.thresholds``): an unknown metric for
        ``model_type`` or a fraction outside [0, 1] raises ``ThresholdsError`` there.
    :param model_type: ``classifier`` or ``regressor``.
    :param model_name: registered model name (found from ``models:/`` URIs when omitted).
    :param baseline_alias: alias of the champion to compare against.
    :param on_fail: ``fail`` (task fails), ``skip`` (task and downstream skipped) or ``continue``
        (return the failing report; a human decides).
    :param mlflow_conn_id: MLflow connection; default ``[hlml] mlflow_conn_id`` (itself
        ``mlflow_default`` unless configured).
    :param decision_policy: a :class:`~airflow_provider_hlml.policy.decision.DecisionPolicy` (or
        its mapping form): the candidate and the champion predict on the same validation rows and
        the policy decides ``auto_approve`` (a clear win), ``auto_reject`` (a clear regression) or
        ``human`` by paired bootstrap intervals of each metric's improvement. The report gets
        ``decision`` (outcome, reason, principal, evidence); the validation run gets the tags
        ``hlml.decision_outcome`` / ``hlml.decision_principal`` and ``decision.json``.
    """

    template_fields: Sequence[str] = ("model_uri", "data", "model_name", "baseline_alias", "target")
    operator_extra_links = (MLflowRunLink(),)
    ui_color = "#e3f0d8"

    def __init__(
        self,
        *,
        model_uri: str,
        data: Callable[..., pd.DataFrame] | str | os.PathLike[str],
        target: str,
        thresholds: Mapping[str, Any],
        model_type: Literal["classifier", "regressor"] = "classifier",
        model_name: str | None = None,
        baseline_alias: str = "champion",
        on_fail: Literal["fail", "skip", "continue"] = "fail",
        mlflow_conn_id: str | None = None,
        decision_policy: DecisionPolicy | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if on_fail not in ("fail", "skip", "continue"):
            raise ValueError(f"on_fail must be 'fail', 'skip' or 'continue', got {on_fail!r}")
        if model_type not in ("classifier", "regressor"):
            raise ValueError(f"model_type must be 'classifier' or 'regressor', got {model_type!r}")
        self.model_uri = model_uri
        # Airflow calls callables found in template fields at render time, so a data callable is
        # kept out of the templated ``data`` attribute (which then only holds a path).
        self.data_callable: Callable[..., pd.DataFrame] | None = data if callable(data) else None
        self.data = None if callable(data) else data
        self.target = target
        self.thresholds = parse_thresholds(thresholds, model_type, owner=f"task {self.task_id!r}")
        self.model_type = model_type
        self.model_name = model_name
        self.baseline_alias = baseline_alias
        self.on_fail = on_fail
        self.mlflow_conn_id = mlflow_conn_id or default_mlflow_conn_id()
        # Checked when the DAG is defined, like the thresholds.
        self.decision_policy = (
            DecisionPolicy.from_mapping(decision_policy)
            if isinstance(decision_policy, Mapping)
            else decision_policy
        )

    def _load_data(self, context: Context) -> pd.DataFrame:
        frame = load_frame(self.data_callable or self.data, context, what="data", task_id=self.task_id)
        if self.target not in frame.columns:
            raise ValueError(
                f"target column {self.target!r} is not in the validation data (columns: {list(frame.columns)})"
            )
        return frame

    def _resolve_candidate(self, hook: MLflowHook) -> tuple[str | None, str | None, str | None]:
        """(model_name, model_version, source run id) of ``model_uri``."""
        client = hook.client
        model_name, model_version, run_id = self.model_name, None, None
        split = _split_models_uri(self.model_uri)
        if split:
            model_name, model_version = split
            run_id = client.get_model_version(model_name, model_version).run_id
        elif self.model_uri.startswith("runs:/"):
            run_id = self.model_uri[len("runs:/") :].split("/", 1)[0]
        elif self.model_uri.startswith("models:/m-"):
            logged = client.get_logged_model(self.model_uri[len("models:/") :].split("/", 1)[0])
            run_id = logged.source_run_id
        if model_name and model_version is None and run_id:
            found = hook.find_model_version(model_name, run_id)
            if found is not None:
                model_version = str(found.version)
        return model_name, model_version, run_id

    def execute(self, context: Context) -> contracts.ValidationReport:
        import mlflow
        from mlflow.models import MetricThreshold

        frame = self._load_data(context)
        hook = MLflowHook(self.mlflow_conn_id)
        client = hook.client
        with hook.fluent():
            model_name, model_version, source_run_id = self._resolve_candidate(hook)
            champion = hook.alias_holder(model_name, self.baseline_alias) if model_name else None
            baseline_reason = None
            if champion is not None and str(champion.version) == str(model_version):
                baseline_reason = f"the candidate already holds @{self.baseline_alias}"
                champion = None
            experiment_id = (
                client.get_run(source_run_id).info.experiment_id
                if source_run_id
                else hook.get_or_create_experiment("hlml-validation")
            )
            tags = airflow_identity_tags(context)
            tags[audit.HLML_STAGE] = "validate"
            tags[audit.CANDIDATE_MODEL_URI] = self.model_uri
            run = client.create_run(experiment_id, run_name=f"{context['ti'].task_id}-validate", tags=tags)
            run_id = run.info.run_id
            push_run_link(context, hook, experiment_id, run_id)
            try:
                with mlflow.start_run(run_id=run_id):
                    candidate = self._evaluate(self.model_uri, frame)
                    baseline = None
                    if champion is not None:
                        with mlflow.start_run(run_name=f"@{self.baseline_alias}", nested=True):
                            baseline = self._evaluate(f"models:/{model_name}/{champion.version}", frame)
                    metrics = self._check(candidate, baseline, MetricThreshold, baseline_reason)
                    passed = all(m["passed"] for m in metrics.values())
                    report: contracts.ValidationReport = {
                        "passed": passed,
                        "metrics": metrics,
                        "model_name": model_name,
                        "model_version": model_version,
                        "mlflow_run_id": source_run_id,
                        "model_uri": self.model_uri,
                        "champion_version": str(champion.version) if champion is not None else None,
                        "validation_run_id": run_id,
                    }
                    if self.decision_policy is not None:
                        decision = self._decide(
                            frame,
                            champion_uri=(
                                f"models:/{model_name}/{champion.version}" if champion is not None else None
                            ),
                        )
                        report["decision"] = decision
                        mlflow.log_dict(decision, "decision.json")
                        mlflow.set_tag(audit.DECISION_OUTCOME, decision["outcome"])
                        if decision["principal"]:
                            mlflow.set_tag(audit.DECISION_PRINCIPAL, decision["principal"])
                    if baseline is not None:
                        log_batch(
                            client,
                            run_id,
                            metrics={
                                f"{self.baseline_alias}_{k}": v
                                for k, v in baseline.metrics.items()
                                if isinstance(v, int | float)
                            },
                        )
                    mlflow.log_dict(dict(report), "validation_report.json")
                    mlflow.set_tag(audit.VALIDATION_PASSED, str(passed).lower())
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    terminate_run(client, run_id, "FAILED", error_text(exc))
                raise
        return self._finish(context, report)

    def _decide(self, frame: pd.DataFrame, *, champion_uri: str | None) -> dict[str, Any]:
        """The decision policy's outcome on ``frame``: both models predict the same rows."""
        import mlflow

        from airflow_provider_hlml.policy.decision import decide

        assert self.decision_policy is not None
        features, labels = frame.drop(columns=[self.target]), frame[self.target].to_numpy()
        with quiet_skops_module_scan():
            candidate = mlflow.pyfunc.load_model(self.model_uri).predict(features)
            champion = mlflow.pyfunc.load_model(champion_uri).predict(features) if champion_uri else None
        decision = decide(self.decision_policy, labels, as_1d_array(candidate), as_1d_array(champion))
        self.log.info(
            "Decision policy %s: %s (%s)", self.decision_policy.principal, decision.outcome, decision.reason
        )
        return decision.to_json()

    def _evaluate(self, model_uri: str, frame: pd.DataFrame) -> Any:
        import mlflow

        # Loading a scikit-learn model goes through skops (see ``quiet_skops_module_scan``).
        with quiet_skops_module_scan():
            return mlflow.models.evaluate(
                model=model_uri,
                data=frame,
                targets=self.target,
                model_type=self.model_type,
                evaluators=["default"],
                evaluator_config={"default": {"log_model_explainability": False}},
            )

    def _check(
        self, candidate: Any, baseline: Any, metric_threshold: type, baseline_reason: str | None
    ) -> dict[str, contracts.MetricCheck]:
        import mlflow
        from mlflow.models.evaluation.validation import ModelValidationFailedException

        report: dict[str, contracts.MetricCheck] = {}
        for name, spec in self.thresholds.items():
            key = name if name in candidate.metrics else METRIC_ALIASES.get(name, name)
            candidate_value = candidate.metrics.get(key)
            champion_value = baseline.metrics.get(key) if baseline is not None else None
            effective = dict(spec)
            notes: list[str] = []
            relative = spec["min_absolute_change"] is not None or spec["min_relative_change"] is not None
            if baseline is None and relative:
                effective["min_absolute_change"] = effective["min_relative_change"] = None
                notes.append(
                    f"no @{self.baseline_alias} to compare with ({baseline_reason or 'first model'}): "
                    "only the absolute threshold applies"
                )
            if all(effective[k] is None for k in THRESHOLD_KEYS[:3]):
                passed = candidate_value is not None
                if candidate_value is None:
                    notes.append(f"metric {key!r} missing from the evaluation")
            else:
                threshold = metric_threshold(
                    threshold=effective["threshold"],
                    min_absolute_change=effective["min_absolute_change"],
                    min_relative_change=effective["min_relative_change"],
                    greater_is_better=effective["greater_is_better"],
                )
                try:
                    mlflow.validate_evaluation_results(
                        validation_thresholds={key: threshold},
                        candidate_result=candidate,
                        baseline_result=baseline,
                    )
                    passed = True
                except ModelValidationFailedException as exc:
                    passed = False
                    notes.append(str(exc.message).strip())
            report[name] = {
                "candidate": candidate_value,
                "champion": champion_value,
                "threshold": spec,
                "passed": passed,
                "reason": "; ".join(notes) if notes else "passed",
                "mlflow_metric": key,
            }
        return report

    def _finish(self, context: Context, report: contracts.ValidationReport) -> contracts.ValidationReport:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        if report["passed"]:
            self.log.info("Validation passed: %s", report["metrics"])
            return report
        failures = "; ".join(
            f"{name}: {row['reason']}" for name, row in report["metrics"].items() if not row["passed"]
        )
        message = f"Validation of {self.model_uri} failed: {failures}"
        if self.on_fail == "continue":
            self.log.warning("%s (on_fail='continue': a human decides)", message)
            return report
        context["ti"].xcom_push(key="validation_report", value=report)
        if self.on_fail == "skip":
            raise AirflowSkipException(message)
        raise AirflowFailException(message)
