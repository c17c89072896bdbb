"""The MLflow run and logging helpers the stage operators share (public; nothing heavy at import).

Every MLflow run the operators start carries the task instance's identity
(:func:`airflow_identity_tags`, tag names in :mod:`airflow_provider_hlml.audit`), and every run of
one DAG run shares the tag ``airflow.dag_run = "<dag_id>/<run_id>"``, so
``search_runs(filter_string="tags.`airflow.dag_run` = '...'")`` finds the whole pipeline run
across experiments. MLflow, scikit-learn and skops are imported only when a helper runs.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow_provider_hlml import audit
from airflow_provider_hlml.hooks.mlflow import quote_filter_value
from airflow_provider_hlml.links.mlflow import MLflowRunLink

if TYPE_CHECKING:
    from airflow.sdk import Context
    from mlflow.tracking import MlflowClient

    from airflow_provider_hlml.hooks.mlflow import MLflowHook

__all__ = [
    "MAX_PARAM_VALUE",
    "MAX_TAG_VALUE",
    "airflow_identity_tags",
    "call_with_supported_kwargs",
    "coerce_metrics",
    "error_text",
    "log_batch",
    "log_model",
    "own_sklearn_types",
    "push_run_link",
    "quiet_skops_module_scan",
    "quote_filter_value",
    "terminate_run",
    "utcnow_iso",
]

# MLflow REST limits per log_batch call.
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000


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
        audit.AIRFLOW_TRIGGERED_BY: str(getattr(context.get("dag_run"), "triggering_user_name", None) or ""),
    }


def utcnow_iso() -> str:
    """Now, in UTC, ISO 8601 to the second (the format of the time tags)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def call_with_supported_kwargs(
    fn: Callable[..., Any],
    offered: Mapping[str, Any],
    required: Mapping[str, Any] | None = None,
    args: Sequence[Any] = (),
) -> Any:
    """
    Call ``fn(*args, **required, **<the offered kwargs it names>)``.

    An offered name is passed when ``fn`` declares it (or takes ``**kwargs``, Airflow's
    ``determine_kwargs`` decides) and neither a positional argument nor ``required`` already
    supplies it; ``required`` is always passed.
    """
    from airflow.sdk.bases.decorator import determine_kwargs

    required = dict(required or {})
    taken = {
        name
        for name, param in itertools.islice(inspect.signature(fn).parameters.items(), len(args))
        if param.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }
    candidates = {k: v for k, v in offered.items() if k not in taken and k not in required}
    return fn(*args, **determine_kwargs(fn, args, candidates), **required)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def log_batch(
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
    param_list = [Param(str(k), str(v)[:MAX_PARAM_VALUE]) for k, v in (params or {}).items()]
    metric_list = [Metric(str(k), float(v), now, 0) for k, v in (metrics or {}).items()]
    tag_list = [RunTag(str(k), str(v)[:MAX_TAG_VALUE]) for k, v in (tags or {}).items()]
    for chunk in _chunks(param_list, MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=chunk)
    for chunk in _chunks(metric_list, MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=chunk)
    if tag_list:
        client.log_batch(run_id, tags=tag_list)


def coerce_metrics(raw: Mapping[str, Any]) -> dict[str, float]:
    """``raw`` as ``{name: float}``; a value that is not a number raises ``TypeError``."""
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


def error_text(exc: BaseException) -> str:
    """``Type: message`` with registered secrets masked, bounded for a tag value."""
    text = f"{type(exc).__name__}: {exc}"
    try:
        from airflow.sdk._shared.secrets_masker import redact

        text = str(redact(text))
    except Exception:  # pragma: no cover - masker unavailable
        pass
    return text[:MAX_TAG_VALUE]


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
                skops_trusted_types = own_sklearn_types(model)
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


def own_sklearn_types(model: Any) -> list[str] | None:
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


def push_run_link(context: Context, hook: MLflowHook, experiment_id: str, run_id: str) -> None:
    """Store the MLflow UI URL of the run for the task's "MLflow run" extra link."""
    MLflowRunLink.persist(context, hook.ui_url_for_run(experiment_id, run_id))


def terminate_run(client: MlflowClient, run_id: str, status: str, error: str) -> None:
    """End run ``run_id`` with ``status`` (``FAILED`` / ``KILLED``) and ``error`` in its error tag."""
    client.set_tag(run_id, audit.RUN_ERROR, error[:MAX_TAG_VALUE])
    client.set_terminated(run_id, status=status)
