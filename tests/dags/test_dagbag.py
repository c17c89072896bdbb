"""Every file in ``dags/`` imports cleanly, fast, and without loading heavy modules."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"
EXPECTED_DAG_IDS = {"churn_pipeline", "churn_pipeline_spec", "code_execution_approval", "hlml_alias_guard"}
# Modules the operators import only when a task runs (ruff TID253 bans them at module level).
HEAVY = (
    "mlflow",
    "sklearn",
    "fastapi",
    "sqlalchemy",
    "humanlayer",
    "alembic",
    "uvicorn",
    "bandit",
    "detect_secrets",
    "pandas",
)


class TestExampleDagBag:
    def test_no_import_errors_and_no_warnings(self) -> None:
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(DAGS))
        assert bag.import_errors == {}
        assert bag.captured_warnings == {}
        assert set(bag.dag_ids) == EXPECTED_DAG_IDS

    def test_dags_have_tags_docs_and_schedules(self) -> None:
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(DAGS))
        for dag_id in EXPECTED_DAG_IDS:
            dag = bag.dags.get(dag_id)
            assert dag is not None
            assert "hlml" in dag.tags
            assert dag.doc_md, dag_id
            assert not dag.catchup
        assert bag.dags["churn_pipeline"].schedule == "@weekly"
        assert bag.dags["churn_pipeline_spec"].schedule == "@weekly"

    def test_parsing_loads_no_heavy_module_beyond_airflow_itself(self, tmp_path: Path) -> None:
        """In a fresh interpreter: the modules loaded by parsing dags/ minus those an
        EmptyOperator DAG already loads must contain none of the heavy packages."""
        script = textwrap.dedent(
            f"""
            import json, sys, runpy
            from pathlib import Path
            from airflow.sdk import DAG
            from airflow.providers.standard.operators.empty import EmptyOperator
            from airflow.providers.standard.operators.python import PythonOperator
            with DAG("baseline", schedule=None):
                EmptyOperator(task_id="a")
            before = set(sys.modules)
            for path in sorted(Path({str(DAGS)!r}).glob("*.py")):
                runpy.run_path(str(path))
            loaded = sorted(set(sys.modules) - before)
            heavy = sorted({{m.split(".")[0] for m in loaded}} & set({list(HEAVY)!r}))
            print(json.dumps({{"heavy": heavy, "dag_modules": len(loaded)}}))
            """
        )
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
        )
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report["heavy"] == [], f"parsing dags/ imported {report['heavy']}"

    @pytest.mark.parametrize("dag_file", sorted(p.name for p in DAGS.glob("*.py")))
    def test_each_file_is_its_own_dag_file(self, dag_file: str) -> None:
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(DAGS / dag_file))
        assert bag.import_errors == {}
        assert bag.dag_ids
