"""Database migration behind a code-execution approval.

The original guide's "Database Schema Change" example: a SQL migration is shown to a reviewer
together with its security analysis, and runs against the application's SQLite database only if
the reviewer approves exactly that script. A rejection fails the gate, so the migration task
never runs. The database path is the ``database`` parameter (default:
``$HLML_EXAMPLE_DATA_DIR/app.db``).
"""

from __future__ import annotations

from datetime import datetime, timezone

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG, Param, chain

from airflow_provider_hlml.examples import migration
from airflow_provider_hlml.sensors.factories import code_execution_approval

with DAG(
    dag_id="code_execution_approval",
    description="Run a SQL migration against SQLite only after a reviewer approves the script",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["hlml", "approval", "example"],
    params={
        "database": Param(
            "",
            type="string",
            description="SQLite file of the application database (empty: $HLML_EXAMPLE_DATA_DIR/app.db)",
        )
    },
    doc_md=__doc__,
) as dag:
    prepare_database = PythonOperator(
        task_id="prepare_database",
        python_callable=migration.prepare_database,
        op_kwargs={"database": "{{ params.database }}"},
    )

    approve_migration = code_execution_approval(
        migration.MIGRATION_SQL,
        "production",
        language="sql",
        task_id="approve_migration",
    )

    run_migration = PythonOperator(
        task_id="run_migration",
        python_callable=migration.apply_migration,
        op_kwargs={"approval": approve_migration.output, "database": "{{ params.database }}"},
    )

    chain(prepare_database, approve_migration, run_migration)
