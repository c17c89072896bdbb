"""Every file in ``dags/`` imports cleanly, fast, and without loading heavy modules."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"
EXPECTED_DAG_IDS = {
    "churn_pipeline",
    "churn_pipeline_spec",
    "code_execution_approval",
    "hlml_alias_guard",
    "hlml_drift_monitor",
    "hlml_season",
}
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
        assert bag.dags["hlml_season"].schedule == "@weekly"

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


@pytest.fixture(scope="module")
def season_dag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS / "hlml_season.py"))
    assert bag.import_errors == {}
    return bag.dags["hlml_season"]


class TestSeasonDag:
    """``dags/hlml_season.py``: a weekly retrain gated by the decision policy, then a person."""

    @pytest.fixture
    def dag(self, season_dag: Any) -> Any:
        return season_dag

    def test_task_graph(self, dag: Any) -> None:
        order = [
            "plan_week",
            "train_candidate",
            "validate_candidate",
            "approve_promotion",
            "promote_candidate",
        ]
        assert sorted(dag.task_ids) == sorted(order)
        for upstream, downstream in itertools.pairwise(order):
            assert dag.get_task(upstream).downstream_task_ids == {downstream}

    def test_schedule_and_week_param(self, dag: Any) -> None:
        import datetime as dt

        assert dag.schedule == "@weekly"
        assert not dag.catchup
        assert dag.start_date == dt.datetime(2025, 1, 6, tzinfo=dt.timezone.utc)
        assert {"hlml", "example"} <= set(dag.tags)
        assert dag.params["week"] is None
        assert dag.max_active_runs == 1

    def test_stages_are_wired_to_the_policy_and_the_gate(self, dag: Any) -> None:
        from airflow_provider_hlml.examples import season

        train = dag.get_task("train_candidate")
        assert train.python_callable is season.train_season_candidate
        assert train.registered_model_name == train.op_kwargs["model_name"] == "season_classifier"
        validate = dag.get_task("validate_candidate")
        assert validate.decision_policy == season.SEASON_POLICY
        assert validate.data_callable is season.season_validation_data
        assert (validate.model_name, validate.baseline_alias) == ("season_classifier", "champion")
        gate = dag.get_task("approve_promotion")
        assert gate.approval_type == "model_promotion"
        assert gate.on_reject == "skip"
        assert gate.auto_decisions is True
        assert "validate_candidate" in gate.upstream_task_ids
        promote = dag.get_task("promote_candidate")
        assert (promote.approval_task_id, promote.alias) == ("approve_promotion", "champion")
