"""Turn a :class:`~airflow_provider_hlml.workflows.spec.WorkflowSpec` into an Airflow DAG.

Each stage becomes one task, in order; a stage with ``approval_required`` is preceded by a
``HumanApprovalSensor`` whose request context is the output of the stages before it (the
validation report, or the training result). Stages hand each other the contracts of
:mod:`airflow_provider_hlml.contracts`: whichever of the two the gate showed names the model
version and its MLflow run under the same keys, which the deployment reads and checks.
Stage types map to tasks as follows:

==============  =========================================================================
``data_prep``   ``PythonOperator`` running ``config.callable``
``training``    ``MLflowTrainOperator`` (registers the version under ``model_name``)
``validation``  ``MLflowValidateOperator`` against ``config.thresholds`` and the champion
``deployment``  ``ModelPromoteOperator``; checks the gate before it approved exactly this version
``monitoring``  ``PythonOperator`` logging ``config.metrics`` to MLflow
``custom``      ``PythonOperator`` running ``config.callable``
==============  =========================================================================

The whole spec is validated before the first task is created, and DAGs are built without the
``with DAG()`` context manager, so a spec that fails never leaves a half-built DAG registered.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_hlml.contracts import ModelReferenceKey
from airflow_provider_hlml.workflows.spec import (
    CustomStage,
    DataPrepStage,
    DeploymentStage,
    MonitoringStage,
    Stage,
    TrainingStage,
    ValidationStage,
    WorkflowSpec,
    WorkflowSpecError,
    resolve_callable,
)

if TYPE_CHECKING:
    from airflow.sdk import DAG, BaseOperator

__all__ = ["build_ml_workflow_dag", "load_workflows"]

SPEC_SUFFIXES = (".yaml", ".yml")


def _xcom(task_id: str, key: ModelReferenceKey) -> str:
    """A template reading one :class:`~airflow_provider_hlml.contracts.ModelReference` key of a
    stage's return value."""
    return "{{ ti.xcom_pull(task_ids='" + task_id + "')['" + key + "'] }}"


class _Wiring:
    """What the stages built so far produced, for the stages and gates after them."""

    def __init__(self) -> None:
        self.training: TrainingStage | None = None
        self.validation: ValidationStage | None = None
        self.deployment: DeploymentStage | None = None
        self.last: BaseOperator | None = None
        self.tasks: dict[str, BaseOperator] = {}
        self.model_task_ids: list[str] = []

    @property
    def model_source(self) -> str | None:
        """Task id whose output (a ``ValidationReport`` or a ``TrainResult``, both a
        ``ModelReference``) names the model version of this run; validation beats training."""
        if self.validation is not None:
            return self.validation.stage_task_id
        if self.training is not None:
            return self.training.stage_task_id
        return None


def _gate_context(wiring: _Wiring) -> Any:
    """The approval request's context: the newest model-bearing output, else the last task's."""
    source = wiring.model_source
    if source is not None:
        return wiring.tasks[source].output
    return wiring.last.output if wiring.last is not None else None


def _gate_text(spec: WorkflowSpec, stage: Stage, wiring: _Wiring) -> tuple[str, str]:
    if isinstance(stage, DeploymentStage):
        target = (
            f"alias '{stage.config.target_alias}'"
            if stage.config.target_alias
            else f"stage {stage.config.stage}"
        )
        where = f" ({stage.config.environment})" if stage.config.environment else ""
        subject = f"Promote {spec.model_name} to {target}{where}"
        shown = (
            "the validation report: the candidate's metrics next to the champion's"
            if wiring.validation is not None
            else "the training result: the metrics of the training run"
        )
        body = (
            f"**{spec.name}** wants to promote model `{spec.model_name}` to {target}{where}.\n\n"
            f"The context holds {shown}, the model version and the MLflow run."
        )
    else:
        subject = f"{spec.name}: approve stage '{stage.name}'"
        body = f"**{spec.name}** is about to run the {stage.type} stage *{stage.name}*."
    return stage.approval_subject or subject, stage.approval_body or body


def _thresholds(stage: ValidationStage) -> dict[str, dict[str, Any]]:
    return {name: rule.model_dump() for name, rule in stage.config.thresholds.items()}


def _conn_kwargs(spec: WorkflowSpec, key: str) -> dict[str, Any]:
    value = getattr(spec, key)
    return {key: value} if value else {}


def _build_stage(spec: WorkflowSpec, stage: Stage, wiring: _Wiring, dag: DAG) -> BaseOperator:
    from airflow.providers.standard.operators.python import PythonOperator

    from airflow_provider_hlml.operators.mlflow import (
        MLflowTrainOperator,
        MLflowValidateOperator,
        ModelPromoteOperator,
    )
    from airflow_provider_hlml.workflows.monitoring import log_monitoring_metrics

    common: dict[str, Any] = {"task_id": stage.stage_task_id, "dag": dag, "retries": stage.retries}
    mlflow = _conn_kwargs(spec, "mlflow_conn_id")
    if isinstance(stage, (DataPrepStage, CustomStage)):
        return PythonOperator(
            python_callable=resolve_callable(stage.config.callable),
            op_kwargs=dict(stage.config.op_kwargs),
            **common,
        )
    if isinstance(stage, TrainingStage):
        training = stage.config
        tags = {**training.tags, **({"algorithm": training.algorithm} if training.algorithm else {})}
        return MLflowTrainOperator(
            python_callable=resolve_callable(training.callable),
            experiment_name=spec.experiment_name,
            experiment_description=spec.description or None,
            run_name=training.run_name,
            params=dict(training.params),
            tags=tags or None,
            autolog=training.autolog,
            registered_model_name=spec.model_name if training.register_model else None,
            op_kwargs=dict(training.op_kwargs),
            **mlflow,
            **common,
        )
    if isinstance(stage, ValidationStage):
        assert wiring.training is not None  # the spec guarantees a training stage before
        validation = stage.config
        data: Any = validation.dataset if validation.dataset_is_file else resolve_callable(validation.dataset)
        return MLflowValidateOperator(
            model_uri=_xcom(wiring.training.stage_task_id, "model_uri"),
            data=data,
            target=validation.target,
            thresholds=_thresholds(stage),
            model_type=validation.model_type,
            model_name=spec.model_name if wiring.training.config.register_model else None,
            baseline_alias=validation.baseline_alias,
            on_fail=validation.on_fail,
            decision_policy=validation.decision_policy,
            **mlflow,
            **common,
        )
    if isinstance(stage, DeploymentStage):
        source = wiring.model_source
        assert source is not None
        return ModelPromoteOperator(
            model_name=spec.model_name,
            version=_xcom(source, "model_version"),
            run_id=_xcom(source, "mlflow_run_id"),
            alias=stage.config.alias or "champion",
            stage=stage.config.stage,
            archive_existing_versions=stage.config.archive_existing_versions,
            approval_task_id=stage.gate_task_id if stage.approval_required else None,
            **mlflow,
            **common,
        )
    if isinstance(stage, MonitoringStage):
        monitoring = stage.config
        deployment = wiring.deployment
        return PythonOperator(
            python_callable=log_monitoring_metrics,
            op_kwargs={
                "model_name": spec.model_name,
                "experiment_name": spec.experiment_name,
                "metrics": list(monitoring.metrics),
                "upstream_task_ids": list(wiring.model_task_ids),
                "metrics_callable": monitoring.callable,
                "callable_kwargs": dict(monitoring.op_kwargs),
                "alias": deployment.config.target_alias if deployment is not None else None,
                "mlflow_conn_id": spec.mlflow_conn_id,
            },
            **common,
        )
    raise TypeError(f"unknown stage type {type(stage).__name__}")  # pragma: no cover - the spec forbids it


def _build_gate(spec: WorkflowSpec, stage: Stage, wiring: _Wiring, dag: DAG) -> BaseOperator:
    from airflow_provider_hlml.sensors.approval import MODEL_REJECT_OPTIONS, HumanApprovalSensor

    subject, body = _gate_text(spec, stage, wiring)
    extra: dict[str, Any] = {}
    if spec.poll_interval is not None:
        extra["poll_interval"] = spec.poll_interval
    return HumanApprovalSensor(
        task_id=stage.gate_task_id,
        dag=dag,
        subject=subject,
        body=body,
        context=_gate_context(wiring),
        approval_type="model_promotion" if isinstance(stage, DeploymentStage) else "workflow_decision",
        urgency=stage.urgency,
        approvers=list(stage.approvers or spec.default_approvers) or None,
        approval_rules=stage.approval_rules,
        reject_options=MODEL_REJECT_OPTIONS if isinstance(stage, DeploymentStage) else None,
        forbid=stage.forbid,
        allow_self_approval=spec.allow_self_approval,
        response_timeout=stage.response_timeout,
        on_timeout=stage.on_timeout,
        on_reject=stage.on_reject,
        reminders=stage.reminders.to_gate() if stage.reminders is not None else None,
        auto_decisions=stage.approval_required == "auto",
        **_conn_kwargs(spec, "humanlayer_conn_id"),
        **_conn_kwargs(spec, "mlflow_conn_id"),  # the model's author is read from this MLflow
        **extra,
    )


def _doc(spec: WorkflowSpec) -> str:
    lines = [
        f"# {spec.name}",
        "",
        spec.description,
        "",
        "| # | stage | type | approval |",
        "|---|---|---|---|",
    ]
    for index, stage in enumerate(spec.stages):
        gate = {"auto": "by evidence, else a person", True: "required"}.get(stage.approval_required, "")
        lines.append(f"| {index} | {stage.name} (`{stage.stage_task_id}`) | {stage.type} | {gate} |")
    lines += ["", f"MLflow experiment `{spec.experiment_name}`, registered model `{spec.model_name}`."]
    return "\n".join(lines)


def build_ml_workflow_dag(spec: WorkflowSpec | Mapping[str, Any], *, source: str | None = None) -> DAG:
    """Build the DAG of a workflow spec: one task per stage, a gate before each gated stage.

    :param spec: a ``WorkflowSpec`` or a mapping validated into one.
    :param source: where a mapping came from (named in errors).
    :raises WorkflowSpecError: when the spec is invalid; no DAG is created then.
    """
    from airflow.sdk import DAG

    if not isinstance(spec, WorkflowSpec):
        spec = WorkflowSpec.from_mapping(spec, source=source)
    dag = DAG(
        dag_id=spec.resolved_dag_id,
        description=(spec.description or spec.name)[:200],
        schedule=spec.schedule,
        start_date=spec.resolved_start_date,
        catchup=spec.catchup,
        max_active_runs=spec.max_active_runs,
        tags=sorted({"hlml", "ml-workflow", *spec.tags}),
        default_args={"owner": spec.owner},
        doc_md=_doc(spec),
        auto_register=False,
    )
    wiring = _Wiring()
    for stage in spec.stages:
        if stage.approval_required:
            gate = _build_gate(spec, stage, wiring, dag)
            if wiring.last is not None:
                wiring.last >> gate
            wiring.last = gate
        task = _build_stage(spec, stage, wiring, dag)
        if wiring.last is not None:
            wiring.last >> task
        wiring.last = task
        wiring.tasks[stage.stage_task_id] = task
        if isinstance(stage, TrainingStage):
            wiring.training, wiring.validation, wiring.deployment = stage, None, None
            wiring.model_task_ids = [stage.stage_task_id]
        elif isinstance(stage, ValidationStage):
            wiring.validation = stage
            wiring.model_task_ids.append(stage.stage_task_id)
        elif isinstance(stage, DeploymentStage):
            wiring.deployment = stage
            wiring.model_task_ids.append(stage.stage_task_id)
    return dag


def load_workflows(path: str | Path) -> dict[str, DAG]:
    """Build one DAG per YAML spec (``*.yaml``, ``*.yml``) in a folder, for one DAG file::

        globals().update(load_workflows(Path(__file__).parent / "workflows"))

    Every spec is validated before any DAG is built. If one is invalid, nothing is returned and a
    :class:`WorkflowSpecError` lists each problem with its file, stage and field; raised at DAG
    parse time it shows up as the DAG file's import error in the Airflow UI.

    :param path: the folder (or a single spec file).
    :return: ``{dag_id: DAG}``.
    """
    folder = Path(path)
    if not folder.exists():
        raise WorkflowSpecError(str(folder), [("", "no such file or folder")])
    files = (
        [folder]
        if folder.is_file()
        else sorted(p for p in folder.iterdir() if p.suffix.lower() in SPEC_SUFFIXES and p.is_file())
    )
    specs: list[tuple[Path, WorkflowSpec]] = []
    problems: list[tuple[str, str]] = []
    owners: dict[str, Path] = {}
    for file in files:
        try:
            spec = WorkflowSpec.from_yaml(file)
        except WorkflowSpecError as exc:
            problems += [(f"{file}: {loc}" if loc else str(file), msg) for loc, msg in exc.problems]
            continue
        dag_id = spec.resolved_dag_id
        if dag_id in owners:
            problems.append((f"{file}: dag_id", f"DAG id {dag_id!r} is already defined by {owners[dag_id]}"))
            continue
        owners[dag_id] = file
        specs.append((file, spec))
    if problems:
        raise WorkflowSpecError(None, problems)
    return {spec.resolved_dag_id: build_ml_workflow_dag(spec, source=str(file)) for file, spec in specs}
