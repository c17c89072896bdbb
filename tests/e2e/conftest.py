"""Deployments shared by the e2e scenarios.

Starting Airflow costs ~30 s of CPU on the 2-core CI machine, so each module shares one stack
(module scope) and its scenarios use DAG runs of their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.airflow_stack import AirflowStack, MetadataDatabases, airflow_stack
from tests.fixtures.mlflow_server import MLflowServer, start_mlflow_server


@pytest.fixture(scope="module")
def e2e_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLflowServer]:
    """An MLflow server of the module's own: scenarios stop and restart it."""
    server = start_mlflow_server(tmp_path_factory.mktemp("e2e-mlflow"))
    try:
        yield server
    finally:
        server.process.stop()


@pytest.fixture(scope="module")
def postgres_stack(
    require_postgres: str,
    metadata_databases: MetadataDatabases,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[AirflowStack]:
    """LocalExecutor deployment on a PostgreSQL metadata DB of its own."""
    workdir: Path = tmp_path_factory.mktemp("e2e-postgres")
    with airflow_stack(workdir, metadata_databases, database="postgresql") as stack:
        yield stack
