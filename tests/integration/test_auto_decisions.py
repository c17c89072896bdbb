"""Evidence-based decisions end to end: validate (decision policy) -> gate -> promote.

A real ``mlflow server`` holds a good (logistic regression) and a poor (majority class) version of
a churn model, trained for real; the approvals service runs over HTTP; Airflow runs the DAG with
``dag.test()``. The gate asks nobody about a clear win or a clear regression: the service records
the policy's decision (its principal, the evidence, the attestation), and the promotion carries it.
A person can still decide within the override window, and a policy file can forbid auto-approval.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import httpx
import pendulum
import pytest

from airflow_provider_hlml import audit
from airflow_provider_hlml.hooks.mlflow import MLflowHook
from airflow_provider_hlml.operators.promote import ModelPromoteOperator
from airflow_provider_hlml.operators.validate import MLflowValidateOperator
from tests.integration.test_governance_promotion import env
from tests.unit.operators.dagrun_helpers import churn_frame, run_dag, task_states, xcom_value
from tests.unit.operators.test_mlflow import registered

pytestmark = pytest.mark.integration

# The fixtures: a good (v1) and a poor (v2) version, trained for real; the services.
__all__ = ["env", "registered"]

PRINCIPAL = "policy:champion-margin-v1"


def policy(**extra: Any) -> dict[str, Any]:
    return {
        "name": "champion-margin",
        "version": 1,
        "metrics": {"accuracy": {"threshold": 0.5, "min_improvement": 0.02, "max_regression": 0.02}},
        "seed": 7,
        **extra,
    }


def pipeline(name: str, version: str, decision_policy: dict[str, Any], **gate_kwargs: Any) -> Any:
    """validate (with the policy) >> approve >> promote, for version ``version`` of ``name``."""
    from airflow.sdk import DAG

    from airflow_provider_hlml.sensors.approval import HumanApprovalSensor

    dag_id = f"auto_decision_{uuid.uuid4().hex[:8]}"
    with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC")) as dag:
        validate = MLflowValidateOperator(
            task_id="validate",
            model_uri=f"models:/{name}/{version}",
            data=lambda: churn_frame("validation"),
            target="churned",
            thresholds={"accuracy": 0.0},
            on_fail="continue",
            decision_policy=decision_policy,
        )
        gate = HumanApprovalSensor(
            task_id="approve",
            subject=f"Promote {name} v{version}?",
            context=validate.output,
            approval_type="model_promotion",
            deferrable=True,
            poll_interval=0.3,
            response_timeout=600,
            on_reject="skip",
            **gate_kwargs,
        )
        promote = ModelPromoteOperator(
            task_id="promote",
            model_name=name,
            approval_task_id="approve",
            require_attestation=True,
            retries=0,
        )
        validate >> gate >> promote
    return dag


def audit_of(service: Any, call_id: str) -> list[dict[str, Any]]:
    resp = httpx.get(
        f"{service.base_url}/function_calls/{call_id}/audit",
        headers={"Authorization": f"Bearer {service.agent_key}"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    return list(resp.json())


def pending_request(service: Any, dag_id: str, timeout: float = 120) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {service.agent_key}"}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = httpx.get(f"{service.base_url}/agent/function_calls/pending", headers=headers, timeout=30)
        for call in resp.json():
            if ((call["spec"].get("state") or {}).get("hlml") or {}).get("airflow", {}).get(
                "dag_id"
            ) == dag_id:
                return dict(call)
        time.sleep(0.2)
    raise AssertionError(f"no pending request of {dag_id}")


def answer_when_pending(
    service: Any, dag_id: str, approved: bool, seen: list[dict[str, Any]]
) -> threading.Thread:
    """A reviewer (alice) who answers the DAG's request as soon as it is pending."""

    def review() -> None:
        call = pending_request(service, dag_id)
        seen.append(call)
        resp = httpx.post(
            f"{service.base_url}/agent/function_calls/{call['call_id']}/respond",
            headers={"Authorization": f"Bearer {service.reviewer_key}"},
            json={"approved": approved, "comment": "my call" if approved else "not this week"},
            timeout=30,
        )
        assert resp.status_code == 200, resp.text

    thread = threading.Thread(target=review, daemon=True)
    thread.start()
    return thread


class Models:
    """The registered model's versions, and @champion set to one of them."""

    def __init__(self, mlflow_conn: str, registered: dict[str, Any], champion: str) -> None:
        self.hook = MLflowHook(mlflow_conn)
        self.name = registered["name"]
        self.good, self.poor = registered["good"]["version"], registered["poor"]["version"]
        self.hook.client.set_registered_model_alias(self.name, "champion", getattr(self, champion))

    def champion(self) -> Any:
        return self.hook.client.get_model_version_by_alias(self.name, "champion")


class TestAutoDecisions:
    def test_a_clear_win_is_promoted_by_the_policy_with_its_principal_in_tags_audit_and_attestation(
        self, env: Any, mlflow_conn: str, registered: dict[str, Any]
    ) -> None:
        m = Models(mlflow_conn, registered, champion="poor")
        hook, name, good = m.hook, m.name, m.good
        dag_run = run_dag(pipeline(name, good, policy()))
        assert task_states(dag_run) == {"validate": "success", "approve": "success", "promote": "success"}
        report, decision = xcom_value(dag_run, "validate"), xcom_value(dag_run, "approve")
        assert report["decision"]["outcome"] == "auto_approve"
        assert decision["approved"] is True
        assert decision["branch"] == "auto_approve"
        assert decision["branch_reason"] == report["decision"]["reason"]
        assert decision["responded_by_user"]["id"] == PRINCIPAL
        assert [(a["name"], a["rule"]) for a in decision["approvals"]] == [(PRINCIPAL, "decision policy")]
        champion = hook.client.get_model_version_by_alias(name, "champion")
        assert champion.version == good
        assert champion.tags[audit.APPROVED_BY] == PRINCIPAL
        assert champion.tags[audit.APPROVAL_BRANCH] == "auto_approve"
        assert champion.tags[audit.APPROVAL_CALL_ID] == decision["call_id"]
        statement = json.loads(
            __import__("base64").b64decode(json.loads(champion.tags[audit.ATTESTATION])["payload"])
        )
        assert [a["name"] for a in statement["approvers"]] == [PRINCIPAL]
        assert statement["model"]["version"] == good
        responded = [e for e in audit_of(env, decision["call_id"]) if e["event"] == "responded"]
        assert [e["actor"] for e in responded] == [PRINCIPAL]
        evidence = responded[0]["metadata"]["evidence"]
        assert (
            evidence["metrics"]["accuracy"]["interval"]
            == report["decision"]["metrics"]["accuracy"]["interval"]
        )
        assert evidence["policy"]["version"] == 1

    def test_a_clear_regression_is_rejected_by_the_policy_and_nothing_moves(
        self, env: Any, mlflow_conn: str, registered: dict[str, Any]
    ) -> None:
        m = Models(mlflow_conn, registered, champion="good")
        hook, name, good, poor = m.hook, m.name, m.good, m.poor
        dag_run = run_dag(pipeline(name, poor, policy()))
        assert task_states(dag_run) == {"validate": "success", "approve": "success", "promote": "skipped"}
        decision = xcom_value(dag_run, "approve")
        assert (decision["approved"], decision["branch"]) == (False, "auto_reject")
        assert decision["responded_by_user"]["id"] == PRINCIPAL
        assert hook.client.get_model_version_by_alias(name, "champion").version == good

    def test_a_person_overrides_within_the_window(
        self, env: Any, mlflow_conn: str, registered: dict[str, Any]
    ) -> None:
        m = Models(mlflow_conn, registered, champion="poor")
        hook, name, good, poor = m.hook, m.name, m.good, m.poor
        dag = pipeline(name, good, policy(override_window=120))
        seen: list[dict[str, Any]] = []
        thread = answer_when_pending(env, dag.dag_id, approved=False, seen=seen)
        dag_run = run_dag(dag)
        thread.join(30)
        assert task_states(dag_run) == {"validate": "success", "approve": "success", "promote": "skipped"}
        # The reviewer saw what the policy would do, and why.
        auto = seen[0]["spec"]["state"]["hlml"]["auto"]
        assert (auto["outcome"], auto["principal"], auto["override_seconds"]) == ("approve", PRINCIPAL, 120)
        decision = xcom_value(dag_run, "approve")
        assert (decision["approved"], decision["branch"]) == (False, "human")
        assert "a person decided within the override window" in decision["branch_reason"]
        assert decision["responded_by_user"]["name"] == "alice"
        assert hook.client.get_model_version_by_alias(name, "champion").version == poor

    def test_nobody_answering_in_the_window_leaves_the_decision_to_the_policy(
        self, env: Any, mlflow_conn: str, registered: dict[str, Any]
    ) -> None:
        m = Models(mlflow_conn, registered, champion="poor")
        hook, name, good = m.hook, m.name, m.good
        started = time.monotonic()
        dag_run = run_dag(pipeline(name, good, policy(override_window=3)))
        assert task_states(dag_run)["promote"] == "success"
        decision = xcom_value(dag_run, "approve")
        assert (decision["branch"], decision["responded_by_user"]["id"]) == ("auto_approve", PRINCIPAL)
        assert decision["response_seconds"] >= 3
        assert time.monotonic() - started >= 3
        assert hook.client.get_model_version_by_alias(name, "champion").version == good

    def test_a_policy_file_forbidding_auto_approval_for_the_model_asks_a_person(
        self,
        env: Any,
        mlflow_conn: str,
        registered: dict[str, Any],
        tmp_path: Any,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        m = Models(mlflow_conn, registered, champion="poor")
        hook, name, good = m.hook, m.name, m.good
        policy_file = tmp_path / "policy.yaml"
        policy_file.write_text(f"models:\n  {name}:\n    auto_approve: false\n")
        monkeypatch.setenv("AIRFLOW__HLML__APPROVAL_POLICY_FILE", str(policy_file))
        dag = pipeline(name, good, policy(), allow_self_approval=True, forbid=[])
        seen: list[dict[str, Any]] = []
        thread = answer_when_pending(env, dag.dag_id, approved=True, seen=seen)
        dag_run = run_dag(dag)
        thread.join(30)
        assert task_states(dag_run)["promote"] == "success"
        report, decision = xcom_value(dag_run, "validate"), xcom_value(dag_run, "approve")
        assert report["decision"]["outcome"] == "auto_approve"  # the evidence said: clear win
        assert decision["branch"] == "human"
        assert "approval policy file forbids" in decision["branch_reason"]
        assert f"model '{name}'" in decision["branch_reason"]
        assert "auto" not in seen[0]["spec"]["state"]["hlml"]
        champion = hook.client.get_model_version_by_alias(name, "champion")
        assert (champion.version, champion.tags[audit.APPROVAL_BRANCH]) == (good, "human")
        assert champion.tags[audit.APPROVED_BY] != PRINCIPAL
