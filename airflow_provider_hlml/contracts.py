"""What one stage of a pipeline hands to the next: the XCom return values of the stage operators.

Every contract names the model it is about with the same three keys (:class:`ModelReference`):
``model_name``, ``model_version`` and ``mlflow_run_id``, the MLflow run that produced the model.
An approval gate placed after any stage sends that stage's output as its request context, and
:class:`~airflow_provider_hlml.operators.promote.ModelPromoteOperator` accepts the decision only
when the context names exactly the version it is about to promote (:data:`BINDING_KEYS`).

========================  =========================================================
``MLflowTrainOperator``     :class:`TrainResult`
``MLflowValidateOperator``  :class:`ValidationReport`
``HumanApprovalSensor``     :class:`ApprovalResult` (from :mod:`..gate.events`)
``ModelPromoteOperator``    :class:`PromotionRecord`
``DriftMonitorOperator``    :class:`DriftMonitorResult`
========================  =========================================================

This module imports nothing from Airflow; the contracts are plain ``TypedDict`` s, so the values
stay JSON in XCom and in templates (``{{ ti.xcom_pull('train')['mlflow_run_id'] }}``).
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

from typing_extensions import NotRequired

from airflow_provider_hlml.gate.events import ApprovalResult, ApproverRecord

__all__ = [
    "BINDING_KEYS",
    "ApprovalResult",
    "ApproverRecord",
    "DriftMonitorResult",
    "MetricCheck",
    "ModelReference",
    "ModelReferenceKey",
    "PromotionRecord",
    "TrainResult",
    "ValidationReport",
]

#: A key every contract carries (what a DAG template may read from any stage's output).
ModelReferenceKey = Literal["model_name", "model_version", "mlflow_run_id", "model_uri"]

#: The keys an approval's context must match for a promotion of that model version.
BINDING_KEYS: tuple[ModelReferenceKey, ...] = ("model_name", "model_version", "mlflow_run_id")


class ModelReference(TypedDict):
    """
    The model a stage's output is about; the part of every contract the next stage reads.

    :param model_name: registered model name, ``None`` when the model is not registered.
    :param model_version: registered version (a string), ``None`` when not registered.
    :param mlflow_run_id: the MLflow run that trained the model.
    :param model_uri: where to load the model from (``models:/...`` or ``runs:/...``).
    """

    model_name: str | None
    model_version: str | None
    mlflow_run_id: str | None
    model_uri: str | None


class TrainResult(ModelReference):
    """
    The return value of :class:`~airflow_provider_hlml.operators.train.MLflowTrainOperator`.

    (Not to be confused with :class:`airflow_provider_hlml.operators.train.TrainResult`, the
    dataclass a training *callable* may return to hand the operator a model.)

    :param experiment_id: MLflow experiment of the training run.
    :param metrics: the metrics logged to the training run.
    :param run_id: **deprecated** alias of ``mlflow_run_id``, kept so existing templates such as
        ``{{ ti.xcom_pull('train')['run_id'] }}`` keep working; read ``mlflow_run_id``.
    """

    experiment_id: str
    metrics: dict[str, float]
    run_id: str


class MetricCheck(TypedDict):
    """
    One metric of a :class:`ValidationReport`.

    :param candidate: the candidate's value (``None`` when the evaluation did not produce it).
    :param champion: the value of the version holding the baseline alias, if any.
    :param threshold: the rule checked (``threshold``, ``min_absolute_change``, ...).
    :param passed: whether the candidate met the rule.
    :param reason: ``"passed"`` or why not.
    :param mlflow_metric: the name MLflow's evaluator gives the metric.
    """

    candidate: float | None
    champion: float | None
    threshold: dict[str, Any]
    passed: bool
    reason: str
    mlflow_metric: str


class ValidationReport(ModelReference):
    """
    The return value of :class:`~airflow_provider_hlml.operators.validate.MLflowValidateOperator`,
    and the usual context of the approval gate before a promotion.

    :param passed: every metric met its rule.
    :param metrics: metric name -> :class:`MetricCheck`.
    :param champion_version: the version holding the baseline alias (compared against), if any.
    :param validation_run_id: the MLflow run the validation itself logged to (not the model's).
    :param decision: with a decision policy, its outcome (``auto_approve``, ``auto_reject`` or
        ``human``), why, the principal it decides as, and the evidence per metric (values,
        improvement, confidence interval): :meth:`~airflow_provider_hlml.policy.decision.PolicyDecision.to_json`.
    """

    passed: bool
    metrics: dict[str, MetricCheck]
    champion_version: str | None
    validation_run_id: str
    decision: NotRequired[dict[str, Any]]


class PromotionRecord(ModelReference, total=False):
    """
    The return value of :class:`~airflow_provider_hlml.operators.promote.ModelPromoteOperator`.

    ``mode``, ``model_name``, ``model_version``, ``mlflow_run_id``, ``model_uri``, ``alias``,
    ``stage`` and ``run_id`` are always present; the others depend on ``mode``. After a rollback
    ``model_version`` is the restored version (``None`` when the alias was removed).

    :param mode: ``promote`` or ``rollback``.
    :param alias: the alias moved (``None`` with a legacy stage).
    :param stage: the legacy registry stage moved, else ``None``.
    :param previous_version: (promote) the version that held the alias before, else ``None``.
    :param approved_by: (promote) the reviewer, when an approval bound the promotion.
    :param approval_call_id: (promote) the approval's call id.
    :param approvers: (promote) every approval that counted toward the decision, as
        :class:`ApproverRecord` s (``name``, ``email``, ``rule`` met, ``at``), also written as the
        version's ``hlml.approvers`` tag; one record with rule ``None`` for a gate that reports
        only the responder; empty without an approval binding.
    :param model_version_url: (promote) the version's page in the MLflow UI.
    :param rolled_back_version: (rollback) the version that held the alias before the rollback.
    :param run_id: **deprecated** alias of ``mlflow_run_id``; read ``mlflow_run_id``.
    """

    mode: Literal["promote", "rollback"]
    alias: str | None
    stage: str | None
    previous_version: str | None
    approved_by: str | None
    approval_call_id: str | None
    approvers: list[ApproverRecord]
    model_version_url: str | None
    rolled_back_version: str
    run_id: str | None


class DriftMonitorResult(ModelReference):
    """
    The return value of :class:`~airflow_provider_hlml.operators.drift.DriftMonitorOperator`: the
    drift report of the version holding ``alias``
    (:meth:`~airflow_provider_hlml.policy.drift.DriftReport.to_json`) and where it was logged.

    ``model_version`` is the version measured (the alias's holder when the task ran) and
    ``mlflow_run_id`` the run that trained it.

    :param alias: the alias whose holder was measured.
    :param drifted: whether the drift policy found the model drifted.
    :param reason: why, in words (the drifted features with PSI and p-values, the predictions,
        the live metric).
    :param drifted_features: the names of the drifted features.
    :param features: feature name -> ``{"psi", "test", "statistic", "p_value", "drifted", ...}``.
    :param predictions: the same for the model's predictions (``None`` without them).
    :param live_metric: the live metric and its rule, where the current rows have labels.
    :param policy: the drift policy applied.
    :param monitoring_run_id: the MLflow run the report was logged to (``drift.json``).
    :param monitoring_run_url: that run's page in the MLflow UI, when known.
    :param rollback_version: the version a rollback of ``alias`` would restore (the previous
        holder recorded on the measured version); ``None`` when none is recorded.
    """

    alias: str
    drifted: bool
    reason: str
    drifted_features: list[str]
    features: dict[str, dict[str, Any]]
    predictions: dict[str, Any] | None
    live_metric: dict[str, Any] | None
    reference_rows: int
    current_rows: int
    policy: dict[str, Any]
    experiment_id: str
    monitoring_run_id: str
    monitoring_run_url: str | None
    rollback_version: str | None
