"""MLflow stages as Airflow tasks: train, validate against thresholds and the champion, promote.

The public import path of the MLflow operators and their helpers; each lives in its own module:

* :mod:`~airflow_provider_hlml.operators.train`: :class:`MLflowTrainOperator`, :class:`TrainResult`
* :mod:`~airflow_provider_hlml.operators.validate`: :class:`MLflowValidateOperator`
* :mod:`~airflow_provider_hlml.operators.promote`: :class:`ModelPromoteOperator`
* :mod:`~airflow_provider_hlml.operators.mlflow_runs`: the shared MLflow run and logging helpers

What each operator returns (its XCom) is typed in :mod:`airflow_provider_hlml.contracts`.
"""

from __future__ import annotations

from airflow_provider_hlml.operators.mlflow_runs import (
    airflow_identity_tags,
    call_with_supported_kwargs,
    log_batch,
    log_model,
    own_sklearn_types,
    quiet_skops_module_scan,
)
from airflow_provider_hlml.operators.promote import ModelPromoteOperator
from airflow_provider_hlml.operators.train import MLflowTrainOperator, TrainResult
from airflow_provider_hlml.operators.validate import MLflowValidateOperator

__all__ = [
    "MLflowTrainOperator",
    "MLflowValidateOperator",
    "ModelPromoteOperator",
    "TrainResult",
    "airflow_identity_tags",
    "call_with_supported_kwargs",
    "log_batch",
    "log_model",
    "own_sklearn_types",
    "quiet_skops_module_scan",
]
