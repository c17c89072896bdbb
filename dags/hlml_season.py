"""A season of weekly retrains: the decision policy decides the clear cases, a person the rest.

Every week this DAG trains a scikit-learn candidate on that week's data, validates it against the
current ``champion`` with a promotion decision policy, and gates the promotion:

- a clear win (the whole 95 % paired-bootstrap interval of the accuracy gain above one point) is
  approved by the policy itself, recorded as ``policy:champion-margin-v1`` (in the approvals
  audit trail, the signed attestation and the promoted version's ``hlml.approved_by`` tag);
- a clear regression is rejected by the policy: the gate skips the promotion, the alias stays;
- anything else (a tie within noise, or the first week, with no champion to compare) goes to a
  person as always.

The data are generated (``airflow_provider_hlml.examples.season``): the season's plan gives each
week a planted change of the candidate's accuracy relative to the champion (a third each of
wins, regressions and ties, the same plan ``benchmarks/decision_policy.py`` scores), and the
candidate is trained on labels corrupted so its accuracy follows the plan. The week is the run's
week of the season (from its logical date), or the ``week`` param (0-51) of a manual run.
"""

from __future__ import annotations

from datetime import datetime, timezone

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG, Param, chain

from airflow_provider_hlml.examples import season
from airflow_provider_hlml.operators.mlflow import (
    MLflowTrainOperator,
    MLflowValidateOperator,
    ModelPromoteOperator,
)
from airflow_provider_hlml.sensors.approval import MODEL_REJECT_OPTIONS, HumanApprovalSensor

EXPERIMENT_NAME = "hlml_season"
MODEL_NAME = "season_classifier"
ALIAS = "champion"


def _from_validation(key: str) -> str:
    return "{{ ti.xcom_pull(task_ids='validate_candidate')['" + key + "'] }}"


with DAG(
    dag_id="hlml_season",
    description="Weekly retrains with planted wins, regressions and ties: the policy decides the clear ones",
    schedule="@weekly",
    start_date=datetime(2025, 1, 6, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["hlml", "ml-workflow", "decision-policy", "example"],
    params={
        "week": Param(
            None,
            type=["null", "integer"],
            minimum=0,
            maximum=season.SEASON_WEEKS - 1,
            description="The week of the season to train for (default: the run's week)",
        )
    },
    doc_md=__doc__,
) as dag:
    plan_week = PythonOperator(task_id="plan_week", python_callable=season.plan_season_week)

    train_candidate = MLflowTrainOperator(
        task_id="train_candidate",
        python_callable=season.train_season_candidate,
        experiment_name=EXPERIMENT_NAME,
        experiment_description="A season of weekly retrains (airflow-provider-hlml example)",
        tags={"algorithm": "logistic_regression", "dataset": "synthetic_season"},
        registered_model_name=MODEL_NAME,
        op_kwargs={"model_name": MODEL_NAME, "alias": ALIAS, "plan_task_id": "plan_week"},
    )

    validate_candidate = MLflowValidateOperator(
        task_id="validate_candidate",
        model_uri=f"models:/{MODEL_NAME}/{{{{ ti.xcom_pull(task_ids='train_candidate')['model_version'] }}}}",
        data=season.season_validation_data,
        target=season.TARGET,
        thresholds={"accuracy": {"threshold": 0.6, "greater_is_better": True}},
        model_type="classifier",
        model_name=MODEL_NAME,
        baseline_alias=ALIAS,
        decision_policy=season.SEASON_POLICY,
    )

    approve_promotion = HumanApprovalSensor(
        task_id="approve_promotion",
        subject=f"Promote this week's {MODEL_NAME} to '{ALIAS}'?",
        body=(
            f"This week's retrain of `{MODEL_NAME}` was validated against the current `{ALIAS}`. "
            "The decision policy decides a clear win or a clear regression by itself; it asks you "
            "about the rest (a tie within noise, or a first model with no champion)."
        ),
        context=validate_candidate.output,
        approval_type="model_promotion",
        urgency="medium",
        reject_options=MODEL_REJECT_OPTIONS,
        # A rejected candidate is a normal week: skip the promotion rather than fail the run.
        on_reject="skip",
    )

    promote_candidate = ModelPromoteOperator(
        task_id="promote_candidate",
        model_name=MODEL_NAME,
        version=_from_validation("model_version"),
        run_id=_from_validation("mlflow_run_id"),
        alias=ALIAS,
        approval_task_id="approve_promotion",
    )

    chain(plan_week, train_candidate, validate_candidate, approve_promotion, promote_candidate)
