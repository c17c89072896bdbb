"""MLflow stages as Airflow tasks: train, validate against thresholds and the champion, promote.

Every MLflow run these operators start carries the task instance's identity (tag names in
:mod:`airflow_provider_hlml.audit`), and every run of one DAG run shares the tag
``airflow.dag_run = "<dag_id>/<run_id>"``, so ``search_runs(filter_string="tags.`airflow.dag_run` =
'...'")`` finds the whole pipeline run across experiments.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from airflow.exceptions import AirflowProviderDeprecationWarning
from airflow.sdk import BaseOperator

from airflow_provider_hlml import audit
from airflow_provider_hlml.hooks.mlflow import MLflowHook
from airflow_provider_hlml.links.mlflow import MLflowRunLink
from airflow_provider_hlml.utils.thresholds import METRIC_ALIASES, THRESHOLD_KEYS, parse_thresholds

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import Context
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

# MLflow REST limits per log_batch call.
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAM_VALUE = 6000
_MAX_TAG_VALUE = 8000


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """
    What a training callable may return instead of a plain metrics dict.

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


def airflow_identity_tags(context: Context) -> dict[str, str]:
    """The MLflow tags naming the task instance of ``context`` (see :mod:`..audit`)."""
    ti = context["ti"]
    logical_date = context.get("logical_date")
    try:
        ti_url = str(ti.log_url)
    except Exception:
        ti_url = ""
    return {
        audit.AIRFLOW_DAG_ID: ti.dag_id,
        audit.AIRFLOW_RUN_ID: ti.run_id,
        audit.AIRFLOW_TASK_ID: ti.task_id,
        audit.AIRFLOW_MAP_INDEX: str(getattr(ti, "map_index", -1)),
        audit.AIRFLOW_TRY_NUMBER: str(ti.try_number),
        audit.AIRFLOW_LOGICAL_DATE: logical_date.isoformat() if logical_date else "",
        audit.AIRFLOW_TI_URL: ti_url,
        audit.AIRFLOW_DAG_RUN: audit.dag_run_group(ti.dag_id, ti.run_id),
    }


def _quote(value: str) -> str:
    """A string literal for an MLflow search filter."""
    return f'"{value}"' if "'" in value else f"'{value}'"


def _utcnow_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _invoke(
    fn: Callable[..., Any],
    offered: Mapping[str, Any],
    required: Mapping[str, Any],
    args: Sequence[Any] = (),
) -> Any:
    """
    Call ``fn(*args, **required, **<the offered kwargs it names>)``.

    An offered name is passed when ``fn`` declares it (or takes ``**kwargs``) and neither a
    positional argument nor ``required`` already supplies it.
    """
    params = inspect.signature(fn).parameters
    takes_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    positional = [
        name
        for name, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ][: len(args)]
    kwargs = {
        k: v
        for k, v in offered.items()
        if (takes_var_kw or k in params) and k not in positional and k not in required
    }
    kwargs.update(required)
    return fn(*args, **kwargs)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _log_batch(
    client: MlflowClient,
    run_id: str,
    *,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, Any] | None = None,
) -> None:
    """Log params / metrics / tags with as few ``log_batch`` calls as MLflow's limits allow."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    param_list = [Param(str(k), str(v)[:_MAX_PARAM_VALUE]) for k, v in (params or {}).items()]
    metric_list = [Metric(str(k), float(v), now, 0) for k, v in (metrics or {}).items()]
    tag_list = [RunTag(str(k), str(v)[:_MAX_TAG_VALUE]) for k, v in (tags or {}).items()]
    for chunk in _chunks(param_list, _MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=chunk)
    for chunk in _chunks(metric_list, _MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=chunk)
    if tag_list:
        client.log_batch(run_id, tags=tag_list)


def _coerce_metrics(raw: Mapping[str, Any]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            try:
                import numpy as np

                if isinstance(value, np.generic) and np.issubdtype(type(value), np.number):
                    metrics[str(key)] = float(value)
                    continue
            except ImportError:  # pragma: no cover
                pass
            raise TypeError(
                f"metric {key!r} returned by python_callable is {type(value).__name__}, not a number"
            )
        metrics[str(key)] = float(value)
    return metrics


def _error_text(exc: BaseException) -> str:
    """``Type: message`` with registered secrets masked, bounded for a tag value."""
    text = f"{type(exc).__name__}: {exc}"
    try:
        from airflow.sdk._shared.secrets_masker import redact

        text = str(redact(text))
    except Exception:  # pragma: no cover - masker unavailable
        pass
    return text[:_MAX_TAG_VALUE]


def _is_sklearn_model(model: Any) -> bool:
    module = type(model).__module__ or ""
    if not module.startswith("sklearn"):
        try:
            from sklearn.base import BaseEstimator
        except ImportError:
            return False
        return isinstance(model, BaseEstimator)
    return True


@contextlib.contextmanager
def quiet_skops_module_scan() -> Iterator[None]:
    """
    Silence the deprecation warnings skops provokes while saving or loading a model, only those.

    For objects without ``__module__`` (scipy ufuncs: on its first import skops names every
    public one; later, those inside an estimator) skops' ``whichmodule`` calls ``getattr`` on
    every module in ``sys.modules``; Airflow's deprecated-alias modules answer each lookup with a
    ``DeprecatedImportWarning`` (about 1,160 log lines per task). The filter is limited to that
    category raised from skops' lookup, for the duration of the save or load.
    """
    try:
        from airflow.utils.deprecation_tools import DeprecatedImportWarning
    except ImportError:  # pragma: no cover - worker without airflow-core
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecatedImportWarning, module=r"skops\.io\._utils")
        yield


def log_model(
    model: Any,
    name: str = "model",
    *,
    input_example: Any = None,
    signature: Any = None,
    skops_trusted_types: list[str] | None = None,
    infer_requirements: bool = False,
) -> str:
    """
    Log ``model`` to the active MLflow run with the best flavor, a signature and an input example.

    scikit-learn estimators use the ``sklearn`` flavor; ``mlflow.pyfunc.PythonModel`` instances
    and any other object with ``predict`` use ``pyfunc``. The signature is inferred from
    ``input_example`` and the model's predictions on it unless given.

    MLflow saves scikit-learn models with skops, which refuses to load types it does not trust.
    Types defined by scikit-learn itself (e.g. ``sklearn.tree._tree.Tree`` inside tree ensembles)
    are trusted for the model just trained; any other type must be named in
    ``skops_trusted_types``.

    The model's pip requirements are the flavor's defaults (scikit-learn, skops, ...) unless
    ``infer_requirements`` is set: MLflow's inference reloads the model in a subprocess and
    dominates the cost of logging small models on a busy worker.

    :return: the logged model's URI.
    """
    import mlflow
    import mlflow.pyfunc

    if signature is None and input_example is not None and hasattr(model, "predict"):
        from mlflow.models import infer_signature

        with contextlib.suppress(Exception):
            signature = infer_signature(input_example, model.predict(input_example))
    if _is_sklearn_model(model):
        import mlflow.sklearn

        requirements = (
            None if infer_requirements else mlflow.sklearn.get_default_pip_requirements(include_skops=True)
        )
        with quiet_skops_module_scan():
            if skops_trusted_types is None:
                skops_trusted_types = _own_sklearn_types(model)
            info = mlflow.sklearn.log_model(
                sk_model=model,
                name=name,
                signature=signature,
                input_example=input_example,
                skops_trusted_types=skops_trusted_types,
                pip_requirements=requirements,
            )
    else:
        if isinstance(model, mlflow.pyfunc.PythonModel):
            python_model = model
        elif hasattr(model, "predict"):
            python_model = _predict_model_class()(model)
        else:
            raise TypeError(
                f"cannot log a {type(model).__name__}: it is neither a scikit-learn estimator, "
                "an mlflow.pyfunc.PythonModel nor an object with predict()"
            )
        info = mlflow.pyfunc.log_model(
            name=name, python_model=python_model, signature=signature, input_example=input_example
        )
    return str(info.model_uri)


def _own_sklearn_types(model: Any) -> list[str] | None:
    """The scikit-learn-defined types skops does not trust by default that ``model`` contains."""
    try:
        import skops.io
    except ImportError:
        return None
    try:
        own = _sklearn_names_in(model, _skops_trusted_sklearn_types())
    except Exception:
        # Unusual objects in the graph: ask skops itself (serialising the model costs about as
        # much as MLflow's own save of it).
        try:
            untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
        except Exception:
            return None
        own = [name for name in untrusted if name.startswith("sklearn.")]
    return own or None


@functools.cache
def _skops_trusted_sklearn_types() -> frozenset[str]:
    """The scikit-learn instance types skops trusts by default (estimators, losses, links)."""
    from skops.io._sklearn import ALLOWED_LOSSES
    from skops.io._trusted_types import SKLEARN_ESTIMATOR_TYPE_NAMES, SKLEARN_INTERNAL_TYPE_NAMES

    losses = {f"{cls.__module__}.{cls.__name__}" for cls in ALLOWED_LOSSES}
    return frozenset(SKLEARN_ESTIMATOR_TYPE_NAMES) | frozenset(SKLEARN_INTERNAL_TYPE_NAMES) | losses


def _sklearn_names_in(root: Any, trusted_instances: frozenset[str]) -> list[str]:
    """
    What skops would report untrusted in ``root``, found by walking it instead of serialising it.

    Follows what pickling follows (``__reduce_ex__``: constructor arguments, state, items) without
    copying array data, and names the scikit-learn types skops refuses by default: instances of
    types outside ``trusted_instances``, and every class or function stored as a value.
    """
    import copyreg

    import numpy as np

    scalars = (str, bytes, bytearray, int, float, complex, bool, type(None), np.generic)
    found: set[str] = set()
    seen: set[int] = set()
    keep: list[Any] = []  # temporaries (reduce results) stay alive so their ids stay unique
    stack: list[Any] = [root]
    while stack:
        obj = stack.pop()
        if isinstance(obj, scalars) or id(obj) in seen:
            continue
        seen.add(id(obj))
        keep.append(obj)
        if isinstance(obj, type) or hasattr(obj, "__qualname__"):  # a class or function as a value
            module = getattr(obj, "__module__", None) or ""
            if module.startswith("sklearn."):
                found.add(f"{module}.{obj.__name__}")
            continue
        cls = type(obj)
        if cls.__module__.startswith("sklearn."):
            name = f"{cls.__module__}.{cls.__name__}"
            if name not in trusted_instances:
                found.add(name)
        if isinstance(obj, np.ndarray):
            if obj.dtype == object:
                stack.extend(obj.ravel().tolist())
            continue
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        if cls in (dict, list, tuple, set, frozenset) or cls.__module__.split(".")[0] in ("numpy", "scipy"):
            continue
        reduced = obj.__reduce_ex__(4)
        if isinstance(reduced, str):  # pickled by name, like a function
            continue
        constructor, args, *rest = reduced
        if constructor is copyreg.__newobj__ or constructor is copyreg.__newobj_ex__:  # type: ignore[attr-defined]
            args = args[1:]  # the instance's own class, already named above
        stack.append(args)
        for extra in rest[:3]:
            if extra is not None and not isinstance(extra, dict | list | tuple):
                extra = list(extra)  # listitems / dictitems iterators
            stack.append(extra)
    return sorted(found)


@functools.cache
def _predict_model_class() -> type:
    """A ``mlflow.pyfunc.PythonModel`` calling the ``predict`` of the object it wraps."""
    import mlflow.pyfunc

    base: Any = mlflow.pyfunc.PythonModel
    with warnings.catch_warnings():
        # MLflow reads an input schema from predict()'s type hints and warns when there are none.
        # The wrapped object's input type is unknown here: the signature comes from the example.
        warnings.filterwarnings("ignore", message=".*type hints to the `predict` method")

        class PredictModel(base):
            def __init__(self, wrapped: Any) -> None:
                self.wrapped = wrapped

            def predict(self, context, model_input, params=None):
                return self.wrapped.predict(model_input)

    return PredictModel


def _holder_of_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def _push_run_link(context: Context, hook: MLflowHook, experiment_id: str, run_id: str) -> None:
    MLflowRunLink.persist(context, hook.ui_url_for_run(experiment_id, run_id))


# --------------------------------------------------------------------------------------------
# Train
# --------------------------------------------------------------------------------------------
class MLflowTrainOperator(BaseOperator):
    """
    Run a training callable inside an MLflow run tied to this task instance.

    The callable is called as ``python_callable(run=..., params=..., context=..., **op_kwargs)``
    (it may name only the arguments it needs) and returns a metrics dict or a
    :class:`TrainResult`. Metrics and params are logged in batches; a returned model is logged
    with :func:`log_model`. On an exception the run ends ``FAILED`` (``KILLED`` when the task is
    killed) with the error in tag ``hlml.error``; a retry's run is tagged
    ``hlml.retry_of_run_id`` with the failed attempt's run.

    XCom return value: ``{"run_id", "experiment_id", "model_uri", "metrics", "model_name",
    "model_version"}``.

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
    :param mlflow_conn_id: MLflow connection.
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
        mlflow_conn_id: str = MLflowHook.default_conn_name,
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
        self.mlflow_conn_id = mlflow_conn_id
        self._hook: MLflowHook | None = None
        self._active_run_id: str | None = None
        self._killed = False

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
        return _invoke(self.python_callable, offered, self.op_kwargs)

    # -- retries ------------------------------------------------------------------------------
    def _previous_attempt(self, client: MlflowClient, experiment_id: str, context: Context) -> str | None:
        """The run of the latest earlier attempt of this task instance; a RUNNING one is closed."""
        ti = context["ti"]
        if ti.try_number <= 1:
            return None
        filter_string = " and ".join(
            f"tags.`{key}` = {_quote(str(value))}"
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
            client.set_tag(previous.info.run_id, audit.RUN_ERROR, "attempt ended without closing its run")
            client.set_terminated(previous.info.run_id, status="KILLED")
        return str(previous.info.run_id)

    # -- execute ------------------------------------------------------------------------------
    def execute(self, context: Context) -> dict[str, Any]:
        import mlflow

        hook = self._hook = MLflowHook(self.mlflow_conn_id)
        client = hook.client
        ti = context["ti"]
        with hook.fluent():
            experiment_id = hook.get_or_create_experiment(
                self.experiment_name, self.experiment_description, {"hlml.created_by_dag": ti.dag_id}
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
                _push_run_link(context, hook, experiment_id, run_id)
                self.log.info(
                    "MLflow run %s in experiment %r (%s)", run_id, self.experiment_name, hook.describe()
                )
                result = self._train(client, active, context)
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
            "run_id": run_id,
            "experiment_id": experiment_id,
            "model_uri": model_uri,
            "metrics": result["metrics"],
            "model_name": self.registered_model_name if model_version else None,
            "model_version": model_version,
        }

    def _train(self, client: MlflowClient, active: Any, context: Context) -> dict[str, Any]:
        import mlflow

        run_id = active.info.run_id
        params = self._training_params(context)
        if self.autolog:
            # Autologging writes the estimator's params in one batch, which MLflow rejects whole
            # if a name is already logged with another value (``1`` vs ``1.0``): ours come after.
            mlflow.autolog(silent=True)
        else:
            _log_batch(client, run_id, params=params)
        try:
            raw = self._call_python_callable({"run": active, "params": params, "context": context})
        finally:
            if self.autolog:
                mlflow.autolog(disable=True, silent=True)
        result = self._normalise(raw)
        extra_params = result.params
        if self.autolog:
            extra_params = self._params_not_autologged(client, run_id, {**params, **(result.params or {})})
        _log_batch(client, run_id, metrics=result.metrics, params=extra_params)
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
            self._tag_version(client, version.name, model_version, context)
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
            elif logged[str(key)] != str(value)[:_MAX_PARAM_VALUE]:
                self.log.warning(
                    "Param %r=%r not logged: autologging recorded the value the model used, %r",
                    key,
                    value,
                    logged[str(key)],
                )
        return left

    @staticmethod
    def _tag_version(client: MlflowClient, name: str, version: str, context: Context) -> None:
        ti = context["ti"]
        for key, value in (
            (audit.AIRFLOW_DAG_ID, ti.dag_id),
            (audit.AIRFLOW_RUN_ID, ti.run_id),
            (audit.AIRFLOW_TASK_ID, ti.task_id),
        ):
            client.set_model_version_tag(name, version, key, value)

    def _normalise(self, raw: Any) -> TrainResult:
        if raw is None:
            return TrainResult()
        if isinstance(raw, TrainResult):
            raw.metrics = _coerce_metrics(raw.metrics or {})
            return raw
        if isinstance(raw, Mapping):
            return TrainResult(metrics=_coerce_metrics(raw))
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
            client.set_tag(run_id, audit.RUN_ERROR, _error_text(exc))
            client.set_terminated(run_id, status=status)
        except Exception:
            self.log.warning("Could not mark MLflow run %s %s", run_id, status, exc_info=True)

    def on_kill(self) -> None:
        self._killed = True
        run_id, hook = self._active_run_id, self._hook
        if run_id and hook is not None:
            try:
                hook.client.set_tag(run_id, audit.RUN_ERROR, "task killed")
                hook.client.set_terminated(run_id, status="KILLED")
            except Exception:
                self.log.warning("Could not mark MLflow run %s KILLED", run_id, exc_info=True)


# --------------------------------------------------------------------------------------------
# Validate
# --------------------------------------------------------------------------------------------
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

    The report (also the XCom return value and the natural ``context`` of an approval gate)::

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
    :param mlflow_conn_id: MLflow connection.
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
        mlflow_conn_id: str = MLflowHook.default_conn_name,
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
        self.mlflow_conn_id = mlflow_conn_id

    def _load_data(self, context: Context) -> pd.DataFrame:
        import pandas as pd

        if self.data_callable is not None:
            frame = _invoke(self.data_callable, {"context": context}, {})
        elif isinstance(self.data, pd.DataFrame):
            frame = self.data
        elif self.data is None:
            raise ValueError(f"task {self.task_id!r}: data is required (a callable or a CSV/Parquet path)")
        else:
            path = Path(os.fspath(self.data))
            if not path.is_file():
                raise FileNotFoundError(f"data file {str(path)!r} of task {self.task_id!r} does not exist")
            suffix = path.suffix.lower()
            if suffix == ".csv":
                frame = pd.read_csv(path)
            elif suffix in (".parquet", ".pq"):
                frame = pd.read_parquet(path)
            else:
                raise ValueError(f"data file {str(path)!r}: use a .csv or .parquet file")
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(
                f"data of task {self.task_id!r} must give a pandas DataFrame, got {type(frame).__name__}"
            )
        if self.target not in frame.columns:
            raise ValueError(
                f"target column {self.target!r} is not in the validation data (columns: {list(frame.columns)})"
            )
        return frame

    def _resolve_candidate(self, client: MlflowClient) -> tuple[str | None, str | None, str | None]:
        """(model_name, model_version, source run id) of ``model_uri``."""
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
            found = client.search_model_versions(
                f"name = {_quote(model_name)} and run_id = {_quote(run_id)}", order_by=["version_number DESC"]
            )
            if found:
                model_version = str(found[0].version)
        return model_name, model_version, run_id

    def execute(self, context: Context) -> dict[str, Any]:
        import mlflow
        from mlflow.models import MetricThreshold

        frame = self._load_data(context)
        hook = MLflowHook(self.mlflow_conn_id)
        client = hook.client
        with hook.fluent():
            model_name, model_version, source_run_id = self._resolve_candidate(client)
            champion = _holder_of_alias(client, model_name, self.baseline_alias) if model_name else None
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
            tags["hlml.candidate_model_uri"] = self.model_uri
            run = client.create_run(experiment_id, run_name=f"{context['ti'].task_id}-validate", tags=tags)
            run_id = run.info.run_id
            _push_run_link(context, hook, experiment_id, run_id)
            try:
                with mlflow.start_run(run_id=run_id):
                    candidate = self._evaluate(self.model_uri, frame)
                    baseline = None
                    if champion is not None:
                        with mlflow.start_run(run_name=f"@{self.baseline_alias}", nested=True):
                            baseline = self._evaluate(f"models:/{model_name}/{champion.version}", frame)
                    metrics = self._check(candidate, baseline, MetricThreshold, baseline_reason)
                    passed = all(m["passed"] for m in metrics.values())
                    report = {
                        "passed": passed,
                        "metrics": metrics,
                        "model_name": model_name,
                        "model_version": model_version,
                        "mlflow_run_id": source_run_id,
                        "model_uri": self.model_uri,
                        "champion_version": str(champion.version) if champion is not None else None,
                        "validation_run_id": run_id,
                    }
                    if baseline is not None:
                        _log_batch(
                            client,
                            run_id,
                            metrics={
                                f"{self.baseline_alias}_{k}": v
                                for k, v in baseline.metrics.items()
                                if isinstance(v, int | float)
                            },
                        )
                    mlflow.log_dict(report, "validation_report.json")
                    mlflow.set_tag("hlml.validation_passed", str(passed).lower())
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    client.set_tag(run_id, audit.RUN_ERROR, _error_text(exc))
                    client.set_terminated(run_id, status="FAILED")
                raise
        return self._finish(context, report)

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
    ) -> dict[str, dict[str, Any]]:
        import mlflow
        from mlflow.models.evaluation.validation import ModelValidationFailedException

        report: dict[str, dict[str, Any]] = {}
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

    def _finish(self, context: Context, report: dict[str, Any]) -> dict[str, Any]:
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


# --------------------------------------------------------------------------------------------
# Promote
# --------------------------------------------------------------------------------------------
_PROCESS_PROMOTION_LOCK = threading.Lock()


@contextlib.contextmanager
def _promotion_lock(registry_uri: str, model_name: str) -> Iterator[None]:
    """
    Serialise promotions of one model on this host: a thread lock plus an ``fcntl`` file lock.

    MLflow has no compare-and-set on aliases; across hosts, run promotions of one model in an
    Airflow pool with one slot. The post-check in the operator reports a lost race either way.
    """
    digest = hashlib.sha256(f"{registry_uri}\0{model_name}".encode()).hexdigest()[:24]
    path = Path(tempfile.gettempdir()) / f"hlml-promote-{digest}.lock"
    with _PROCESS_PROMOTION_LOCK, open(path, "a+") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX
            yield
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _responder(value: Any) -> str:
    if isinstance(value, Mapping):
        for key in ("email", "name", "id", "principal"):
            if value.get(key):
                return str(value[key])
        return ""
    return "" if value is None else str(value)


class ModelPromoteOperator(BaseOperator):
    """
    Move a registered model version to an alias (or, legacy, a stage) after the approval that
    names exactly that version.

    With ``approval_task_id`` the operator reads that gate's XCom result and refuses unless it is
    approved and its ``context`` names this ``model_name``, ``model_version`` and
    ``mlflow_run_id``. The promoted version gets the audit tags of :mod:`..audit`
    (``hlml.approved_by``, ``hlml.approved_at``, ``hlml.approval_comment``,
    ``hlml.approval_call_id``, ``hlml.promoted_by_dag_id`` / ``_run_id``, and
    ``hlml.previous_version.<alias>`` naming the version that held the alias before), so
    ``mode="rollback"`` restores it in one step.

    :param model_name: registered model name (templated).
    :param version: version to promote (templated). When omitted the version is the one the
        approval names, an existing version from ``run_id``, or a new registration of
        ``model_uri`` / ``runs:/<run_id>/model``.
    :param run_id: training run of the model (templated).
    :param model_uri: model URI to register when no version exists yet (templated).
    :param alias: alias to set (default ``champion``).
    :param stage: legacy registry stage (``Staging`` / ``Production``); deprecated by MLflow,
        used instead of the alias when given.
    :param archive_existing_versions: with ``stage``, archive the versions that held it.
    :param approval_task_id: task id of the HumanApprovalSensor whose decision binds this step.
    :param mode: ``promote`` or ``rollback`` (restore the version recorded as previous holder).
    :param mlflow_conn_id: MLflow connection.
    """

    template_fields: Sequence[str] = ("model_name", "version", "run_id", "model_uri", "alias", "stage")
    operator_extra_links = (MLflowRunLink(),)
    ui_color = "#f7e6d5"

    def __init__(
        self,
        *,
        model_name: str,
        version: str | int | None = None,
        run_id: str | None = None,
        model_uri: str | None = None,
        alias: str = "champion",
        stage: str | None = None,
        archive_existing_versions: bool = True,
        approval_task_id: str | None = None,
        mode: Literal["promote", "rollback"] = "promote",
        mlflow_conn_id: str = MLflowHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if mode not in ("promote", "rollback"):
            raise ValueError(f"mode must be 'promote' or 'rollback', got {mode!r}")
        if stage is not None and str(stage).lower() not in ("staging", "production"):
            raise ValueError(f"stage must be 'Staging' or 'Production', got {stage!r}")
        if not alias and stage is None:
            raise ValueError("alias must be a non-empty string (or give a legacy stage)")
        self.model_name = model_name
        self.version = version
        self.run_id = run_id
        self.model_uri = model_uri
        self.alias = alias
        self.stage = stage
        self.archive_existing_versions = archive_existing_versions
        self.approval_task_id = approval_task_id
        self.mode = mode
        self.mlflow_conn_id = mlflow_conn_id

    # -- approval binding -----------------------------------------------------------------------
    def _approval(self, context: Context) -> dict[str, Any] | None:
        from airflow.sdk.exceptions import AirflowFailException

        if not self.approval_task_id:
            return None
        decision = context["ti"].xcom_pull(task_ids=self.approval_task_id)
        if not isinstance(decision, Mapping):
            raise AirflowFailException(
                f"no approval result from task {self.approval_task_id!r} in this DAG run: "
                "refusing to change the registry without it"
            )
        if decision.get("approved") is not True:
            raise AirflowFailException(
                f"approval {decision.get('call_id')!r} from task {self.approval_task_id!r} was not granted"
            )
        return dict(decision)

    def _check_binding(self, decision: Mapping[str, Any] | None, mv: ModelVersion) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        if decision is None:
            return
        approved = decision.get("context") or {}
        expected = {
            "model_name": self.model_name,
            "model_version": str(mv.version),
            "mlflow_run_id": mv.run_id,
        }
        problems = []
        for key, want in expected.items():
            got = approved.get(key) if isinstance(approved, Mapping) else None
            if got is None or str(got) != str(want):
                problems.append(f"{key}: approved {got!r}, promoting {want!r}")
        if problems:
            raise AirflowFailException(
                f"approval {decision.get('call_id')!r} (task {self.approval_task_id!r}) does not name the "
                f"model being changed; refusing: {'; '.join(problems)}"
            )

    # -- version resolution ---------------------------------------------------------------------
    def _resolve_version(self, client: MlflowClient, decision: Mapping[str, Any] | None) -> ModelVersion:
        import mlflow
        from mlflow.exceptions import MlflowException

        version = self.version
        if version in ("", None) and decision is not None:
            version = (decision.get("context") or {}).get("model_version")
            if version is not None and self.run_id:
                mv = client.get_model_version(self.model_name, str(version))
                if mv.run_id != self.run_id:
                    version = None  # the binding check will name the mismatch
        if version in ("", None) and self.run_id:
            found = client.search_model_versions(
                f"name = {_quote(self.model_name)} and run_id = {_quote(self.run_id)}",
                order_by=["version_number DESC"],
            )
            if found:
                version = found[0].version
        if version not in ("", None):
            try:
                return client.get_model_version(self.model_name, str(version))
            except MlflowException as exc:
                raise ValueError(
                    f"model version {self.model_name!r} v{version} does not exist in the registry"
                ) from exc
        source = self.model_uri or (f"runs:/{self.run_id}/model" if self.run_id else None)
        if not source:
            raise ValueError(
                f"task {self.task_id!r}: give version, run_id or model_uri of the model to promote"
            )
        registered = mlflow.register_model(source, self.model_name)
        return client.get_model_version(self.model_name, str(registered.version))

    # -- execute ------------------------------------------------------------------------------
    def execute(self, context: Context) -> dict[str, Any]:
        hook = MLflowHook(self.mlflow_conn_id)
        client = hook.client
        decision = self._approval(context)
        with hook.fluent():
            if self.mode == "rollback":
                result = self._rollback(client, hook, context, decision)
            else:
                mv = self._resolve_version(client, decision)
                self._check_binding(decision, mv)
                result = self._promote(client, hook, context, decision, mv)
        if result.get("run_id"):
            with contextlib.suppress(Exception):
                run = client.get_run(result["run_id"])
                _push_run_link(context, hook, run.info.experiment_id, result["run_id"])
        return result

    def _audit_tags(self, context: Context, decision: Mapping[str, Any] | None) -> dict[str, str]:
        ti = context["ti"]
        tags = {
            audit.PROMOTED_AT: _utcnow_iso(),
            audit.PROMOTED_BY_DAG_ID: ti.dag_id,
            audit.PROMOTED_BY_RUN_ID: ti.run_id,
            audit.PROMOTED_BY_TASK_ID: ti.task_id,
        }
        if decision is not None:
            tags[audit.APPROVED_BY] = _responder(decision.get("responded_by_user"))
            tags[audit.APPROVED_AT] = str(decision.get("responded_at") or "")
            tags[audit.APPROVAL_COMMENT] = str(decision.get("comment") or "")[:_MAX_TAG_VALUE]
            tags[audit.APPROVAL_CALL_ID] = str(decision.get("call_id") or "")
            if decision.get("approval_url"):
                tags[audit.APPROVAL_URL] = str(decision["approval_url"])
        return tags

    def _promote(
        self,
        client: MlflowClient,
        hook: MLflowHook,
        context: Context,
        decision: Mapping[str, Any] | None,
        mv: ModelVersion,
    ) -> dict[str, Any]:
        name, version = self.model_name, str(mv.version)
        tags = self._audit_tags(context, decision)
        with _promotion_lock(hook.registry_uri, name):
            if self.stage is not None:
                previous = self._promote_stage(client, name, version, tags)
            else:
                holder = _holder_of_alias(client, name, self.alias)
                if holder is not None and str(holder.version) == version:
                    # Already promoted (e.g. a retry after the alias was set): keep the recorded
                    # previous holder instead of recording the version as its own predecessor.
                    previous = mv.tags.get(audit.previous_holder_tag(self.alias), audit.NO_PREVIOUS_VERSION)
                else:
                    previous = str(holder.version) if holder is not None else audit.NO_PREVIOUS_VERSION
                tags[audit.previous_holder_tag(self.alias)] = previous
                tags[audit.PROMOTED_ALIAS] = self.alias
                for key, value in tags.items():
                    client.set_model_version_tag(name, version, key, value)
                client.set_registered_model_alias(name, self.alias, version)
        target = self.alias if self.stage is None else f"stage {self.stage}"
        if self.stage is None:
            holder = _holder_of_alias(client, name, self.alias)
            if holder is None or str(holder.version) != version:
                self.log.warning(
                    "Another promotion moved @%s to v%s right after this one",
                    self.alias,
                    getattr(holder, "version", None),
                )
        self.log.info("Promoted %s v%s to %s (previous: %s)", name, version, target, previous or "none")
        return {
            "mode": "promote",
            "model_name": name,
            "model_version": version,
            "alias": self.alias if self.stage is None else None,
            "stage": self.stage,
            "previous_version": previous or None,
            "run_id": mv.run_id,
            "model_uri": f"models:/{name}/{version}",
            "approved_by": tags.get(audit.APPROVED_BY),
            "approval_call_id": tags.get(audit.APPROVAL_CALL_ID),
            "model_version_url": hook.ui_url_for_model_version(name, version),
        }

    def _promote_stage(self, client: MlflowClient, name: str, version: str, tags: dict[str, str]) -> str:
        stage = str(self.stage).capitalize()
        warnings.warn(
            "MLflow registry stages are deprecated since MLflow 2.9; use ModelPromoteOperator(alias=...) "
            "instead of stage=...",
            AirflowProviderDeprecationWarning,
            stacklevel=2,
        )
        self.log.warning("Using deprecated MLflow registry stage %r for %s v%s", stage, name, version)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            holders = [str(v.version) for v in client.get_latest_versions(name, stages=[stage])]
            previous = ",".join(v for v in holders if v != version)
            tags[audit.previous_stage_holder_tag(stage)] = previous
            tags[audit.PROMOTED_STAGE] = stage
            for key, value in tags.items():
                client.set_model_version_tag(name, version, key, value)
            client.transition_model_version_stage(
                name, version, stage, archive_existing_versions=self.archive_existing_versions
            )
        return previous

    # -- rollback -----------------------------------------------------------------------------
    def _rollback(
        self, client: MlflowClient, hook: MLflowHook, context: Context, decision: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        name = self.model_name
        with _promotion_lock(hook.registry_uri, name):
            if self.stage is not None:
                current, previous = self._rollback_stage(client, name)
            else:
                holder = _holder_of_alias(client, name, self.alias)
                if holder is None:
                    raise AirflowFailException(f"@{self.alias} of {name!r} is not set: nothing to roll back")
                current = str(holder.version)
                tag = audit.previous_holder_tag(self.alias)
                if tag not in (holder.tags or {}):
                    raise AirflowFailException(
                        f"{name!r} v{current} holds @{self.alias} but has no {tag!r} tag (not promoted by "
                        "ModelPromoteOperator): cannot tell which version to restore"
                    )
                previous = holder.tags[tag]
                self._check_rollback_target(current, decision)
                if previous:
                    client.set_registered_model_alias(name, self.alias, previous)
                else:
                    client.delete_registered_model_alias(name, self.alias)
            client.set_model_version_tag(name, current, audit.ROLLED_BACK_AT, _utcnow_iso())
            client.set_model_version_tag(name, current, audit.ROLLED_BACK_TO, previous or "none")
            ti = context["ti"]
            client.set_model_version_tag(name, current, audit.PROMOTED_BY_RUN_ID + ".rollback", ti.run_id)
        self.log.info("Rolled back %s from v%s to %s", name, current, previous or "no holder")
        run_id = client.get_model_version(name, previous).run_id if previous and "," not in previous else None
        return {
            "mode": "rollback",
            "model_name": name,
            "model_version": previous or None,
            "rolled_back_version": current,
            "alias": self.alias if self.stage is None else None,
            "stage": self.stage,
            "run_id": run_id,
            "model_uri": f"models:/{name}/{previous}" if previous and "," not in previous else None,
        }

    def _check_rollback_target(self, current: str, decision: Mapping[str, Any] | None) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        if self.version not in (None, "") and str(self.version) != current:
            raise AirflowFailException(
                f"rollback asked for v{self.version} but v{current} holds the alias/stage now: refusing"
            )
        if decision is not None:
            approved = decision.get("context") or {}
            if approved.get("model_name") != self.model_name or (
                approved.get("model_version") is not None and str(approved["model_version"]) != current
            ):
                raise AirflowFailException(
                    f"approval {decision.get('call_id')!r} does not name {self.model_name!r} v{current}: "
                    "refusing to roll back"
                )

    def _rollback_stage(self, client: MlflowClient, name: str) -> tuple[str, str]:
        from airflow.sdk.exceptions import AirflowFailException

        stage = str(self.stage).capitalize()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            holders = client.get_latest_versions(name, stages=[stage])
            if not holders:
                raise AirflowFailException(
                    f"no version of {name!r} is in stage {stage}: nothing to roll back"
                )
            current_mv = holders[0]
            current = str(current_mv.version)
            tag = audit.previous_stage_holder_tag(stage)
            if tag not in (current_mv.tags or {}):
                raise AirflowFailException(
                    f"{name!r} v{current} in {stage} has no {tag!r} tag: cannot tell which version to restore"
                )
            previous = current_mv.tags[tag]
            self._check_rollback_target(current, None)
            for old in filter(None, previous.split(",")):
                client.transition_model_version_stage(name, old, stage, archive_existing_versions=False)
            client.transition_model_version_stage(name, current, "Archived")
        return current, previous
