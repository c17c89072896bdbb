"""Test-wide setup.

Airflow reads ``AIRFLOW_HOME`` and its config when first imported, so the temporary home and the
settings every test relies on are put in the environment here, before any test module imports
``airflow``. Server fixtures live in ``tests/fixtures/`` and are registered below.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

_HOME = Path(tempfile.mkdtemp(prefix="hlml-airflow-home-"))
os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(Path(__file__).parent.parent / "dags"))
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
for _var in ("MLFLOW_TRACKING_URI", "HUMANLAYER_API_KEY", "HUMANLAYER_API_BASE"):
    os.environ.pop(_var, None)

pytest_plugins = [
    "tests.fixtures.mlflow_server",
    "tests.fixtures.faulty_server",
    "tests.fixtures.smtp",
    "tests.fixtures.slack_standin",
]
for _optional in ("tests.fixtures.approvals", "tests.fixtures.airflow_stack"):
    if (Path(__file__).parent / "fixtures" / (_optional.rsplit(".", 1)[1] + ".py")).exists():
        pytest_plugins.append(_optional)


@pytest.fixture(scope="session")
def airflow_home() -> Path:
    return _HOME


@pytest.fixture(scope="session")
def airflow_db(airflow_home: Path) -> Path:
    """A migrated Airflow metadata DB (SQLite in the temp AIRFLOW_HOME), once per session."""
    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        check=True,
        env=os.environ.copy(),
        capture_output=True,
    )
    return airflow_home
