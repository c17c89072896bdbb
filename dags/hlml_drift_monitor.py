"""Drift monitoring of the churn model: measure, ask a person, act on the answer.

Every day the version holding ``churn_predictor@champion`` predicts on a fresh batch of customers;
its inputs and predictions are compared with its training data (population stability index and
a Kolmogorov-Smirnov or chi-squared test per feature) and its accuracy on the labelled rows with
its accuracy on the training rows. The report is logged to MLflow as a monitoring run.

When the drift policy finds drift, a reviewer is asked (with the drifted features, their PSI and
p-values, and the version a rollback would restore) and the answer is carried out:

- **approve**: roll ``champion`` back to the previous attested champion (checked first to carry
  a valid signed approval attestation; ``ModelPromoteOperator(mode="rollback")`` bound to the
  approval),
- **reject, reason Retrain**: trigger the ``churn_pipeline`` DAG (train, validate, approve, promote),
- **reject, reason Accept**: nothing.

Without drift nothing is asked. Drift never moves the alias by itself. Trigger with
``{"charges_shift": 40}`` to plant a drift in the monthly charges. See docs/drift.md.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import DAG, Param

from airflow_provider_hlml.examples import churn
from airflow_provider_hlml.operators.drift import DriftMonitorOperator
from airflow_provider_hlml.workflows.drift import drift_response_tasks

MODEL_NAME = "churn_predictor"
ALIAS = "champion"
TRAINING_DAG_ID = "churn_pipeline"

with DAG(
    dag_id="hlml_drift_monitor",
    description="Drift of the churn champion against its training data; a person decides what to do",
    schedule="@daily",
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    params={
        "charges_shift": Param(
            0.0,
            type="number",
            minimum=-1000,
            maximum=1000,
            description="Added to the recent batch's monthly charges (plants a drift for a demo).",
        )
    },
    tags=["hlml", "monitoring", "drift", "churn", "example"],
    doc_md=__doc__,
) as dag:
    monitor_drift = DriftMonitorOperator(
        task_id="monitor_drift",
        model_name=MODEL_NAME,
        alias=ALIAS,
        reference=churn.churn_reference_data,
        current=churn.churn_recent_data,
        label_column=churn.TARGET,
        drift_policy={"psi_threshold": 0.2, "p_value": 0.01, "metric": "accuracy", "metric_max_drop": 0.05},
    )
    drift_response_tasks(
        monitor_drift,
        retrain_dag_id=TRAINING_DAG_ID,
        response_timeout=timedelta(days=2),
        urgency="high",
    )
