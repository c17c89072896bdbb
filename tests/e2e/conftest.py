"""Deployments shared by the e2e scenarios.

Starting Airflow costs ~30 s of CPU on the 2-core CI machine, so each module shares one stack
(module scope) and its scenarios use DAG runs of their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.airflow_stack import (
    MLFLOW_SERVER_OPTIONS,
    AirflowStack,
    MetadataDatabases,
    StackConfig,
    airflow_stack,
)
from tests.fixtures.approvals import ApprovalsService, start_approvals_service
from tests.fixtures.mlflow_server import MLflowServer, start_mlflow_server


@pytest.fixture(scope="module")
def e2e_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLflowServer]:
    """An MLflow server of the module's own: scenarios stop and restart it."""
    server = start_mlflow_server(tmp_path_factory.mktemp("e2e-mlflow"))
    # docker-compose.yml runs MLflow with the same options (tests/e2e/test_compose.py).
    assert set(MLFLOW_SERVER_OPTIONS) <= set(server.process.argv)
    try:
        yield server
    finally:
        server.process.stop()


@pytest.fixture(scope="module")
def pg_approvals(
    require_postgres: str, metadata_databases: MetadataDatabases, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApprovalsService]:
    """A standalone approvals service on a PostgreSQL database of its own (production layout)."""
    service = start_approvals_service(
        metadata_databases.empty_postgres(), tmp_path_factory.mktemp("e2e-approvals")
    )
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def postgres_stack(
    require_postgres: str,
    metadata_databases: MetadataDatabases,
    e2e_mlflow: MLflowServer,
    pg_approvals: ApprovalsService,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[AirflowStack]:
    """LocalExecutor deployment on PostgreSQL; standalone approvals service on PostgreSQL."""
    workdir: Path = tmp_path_factory.mktemp("e2e-postgres")
    config = StackConfig(
        mlflow_url=e2e_mlflow.url,
        approvals_base_url=pg_approvals.base_url,
        agent_key=pg_approvals.agent_key,
        delegate_key=pg_approvals.delegate_key,
    )
    with airflow_stack(workdir, metadata_databases, config, database="postgresql") as stack:
        yield stack


@pytest.fixture(scope="module")
def celery_stack(
    require_postgres: str,
    require_redis: str,
    metadata_databases: MetadataDatabases,
    e2e_mlflow: MLflowServer,
    pg_approvals: ApprovalsService,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[AirflowStack]:
    """CeleryExecutor deployment: two Celery workers, Redis broker, PostgreSQL metadata DB."""
    workdir: Path = tmp_path_factory.mktemp("e2e-celery")
    config = StackConfig(
        mlflow_url=e2e_mlflow.url,
        approvals_base_url=pg_approvals.base_url,
        agent_key=pg_approvals.agent_key,
        delegate_key=pg_approvals.delegate_key,
    )
    with airflow_stack(
        workdir, metadata_databases, config, database="postgresql", executor="CeleryExecutor", workers=2
    ) as stack:
        yield stack
