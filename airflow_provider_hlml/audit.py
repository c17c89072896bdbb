"""The one place that names the MLflow tags this provider writes.

Run tags tie every MLflow run to the Airflow task instance that produced it; model-version tags
record who approved a promotion, when, through which approval call, and which version held the
alias before, so a rollback can restore it. Every other module imports the names from here.
"""

from __future__ import annotations

# --- Airflow identity, written on every MLflow run a task starts ---------------------------------
AIRFLOW_DAG_ID = "airflow.dag_id"
AIRFLOW_RUN_ID = "airflow.run_id"
AIRFLOW_TASK_ID = "airflow.task_id"
AIRFLOW_MAP_INDEX = "airflow.map_index"
AIRFLOW_TRY_NUMBER = "airflow.try_number"
AIRFLOW_LOGICAL_DATE = "airflow.logical_date"
AIRFLOW_TI_URL = "airflow.ti_url"
#: ``"<dag_id>/<run_id>"``: finds every MLflow run of one DAG run, whatever its experiment.
AIRFLOW_DAG_RUN = "airflow.dag_run"
#: The Airflow user who triggered the DAG run ("" for scheduled runs): with MLflow's own
#: ``mlflow.user``, the model's author, whom separation of duties bars from approving it.
AIRFLOW_TRIGGERED_BY = "airflow.triggered_by"
#: MLflow's own tag naming the (operating-system) user that started a run.
MLFLOW_USER = "mlflow.user"

AIRFLOW_IDENTITY_TAGS = (
    AIRFLOW_DAG_ID,
    AIRFLOW_RUN_ID,
    AIRFLOW_TASK_ID,
    AIRFLOW_MAP_INDEX,
    AIRFLOW_TRY_NUMBER,
    AIRFLOW_LOGICAL_DATE,
    AIRFLOW_TI_URL,
    AIRFLOW_DAG_RUN,
    AIRFLOW_TRIGGERED_BY,
)

# --- Run lifecycle ------------------------------------------------------------------------------
#: Which stage wrote the run: ``train`` | ``validate`` | ``monitoring`` | ``workflow``.
HLML_STAGE = "hlml.stage"
#: On a retry's run: the MLflow run id of the failed or killed attempt before it.
RETRY_OF_RUN_ID = "hlml.retry_of_run_id"
#: On a FAILED / KILLED run: the exception type and message (secrets masked).
RUN_ERROR = "hlml.error"
#: Experiment tag: the DAG whose training task created the experiment.
EXPERIMENT_CREATED_BY_DAG = "hlml.created_by_dag"

# --- Validation runs ------------------------------------------------------------------------------
#: The model URI the validation evaluated.
CANDIDATE_MODEL_URI = "hlml.candidate_model_uri"
#: ``true`` | ``false``: whether every threshold was met.
VALIDATION_PASSED = "hlml.validation_passed"
#: Validation-run tag: the decision policy's outcome (``auto_approve`` / ``auto_reject`` / ``human``).
DECISION_OUTCOME = "hlml.decision_outcome"
#: Validation-run tag: the principal an auto-decision is made as (``policy:<name>-v<version>``).
DECISION_PRINCIPAL = "hlml.decision_principal"

# --- Monitoring runs ------------------------------------------------------------------------------
#: The registered model and version a monitoring run measured.
MONITORED_MODEL_NAME = "hlml.model_name"
MONITORED_MODEL_VERSION = "hlml.model_version"
#: The MLflow run that trained the monitored version.
MONITORED_SOURCE_RUN_ID = "hlml.source_run_id"
#: The alias whose holder a monitoring run measured (``champion``).
MONITORED_ALIAS = "hlml.model_alias"
#: Monitoring-run tag: ``true`` | ``false``, whether the drift policy found the model drifted.
DRIFT_DETECTED = "hlml.drift_detected"

# --- Model-version audit tags written by ModelPromoteOperator -----------------------------------
APPROVED_BY = "hlml.approved_by"
APPROVED_AT = "hlml.approved_at"
APPROVAL_COMMENT = "hlml.approval_comment"
APPROVAL_CALL_ID = "hlml.approval_call_id"
APPROVAL_URL = "hlml.approval_url"
#: Every approver of the promotion and the rule each met: ``alice (ML lead); bob (Compliance)``.
APPROVERS = "hlml.approvers"
#: Which branch approved the promotion: ``auto_approve`` (the request's decision policy, whose
#: principal is then :data:`APPROVED_BY`) or ``human``.
APPROVAL_BRANCH = "hlml.approval_branch"
#: The digest of what the reviewers were shown (re-checked before the alias moved).
REVIEW_DIGEST = "hlml.review_digest"
#: The signed attestation of the approval (a DSSE envelope; see ``gate/attestation.py``).
ATTESTATION = "hlml.attestation"
#: The key id that signed :data:`ATTESTATION`.
ATTESTATION_KEY_ID = "hlml.attestation_key_id"
PROMOTED_ALIAS = "hlml.promoted_alias"
PROMOTED_STAGE = "hlml.promoted_stage"
PROMOTED_AT = "hlml.promoted_at"
PROMOTED_BY_DAG_ID = "hlml.promoted_by_dag_id"
PROMOTED_BY_RUN_ID = "hlml.promoted_by_run_id"
PROMOTED_BY_TASK_ID = "hlml.promoted_by_task_id"
ROLLED_BACK_AT = "hlml.rolled_back_at"
ROLLED_BACK_TO = "hlml.rolled_back_to"
#: On the version a rollback replaced: the Airflow run id of the rollback.
ROLLED_BACK_BY_RUN_ID = PROMOTED_BY_RUN_ID + ".rollback"
#: Empty value = the alias or stage had no holder before this promotion.
NO_PREVIOUS_VERSION = ""


def previous_holder_tag(alias: str) -> str:
    """Tag on a promoted version naming the version that held ``alias`` just before it."""
    return f"hlml.previous_version.{alias}"


def previous_stage_holder_tag(stage: str) -> str:
    """Tag on a version moved to a legacy ``stage`` naming the versions that held it before."""
    return f"hlml.previous_versions.stage.{stage.lower()}"


def dag_run_group(dag_id: str, run_id: str) -> str:
    """The value of :data:`AIRFLOW_DAG_RUN` for one DAG run."""
    return f"{dag_id}/{run_id}"


# --- Registered-model tags written by the alias guard ---------------------------------------------
def guard_state_tag(alias: str) -> str:
    """Registered-model tag: the guard's last finding on ``alias`` (JSON: verdict, version, reason,
    at, and the version it was reverted to, if any)."""
    return f"hlml.guard.{alias}"
