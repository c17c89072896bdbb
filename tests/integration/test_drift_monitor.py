"""Drift monitoring end to end: a drift opens a request, a person's answer is carried out, and
nothing moves the alias without one.

Real components only: a real ``mlflow server`` with two versions of a real scikit-learn model,
promoted to ``@champion`` one after the other through the approval path the pipelines use (a
reviewer approves in the real approvals service, ``ModelPromoteOperator`` writes the signed
attestation), then ``dag.test()`` of a DAG built with
:func:`~airflow_provider_hlml.workflows.drift.drift_response_tasks`; a reviewer answers over
HTTP from a thread, as a person would, and checks the alias while the request is pending.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pendulum
import pytest

from airflow_provider_hlml import audit
from airflow_provider_hlml.hooks.mlflow import MLflowHook
from tests.integration.test_approval_gate import calls_for_dag
from tests.unit.operators.dagrun_helpers import churn_frame, run_dag, task_states, xcom_value

pytestmark = pytest.mark.integration

FEATURES = [f"f{i}" for i in range(5)]
LABEL = "churned"
POLL = 0.3


# -- data and models ----------------------------------------------------------------------------
def reference_rows() -> pd.DataFrame:
    return churn_frame("train")


def steady_rows() -> pd.DataFrame:
    """Rows from the same distribution as the training rows."""
    return churn_frame("validation")


def drifted_rows() -> pd.DataFrame:
    """The same customers with two inputs moved by about two standard deviations."""
    frame = churn_frame("validation")
    frame["f0"] += 3.0
    frame["f1"] -= 3.0
    return frame


def register_versions(hook: MLflowHook, model_name: str, count: int = 2) -> list[Any]:
    """``count`` versions of a logistic-regression churn model, each from its own MLflow run."""
    import mlflow
    from sklearn.linear_model import LogisticRegression

    from airflow_provider_hlml.operators.mlflow_runs import log_model

    frame = reference_rows()
    versions = []
    with hook.fluent():
        experiment_id = hook.get_or_create_experiment(f"hlml-drift-{model_name}")
        for c in (1.0, 0.1)[:count]:
            model = LogisticRegression(C=c, max_iter=200).fit(frame[FEATURES], frame[LABEL])
            with mlflow.start_run(experiment_id=experiment_id) as run:
                uri = log_model(model, input_example=frame[FEATURES].head(3))
            registered = mlflow.register_model(uri, model_name)
            versions.append(hook.client.get_model_version(model_name, str(registered.version)))
            assert versions[-1].run_id == run.info.run_id
    return versions


def promotion_dag(dag_id: str, model_name: str, mv: Any) -> Any:
    """approve (a person, in the approvals service) >> promote, as the pipelines promote."""
    from airflow.sdk import DAG

    from airflow_provider_hlml.operators.promote import ModelPromoteOperator
    from airflow_provider_hlml.sensors.approval import HumanApprovalSensor

    with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC")) as dag:
        gate = HumanApprovalSensor(
            task_id="approve",
            subject=f"Promote {model_name} v{mv.version}?",
            context={
                "model_name": model_name,
                "model_version": str(mv.version),
                "mlflow_run_id": mv.run_id,
                "model_uri": f"models:/{model_name}/{mv.version}",
            },
            approval_type="model_promotion",
            deferrable=True,
            poll_interval=POLL,
            response_timeout=600,
        )
        gate >> ModelPromoteOperator(
            task_id="promote",
            model_name=model_name,
            approval_task_id="approve",
            require_attestation=True,
            retries=0,
        )
    return dag


def drift_dag(dag_id: str, model_name: str, current: Callable[[], pd.DataFrame], **response: Any) -> Any:
    from airflow.sdk import DAG

    from airflow_provider_hlml.operators.drift import DriftMonitorOperator
    from airflow_provider_hlml.workflows.drift import drift_response_tasks

    with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC")) as dag:
        monitor = DriftMonitorOperator(
            task_id="monitor",
            model_name=model_name,
            reference=reference_rows,
            current=current,
            label_column=LABEL,
            drift_policy={
                "psi_threshold": 0.2,
                "p_value": 0.01,
                "metric": "accuracy",
                "metric_max_drop": 0.1,
            },
        )
        response.setdefault("response_timeout", 600)  # bounds the test if no reviewer shows up
        gate_kwargs = {"deferrable": True, "poll_interval": POLL, **response.pop("gate_kwargs", {})}
        drift_response_tasks(monitor, gate_kwargs=gate_kwargs, **response)
    return dag


def training_dag(dag_id: str) -> Any:
    """A stand-in for the training pipeline a ``retrain`` answer triggers."""
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG

    with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC")) as dag:
        EmptyOperator(task_id="train")
    return dag


def sync_dag(dag: Any) -> None:
    """Write ``dag`` to the metadata DB (so it can be triggered) without running it."""
    import os

    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=os.devnull, collect_dags=False)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)


def dag_runs_of(dag_id: str) -> list[Any]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        runs = session.query(DagRun).filter(DagRun.dag_id == dag_id).all()
        session.expunge_all()
        return runs


def holder(hook: MLflowHook, model_name: str) -> str:
    return str(hook.client.get_model_version_by_alias(model_name, "champion").version)


# -- the reviewer -------------------------------------------------------------------------------
@dataclass
class Reviewer:
    """Waits for the DAG's pending request, reads the alias while it is pending, then answers."""

    service: Any
    hook: MLflowHook
    dag_id: str
    model_name: str
    approved: bool
    reject_option: str | None = None
    call: dict[str, Any] | None = None
    alias_while_pending: list[str] = field(default_factory=list)
    error: str | None = None
    before_answer: Callable[[], None] | None = None
    thread: threading.Thread | None = None

    def start(self) -> Reviewer:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        from airflow_provider_hlml.examples.review import pending_calls, respond

        try:
            deadline = time.monotonic() + 300
            while self.call is None:
                if time.monotonic() > deadline:
                    self.error = "no request appeared"
                    return
                calls = pending_calls(self.service.base_url, self.service.reviewer_key, dag_id=self.dag_id)
                if calls:
                    self.call = calls[0]
                else:
                    time.sleep(POLL)
            # The request is open and nobody has answered: the alias must stay where it is.
            for _ in range(3):
                self.alias_while_pending.append(holder(self.hook, self.model_name))
                time.sleep(0.5)
            if self.before_answer is not None:
                self.before_answer()
            respond(
                self.service.base_url,
                self.service.reviewer_key,
                str(self.call["call_id"]),
                approved=self.approved,
                comment=None if self.approved else f"{self.reject_option}: seen the drift report",
                reject_option=self.reject_option,
            )
        except Exception as exc:  # reported by join()
            self.error = f"{type(exc).__name__}: {exc}"

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(timeout=120)
        assert self.error is None, self.error


def approve_each_request(service: Any, dag_id: str) -> threading.Thread:
    from airflow_provider_hlml.examples.review import approve_when_pending

    thread = threading.Thread(
        target=approve_when_pending,
        args=(service.base_url, service.reviewer_key),
        kwargs={"dag_id": dag_id, "timeout": 300, "poll_interval": POLL, "comment": "ship it"},
        daemon=True,
    )
    thread.start()
    return thread


def champion_with_history(service: Any, hook: MLflowHook, prefix: str) -> tuple[str, list[Any]]:
    """A model whose v1 then v2 were promoted to @champion, each approved by a person."""
    model_name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    versions = register_versions(hook, model_name)
    for mv in versions:
        dag_id = f"promote_{model_name}_v{mv.version}"
        thread = approve_each_request(service, dag_id)
        dag_run = run_dag(promotion_dag(dag_id, model_name, mv))
        thread.join(60)
        assert task_states(dag_run) == {"approve": "success", "promote": "success"}
    assert holder(hook, model_name) == str(versions[1].version)
    return model_name, versions


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def drift_env(mlflow_server: Any, approvals_service: Any, airflow_db: Any) -> Iterator[Any]:
    """Connections to the real servers for the module (the champion is set up once for it)."""
    import json

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(
            "AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps({"conn_type": "mlflow", "host": mlflow_server.url})
        )
        patch.setenv(
            "AIRFLOW_CONN_HUMANLAYER_DEFAULT",
            json.dumps(
                {
                    "conn_type": "humanlayer",
                    "host": approvals_service.base_url,
                    "password": approvals_service.agent_key,
                }
            ),
        )
        patch.setenv("AIRFLOW__HLML__LONG_POLL_SECONDS", "5")
        patch.delenv("AIRFLOW__HLML__APPROVAL_POLICY_FILE", raising=False)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield approvals_service


@pytest.fixture(scope="module")
def hook(drift_env: Any) -> MLflowHook:
    return MLflowHook("mlflow_default")


@pytest.fixture(scope="module")
def champion(drift_env: Any, hook: MLflowHook) -> tuple[str, list[Any]]:
    """Shared by the tests that leave the alias where it is."""
    return champion_with_history(drift_env, hook, "drift_kept")


# -- tests --------------------------------------------------------------------------------------
class TestDriftResponse:
    def test_without_drift_no_request_is_made_and_nothing_moves(
        self, drift_env: Any, hook: MLflowHook, champion: tuple[str, list[Any]]
    ) -> None:
        model_name, (_, v2) = champion
        dag_id = f"drift_steady_{uuid.uuid4().hex[:8]}"
        dag_run = run_dag(drift_dag(dag_id, model_name, steady_rows))
        states = task_states(dag_run)
        assert states.pop("monitor") == "success"
        assert states.pop("drift_detected") == "success"
        assert set(states.values()) == {"skipped"}
        assert calls_for_dag(drift_env, dag_id) == []
        assert holder(hook, model_name) == str(v2.version)
        result = xcom_value(dag_run, "monitor")
        assert result["drifted"] is False
        assert result["reason"].startswith("no drift")
        # The monitoring run is in MLflow, next to the model's training run.
        run = hook.client.get_run(result["monitoring_run_id"])
        assert run.data.tags[audit.HLML_STAGE] == "monitoring"
        assert run.data.tags[audit.DRIFT_DETECTED] == "false"
        assert run.data.tags[audit.MONITORED_MODEL_VERSION] == str(v2.version)
        assert run.info.experiment_id == hook.client.get_run(v2.run_id).info.experiment_id

    def test_drift_opens_a_request_and_accept_keeps_the_model(
        self, drift_env: Any, hook: MLflowHook, champion: tuple[str, list[Any]]
    ) -> None:
        model_name, (v1, v2) = champion
        dag_id = f"drift_accept_{uuid.uuid4().hex[:8]}"
        reviewer = Reviewer(
            drift_env, hook, dag_id, model_name, approved=False, reject_option="accept"
        ).start()
        dag_run = run_dag(drift_dag(dag_id, model_name, drifted_rows))
        reviewer.join()
        assert task_states(dag_run) == {
            "monitor": "success",
            "drift_detected": "success",
            "drift_request": "success",
            "drift_review": "success",
            "drift_decision": "skipped",
            "verify_rollback": "skipped",
            "rollback": "skipped",
            "retrain": "skipped",
        }
        assert reviewer.alias_while_pending == [str(v2.version)] * 3
        assert holder(hook, model_name) == str(v2.version)

        # What the reviewer was asked: the model, the drift report, the three answers.
        assert reviewer.call is not None
        spec = reviewer.call["spec"]
        assert spec["fn"] == "workflow_decision"
        assert [o["name"] for o in spec["kwargs"]["options"]] == ["rollback"]
        assert spec["kwargs"]["options"][0]["title"] == "Roll back to the previous attested champion"
        assert [(o["name"], o["title"]) for o in spec["reject_options"]] == [
            ("retrain", "Retrain"),
            ("accept", "Accept"),
        ]
        assert (
            spec["kwargs"]["subject"]
            == f"Drift in {model_name} v{v2.version} (@champion): roll back, retrain or accept?"
        )
        context = spec["kwargs"]["context"]
        assert (context["model_name"], context["model_version"], context["mlflow_run_id"]) == (
            model_name,
            str(v2.version),
            v2.run_id,
        )
        assert context["drifted"] is True
        drifted = {row["name"]: row for row in context["drifted_features"]}
        assert set(drifted) >= {"f0", "f1"}
        for row in drifted.values():
            assert row["psi"] >= 0.2
            assert row["p_value"] < 0.01
        assert context["rollback_to"]["version"] == str(v1.version)
        assert context["rollback_to"]["attested"] is True
        body = spec["kwargs"]["body"]
        assert "| `f0` |" in body
        assert f"back to v`{v1.version}`" in body

        report = xcom_value(dag_run, "monitor")
        assert report["drifted"] is True
        assert report["model_version"] == str(v2.version)
        assert report["rollback_version"] == str(v1.version)
        decision = xcom_value(dag_run, "drift_review")
        assert (decision["approved"], decision["reject_option"]) == (False, "accept")
        # The monitoring run: per-feature PSI metrics, the report as an artifact, the tags.
        client = hook.client
        run = client.get_run(report["monitoring_run_id"])
        assert run.data.tags[audit.DRIFT_DETECTED] == "true"
        assert run.data.tags[audit.MONITORED_MODEL_NAME] == model_name
        assert run.data.metrics["drift.psi.f0"] == pytest.approx(report["features"]["f0"]["psi"])
        assert run.data.metrics["drift.detected"] == 1.0
        import mlflow

        with hook.fluent():
            logged = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/drift.json")
        assert logged["drifted_features"] == report["drifted_features"]

    def test_retrain_triggers_the_training_dag_and_keeps_the_model(
        self, drift_env: Any, hook: MLflowHook, champion: tuple[str, list[Any]]
    ) -> None:
        model_name, (_, v2) = champion
        suffix = uuid.uuid4().hex[:8]
        dag_id, training_dag_id = f"drift_retrain_{suffix}", f"training_{suffix}"
        sync_dag(training_dag(training_dag_id))
        reviewer = Reviewer(
            drift_env, hook, dag_id, model_name, approved=False, reject_option="retrain"
        ).start()
        dag_run = run_dag(drift_dag(dag_id, model_name, drifted_rows, retrain_dag_id=training_dag_id))
        reviewer.join()
        states = task_states(dag_run)
        assert (states["drift_review"], states["drift_decision"], states["retrain"]) == ("success",) * 3
        assert (states["verify_rollback"], states["rollback"]) == ("skipped", "skipped")
        assert reviewer.alias_while_pending == [str(v2.version)] * 3
        assert holder(hook, model_name) == str(v2.version)
        (triggered,) = dag_runs_of(training_dag_id)
        assert triggered.conf == {
            "reason": "drift",
            "model_name": model_name,
            "model_version": str(v2.version),
            "monitoring_run_id": xcom_value(dag_run, "monitor")["monitoring_run_id"],
            "approval_call_id": xcom_value(dag_run, "drift_review")["call_id"],
        }

    def test_nobody_answering_changes_nothing(
        self, drift_env: Any, hook: MLflowHook, champion: tuple[str, list[Any]]
    ) -> None:
        """The request times out (``on_timeout="reject"``): no person, so no action at all."""
        model_name, (_, v2) = champion
        dag_id = f"drift_unanswered_{uuid.uuid4().hex[:8]}"
        dag_run = run_dag(
            drift_dag(
                dag_id,
                model_name,
                drifted_rows,
                response_timeout=3,
                gate_kwargs={"on_timeout": "reject"},
            )
        )
        states = task_states(dag_run)
        assert states["drift_review"] == "success"
        assert {states[t] for t in ("drift_decision", "verify_rollback", "rollback", "retrain")} == {
            "skipped"
        }
        decision = xcom_value(dag_run, "drift_review")
        assert (decision["approved"], decision["timed_out"]) == (False, True)
        (call,) = calls_for_dag(drift_env, dag_id)
        assert call["status"]["approved"] is None  # nobody answered it
        assert holder(hook, model_name) == str(v2.version)

    def test_an_approved_rollback_is_refused_when_the_alias_moved_meanwhile(
        self,
        drift_env: Any,
        hook: MLflowHook,
        champion: tuple[str, list[Any]],
        capfd: pytest.CaptureFixture[str],
    ) -> None:
        """The reviewers approved rolling back v2; someone moved @champion by hand before the
        rollback ran: nothing is restored on the strength of an approval about another state."""
        model_name, (v1, v2) = champion
        dag_id = f"drift_moved_{uuid.uuid4().hex[:8]}"

        def move_by_hand() -> None:
            hook.client.set_registered_model_alias(model_name, "champion", str(v1.version))

        reviewer = Reviewer(drift_env, hook, dag_id, model_name, approved=True, before_answer=move_by_hand)
        try:
            reviewer.start()
            dag_run = run_dag(drift_dag(dag_id, model_name, drifted_rows))
            reviewer.join()
            states = task_states(dag_run)
            assert (states["drift_review"], states["drift_decision"]) == ("success", "success")
            assert (states["verify_rollback"], states["rollback"]) == ("failed", "upstream_failed")
            out, err = capfd.readouterr()
            assert f"is on v{v1.version}, not v{v2.version} the reviewers were shown" in out + err
            assert holder(hook, model_name) == str(v1.version)  # where the hand put it, nothing more
            assert audit.ROLLED_BACK_TO not in hook.client.get_model_version(model_name, str(v2.version)).tags
        finally:
            hook.client.set_registered_model_alias(model_name, "champion", str(v2.version))

    def test_an_approved_rollback_restores_the_previous_attested_champion(
        self, drift_env: Any, hook: MLflowHook
    ) -> None:
        model_name, (v1, v2) = champion_with_history(drift_env, hook, "drift_rollback")
        dag_id = f"drift_rollback_{uuid.uuid4().hex[:8]}"
        reviewer = Reviewer(drift_env, hook, dag_id, model_name, approved=True).start()
        dag_run = run_dag(drift_dag(dag_id, model_name, drifted_rows))
        reviewer.join()
        assert task_states(dag_run) == {
            "monitor": "success",
            "drift_detected": "success",
            "drift_request": "success",
            "drift_review": "success",
            "drift_decision": "success",
            "verify_rollback": "success",
            "rollback": "success",
            "retrain": "skipped",
        }
        # Nothing moved before the person answered; then @champion is back on v1.
        assert reviewer.alias_while_pending == [str(v2.version)] * 3
        assert holder(hook, model_name) == str(v1.version)
        record = xcom_value(dag_run, "rollback")
        assert (record["mode"], record["model_version"], record["rolled_back_version"]) == (
            "rollback",
            str(v1.version),
            str(v2.version),
        )
        checked = xcom_value(dag_run, "verify_rollback")
        assert checked["rollback_to"] == str(v1.version)
        assert checked["attestation"]["ok"] is True
        replaced = hook.client.get_model_version(model_name, str(v2.version)).tags
        assert replaced[audit.ROLLED_BACK_TO] == str(v1.version)
        decision = xcom_value(dag_run, "drift_review")
        assert decision["approved"] is True
        assert decision["responded_by_user"]["email"] == "alice@example.com"
