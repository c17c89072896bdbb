"""Human-gated machine-learning pipelines for Apache Airflow.

The public names below resolve lazily, so ``import airflow_provider_hlml`` costs nothing at
DAG-parse time: each one is imported from its module on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "ConsecutiveFailuresAlert": "airflow_provider_hlml.notifications.alerts",
    "DriftMonitorOperator": "airflow_provider_hlml.operators.drift",
    "DriftPolicy": "airflow_provider_hlml.policy.drift",
    "DriftResponseSensor": "airflow_provider_hlml.sensors.drift",
    "HumanLayerHook": "airflow_provider_hlml.hooks.humanlayer",
    "MLflowHook": "airflow_provider_hlml.hooks.mlflow",
    "MLflowTrainOperator": "airflow_provider_hlml.operators.train",
    "MLflowValidateOperator": "airflow_provider_hlml.operators.validate",
    "ModelPromoteOperator": "airflow_provider_hlml.operators.promote",
    "HumanApprovalSensor": "airflow_provider_hlml.sensors.approval",
    "HumanApprovalTrigger": "airflow_provider_hlml.triggers.approval",
    "code_execution_approval": "airflow_provider_hlml.sensors.factories",
    "drift_response_tasks": "airflow_provider_hlml.workflows.drift",
    "content_approval": "airflow_provider_hlml.sensors.factories",
    "workflow_approval": "airflow_provider_hlml.sensors.factories",
    "WorkflowSpec": "airflow_provider_hlml.workflows.spec",
    "build_ml_workflow_dag": "airflow_provider_hlml.workflows.builder",
    "load_workflows": "airflow_provider_hlml.workflows.builder",
}

__all__ = [
    "ConsecutiveFailuresAlert",
    "DriftMonitorOperator",
    "DriftPolicy",
    "DriftResponseSensor",
    "HumanApprovalSensor",
    "HumanApprovalTrigger",
    "HumanLayerHook",
    "MLflowHook",
    "MLflowTrainOperator",
    "MLflowValidateOperator",
    "ModelPromoteOperator",
    "WorkflowSpec",
    "__version__",
    "build_ml_workflow_dag",
    "code_execution_approval",
    "content_approval",
    "drift_response_tasks",
    "load_workflows",
    "workflow_approval",
]

if TYPE_CHECKING:
    from airflow_provider_hlml.hooks.humanlayer import HumanLayerHook
    from airflow_provider_hlml.hooks.mlflow import MLflowHook
    from airflow_provider_hlml.operators.drift import DriftMonitorOperator
    from airflow_provider_hlml.operators.promote import ModelPromoteOperator
    from airflow_provider_hlml.operators.train import MLflowTrainOperator
    from airflow_provider_hlml.operators.validate import MLflowValidateOperator
    from airflow_provider_hlml.policy.drift import DriftPolicy
    from airflow_provider_hlml.sensors.approval import HumanApprovalSensor
    from airflow_provider_hlml.sensors.drift import DriftResponseSensor
    from airflow_provider_hlml.sensors.factories import (
        code_execution_approval,
        content_approval,
        workflow_approval,
    )
    from airflow_provider_hlml.triggers.approval import HumanApprovalTrigger
    from airflow_provider_hlml.workflows.builder import build_ml_workflow_dag, load_workflows
    from airflow_provider_hlml.workflows.drift import drift_response_tasks
    from airflow_provider_hlml.workflows.spec import WorkflowSpec


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
