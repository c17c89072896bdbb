"""Every ``[hlml]`` option of the Airflow configuration, read from here only."""

from __future__ import annotations

from airflow.sdk import conf

SECTION = "hlml"


def humanlayer_conn_id() -> str:
    """``[hlml] humanlayer_conn_id``: the HumanLayer connection gates use unless given one."""
    return conf.get(SECTION, "humanlayer_conn_id", fallback="humanlayer_default") or "humanlayer_default"


def mlflow_conn_id() -> str:
    """``[hlml] mlflow_conn_id``: the MLflow connection stages use unless given one."""
    return conf.get(SECTION, "mlflow_conn_id", fallback="mlflow_default") or "mlflow_default"
