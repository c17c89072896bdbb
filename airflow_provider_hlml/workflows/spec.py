"""The workflow spec: an ML pipeline described as ordered stages, validated before a DAG is built.

A spec is authored in Python (``WorkflowSpec(...)``) or in YAML (:meth:`WorkflowSpec.from_yaml`).
Every field is checked here, including each stage's ``config`` against the schema of its stage
``type`` and the order of the stages, so that :func:`~airflow_provider_hlml.workflows.builder.build_ml_workflow_dag`
never starts on a spec it cannot finish. Problems are reported as :class:`WorkflowSpecError`, one
line per problem, each naming the source file and the field, e.g.
``churn.yaml: stages[2].config.thresholds.accuracy: must be between 0 and 1``.
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from airflow_provider_hlml.utils.thresholds import threshold_problems

__all__ = [
    "STAGE_TYPES",
    "CallableConfig",
    "DeploymentConfig",
    "MetricThresholdSpec",
    "MonitoringConfig",
    "Stage",
    "TrainingConfig",
    "ValidationConfig",
    "WorkflowSpec",
    "WorkflowSpecError",
    "resolve_callable",
]

STAGE_TYPES: tuple[str, ...] = ("data_prep", "training", "validation", "deployment", "monitoring", "custom")

SCHEDULE_PRESETS: frozenset[str] = frozenset(
    {"@once", "@continuous", "@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly", "@annually"}
)

_IDENTIFIER = re.compile(r"^[A-Za-z0-9_.\-]+$")
_IMPORT_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*([:.][A-Za-z_][A-Za-z0-9_]*)$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*$")
_DURATION_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


class WorkflowSpecError(ValueError):
    """A spec that cannot become a DAG; ``problems`` holds ``(field, message)`` pairs.

    :param source: the file (or other origin) of the spec, named in every line of the message.
    :param problems: ``(field path, message)`` pairs, e.g. ``("stages[2].config.target", "field required")``.
    """

    def __init__(self, source: str | None, problems: Sequence[tuple[str, str]]) -> None:
        self.source = source
        self.problems = list(problems)
        prefix = f"{source}: " if source else ""
        lines = [f"{prefix}{loc}: {msg}" if loc else f"{prefix}{msg}" for loc, msg in self.problems]
        header = f"invalid workflow spec {source}" if source else "invalid workflow spec"
        super().__init__(
            f"{header} ({len(lines)} problem{'s' if len(lines) != 1 else ''}):\n" + "\n".join(lines)
        )


def _raise(title: str, problems: Sequence[tuple[tuple[str | int, ...], str]], value: Any) -> None:
    """Raise a pydantic ValidationError whose entries sit at ``loc`` relative to the model validated."""
    raise ValidationError.from_exception_data(
        title,
        [
            InitErrorDetails(
                type=PydanticCustomError("hlml_spec", "{message}", {"message": message}),
                loc=loc,
                input=value,
            )
            for loc, message in problems
        ],
    )


def _format_loc(loc: Sequence[str | int]) -> str:
    parts: list[str] = []
    previous: str | int | None = None
    for index, item in enumerate(loc):
        # The stage union is discriminated by ``type``; pydantic puts the tag in the path.
        if index >= 2 and loc[index - 2] == "stages" and isinstance(previous, int) and item in STAGE_TYPES:
            previous = item
            continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif parts:
            parts.append(f".{item}")
        else:
            parts.append(str(item))
        previous = item
    return "".join(parts)


def _format_message(error: Mapping[str, Any]) -> str:
    kind = error.get("type")
    message = str(error.get("msg", ""))
    if kind == "extra_forbidden":
        field = str(error["loc"][-1]) if error.get("loc") else ""
        suggestion = suggest_field(field)
        return f"unknown field (did you mean {suggestion!r}?)" if suggestion else "unknown field"
    if kind == "missing":
        return "field required"
    if kind == "union_tag_invalid":
        tag = (error.get("ctx") or {}).get("tag")
        return f"must be one of {', '.join(STAGE_TYPES)} (got {tag!r})"
    if kind == "union_tag_not_found":
        return f"field 'type' required: one of {', '.join(STAGE_TYPES)}"
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    return message[:1].lower() + message[1:] if message[:2] != message[:2].upper() else message


def _problems_from(exc: ValidationError) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        if error.get("type") == "union_tag_invalid":
            loc += ("type",)
        entry = (_format_loc(loc), _format_message(error))
        if entry not in problems:
            problems.append(entry)
    return problems


# --- field types ----------------------------------------------------------------------------


@lru_cache(maxsize=256)
def resolve_callable(path: str) -> Callable[..., Any]:
    """Import ``package.module:function`` (or ``package.module.function``) and return the callable.

    :param path: the import path.
    :raises ValueError: when the module or attribute is missing or the object is not callable.
    """
    if not _IMPORT_PATH.match(path):
        raise ValueError(f"{path!r} is not an import path like 'package.module:function'")
    module_name, _, attr = path.rpartition(":") if ":" in path else path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {path!r}: {exc}") from None
    try:
        target = getattr(module, attr)
    except AttributeError:
        raise ValueError(
            f"cannot import {path!r}: module {module_name!r} has no attribute {attr!r}"
        ) from None
    if not callable(target):
        raise ValueError(f"{path!r} is not callable")
    return cast("Callable[..., Any]", target)


def _check_import_path(value: str) -> str:
    resolve_callable(value)
    return value


def _parse_duration(value: Any) -> Any:
    """Accept ``90``, ``"90s"``, ``"15m"``, ``"2h"``, ``"7d"``, ``"1w"``, ISO 8601 or ``{"days": 7}``."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return timedelta(seconds=float(match.group(1)) * _DURATION_UNITS[match.group(2)])
    if isinstance(value, Mapping):
        try:
            return timedelta(**{str(k): float(v) for k, v in value.items()})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not a duration: {exc}") from None
    return value


def _positive_duration(value: timedelta | None) -> timedelta | None:
    if value is not None and value.total_seconds() <= 0:
        raise ValueError("must be a positive duration")
    return value


ImportPath = Annotated[str, AfterValidator(_check_import_path)]
Duration = Annotated[timedelta, BeforeValidator(_parse_duration), AfterValidator(_positive_duration)]
ParamValue = str | int | float | bool | None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- stage configs --------------------------------------------------------------------------


class CallableConfig(_Strict):
    """Config of ``data_prep`` and ``custom`` stages: a Python callable run as the task.

    :param callable: import path of the function, e.g. ``airflow_provider_hlml.examples.churn:prepare_churn_data``.
    :param op_kwargs: keyword arguments passed to it (templated).
    """

    callable: ImportPath
    op_kwargs: dict[str, Any] = Field(default_factory=dict)


class TrainingConfig(_Strict):
    """Config of a ``training`` stage (an ``MLflowTrainOperator``).

    :param callable: import path of the training function.
    :param params: hyper-parameters, logged to the MLflow run and passed to the function.
    :param algorithm: optional algorithm name, logged as a run tag.
    :param run_name: MLflow run name (templated); defaults to the DAG run id.
    :param tags: MLflow run tags.
    :param autolog: turn on ``mlflow.autolog()`` for the run.
    :param register_model: register the trained model under the workflow's ``model_name``.
    :param op_kwargs: extra keyword arguments of the function.
    """

    callable: ImportPath
    params: dict[str, ParamValue] = Field(default_factory=dict)
    algorithm: str | None = None
    run_name: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    autolog: bool = False
    register_model: bool = True
    op_kwargs: dict[str, Any] = Field(default_factory=dict)


class MetricThresholdSpec(_Strict):
    """One metric's acceptance rule; a bare number in YAML means ``{"threshold": number}``.

    Its values are checked, with the metric name, by :class:`ValidationConfig` through
    :func:`~airflow_provider_hlml.utils.thresholds.threshold_problems` (the operator's rules).

    :param threshold: the value the candidate must reach (at least, or at most when
        ``greater_is_better`` is false).
    :param min_absolute_change: how much better than the champion the candidate must be, absolute.
    :param min_relative_change: the same, relative to the champion (0.01 = 1 %).
    :param greater_is_better: direction of the metric.
    """

    threshold: float | None = None
    min_absolute_change: float | None = None
    min_relative_change: float | None = None
    greater_is_better: bool = True

    @model_validator(mode="before")
    @classmethod
    def _number_is_threshold(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return {"threshold": value}
        return value


class ValidationConfig(_Strict):
    """Config of a ``validation`` stage (an ``MLflowValidateOperator``).

    :param dataset: evaluation data: import path of a callable returning a pandas DataFrame, or a
        ``.csv`` / ``.parquet`` file (relative paths are relative to the spec file).
    :param target: the label column.
    :param thresholds: metric name -> rule; each metric must be one MLflow's default evaluator
        reports for ``model_type`` (``accuracy``, ``f1``, ``rmse``, ... or MLflow's own names), and
        fractional metrics (accuracy, precision, ...) must use thresholds between 0 and 1.
    :param model_type: ``classifier`` or ``regressor``.
    :param baseline_alias: registered-model alias of the champion whose metrics the report shows
        next to the candidate's (and which ``min_*_change`` rules compare with).
    :param on_fail: when the candidate does not pass: ``fail`` the task, ``skip`` it and what
        follows, or ``continue`` with the report (a gate after it then shows ``passed: false``).
    :param decision_policy: a promotion decision policy (``name``, ``version``, ``metrics``:
        metric -> ``threshold`` / ``min_improvement`` / ``max_regression``, ``resamples``,
        ``confidence``, ``seed``, ``allow_auto_approve``, ``allow_auto_reject``,
        ``override_window``): the report says ``auto_approve``, ``auto_reject`` or ``human`` by
        evidence, which a later gate with ``approval_required: auto`` acts on.
    """

    dataset: str = Field(min_length=1)
    target: str = Field(min_length=1)
    thresholds: dict[str, MetricThresholdSpec] = Field(min_length=1)
    model_type: Literal["classifier", "regressor"] = "classifier"
    baseline_alias: str = Field(default="champion", min_length=1)
    on_fail: Literal["fail", "skip", "continue"] = "fail"
    decision_policy: dict[str, Any] | None = None

    @field_validator("decision_policy")
    @classmethod
    def _valid_decision_policy(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        from airflow_provider_hlml.policy.decision import DecisionPolicy, PolicyError

        try:
            DecisionPolicy.from_mapping(value)
        except (PolicyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a decision policy: {exc}") from None
        return value

    @field_validator("dataset")
    @classmethod
    def _dataset_exists(cls, value: str) -> str:
        if value.lower().endswith((".csv", ".parquet")):
            return value
        try:
            resolve_callable(value)
        except ValueError as exc:
            raise ValueError(
                f"must be a .csv/.parquet file or the import path of a callable returning a DataFrame: {exc}"
            ) from None
        return value

    @model_validator(mode="after")
    def _thresholds_can_pass(self) -> ValidationConfig:
        rules = {metric: rule.model_dump() for metric, rule in self.thresholds.items()}
        problems = threshold_problems(rules, self.model_type)
        if problems:
            _raise("ValidationConfig", problems, self.thresholds)
        return self

    @property
    def dataset_is_file(self) -> bool:
        return self.dataset.lower().endswith((".csv", ".parquet"))


class DeploymentConfig(_Strict):
    """Config of a ``deployment`` stage (a ``ModelPromoteOperator``).

    :param alias: registered-model alias to move to the new version (default ``champion``).
    :param stage: legacy registry stage instead of an alias (deprecated by MLflow; prefer aliases).
    :param environment: free-form label shown to the approver, e.g. ``production``.
    :param archive_existing_versions: with ``stage``, archive the versions previously in it.
    """

    alias: str | None = None
    stage: Literal["Staging", "Production", "Archived"] | None = None
    environment: str | None = None
    archive_existing_versions: bool = True

    @field_validator("alias")
    @classmethod
    def _valid_alias(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from airflow_provider_hlml.utils.names import alias_problem

        problem = alias_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _alias_or_stage(self) -> DeploymentConfig:
        if self.alias is not None and self.stage is not None:
            _raise("DeploymentConfig", [(("stage",), "set either alias or stage, not both")], self.stage)
        return self

    @property
    def target_alias(self) -> str | None:
        """The alias to set: the configured one, ``champion`` when neither alias nor stage is set."""
        if self.stage is not None:
            return None
        return self.alias or "champion"


class MonitoringConfig(_Strict):
    """Config of a ``monitoring`` stage: metrics logged to MLflow after deployment.

    :param metrics: names of the metrics to log (at least one).
    :param callable: optional import path of a function computing them (it gets ``model_name``,
        ``model_version``, ``model_uri`` and ``context``); without it the values come from the
        latest validation or training stage.
    :param op_kwargs: extra keyword arguments of the function.
    """

    metrics: list[str] = Field(min_length=1)
    callable: ImportPath | None = None
    op_kwargs: dict[str, Any] = Field(default_factory=dict)


# --- stages ---------------------------------------------------------------------------------


class ReminderSpec(_Strict):
    """A gate's ladder over time (see ``HumanApprovalSensor(reminders=...)``): delivered by the
    provider's approvals service."""

    remind_after: Duration | None = None
    escalate_after: Duration | None = None
    escalate_to: list[str] = Field(default_factory=list)
    repeat_every: Duration | None = None

    @model_validator(mode="after")
    def _valid(self) -> ReminderSpec:
        from airflow_provider_hlml.gate.state import Reminders

        try:
            Reminders.parse(self.to_gate())
        except ValueError as exc:
            _raise("Reminders", [((), str(exc))], self.model_dump())
        return self

    def to_gate(self) -> dict[str, Any]:
        """The sensor's ``reminders=`` mapping."""
        return {k: v for k, v in self.model_dump().items() if v not in (None, [])}


class _StageBase(_Strict):
    name: str = Field(min_length=1)
    task_id: str | None = None
    #: ``true``: a person decides at a gate before the stage; ``auto``: the gate acts on the
    #: decision policy of the validation stage before it (a clear win or regression is decided
    #: by the policy, the rest by a person).
    approval_required: Literal["auto"] | bool = False
    approvers: list[str] | None = None
    #: Rules that must all be met (see ``HumanApprovalSensor(approval_rules=...)``).
    approval_rules: list[dict[str, Any]] | None = None
    #: Who may not decide (``requester``, ``model_author``); default: the gate's.
    forbid: list[Literal["requester", "model_author"]] | None = None
    approval_subject: str | None = None
    approval_body: str | None = None
    urgency: Literal["low", "medium", "high", "critical"] = "medium"
    response_timeout: Duration | None = None
    on_timeout: Literal["fail", "skip", "approve", "reject"] = "fail"
    on_reject: Literal["fail", "skip"] = "fail"
    #: Reminders and escalation over time, delivered by the approvals service.
    reminders: ReminderSpec | None = None
    retries: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _timeout_policy_needs_timeout(self) -> _StageBase:
        if self.on_timeout != "fail" and self.response_timeout is None:
            _raise(
                "Stage",
                [(("response_timeout",), f"required when on_timeout is {self.on_timeout!r}")],
                self.on_timeout,
            )
        return self

    @field_validator("approval_rules")
    @classmethod
    def _valid_rules(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        from airflow_provider_hlml.gate.state import ApprovalRule

        return [r.to_json() for r in ApprovalRule.parse_all(value)] if value is not None else None

    @field_validator("task_id")
    @classmethod
    def _valid_task_id(cls, value: str | None) -> str | None:
        if value is not None and not _IDENTIFIER.match(value):
            raise ValueError("may contain only letters, digits, '_', '-' and '.'")
        return value

    @property
    def stage_task_id(self) -> str:
        """The task id of the stage: ``task_id`` or the stage name in snake case."""
        return self.task_id or slugify(self.name)

    @property
    def gate_task_id(self) -> str:
        """The task id of the approval gate before this stage."""
        return f"approve_{self.stage_task_id}"


class DataPrepStage(_StageBase):
    """A ``data_prep`` stage: a Python callable (load, clean, split the data)."""

    type: Literal["data_prep"]
    config: CallableConfig


class TrainingStage(_StageBase):
    """A ``training`` stage: ``MLflowTrainOperator``."""

    type: Literal["training"]
    config: TrainingConfig


class ValidationStage(_StageBase):
    """A ``validation`` stage: ``MLflowValidateOperator``."""

    type: Literal["validation"]
    config: ValidationConfig


class DeploymentStage(_StageBase):
    """A ``deployment`` stage: ``ModelPromoteOperator`` (gated stages check the approval)."""

    type: Literal["deployment"]
    config: DeploymentConfig = Field(default_factory=DeploymentConfig)


class MonitoringStage(_StageBase):
    """A ``monitoring`` stage: metrics of the deployed model logged to MLflow."""

    type: Literal["monitoring"]
    config: MonitoringConfig


class CustomStage(_StageBase):
    """A ``custom`` stage: any Python callable."""

    type: Literal["custom"]
    config: CallableConfig


Stage = Annotated[
    DataPrepStage | TrainingStage | ValidationStage | DeploymentStage | MonitoringStage | CustomStage,
    Field(discriminator="type"),
]


def slugify(name: str) -> str:
    """``"Model Training"`` -> ``"model_training"``."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()
    return slug or "stage"


def _parse_schedule(value: Any) -> Any:
    if value is None or isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("@"):
            if text not in SCHEDULE_PRESETS:
                raise ValueError(f"unknown preset {text!r}; use one of {', '.join(sorted(SCHEDULE_PRESETS))}")
            return text
        if len(text.split()) in (5, 6):
            from croniter import croniter

            if not croniter.is_valid(text):
                raise ValueError(f"{text!r} is not a valid cron expression")
            return text
    duration = _parse_duration(value)
    if isinstance(duration, timedelta):
        return _positive_duration(duration)
    if isinstance(value, str):
        from pydantic import TypeAdapter

        try:
            return _positive_duration(TypeAdapter(timedelta).validate_python(value))
        except ValidationError:
            pass
    raise ValueError("must be a cron expression, a preset like '@weekly', or a duration like '7d'")


def _utc(value: datetime | date) -> datetime:
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


# --- the workflow ---------------------------------------------------------------------------


class WorkflowSpec(_Strict):
    """An ML workflow: metadata plus ordered stages, turned into a DAG by ``build_ml_workflow_dag``.

    :param name: human-readable name, e.g. ``Customer Churn Prediction Pipeline``.
    :param dag_id: the DAG id; defaults to ``name`` in snake case.
    :param description: DAG description.
    :param experiment_name: MLflow experiment of the training and monitoring runs.
    :param model_name: registered model the training stage registers and deployment promotes.
    :param schedule: cron expression, preset (``@weekly``) or duration (``7d``); null = manual.
    :param start_date: first logical date (UTC when no zone is given).
    :param catchup: run the missed intervals since ``start_date``.
    :param default_approvers: approvers of gates whose stage names none (empty: any reviewer).
    :param allow_self_approval: whether the user who triggered a run may approve its gates.
    :param tags: DAG tags.
    :param owner: task owner.
    :param max_active_runs: concurrent runs of the DAG.
    :param poll_interval: seconds between status reads of the approval gates (null: ``[hlml]``).
    :param humanlayer_conn_id: connection of the approval gates (null: the gates' default).
    :param mlflow_conn_id: connection of the MLflow stages (null: the operators' default).
    :param stages: the stages, run in order.
    """

    name: str = Field(min_length=1)
    dag_id: str | None = None
    description: str = ""
    experiment_name: str = Field(min_length=1)
    model_name: str = Field(min_length=1)
    schedule: Annotated[str | timedelta | None, BeforeValidator(_parse_schedule)] = None
    start_date: datetime | date = datetime(2024, 1, 1, tzinfo=timezone.utc)
    catchup: bool = False
    default_approvers: list[str] = Field(default_factory=list)
    allow_self_approval: bool = False
    tags: list[str] = Field(default_factory=list)
    owner: str = "airflow"
    max_active_runs: int = Field(default=1, ge=1)
    poll_interval: float | None = Field(default=None, gt=0)
    humanlayer_conn_id: str | None = None
    mlflow_conn_id: str | None = None
    stages: list[Stage] = Field(min_length=1)

    @field_validator("dag_id")
    @classmethod
    def _valid_dag_id(cls, value: str | None) -> str | None:
        if value is not None and not _IDENTIFIER.match(value):
            raise ValueError("may contain only letters, digits, '_', '-' and '.'")
        return value

    @model_validator(mode="after")
    def _stages_fit_together(self) -> WorkflowSpec:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        seen_ids: dict[str, int] = {}
        trained = deployed = registers = False
        decides: ValidationStage | None = None  # the validation stage with a decision policy, if any
        for index, stage in enumerate(self.stages):
            if stage.approval_required == "auto" and (
                decides is None or decides.config.decision_policy is None
            ):
                problems.append(
                    (
                        ("stages", index, "approval_required"),
                        "'auto' needs a validation stage with a decision_policy before this stage "
                        "(after its training stage): the gate acts on its decision",
                    )
                )
            for task_id in (stage.stage_task_id, *((stage.gate_task_id,) if stage.approval_required else ())):
                if task_id in seen_ids:
                    problems.append(
                        (
                            ("stages", index, "name"),
                            f"task id {task_id!r} is already used by stages[{seen_ids[task_id]}]; "
                            "rename the stage or set task_id",
                        )
                    )
                seen_ids.setdefault(task_id, index)
            if stage.type in ("validation", "deployment") and not trained:
                problems.append(
                    (("stages", index, "type"), f"a {stage.type} stage needs a training stage before it")
                )
            if isinstance(stage, MonitoringStage) and stage.config.callable is None and not trained:
                problems.append(
                    (
                        ("stages", index, "config", "callable"),
                        "required when no training or validation stage comes before the monitoring stage",
                    )
                )
            if isinstance(stage, TrainingStage):
                trained = True
                deployed = False
                registers = stage.config.register_model
                decides = None
            elif isinstance(stage, ValidationStage):
                decides = stage
            elif isinstance(stage, DeploymentStage):
                if deployed:
                    problems.append((("stages", index, "type"), "the model of this run is already deployed"))
                if trained and stage.approval_required and not registers:
                    # The approval must name the model version it allows to promote.
                    problems.append(
                        (
                            ("stages", index, "approval_required"),
                            "a gated deployment needs the training stage to register the model "
                            "(register_model: true): the approval names the model version",
                        )
                    )
                deployed = True
            for field in ("approvers", "approval_rules"):
                if getattr(stage, field) and not stage.approval_required:
                    problems.append((("stages", index, field), f"set approval_required: true to use {field}"))
        if problems:
            _raise("WorkflowSpec", problems, self.stages)
        return self

    # --- derived values ---------------------------------------------------------------------

    @property
    def resolved_dag_id(self) -> str:
        return self.dag_id or slugify(self.name)

    @property
    def resolved_start_date(self) -> datetime:
        return _utc(self.start_date)

    # --- parsing ----------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Any, *, source: str | None = None) -> WorkflowSpec:
        """Validate ``data`` (e.g. parsed YAML) into a spec.

        :param data: the spec as a mapping.
        :param source: where it came from (a file name), named in every error line.
        :raises WorkflowSpecError: listing every problem found.
        """
        if not isinstance(data, Mapping):
            raise WorkflowSpecError(
                source, [("", f"a workflow spec must be a mapping, got {type(data).__name__}")]
            )
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise WorkflowSpecError(source, _problems_from(exc)) from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> WorkflowSpec:
        """Read and validate a YAML spec file; relative dataset paths are resolved against its folder.

        :param path: the ``.yaml`` / ``.yml`` file.
        :raises WorkflowSpecError: naming the file for unreadable YAML or any invalid field.
        """
        import yaml

        path = Path(path)
        source = str(path)
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader parses ~10x faster
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)  # a safe loader either way
        except OSError as exc:
            raise WorkflowSpecError(source, [("", f"cannot read the file: {exc.strerror or exc}")]) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise WorkflowSpecError(source, [("", f"invalid YAML{where}: {problem}")]) from None
        if isinstance(data, Mapping):
            data = _resolve_dataset_paths(dict(data), path.parent)
        return cls.from_mapping(data, source=source)


def _resolve_dataset_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    stages = data.get("stages")
    if not isinstance(stages, list):
        return data
    resolved = []
    for stage in stages:
        config = stage.get("config") if isinstance(stage, Mapping) else None
        dataset = config.get("dataset") if isinstance(config, Mapping) else None
        if (
            isinstance(stage, Mapping)
            and isinstance(config, Mapping)
            and isinstance(dataset, str)
            and dataset.lower().endswith((".csv", ".parquet"))
            and not Path(dataset).is_absolute()
        ):
            stage = {**stage, "config": {**config, "dataset": str(base / dataset)}}
        resolved.append(stage)
    return {**data, "stages": resolved}


@lru_cache(maxsize=1)
def _known_fields() -> tuple[str, ...]:
    models: tuple[type[BaseModel], ...] = (
        WorkflowSpec,
        _StageBase,
        CallableConfig,
        TrainingConfig,
        ValidationConfig,
        MetricThresholdSpec,
        DeploymentConfig,
        MonitoringConfig,
    )
    return tuple(sorted({name for model in models for name in model.model_fields} | {"type", "config"}))


def suggest_field(name: str) -> str | None:
    """The known field closest to a misspelt or camelCase one (``approvalRequired``), if any."""
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
    if snake != name and snake in _known_fields():
        return snake
    matches = difflib.get_close_matches(snake, _known_fields(), n=1, cutoff=0.75)
    return matches[0] if matches else None
