"""Each example DAG end to end with ``dag.test()``: real MLflow server, real approvals service.

The reviewer ("alice") decides from a background thread through the unmodified ``humanlayer``
SDK with her own key, listing the pending requests of the DAG as a person's client would.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_hlml.examples.review import approve_when_pending

pytestmark = pytest.mark.integration

DAGS = Path(__file__).resolve().parents[2] / "dags"
POLL = 0.3


def load_dag(dag_id: str) -> Any:
    """The DAG from ``dags/``, with its approval gates polling fast for the test."""
    from airflow.dag_processing.dagbag import DagBag

    from airflow_provider_hlml.sensors.approval import HumanApprovalSensor

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    dag = bag.dags[dag_id]
    for task in dag.tasks:
        if isinstance(task, HumanApprovalSensor):
            task.poll_interval = POLL
            task.poke_interval = POLL
    return dag


def run_dag(dag: Any, conf: dict[str, Any] | None = None) -> Any:
    """Serialize ``dag`` to the metadata DB and run it in-process; returns the DagRun."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=os.devnull, collect_dags=False)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)
    return dag.test(run_conf=conf)


def task_states(dag_run: Any) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance.task_id, TaskInstance.state).filter(
            TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id
        )
        return {task_id: str(state) for task_id, state in rows}


def xcom_value(dag_run: Any, task_id: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = XComModel.get_many(
            run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=task_id, key="return_value"
        )
        row = session.scalars(query).first()
        return None if row is None else XComModel.deserialize_value(row)


@contextmanager
def reviewer(
    service: Any, dag_id: str, count: int, approved: bool = True, reject_option: str | None = None
) -> Iterator[list[Any]]:
    """Decide ``count`` requests of ``dag_id`` as alice in a background thread while the block runs."""
    answered: list[Any] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def decide() -> None:
        try:
            answered.extend(
                approve_when_pending(
                    service.base_url,
                    service.reviewer_key,
                    dag_id=dag_id,
                    count=count,
                    timeout=240,
                    poll_interval=POLL,
                    approved=approved,
                    comment="Looks good" if approved else "Not in production, please",
                    reject_option=reject_option,
                    stop=stop,
                )
            )
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=decide, daemon=True)
    thread.start()
    try:
        yield answered
    finally:
        stop.set()
        thread.join(timeout=30)
    if errors:
        raise errors[0]


@pytest.fixture
def example_env(
    mlflow_conn: str, humanlayer_conn: str, airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    monkeypatch.setenv("HLML_EXAMPLE_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def champion(mlflow_server: Any, name: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server.url).get_model_version_by_alias(name, "champion")


def monitoring_run(mlflow_server: Any, run_id: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server.url).get_run(run_id)


class TestChurnPipeline:
    def test_trains_validates_waits_for_approval_promotes_and_monitors(
        self, example_env: Path, approvals_service: Any, mlflow_server: Any
    ) -> None:
        dag = load_dag("churn_pipeline")
        with reviewer(approvals_service, "churn_pipeline", count=1) as answered:
            dag_run = run_dag(dag)
        assert task_states(dag_run) == dict.fromkeys(
            [
                "prepare_data",
                "train_model",
                "validate_model",
                "approve_promotion",
                "promote_model",
                "monitor_model",
            ],
            "success",
        )
        report = xcom_value(dag_run, "validate_model")
        assert report["passed"] is True
        assert report["metrics"]["accuracy"]["candidate"] >= 0.85
        # The reviewer saw exactly the validation report and decided on it.
        assert len(answered) == 1
        request = answered[0]["spec"]["kwargs"]
        assert request["approval_type"] == "model_promotion"
        assert request["context"]["model_version"] == report["model_version"]
        assert request["context"]["mlflow_run_id"] == report["mlflow_run_id"]
        decision = xcom_value(dag_run, "approve_promotion")
        assert decision["approved"] is True
        assert decision["call_id"] == answered[0]["call_id"]
        # The approved version is now the champion.
        version = champion(mlflow_server, "churn_predictor")
        assert str(version.version) == str(report["model_version"])
        assert version.run_id == report["mlflow_run_id"]
        # Monitoring logged the new champion's metrics to MLflow.
        monitoring = xcom_value(dag_run, "monitor_model")
        assert monitoring["model_version"] == str(version.version)
        run = monitoring_run(mlflow_server, monitoring["run_id"])
        assert set(run.data.metrics) == {"accuracy", "latency_ms", "predicted_churn_rate"}
        assert 0.8 <= run.data.metrics["accuracy"] <= 1.0
        assert run.data.tags["hlml.model_version"] == str(version.version)

    def test_a_rejection_with_a_reason_stops_before_promotion(
        self, example_env: Path, approvals_service: Any, mlflow_server: Any
    ) -> None:
        from mlflow.tracking import MlflowClient

        dag = load_dag("churn_pipeline")
        gate = dag.get_task("approve_promotion")
        assert [o["name"] for o in gate.reject_options] == ["needs_retraining", "data_issue", "not_now"]
        client = MlflowClient(tracking_uri=mlflow_server.url)

        def holder() -> str | None:
            versions = client.search_model_versions("name='churn_predictor'")
            return next((str(v.version) for v in versions if "champion" in (v.aliases or [])), None)

        before = {str(v.version) for v in client.search_model_versions("name='churn_predictor'")}
        champion_before = holder()
        with reviewer(
            approvals_service, "churn_pipeline", count=1, approved=False, reject_option="needs_retraining"
        ):
            dag_run = run_dag(dag)
        states = task_states(dag_run)
        assert states["approve_promotion"] == "failed"
        assert states["promote_model"] == "upstream_failed"
        decision = xcom_value(dag_run, "approve_promotion")
        assert decision["approved"] is False
        assert decision["reject_option"] == "needs_retraining"
        assert decision["chosen_options"] == ["Reject"]
        after = {str(v.version) for v in client.search_model_versions("name='churn_predictor'")}
        assert after - before  # the candidate was registered by training ...
        assert holder() == champion_before  # ... and not promoted


class TestChurnPipelineFromSpec:
    def test_two_gates_both_approved(
        self, example_env: Path, approvals_service: Any, mlflow_server: Any
    ) -> None:
        dag = load_dag("churn_pipeline_spec")
        with reviewer(approvals_service, "churn_pipeline_spec", count=2) as answered:
            dag_run = run_dag(dag)
        states = task_states(dag_run)
        assert set(states.values()) == {"success"}, states
        assert len(states) == 7
        # First gate: the training result; second gate: the validation report.
        first, second = (call["spec"]["kwargs"] for call in answered)
        train = xcom_value(dag_run, "train_model")
        report = xcom_value(dag_run, "validate_model")
        assert first["approval_type"] == "workflow_decision"
        assert first["context"]["run_id"] == train["run_id"]
        assert second["approval_type"] == "model_promotion"
        assert second["context"]["model_version"] == report["model_version"]
        version = champion(mlflow_server, "churn_predictor_spec")
        assert str(version.version) == str(report["model_version"])
        monitoring = xcom_value(dag_run, "monitor_model")
        assert set(monitoring["metrics"]) == {"accuracy", "latency_ms"}


def columns(database: Path) -> list[str]:
    with closing(sqlite3.connect(database)) as conn:
        return [row[1] for row in conn.execute("PRAGMA table_info(users)")]


class TestCodeExecutionApproval:
    def run_with_decision(
        self, example_env: Path, service: Any, approved: bool
    ) -> tuple[Any, Path, list[Any]]:
        database = example_env / "app.db"
        dag = load_dag("code_execution_approval")
        with reviewer(service, "code_execution_approval", count=1, approved=approved) as answered:
            dag_run = run_dag(dag, conf={"database": str(database)})
        return dag_run, database, answered

    def test_approved_migration_runs(self, example_env: Path, approvals_service: Any) -> None:
        dag_run, database, answered = self.run_with_decision(example_env, approvals_service, approved=True)
        assert task_states(dag_run) == {
            "prepare_database": "success",
            "approve_migration": "success",
            "run_migration": "success",
        }
        request = answered[0]["spec"]["kwargs"]
        assert request["approval_type"] == "code_execution"
        assert "ALTER TABLE users ADD COLUMN email_verified" in request["context"]["code"]
        assert request["context"]["security_analysis"]
        assert "email_verified" in columns(database)
        result = xcom_value(dag_run, "run_migration")
        assert result["applied"] is True
        assert result["approved_by"] == "alice"
        with closing(sqlite3.connect(database)) as conn:
            verified = conn.execute(
                "SELECT name FROM users WHERE email_verified = 1 ORDER BY name"
            ).fetchall()
            recorded = conn.execute("SELECT approved_by, approval_call_id FROM schema_migrations").fetchall()
        assert verified == [("ada",), ("grace",)]
        assert recorded == [("alice", answered[0]["call_id"])]

    def test_rejected_migration_never_runs(self, example_env: Path, approvals_service: Any) -> None:
        dag_run, database, _ = self.run_with_decision(example_env, approvals_service, approved=False)
        states = task_states(dag_run)
        assert states["approve_migration"] == "failed"
        assert states["run_migration"] == "upstream_failed"
        assert "email_verified" not in columns(database)


REAL_DIGEST = hashlib.sha256(
    b"ALTER TABLE users ADD COLUMN email_verified BOOLEAN NOT NULL DEFAULT 0;\n"
    b"UPDATE users SET email_verified = 1 WHERE email LIKE '%@example.com';\n"
    b"CREATE INDEX IF NOT EXISTS ix_users_email_verified ON users (email_verified);"
).hexdigest()


class TestApplyMigrationGuards:
    """The migration task re-checks the approval it is given (no servers needed)."""

    @pytest.fixture
    def database(self, tmp_path: Path) -> Path:
        from airflow_provider_hlml.examples.migration import prepare_database

        return Path(prepare_database(str(tmp_path / "app.db"))["database"])

    @pytest.mark.parametrize(
        ("approval", "message"),
        [
            (None, "was not approved"),
            ({"approved": False, "context": {}}, "was not approved"),
            (
                {"approved": True, "call_id": "c1", "context": {"code": "DROP TABLE users;"}},
                "different script",
            ),
            # What a squatted request showed: harmless code next to the real script's digest.
            (
                {"approved": True, "call_id": "c1", "context": {"code": "SELECT 1", "sha256": REAL_DIGEST}},
                "inconsistent",
            ),
            ({"approved": True, "call_id": "c1", "context": {"sha256": REAL_DIGEST}}, "shows no code"),
        ],
    )
    def test_refuses(self, database: Path, approval: Any, message: str) -> None:
        from airflow_provider_hlml.examples.migration import apply_migration

        with pytest.raises(PermissionError, match=message):
            apply_migration(approval, str(database))
        assert "email_verified" not in columns(database)

    def test_applies_once(self, database: Path) -> None:
        from airflow_provider_hlml.examples.migration import MIGRATION_SQL, apply_migration

        approval: dict[str, Any] = {
            "approved": True,
            "call_id": "c1",
            "responded_by_user": {"name": "alice"},
            "context": {"code": MIGRATION_SQL},
        }
        first: Callable[[], Any] = lambda: apply_migration(approval, str(database))  # noqa: E731
        assert first()["applied"] is True
        assert first()["applied"] is False
        assert columns(database).count("email_verified") == 1
