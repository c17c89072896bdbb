"""Protected-alias guard, reconcile mode: every 10 minutes, check that each protected alias
(``[hlml] protected_aliases``, default ``champion``) of every registered model points at a version
carrying a valid signed attestation of its approval.

An alias found on an unattested version is alerted (``[hlml] alert_email_to``), recorded in the
approvals service's audit chain and, with ``[hlml] alias_guard_revert``, moved back to the last
attested version. MLflow servers with registry webhooks (``/hlml/webhooks/mlflow``) are checked
at once on every alias change; this DAG covers servers without them and missed deliveries.
See docs/security.md, "The protected-alias guard".
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import DAG

from airflow_provider_hlml.operators.alias_guard import AliasGuardOperator

with DAG(
    dag_id="hlml_alias_guard",
    description="Check that protected model aliases point at attested (approved and signed) versions",
    schedule=timedelta(minutes=10),
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=9),
    tags=["hlml", "governance", "alias-guard"],
    doc_md=__doc__,
) as dag:
    AliasGuardOperator(task_id="reconcile_protected_aliases", retries=1, retry_delay=timedelta(minutes=1))
