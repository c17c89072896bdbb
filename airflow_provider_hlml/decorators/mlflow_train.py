"""``@task.mlflow_train``: a TaskFlow function trained inside an MLflow run (MLflowTrainOperator)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.bases.decorator import DecoratedOperator, task_decorator_factory

from airflow_provider_hlml.operators.mlflow_runs import call_with_supported_kwargs
from airflow_provider_hlml.operators.train import MLflowTrainOperator

if TYPE_CHECKING:
    from airflow.sdk.bases.decorator import TaskDecorator

# Supplied by the operator at run time, so a call like ``train(n=3)`` need not pass them.
_RUNTIME_ARGS = ("run", "context")


class _MLflowTrainDecoratedOperator(DecoratedOperator, MLflowTrainOperator):
    """
    Run the decorated function like :class:`MLflowTrainOperator` runs ``python_callable``.

    The function may declare ``run`` (the active MLflow run), ``params`` (the training params)
    and ``context``; its other arguments come from the call in the DAG (XComArgs resolved).
    """

    custom_operator_name = "@task.mlflow_train"
    template_fields: Sequence[str] = (*MLflowTrainOperator.template_fields, "op_args")

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        op_args = list(op_args or [])
        op_kwargs = dict(op_kwargs or {})
        names = list(inspect.signature(python_callable).parameters)
        positional = set(names[: len(op_args)])
        self._runtime_placeholders = [
            n for n in _RUNTIME_ARGS if n in names and n not in op_kwargs and n not in positional
        ]
        for name in self._runtime_placeholders:
            op_kwargs[name] = None
        super().__init__(
            python_callable=python_callable,
            op_args=op_args,
            op_kwargs=op_kwargs,
            kwargs_to_upstream={"python_callable": python_callable, "op_kwargs": op_kwargs},
            **kwargs,
        )

    def _call_python_callable(self, offered: Mapping[str, Any]) -> Any:
        placeholders = set(getattr(self, "_runtime_placeholders", ()))
        required = {k: v for k, v in self.op_kwargs.items() if k not in placeholders}
        return call_with_supported_kwargs(self.python_callable, offered, required, args=list(self.op_args))


def mlflow_train_task(
    python_callable: Callable[..., Any] | None = None,
    multiple_outputs: bool | None = None,
    **kwargs: Any,
) -> TaskDecorator:
    """
    Wrap a function into an :class:`MLflowTrainOperator` (``@task.mlflow_train(...)``).

    Accepts the operator's arguments (``experiment_name``, ``run_name``, ``params``, ``tags``,
    ``autolog``, ``registered_model_name``, ``mlflow_conn_id``, ...). The XCom return value is
    the operator's :class:`~airflow_provider_hlml.contracts.TrainResult` (``mlflow_run_id``,
    ``experiment_id``, ``model_uri``, ``metrics``, ...).

    :param python_callable: the function to decorate.
    :param multiple_outputs: push each key of the result as its own XCom too.
    """
    return task_decorator_factory(
        python_callable=python_callable,
        multiple_outputs=bool(multiple_outputs),
        decorated_operator_class=_MLflowTrainDecoratedOperator,
        **kwargs,
    )
