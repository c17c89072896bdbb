"""The season example DAG end to end: a person decides the first week, the policy the clear ones.

``dags/hlml_season.py`` with ``dag.test()``, a real ``mlflow server`` and the real approvals
service over HTTP, for three weeks of the season's plan: a first week (no champion: a reviewer
approves it through the unmodified ``humanlayer`` SDK), then a planted win (the decision policy
approves it and the promotion names the policy's principal) and a planted regression (the
policy rejects it and the alias stays).
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_hlml import audit
from airflow_provider_hlml.examples import season
from airflow_provider_hlml.hooks.mlflow import MLflowHook
from tests.integration.test_governance_promotion import env
from tests.unit.operators.dagrun_helpers import run_dag, task_states, xcom_value

pytestmark = pytest.mark.integration

__all__ = ["env"]  # the services' fixture, shared with the governance tests

DAGS = Path(__file__).resolve().parents[2] / "dags"
PRINCIPAL = season.SEASON_POLICY.principal
ALL_TASKS = ("plan_week", "train_candidate", "validate_candidate", "approve_promotion", "promote_candidate")


def season_dag(model_name: str) -> Any:
    """The example DAG from ``dags/``, registering ``model_name`` (one per test) and polling fast."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS / "hlml_season.py"))
    assert bag.import_errors == {}
    dag = bag.dags["hlml_season"]
    train = dag.get_task("train_candidate")
    train.registered_model_name = model_name
    train.op_kwargs = {**train.op_kwargs, "model_name": model_name}
    validate = dag.get_task("validate_candidate")
    validate.model_uri = validate.model_uri.replace("season_classifier", model_name)
    validate.model_name = model_name
    dag.get_task("promote_candidate").model_name = model_name
    gate = dag.get_task("approve_promotion")
    gate.poll_interval = gate.poke_interval = 0.3
    return dag


def reviewer(service: Any, dag_id: str, answered: list[dict[str, Any]]) -> threading.Thread:
    """alice approves the DAG's one pending request (the first week's) as a person's client would."""
    from airflow_provider_hlml.examples.review import approve_when_pending

    def review() -> None:
        answered.extend(
            approve_when_pending(
                service.base_url,
                service.reviewer_key,
                dag_id=dag_id,
                timeout=300,
                poll_interval=0.3,
                comment="First model of the season",
            )
        )

    thread = threading.Thread(target=review, daemon=True)
    thread.start()
    return thread


class TestSeasonDag:
    def test_a_person_starts_the_season_the_policy_promotes_a_win_and_rejects_a_regression(
        self, env: Any, mlflow_conn: str
    ) -> None:
        plan = season.season_plan()
        first = 0
        win = next(w for w, planned in enumerate(plan) if planned.kind == "win")
        regression = next(w for w, planned in enumerate(plan) if planned.kind == "regression" and w > win)
        model_name = f"season_{uuid.uuid4().hex[:8]}"
        client = MLflowHook(mlflow_conn).client

        # Week one: no champion to compare with, so the policy leaves it to a person.
        dag = season_dag(model_name)
        answered: list[dict[str, Any]] = []
        thread = reviewer(env, dag.dag_id, answered)
        dag_run = run_dag(dag, conf={"week": first})
        thread.join(30)
        assert task_states(dag_run) == dict.fromkeys(ALL_TASKS, "success")
        report = xcom_value(dag_run, "validate_candidate")
        assert report["champion_version"] is None
        assert report["decision"]["outcome"] == "human"
        assert len(answered) == 1
        decision = xcom_value(dag_run, "approve_promotion")
        assert decision["approved"] is True
        assert decision["responded_by_user"]["email"] == "alice@example.com"
        first_version = report["model_version"]
        assert client.get_model_version_by_alias(model_name, "champion").version == first_version

        # A planted win: the policy approves it by itself, and the promotion names its principal.
        dag_run = run_dag(season_dag(model_name), conf={"week": win})
        assert task_states(dag_run) == dict.fromkeys(ALL_TASKS, "success")
        planned = xcom_value(dag_run, "plan_week")
        assert (planned["week"], planned["kind"]) == (win, "win")
        report = xcom_value(dag_run, "validate_candidate")
        assert report["champion_version"] == first_version
        assert report["decision"]["outcome"] == "auto_approve"
        accuracy = report["metrics"]["accuracy"]
        assert accuracy["candidate"] - accuracy["champion"] == pytest.approx(planned["delta"], abs=0.015)
        decision = xcom_value(dag_run, "approve_promotion")
        assert decision["approved"] is True
        assert decision["responded_by_user"]["id"] == PRINCIPAL
        champion = client.get_model_version_by_alias(model_name, "champion")
        assert champion.version == report["model_version"] != first_version
        assert champion.tags[audit.APPROVED_BY] == PRINCIPAL
        assert PRINCIPAL in champion.tags[audit.APPROVERS]
        assert champion.tags[audit.APPROVAL_CALL_ID] == decision["call_id"]
        assert champion.tags[audit.previous_holder_tag("champion")] == first_version
        validation = client.get_run(report["validation_run_id"])
        assert validation.data.tags[audit.DECISION_OUTCOME] == "auto_approve"
        assert validation.data.tags[audit.DECISION_PRINCIPAL] == PRINCIPAL
        win_version = champion.version

        # A planted regression: the policy rejects it, the promotion is skipped, the alias stays.
        dag_run = run_dag(season_dag(model_name), conf={"week": regression})
        states = task_states(dag_run)
        assert states == {**dict.fromkeys(ALL_TASKS, "success"), "promote_candidate": "skipped"}
        report = xcom_value(dag_run, "validate_candidate")
        assert report["champion_version"] == win_version
        assert report["decision"]["outcome"] == "auto_reject"
        accuracy = report["metrics"]["accuracy"]
        delta = xcom_value(dag_run, "plan_week")["delta"]
        assert accuracy["candidate"] - accuracy["champion"] == pytest.approx(delta, abs=0.015)
        decision = xcom_value(dag_run, "approve_promotion")
        assert decision["approved"] is False
        assert decision["responded_by_user"]["id"] == PRINCIPAL
        assert client.get_model_version_by_alias(model_name, "champion").version == win_version
        rejected = client.get_model_version(model_name, report["model_version"])
        assert "champion" not in (rejected.aliases or [])
        assert audit.APPROVED_BY not in rejected.tags
        # Nobody was asked after the first week.
        assert len(answered) == 1
