"""The training stage: a training callable run inside an MLflow run tied to the task instance."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

from airflow.sdk import BaseOperator

from airflow_provider_hlml import audit
from airflow_provider_hlml.hooks.mlflow import MLflowHook
from airflow_provider_hlml.links.mlflow import MLflowRunLink
from airflow_provider_hlml.notifications.alerts import ConsecutiveFailuresAlert, default_training_alert
from airflow_provider_hlml.operators.mlflow_runs import (
    MAX_PARAM_VALUE,
    airflow_identity_tags,
    call_with_supported_kwargs,
    coerce_metrics,
    error_text,
    log_batch,
    log_model,
    push_run_link,
    quote_filter_value,
    terminate_run,
)
from airflow_provider_hlml.settings import mlflow_conn_id as default_mlflow_conn_id

if TYPE_CHECKING:
    from airflow.sdk import Context
    from mlflow.tracking import MlflowClient

    from airflow_provider_hlml import contracts

__all__ = ["MLflowTrainOperator", "TrainResult"]


@dataclass
class TrainResult:
    """
    What a training callable may return instead of a plain metrics dict.

    (The operator's own return value, what the next stage reads, is typed by
    :class:`airflow_provider_hlml.contracts.TrainResult`.)

    :param metrics: metric name -> number, logged in one batch.
    :param model: a fitted model; logged with :func:`log_model` (sklearn flavor for scikit-learn
        estimators, pyfunc otherwise).
    :param input_example: a few input rows; the model signature is inferred from them.
    :param params: extra params to log (in addition to the operator's ``params``).
    :param artifact_name: name of the logged model inside the run.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    model: Any = None
    input_example: Any = None
    params: dict[str, Any] | None = None
    artifact_name: str = "model"


class MLflowTrainOperator(BaseOperator):
    """
    Run a training callable inside an MLflow run tied to this task instance.

    The callable is called as ``python_callable(run=..., params=..., context=..., **op_kwargs)``
    (it may name only the arguments it needs) and returns a metrics dict or a
    :class:`TrainResult`. Metrics and params are logged in batches; a returned model is logged
    with :func:`log_model`. On an exception the run ends ``FAILED`` (``KILLED`` when the task is
    killed) with the error in tag ``hlml.error``; a retry's run is tagged
    ``hlml.retry_of_run_id`` with the failed attempt's run.

    XCom return value: a :class:`~airflow_provider_hlml.contracts.TrainResult`, ``{"mlflow_run_id",
    "experiment_id", "model_uri", "metrics", "model_name", "model_version", "run_id"}``
    (``run_id``: deprecated alias of ``mlflow_run_id``).

    :param python_callable: the training function.
    :param experiment_name: MLflow experiment, created on first use (templated).
    :param run_name: MLflow run name (templated); default ``<task_id>-try<n>``.
    :param params: hyper-parameters, logged as MLflow params and passed to the callable. They are
        Airflow task params too, so a DAG run's conf can override them; string values are
        rendered as templates.
    :param tags: extra MLflow run tags (templated).
    :param experiment_description: description used when the experiment is created.
    :param autolog: enable ``mlflow.autolog()`` for the duration of the callable. ``params`` are
        then logged after the callable, next to the autologged ones; where autologging recorded
        a param of the same name with another value (``1.0`` for ``1``), its value stays.
    :param registered_model_name: register the logged model under this name (no alias is set).
    :param op_kwargs: extra keyword arguments for the callable (templated).
    :param mlflow_conn_id: MLflow connection; default ``[hlml] mlflow_conn_id`` (itself
        ``mlflow_default`` unless configured).
    :param failure_alert: alert after consecutive failed runs of this task, added to its
        ``on_failure_callback`` and ``on_success_callback`` (next to any given ones).
        ``"default"``: :func:`~airflow_provider_hlml.notifications.alerts.default_training_alert`
        (an e-mail when ``[hlml] alert_email_to`` is set, else none); ``None``: no alert.
    """

    template_fields: Sequence[str] = (
        "experiment_name",
        "run_name",
        "tags",
        "registered_model_name",
        "op_kwargs",
    )
    template_fields_renderers = {"tags": "json", "op_kwargs": "py"}
    operator_extra_links = (MLflowRunLink(),)
    ui_color = "#d5e8f7"

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        experiment_name: str,
        run_name: str | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        experiment_description: str | None = None,
        autolog: bool = False,
        registered_model_name: str | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        mlflow_conn_id: str | None = None,
        failure_alert: ConsecutiveFailuresAlert | Literal["default"] | None = "default",
        **kwargs: Any,
    ) -> None:
        # The metaclass has already merged these with the DAG's params into a ParamsDict (each
        # Param keeps source="task"), so hand it on unchanged.
        super().__init__(params=cast("MutableMapping[str, Any] | None", params), **kwargs)
        if not callable(python_callable):
            raise TypeError(f"python_callable of task {self.task_id!r} must be callable")
        self.python_callable = python_callable
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.experiment_description = experiment_description
        self.autolog = autolog
        self.registered_model_name = registered_model_name
        self.op_kwargs: Mapping[str, Any] = dict(op_kwargs or {})
        self.mlflow_conn_id = mlflow_conn_id or default_mlflow_conn_id()
        self._hook: MLflowHook | None = None
        self._active_run_id: str | None = None
        self._killed = False
        self._add_failure_alert(failure_alert)

    def _add_failure_alert(self, failure_alert: ConsecutiveFailuresAlert | Literal["default"] | None) -> None:
        if isinstance(failure_alert, str):
            if failure_alert != "default":
                raise ValueError(f"failure_alert must be an alert, 'default' or None, got {failure_alert!r}")
            failure_alert = default_training_alert()
        if failure_alert is None:
            return
        if not isinstance(failure_alert, ConsecutiveFailuresAlert):
            raise TypeError(f"failure_alert must be a ConsecutiveFailuresAlert, got {failure_alert!r}")
        # BaseOperator keeps each callback argument as a list.
        if failure_alert not in self.on_failure_callback:
            self.on_failure_callback = [*self.on_failure_callback, failure_alert]
        if failure_alert not in self.on_success_callback:
            self.on_success_callback = [*self.on_success_callback, failure_alert]

    # -- params -------------------------------------------------------------------------------
    def _training_params(self, context: Context) -> dict[str, Any]:
        """The task-level params, resolved (DAG-run conf overrides apply) and rendered."""
        from airflow.sdk.definitions.param import ParamsDict

        own = (
            ParamsDict.filter_params_by_source(self.params, "task")
            if isinstance(self.params, ParamsDict)
            else {}
        )
        resolved = context.get("params") or {}
        values: dict[str, Any] = {}
        for key in own:
            value = resolved[key] if key in resolved else own[key]
            values[key] = self.render_template(value, context) if isinstance(value, str) else value
        return values

    def _call_python_callable(self, offered: Mapping[str, Any]) -> Any:
        return call_with_supported_kwargs(self.python_callable, offered, self.op_kwargs)

    # -- retries ------------------------------------------------------------------------------
    def _previous_attempt(self, client: MlflowClient, experiment_id: str, context: Context) -> str | None:
        """The run of the latest earlier attempt of this task instance; a RUNNING one is closed."""
        ti = context["ti"]
        if ti.try_number <= 1:
            return None
        filter_string = " and ".join(
            f"tags.`{key}` = {quote_filter_value(str(value))}"
            for key, value in (
                (audit.AIRFLOW_DAG_ID, ti.dag_id),
                (audit.AIRFLOW_RUN_ID, ti.run_id),
                (audit.AIRFLOW_TASK_ID, ti.task_id),
                (audit.AIRFLOW_MAP_INDEX, getattr(ti, "map_index", -1)),
            )
        )
        runs = client.search_runs(
            [experiment_id], filter_string, max_results=20, order_by=["start_time DESC"]
        )
        earlier = [r for r in runs if int(r.data.tags.get(audit.AIRFLOW_TRY_NUMBER, "0")) < ti.try_number]
        if not earlier:
            return None
        previous = earlier[0]
        if previous.info.status == "RUNNING":
            # The worker running that attempt died before it could close the run.
            terminate_run(client, previous.info.run_id, "KILLED", "attempt ended without closing its run")
        return str(previous.info.run_id)

    # -- execute ------------------------------------------------------------------------------
    def execute(self, context: Context) -> contracts.TrainResult:
        import mlflow

        hook = self._hook = MLflowHook(self.mlflow_conn_id)
        client = hook.client
        ti = context["ti"]
        with hook.fluent():
            experiment_id = hook.get_or_create_experiment(
                self.experiment_name,
                self.experiment_description,
                {audit.EXPERIMENT_CREATED_BY_DAG: ti.dag_id},
            )
            tags = {str(k): str(v) for k, v in self.tags.items()}
            tags.update(airflow_identity_tags(context))
            tags[audit.HLML_STAGE] = "train"
            previous = self._previous_attempt(client, experiment_id, context)
            if previous:
                tags[audit.RETRY_OF_RUN_ID] = previous
            run_name = self.run_name or f"{ti.task_id}-try{ti.try_number}"
            # One request creates the run and makes it the fluent API's active run (creating it
            # with the client and resuming it by id would take four).
            active = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags)
            run_id = active.info.run_id
            self._active_run_id = run_id
            try:
                push_run_link(context, hook, experiment_id, run_id)
                self.log.info(
                    "MLflow run %s in experiment %r (%s)", run_id, self.experiment_name, hook.describe()
                )
                result = self._train(hook, active, context)
            except BaseException as exc:
                # Leave no active fluent run behind, and record the error on the run.
                with contextlib.suppress(Exception):
                    mlflow.end_run(status=self._failure_status(exc))
                self._end_failed(client, run_id, exc)
                raise
            finally:
                self._active_run_id = None
        model_uri, model_version = result["model_uri"], result["model_version"]
        self.log.info("Run %s finished: metrics=%s model=%s", run_id, result["metrics"], model_uri)
        return {
            "mlflow_run_id": run_id,
            "run_id": run_id,
            "experiment_id": experiment_id,
            "model_uri": model_uri,
            "metrics": result["metrics"],
            "model_name": self.registered_model_name if model_version else None,
            "model_version": model_version,
        }

    def _train(self, hook: MLflowHook, active: Any, context: Context) -> dict[str, Any]:
        import mlflow

        client = hook.client
        run_id = active.info.run_id
        params = self._training_params(context)
        if self.autolog:
            # Autologging writes the estimator's params in one batch, which MLflow rejects whole
            # if a name is already logged with another value (``1`` vs ``1.0``): ours come after.
            mlflow.autolog(silent=True)
        else:
            log_batch(client, run_id, params=params)
        try:
            raw = self._call_python_callable({"run": active, "params": params, "context": context})
        finally:
            if self.autolog:
                mlflow.autolog(disable=True, silent=True)
        result = self._normalise(raw)
        extra_params = result.params
        if self.autolog:
            extra_params = self._params_not_autologged(client, run_id, {**params, **(result.params or {})})
        log_batch(client, run_id, metrics=result.metrics, params=extra_params)
        model_uri: str | None = None
        if result.model is not None:
            model_uri = log_model(result.model, result.artifact_name, input_example=result.input_example)
        else:
            logged = mlflow.last_logged_model()
            if logged is not None and logged.source_run_id == run_id:
                model_uri = str(logged.model_uri)
        model_version: str | None = None
        if self.registered_model_name:
            if model_uri is None:
                raise ValueError(
                    f"registered_model_name={self.registered_model_name!r} is set but the callable "
                    f"of task {self.task_id!r} logged no model (return TrainResult(model=...))"
                )
            version = mlflow.register_model(model_uri, self.registered_model_name)
            model_version = str(version.version)
            self._tag_version(hook, version.name, model_version, context)
        mlflow.end_run(status="FINISHED")
        return {"metrics": result.metrics, "model_uri": model_uri, "model_version": model_version}

    def _params_not_autologged(
        self, client: MlflowClient, run_id: str, params: Mapping[str, Any]
    ) -> dict[str, Any]:
        """``params`` minus the names autologging already wrote; a differing value is reported."""
        logged = client.get_run(run_id).data.params
        left: dict[str, Any] = {}
        for key, value in params.items():
            if str(key) not in logged:
                left[key] = value
            elif logged[str(key)] != str(value)[:MAX_PARAM_VALUE]:
                self.log.warning(
                    "Param %r=%r not logged: autologging recorded the value the model used, %r",
                    key,
                    value,
                    logged[str(key)],
                )
        return left

    @staticmethod
    def _tag_version(hook: MLflowHook, name: str, version: str, context: Context) -> None:
        ti = context["ti"]
        hook.tag_model_version(
            name,
            version,
            {
                audit.AIRFLOW_DAG_ID: ti.dag_id,
                audit.AIRFLOW_RUN_ID: ti.run_id,
                audit.AIRFLOW_TASK_ID: ti.task_id,
            },
        )

    def _normalise(self, raw: Any) -> TrainResult:
        if raw is None:
            return TrainResult()
        if isinstance(raw, TrainResult):
            raw.metrics = coerce_metrics(raw.metrics or {})
            return raw
        if isinstance(raw, Mapping):
            return TrainResult(metrics=coerce_metrics(raw))
        raise TypeError(
            f"python_callable of task {self.task_id!r} returned {type(raw).__name__}; "
            "return a dict of metrics or a TrainResult"
        )

    def _failure_status(self, exc: BaseException) -> str:
        from airflow.sdk.exceptions import AirflowTaskTerminated

        killed = self._killed or isinstance(exc, AirflowTaskTerminated | KeyboardInterrupt | SystemExit)
        return "KILLED" if killed else "FAILED"

    def _end_failed(self, client: MlflowClient, run_id: str, exc: BaseException) -> None:
        status = self._failure_status(exc)
        try:
            terminate_run(client, run_id, status, error_text(exc))
        except Exception:
            self.log.warning("Could not mark MLflow run %s %s", run_id, status, exc_info=True)

    def on_kill(self) -> None:
        self._killed = True
        run_id, hook = self._active_run_id, self._hook
        if run_id and hook is not None:
            try:
                terminate_run(hook.client, run_id, "KILLED", "task killed")
            except Exception:
                self.log.warning("Could not mark MLflow run %s KILLED", run_id, exc_info=True)
