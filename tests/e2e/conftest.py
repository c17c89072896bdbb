"""Deployments shared by the e2e scenarios.

Starting Airflow costs ~30 s of CPU on the 2-core CI machine, so each module shares one stack per
metadata backend (module scope) and its scenarios use DAG runs of their own; the MLflow server
serves the whole package, each deployment gets an approvals service of its own.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.airflow_stack import (
    MLFLOW_SERVER_OPTIONS,
    AirflowStack,
    MetadataDatabases,
    StackConfig,
    airflow_stack,
)
from tests.fixtures.approvals import ApprovalsService, make_keys, start_approvals_service
from tests.fixtures.mlflow_server import MLflowServer, start_mlflow_server


@pytest.fixture(scope="package")
def e2e_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLflowServer]:
    """An MLflow server of the e2e suite's own (scenarios stop and restart it)."""
    server = start_mlflow_server(tmp_path_factory.mktemp("e2e-mlflow"))
    # docker-compose.yml runs MLflow with the same options (tests/e2e/test_compose.py).
    assert set(MLFLOW_SERVER_OPTIONS) <= set(server.process.argv)
    try:
        yield server
    finally:
        server.process.stop()


# Both metadata databases Airflow supports for a LocalExecutor deployment; each scenario of
# test_stack_scenarios.py runs on each. Module scope groups the tests by backend, so each backend's
# deployment starts once and is stopped before the other one starts.
METADATA_BACKENDS = ("postgresql", "sqlite")


@pytest.fixture(scope="module", params=METADATA_BACKENDS)
def metadata_backend(request: pytest.FixtureRequest) -> str:
    """The metadata database of the deployment under test (``postgresql`` or ``sqlite``)."""
    if request.param == "postgresql":
        request.getfixturevalue("require_postgres")
    return str(request.param)


# Module scope on purpose: a gate's request id derives from (dag_id, run_id, task_id, map_index,
# try_number), so two deployments sharing one approvals service would see each other's decisions
# for the same scheduled run of the same DAG.
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
def stack_approvals(
    metadata_backend: str, metadata_databases: MetadataDatabases, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApprovalsService]:
    """A standalone approvals service on the same kind of database as the deployment's metadata DB,
    so the SQLite deployment needs no PostgreSQL at all."""
    root = tmp_path_factory.mktemp(f"e2e-approvals-{metadata_backend}")
    if metadata_backend == "postgresql":
        database_url = metadata_databases.empty_postgres()
    else:
        database_url = f"sqlite:///{root / 'hlml_approvals.db'}"
    service = start_approvals_service(database_url, root)
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def local_stack(
    metadata_backend: str,
    metadata_databases: MetadataDatabases,
    e2e_mlflow: MLflowServer,
    stack_approvals: ApprovalsService,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[AirflowStack]:
    """LocalExecutor deployment on ``metadata_backend``; a standalone approvals service."""
    workdir: Path = tmp_path_factory.mktemp(f"e2e-{metadata_backend}")
    config = StackConfig(
        mlflow_url=e2e_mlflow.url,
        approvals_base_url=stack_approvals.base_url,
        agent_key=stack_approvals.agent_key,
        delegate_key=stack_approvals.delegate_key,
    )
    with airflow_stack(workdir, metadata_databases, config, database=metadata_backend) as stack:
        assert stack.database == metadata_backend
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
    """CeleryExecutor deployment: two Celery workers, Redis broker, PostgreSQL metadata DB; the
    approvals service posts its decisions to the API server (signed webhooks), as in
    docker-compose.yml."""
    workdir: Path = tmp_path_factory.mktemp("e2e-celery")
    secret = secrets.token_urlsafe(24)
    config = StackConfig(
        mlflow_url=e2e_mlflow.url,
        approvals_base_url=pg_approvals.base_url,
        agent_key=pg_approvals.agent_key,
        delegate_key=pg_approvals.delegate_key,
        webhook_secret=secret,
    )
    with airflow_stack(
        workdir, metadata_databases, config, database="postgresql", executor="CeleryExecutor", workers=2
    ) as stack:
        # The API server's port is known once the stack runs: restart the service with the webhook.
        pg_approvals.extra_env = {
            "HLML_APPROVALS_WEBHOOK_URLS": stack.webhook_url,
            "HLML_APPROVALS_WEBHOOK_SECRET": secret,
        }
        pg_approvals.restart()
        yield stack


@dataclass
class MountedApprovals:
    """Keys of the approvals service the dashboard plugin mounts in the API server."""

    database_url: str
    agent_key: str
    reviewer_key: str
    reviewer2_key: str
    admin_key: str
    delegate_key: str
    webhook_secret: str


@pytest.fixture(scope="module")
def sqlite_mounted_stack(
    metadata_databases: MetadataDatabases,
    e2e_mlflow: MLflowServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[AirflowStack, MountedApprovals]]:
    """LocalExecutor on SQLite; the approvals service mounted in the API server (embedded default).

    Its gates park (``[hlml] wait_mode`` auto on Airflow 3.3+); the scheduler sweeps their
    deadlines every 2 s instead of 15 s, so timeouts are quick to test.
    """
    workdir: Path = tmp_path_factory.mktemp("e2e-sqlite")
    keys = ApprovalsService(database_url=f"sqlite:///{workdir / 'hlml_approvals.db'}", root=workdir, port=0)
    make_keys(keys)  # migrates the database and creates one key per role
    mounted = MountedApprovals(
        database_url=keys.database_url,
        agent_key=keys.agent_key,
        reviewer_key=keys.reviewer_key,
        reviewer2_key=keys.reviewer2_key,
        admin_key=keys.admin_key,
        delegate_key=keys.delegate_key,
        webhook_secret=secrets.token_urlsafe(24),
    )
    config = StackConfig(
        mlflow_url=e2e_mlflow.url,
        agent_key=mounted.agent_key,
        delegate_key=mounted.delegate_key,
        mounted_approvals_db=mounted.database_url,
        webhook_secret=mounted.webhook_secret,
    )
    with airflow_stack(
        workdir,
        metadata_databases,
        config,
        database="sqlite",
        extra_env={"AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL": "2"},
    ) as stack:
        yield stack, mounted
