"""Customer Churn Prediction Pipeline: train, validate, approve, promote, monitor.

The pipeline of the original guide's ``createMLWorkflow`` example, written with the operators
directly. Every week it prepares a churn dataset (generated, deterministic), trains a
scikit-learn classifier (scaled logistic regression) logged to MLflow, validates it against fixed thresholds (the report
also shows the current ``champion``'s metrics), asks a reviewer to approve promoting exactly that
model version, moves the ``champion`` alias to it, and logs monitoring metrics of the new champion.

The same pipeline built from a YAML spec is ``dags/workflows/churn_pipeline.yaml``.
"""

from __future__ import annotations

from datetime import datetime, timezone

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG, chain

from airflow_provider_hlml.examples import churn
from airflow_provider_hlml.operators.mlflow import (
    MLflowTrainOperator,
    MLflowValidateOperator,
    ModelPromoteOperator,
)
from airflow_provider_hlml.sensors.approval import MODEL_REJECT_OPTIONS, HumanApprovalSensor
from airflow_provider_hlml.workflows.monitoring import log_monitoring_metrics

EXPERIMENT_NAME = "churn_prediction_v2"
MODEL_NAME = "churn_predictor"
ALIAS = "champion"


def _from_train(key: str) -> str:
    return "{{ ti.xcom_pull(task_ids='train_model')['" + key + "'] }}"


def _from_validation(key: str) -> str:
    return "{{ ti.xcom_pull(task_ids='validate_model')['" + key + "'] }}"


with DAG(
    dag_id="churn_pipeline",
    description="Customer Churn Prediction Pipeline: end-to-end ML pipeline with human oversight",
    schedule="@weekly",
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["hlml", "ml-workflow", "churn", "example"],
    doc_md=__doc__,
) as dag:
    prepare_data = PythonOperator(
        task_id="prepare_data",
        python_callable=churn.prepare_churn_data,
        op_kwargs={"n_samples": churn.DEFAULT_SAMPLES, "seed": churn.DEFAULT_SEED},
    )

    train_model = MLflowTrainOperator(
        task_id="train_model",
        python_callable=churn.train_churn_model,
        experiment_name=EXPERIMENT_NAME,
        experiment_description="Predicting customer churn (airflow-provider-hlml example)",
        params=dict(churn.DEFAULT_PARAMS),
        tags={"algorithm": "logistic_regression", "dataset": "synthetic_churn"},
        registered_model_name=MODEL_NAME,
        op_kwargs={"data_task_id": "prepare_data"},
    )

    validate_model = MLflowValidateOperator(
        task_id="validate_model",
        model_uri=_from_train("model_uri"),
        data=churn.churn_validation_data,
        target=churn.TARGET,
        thresholds={
            "accuracy": {"threshold": 0.85, "greater_is_better": True},
            "precision": {"threshold": 0.80, "greater_is_better": True},
        },
        model_type="classifier",
        model_name=MODEL_NAME,
        baseline_alias=ALIAS,
    )

    approve_promotion = HumanApprovalSensor(
        task_id="approve_promotion",
        subject=f"Promote {MODEL_NAME} to '{ALIAS}' (production)",
        body=(
            f"The weekly churn model passed validation. Approve to move the `{ALIAS}` alias of "
            f"`{MODEL_NAME}` to the version in the context; its metrics are shown next to the "
            "current champion's."
        ),
        context=validate_model.output,
        approval_type="model_promotion",
        urgency="high",
        reject_options=MODEL_REJECT_OPTIONS,  # needs retraining, data issue, not now
    )

    promote_model = ModelPromoteOperator(
        task_id="promote_model",
        model_name=MODEL_NAME,
        version=_from_validation("model_version"),
        run_id=_from_validation("mlflow_run_id"),
        alias=ALIAS,
        approval_task_id="approve_promotion",
    )

    monitor_model = PythonOperator(
        task_id="monitor_model",
        python_callable=log_monitoring_metrics,
        op_kwargs={
            "model_name": MODEL_NAME,
            "experiment_name": EXPERIMENT_NAME,
            "metrics": ["accuracy", "latency_ms", "predicted_churn_rate"],
            "upstream_task_ids": ["train_model", "validate_model", "promote_model"],
            "metrics_callable": churn.monitor_churn_model,
            "alias": ALIAS,
        },
    )

    chain(prepare_data, train_model, validate_model, approve_promotion, promote_model, monitor_model)
