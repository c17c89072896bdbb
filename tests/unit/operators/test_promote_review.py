"""ModelPromoteOperator re-checks what the reviewers were shown, against a real ``mlflow server``.

The gate's result is pushed as the XCom of an approval task (the shape of HumanApprovalSensor's
``ApprovalResult``, with the ``review_digest`` and ``approvals`` it now carries), then the
promotion runs with ``dag.test()``. The model, its training run and its validation run are real
MLflow objects: the validation run holds what ``MLflowValidateOperator`` logs (the evaluator's
metric names, the ``hlml.validation_passed`` tag and ``validation_report.json``).
"""

from __future__ import annotations

import uuid
from typing import Any

import pendulum
import pytest

from airflow_provider_hlml import audit
from airflow_provider_hlml.gate.digest import review_digest, review_facts
from airflow_provider_hlml.hooks.mlflow import MLflowHook
from airflow_provider_hlml.operators.mlflow_runs import MAX_TAG_VALUE
from airflow_provider_hlml.operators.promote import (
    CHANGED_SINCE_APPROVAL,
    ModelPromoteOperator,
    approvers_of,
    approvers_tag,
)
from tests.unit.operators.dagrun_helpers import run_dag, task_states, xcom_value

START = pendulum.datetime(2024, 1, 1, tz="UTC")

APPROVALS = [
    {"name": "alice", "email": "alice@example.com", "rule": "ML lead", "at": "2024-01-01T09:59:00+00:00"},
    {"name": "bob", "email": "bob@example.com", "rule": "ML lead", "at": "2024-01-01T09:59:30+00:00"},
    {"name": "carol", "email": "carol@example.com", "rule": "Compliance", "at": "2024-01-01T10:00:00+00:00"},
]
APPROVERS_TAG = "alice@example.com (ML lead); bob@example.com (ML lead); carol@example.com (Compliance)"


def _uid(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def hook(mlflow_conn: str, airflow_db: Any) -> MLflowHook:
    return MLflowHook(mlflow_conn)


def _trained_version(hook: MLflowHook, name: str, metrics: dict[str, float]) -> tuple[Any, dict[str, Any]]:
    """A training run with ``metrics`` and a registered version of ``name`` from it."""
    client = hook.client
    exp_id = hook.get_or_create_experiment("hlml-promote-review")
    if client.search_registered_models(f"name = '{name}'") == []:
        client.create_registered_model(name)
    run = client.create_run(exp_id)
    run_id = run.info.run_id
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    client.set_terminated(run_id)
    mv = client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run_id)
    train_result = {
        "model_name": name,
        "model_version": str(mv.version),
        "mlflow_run_id": run_id,
        "run_id": run_id,
        "model_uri": f"models:/{name}/{mv.version}",
        "experiment_id": exp_id,
        "metrics": dict(metrics),
    }
    return mv, train_result


def _validated_version(
    hook: MLflowHook,
    name: str,
    *,
    accuracy: float = 0.91,
    f1: float = 0.87,
    champion_version: str | None = "1",
) -> dict[str, Any]:
    """A registered version and a validation run as MLflowValidateOperator leaves them; the report."""
    client = hook.client
    mv, trained = _trained_version(hook, name, {"accuracy": 0.95})
    run = client.create_run(trained["experiment_id"], tags={audit.HLML_STAGE: "validate"})
    validation_run_id = run.info.run_id
    client.log_metric(validation_run_id, "accuracy_score", accuracy)
    client.log_metric(validation_run_id, "f1_score", f1)
    report = {
        "passed": True,
        "metrics": {
            "accuracy": {
                "candidate": accuracy,
                "champion": 0.88,
                "threshold": {"threshold": 0.8},
                "passed": True,
                "reason": "passed",
                "mlflow_metric": "accuracy_score",
            },
            "f1": {
                "candidate": f1,
                "champion": 0.85,
                "threshold": {"threshold": 0.5},
                "passed": True,
                "reason": "passed",
                "mlflow_metric": "f1_score",
            },
        },
        "model_name": name,
        "model_version": str(mv.version),
        "mlflow_run_id": mv.run_id,
        "model_uri": f"models:/{name}/{mv.version}",
        "champion_version": champion_version,
        "validation_run_id": validation_run_id,
    }
    client.log_dict(validation_run_id, report, "validation_report.json")
    client.set_tag(validation_run_id, audit.VALIDATION_PASSED, "true")
    client.set_terminated(validation_run_id)
    return report


def _decision(
    context: dict[str, Any], *, digest: str | None = "auto", approvals: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """HumanApprovalSensor's result for an approval of ``context`` (digest over it unless given)."""
    decision: dict[str, Any] = {
        "approved": True,
        "chosen_options": ["Approve"],
        "reject_option": None,
        "comment": "metrics look right",
        "responded_by_user": {"id": "carol", "name": "carol", "email": "carol@example.com"},
        "responded_at": "2024-01-01T10:00:00+00:00",
        "requested_at": "2024-01-01T09:58:00+00:00",
        "response_seconds": 120.0,
        "call_id": _uid("call"),
        "approval_url": "http://approvals/calls/x",
        "context": context,
        "timed_out": False,
    }
    if digest is not None:
        decision["review_digest"] = review_digest(review_facts(context) or {}) if digest == "auto" else digest
        decision["approvals"] = list(APPROVALS if approvals is None else approvals)
    return decision


def _promote(name: str, decision: dict[str, Any], version: str | None = None) -> Any:
    """Run approve (pushing ``decision``) >> promote; the finished DagRun."""
    from airflow.sdk import DAG, task

    @task(task_id="approve")
    def approve() -> dict[str, Any]:
        return decision

    with DAG(_uid("promote_review"), schedule=None, start_date=START) as dag:
        approve() >> ModelPromoteOperator(
            task_id="promote", model_name=name, version=version, approval_task_id="approve", retries=0
        )
    return run_dag(dag)


def _output(capfd: pytest.CaptureFixture[str]) -> str:
    """What the task wrote so far (the task log goes to the process's stdout)."""
    out, err = capfd.readouterr()
    return out + err


def _champion(hook: MLflowHook, name: str) -> str | None:
    holder = hook.alias_holder(name, "champion")
    return None if holder is None else str(holder.version)


class TestReviewedFactsStillHold:
    def test_unchanged_model_is_promoted_with_every_approver_and_the_digest(self, hook: MLflowHook) -> None:
        name = _uid("reviewed")
        report = _validated_version(hook, name)
        decision = _decision(report)
        dag_run = _promote(name, decision)

        assert task_states(dag_run) == {"approve": "success", "promote": "success"}
        assert _champion(hook, name) == report["model_version"]
        tags = hook.client.get_model_version(name, report["model_version"]).tags
        assert tags[audit.APPROVERS] == APPROVERS_TAG
        assert tags[audit.REVIEW_DIGEST] == decision["review_digest"]
        assert len(tags[audit.REVIEW_DIGEST]) == 64
        assert tags[audit.APPROVED_BY] == "carol@example.com"  # the last approver, as before
        record = xcom_value(dag_run, "promote")
        assert record["approvers"] == APPROVALS
        assert record["approved_by"] == "carol@example.com"

    def test_train_result_context_is_checked_against_the_training_run(
        self, hook: MLflowHook, capfd: pytest.CaptureFixture[str]
    ) -> None:
        name = _uid("trained")
        mv, trained = _trained_version(hook, name, {"accuracy": 0.93, "loss": 0.2})
        approved = _decision(trained, approvals=[{**APPROVALS[0], "rule": None}])
        hook.client.log_metric(mv.run_id, "loss", 0.4)  # re-logged after the approval

        refused = _promote(name, approved)
        assert task_states(refused)["promote"] == "failed"
        assert _champion(hook, name) is None
        log = _output(capfd)
        assert f"{CHANGED_SINCE_APPROVAL}metrics.loss: shown 0.2, now 0.4" in log
        assert "metrics.accuracy" not in log

        # A new approval of what the run holds now goes through; no rule: just the e-mail.
        dag_run = _promote(name, _decision({**trained, "metrics": {"accuracy": 0.93, "loss": 0.4}}))
        assert task_states(dag_run)["promote"] == "success"
        assert _champion(hook, name) == str(mv.version)

        single = _decision(trained, approvals=[{**APPROVALS[0], "rule": None}])
        assert approvers_tag(approvers_of(single)) == "alice@example.com"


class TestReapprovalNeeded:
    def test_metric_relogged_on_the_validation_run_is_refused(
        self, hook: MLflowHook, capfd: pytest.CaptureFixture[str]
    ) -> None:
        name = _uid("relogged")
        report = _validated_version(hook, name, accuracy=0.91)
        decision = _decision(report)
        # After the approval, the evaluation is re-run and logs a lower accuracy (latest wins).
        hook.client.log_metric(report["validation_run_id"], "accuracy_score", 0.85)

        dag_run = _promote(name, decision)
        assert task_states(dag_run) == {"approve": "success", "promote": "failed"}
        assert _champion(hook, name) is None
        tags = hook.client.get_model_version(name, report["model_version"]).tags
        assert audit.APPROVED_BY not in tags
        assert audit.APPROVERS not in tags
        log = _output(capfd)
        assert f"{CHANGED_SINCE_APPROVAL}metrics.accuracy: shown 0.91, now 0.85" in log
        assert "metrics.f1" not in log

    def test_every_changed_fact_is_named(self, hook: MLflowHook) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        name = _uid("verdict")
        report = _validated_version(hook, name, champion_version="1")
        decision = _decision(report)
        client = hook.client
        run_id = report["validation_run_id"]
        client.set_tag(run_id, audit.VALIDATION_PASSED, "false")
        client.log_dict(run_id, {**report, "champion_version": "2"}, "validation_report.json")
        client.log_metric(run_id, "f1_score", 0.5)

        op = ModelPromoteOperator(task_id="promote", model_name=name, approval_task_id="approve")
        mv = client.get_model_version(name, report["model_version"])
        with pytest.raises(AirflowFailException) as info:
            op._check_review_facts(hook, decision, mv)
        assert str(info.value) == (
            CHANGED_SINCE_APPROVAL + "champion_version: shown '1', now '2'; "
            "metrics.f1: shown 0.87, now 0.5; passed: shown True, now False"
        )

    def test_deleted_validation_run_is_refused(self, hook: MLflowHook) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        name = _uid("deleted")
        report = _validated_version(hook, name)
        decision = _decision(report)
        hook.client.delete_run(report["validation_run_id"])
        op = ModelPromoteOperator(task_id="promote", model_name=name, approval_task_id="approve")
        mv = hook.client.get_model_version(name, report["model_version"])
        with pytest.raises(AirflowFailException) as info:
            op._check_review_facts(hook, decision, mv)
        message = str(info.value)
        assert f"validation_run_id: shown '{report['validation_run_id']}', now None" in message
        assert "metrics.accuracy: shown 0.91, now None" in message

    def test_context_altered_after_the_approval_is_refused(
        self, hook: MLflowHook, capfd: pytest.CaptureFixture[str]
    ) -> None:
        name = _uid("altered")
        report = _validated_version(hook, name, accuracy=0.91)
        decision = _decision(report)
        # Someone rewrites the XCom: the same model (the binding keys still match) and a value
        # that agrees with MLflow, but not what the reviewers saw when they approved.
        hook.client.log_metric(report["validation_run_id"], "accuracy_score", 0.7)
        altered = {**report, "metrics": {**report["metrics"], "accuracy": {"candidate": 0.7}}}
        decision["context"] = altered

        dag_run = _promote(name, decision)
        assert task_states(dag_run)["promote"] == "failed"
        assert _champion(hook, name) is None
        log = _output(capfd)
        assert "is not what the reviewers were shown" in log
        assert CHANGED_SINCE_APPROVAL not in log  # refused before MLflow was asked

    def test_context_dropped_from_the_result_is_refused(self, hook: MLflowHook) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        op = ModelPromoteOperator(task_id="promote", model_name="m", approval_task_id="approve")
        decision = _decision({"model_name": "m", "model_version": "1", "mlflow_run_id": "r"})
        decision["context"] = None
        with pytest.raises(AirflowFailException, match="is not what the reviewers were shown"):
            op._check_review_digest(decision)


class TestLegacyDecisions:
    def test_decision_without_digest_is_bound_by_the_keys_only(self, hook: MLflowHook) -> None:
        name = _uid("legacy")
        report = _validated_version(hook, name, accuracy=0.91)
        decision = _decision(report, digest=None)
        assert "review_digest" not in decision
        assert "approvals" not in decision
        # MLflow reads differently now, but an older gate (or the cloud) sent no digest to check.
        hook.client.log_metric(report["validation_run_id"], "accuracy_score", 0.5)

        dag_run = _promote(name, decision)
        assert task_states(dag_run)["promote"] == "success"
        assert _champion(hook, name) == report["model_version"]
        tags = hook.client.get_model_version(name, report["model_version"]).tags
        assert audit.REVIEW_DIGEST not in tags
        assert tags[audit.APPROVERS] == "carol@example.com"  # the one responder it names
        assert xcom_value(dag_run, "promote")["approvers"] == [
            {"name": "carol", "email": "carol@example.com", "rule": None, "at": "2024-01-01T10:00:00+00:00"}
        ]

    def test_decision_without_digest_still_needs_the_binding_keys(
        self, hook: MLflowHook, capfd: pytest.CaptureFixture[str]
    ) -> None:
        name = _uid("legacy_bind")
        report = _validated_version(hook, name)
        decision = _decision({**report, "mlflow_run_id": "another-run"}, digest=None)
        dag_run = _promote(name, decision, version=report["model_version"])
        assert task_states(dag_run)["promote"] == "failed"
        assert _champion(hook, name) is None
        assert "mlflow_run_id: approved 'another-run'" in _output(capfd)


class TestReviewFactsNow:
    def test_reads_what_the_validation_run_recorded(self, hook: MLflowHook) -> None:
        name = _uid("now")
        report = _validated_version(hook, name, accuracy=0.91, f1=0.87, champion_version=None)
        mv = hook.client.get_model_version(name, report["model_version"])
        now = hook.review_facts_now(mv, report)
        assert now == review_facts(report)
        assert now["champion_version"] is None

    def test_facts_mlflow_cannot_tell_are_left_out(self, hook: MLflowHook) -> None:
        """A validation run without the tag and the report (not made by MLflowValidateOperator)."""
        client = hook.client
        name = _uid("untold")
        mv, trained = _trained_version(hook, name, {"accuracy": 0.9})
        run = client.create_run(trained["experiment_id"])
        client.log_metric(run.info.run_id, "accuracy", 0.8)
        shown = {
            **trained,
            "passed": True,
            "champion_version": "7",
            "validation_run_id": run.info.run_id,
            "metrics": {"accuracy": 0.8, "auc": 0.7},
        }
        now = hook.review_facts_now(mv, shown)
        assert "passed" not in now
        assert "champion_version" not in now
        assert now["metrics"] == {"accuracy": 0.8, "auc": None}  # the validation run's, by name
        assert now["validation_run_id"] == run.info.run_id

        op = ModelPromoteOperator(task_id="promote", model_name=name, approval_task_id="approve")
        decision = _decision({**shown, "metrics": {"accuracy": 0.8}})
        op._check_review_facts(hook, decision, mv)  # nothing MLflow can tell changed


class TestApproversTag:
    def test_email_else_name_and_the_rule_when_there_is_one(self) -> None:
        records = [
            {"name": "alice", "email": "alice@example.com", "rule": "ML lead", "at": None},
            {"name": "svc-bot", "email": None, "rule": "Compliance", "at": None},
            {"name": "dave", "email": "", "rule": None, "at": None},
        ]
        assert approvers_tag(records) == "alice@example.com (ML lead); svc-bot (Compliance); dave"
        assert approvers_tag([]) == ""

    def test_is_cut_to_the_tag_limit(self) -> None:
        many = [
            {"name": None, "email": f"reviewer-{i:04d}@example.com", "rule": "Everyone", "at": None}
            for i in range(400)
        ]
        value = approvers_tag(many)
        assert len(value) == MAX_TAG_VALUE
        assert value.startswith("reviewer-0000@example.com (Everyone); reviewer-0001@example.com")

    def test_an_approval_that_counted_for_nobody_lists_nobody(self) -> None:
        decision = {"approved": True, "approvals": [], "responded_by_user": None, "timed_out": True}
        assert approvers_of(decision) == []
