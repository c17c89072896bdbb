"""Governance at the gate, end to end: ``dag.test()`` against the real approvals service over HTTP.

Groups, approval rules with counts, the policy file, separation of duties against a real MLflow
run, and a gate with groups against a server that has none. Reviewers answer through the
unmodified ``humanlayer`` SDK with their own keys (:class:`tests.integration.test_approval_gate.Reviewer`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_approval_gate import (
    Decision,
    Reviewer,
    audit,
    calls_for_dag,
    gate_dag,
    run_dag,
    task_states,
    unique,
    xcom_value,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def gate_env(
    approvals_service: Any, humanlayer_conn: str, airflow_db: Any, monkeypatch: pytest.MonkeyPatch
) -> Any:
    monkeypatch.setenv("AIRFLOW__HLML__LONG_POLL_SECONDS", "5")
    monkeypatch.delenv("AIRFLOW__HLML__APPROVAL_POLICY_FILE", raising=False)
    return approvals_service


class Directory:
    """Principals and groups in the service's database (what ``hlml-approvals keys/groups`` do)."""

    def __init__(self, service: Any) -> None:
        from airflow_provider_hlml.approvals import db

        self.service = service
        self.engine = db.make_engine(service.database_url, pool_size=1)
        self.sessions = db.make_sessionmaker(self.engine)

    def reviewer(self, name: str) -> str:
        from airflow_provider_hlml.approvals import store

        with self.sessions() as session:
            return store.create_key(session, name=name, role="reviewer", email=f"{name}@example.com")[1]

    def group(self, members: list[str]) -> str:
        from airflow_provider_hlml.approvals import store

        name = f"g-{uuid.uuid4().hex[:8]}"
        with self.sessions() as session:
            store.create_group(session, name=name)
            store.add_to_group(session, name=name, principals=members)
        return f"group:{name}"

    def close(self) -> None:
        self.engine.dispose()


@pytest.fixture
def directory(gate_env: Any) -> Iterator[Directory]:
    d = Directory(gate_env)
    try:
        yield d
    finally:
        d.close()


class TestQuorum:
    def test_two_rules_with_groups_decide_only_when_every_rule_is_met(
        self, gate_env: Any, directory: Directory
    ) -> None:
        service = gate_env
        carol = unique("carol")
        carol_key = directory.reviewer(carol)
        ml_leads = directory.group(["alice", "bob"])
        compliance = directory.group([carol, "bob"])  # bob is in both groups
        dag_id = unique("gate_quorum")
        dag = gate_dag(
            dag_id,
            subject="Promote?",
            approval_rules=[
                {"name": "ML lead", "approvers": [ml_leads], "required": 2},
                {"name": "Compliance", "approvers": [compliance], "required": 1},
            ],
            response_timeout=60,
        )
        reviewer = Reviewer(
            service,
            dag_id,
            [
                Decision(service.reviewer_key, True, "alice: yes"),
                Decision(service.reviewer_key, True, "alice again", delay=0.5),
                Decision(service.reviewer2_key, True, "bob: yes", delay=1.5),
                Decision(carol_key, True, "carol: yes", delay=1.5),
            ],
        ).start()
        dag_run = run_dag(dag)
        reviewer.join()
        assert reviewer.outcomes[0] == "accepted"
        assert reviewer.outcomes[1].startswith("refused")
        assert "already answered" in reviewer.outcomes[1]
        assert reviewer.outcomes[2:] == ["accepted", "accepted"]
        assert task_states(dag_run) == {"gate": "success", "after": "success"}
        result = xcom_value(dag_run, "gate")
        # bob (in both groups) was first counted toward ML lead; carol's approval fits Compliance only.
        assert [(a["name"], a["rule"]) for a in result["approvals"]] == [
            ("alice", "ML lead"),
            ("bob", "ML lead"),
            (carol, "Compliance"),
        ]
        assert result["responded_by_user"]["name"] == carol
        events = audit(service, reviewer.call_id or "")
        kinds = [e["event"] for e in events]
        assert kinds.count("answered") == 2  # the two partial approvals
        assert kinds[-1] == "responded"
        assert events[-1]["metadata"]["progress"] == (
            f"ML lead 2 of 2: alice, bob; Compliance 1 of 1: {carol}"
        )
        created = events[0]["metadata"]
        groups = {k: v for k, v in created["members"].items() if k.startswith("group:")}
        assert groups == {
            ml_leads: ["alice", "alice@example.com", "bob", "bob@example.com"],
            compliance: ["bob", "bob@example.com", carol, f"{carol}@example.com"],
        }

    def test_a_rejection_vetoes_partial_approvals(self, gate_env: Any, directory: Directory) -> None:
        service = gate_env
        dag_id = unique("gate_quorum_veto")
        dag = gate_dag(
            dag_id,
            subject="Promote?",
            approval_rules=[
                {"name": "Reviewers", "approvers": ["alice@example.com", "bob@example.com"], "required": 2}
            ],
            response_timeout=60,
        )
        reviewer = Reviewer(
            service,
            dag_id,
            [
                Decision(service.reviewer_key, True, "yes"),
                Decision(service.reviewer2_key, False, "the drift report is missing", delay=1),
            ],
        ).start()
        dag_run = run_dag(dag)
        reviewer.join()
        assert reviewer.outcomes == ["accepted", "accepted"]
        assert task_states(dag_run) == {"gate": "failed", "after": "upstream_failed"}
        (call,) = calls_for_dag(service, dag_id)
        assert call["status"]["approved"] is False
        assert call["status"]["comment"] == "the drift report is missing"


class TestPolicyFile:
    def _policy(self, tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch) -> None:
        path = tmp_path / "approval-policy.yaml"
        path.write_text(text)
        monkeypatch.setenv("AIRFLOW__HLML__APPROVAL_POLICY_FILE", str(path))

    def test_the_file_adds_a_rule_the_gate_did_not_ask_for(
        self, gate_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        service = gate_env
        self._policy(
            tmp_path,
            "types:\n  custom:\n    rules:\n"
            "      - {name: Product, approvers: [bob@example.com], required: 1}\n",
            monkeypatch,
        )
        dag_id = unique("gate_policy_file")
        # The gate asks for alice only; the file adds bob's rule: both must approve.
        dag = gate_dag(dag_id, subject="Go?", approvers=["alice@example.com"], response_timeout=60)
        reviewer = Reviewer(
            service,
            dag_id,
            [
                Decision(service.reviewer_key, True, "alice"),
                Decision(service.reviewer2_key, True, "bob", delay=1),
            ],
        ).start()
        dag_run = run_dag(dag)
        reviewer.join()
        assert reviewer.outcomes == ["accepted", "accepted"]
        assert task_states(dag_run) == {"gate": "success", "after": "success"}
        (call,) = calls_for_dag(service, dag_id)
        rules = call["spec"]["state"]["hlml"]["rules"]
        assert [(r["name"], r["source"]) for r in rules] == [("Product", "policy"), ("Approvers", "gate")]
        assert [a["rule"] for a in xcom_value(dag_run, "gate")["approvals"]] == ["Approvers", "Product"]

    def test_a_gate_cannot_loosen_what_the_file_forbids(
        self, gate_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        service = gate_env
        self._policy(tmp_path, "default:\n  forbid: [requester]\n", monkeypatch)
        dag_id = unique("gate_policy_loosen")
        dag = gate_dag(dag_id, subject="Go?", allow_self_approval=True, response_timeout=60)
        dag_run = run_dag(dag)
        assert task_states(dag_run) == {"gate": "failed", "after": "upstream_failed"}
        assert calls_for_dag(service, dag_id) == []  # refused before any request was made

    def test_an_unreadable_policy_file_fails_the_gate(
        self, gate_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        service = gate_env
        self._policy(tmp_path, "types:\n  custom:\n    rules: [{name: X, required: 0}]\n", monkeypatch)
        dag_id = unique("gate_policy_bad")
        dag_run = run_dag(gate_dag(dag_id, subject="Go?", response_timeout=60))
        assert task_states(dag_run) == {"gate": "failed", "after": "upstream_failed"}
        assert calls_for_dag(service, dag_id) == []


class TestServerWithoutGroups:
    def test_groups_against_a_server_without_them_fail_at_once(
        self, faulty_server: Any, faulty_conn: str, airflow_db: Any
    ) -> None:
        dag_id = unique("gate_no_groups")
        dag = gate_dag(
            dag_id,
            subject="Go?",
            approvers=["group:ml-leads"],
            humanlayer_conn_id=faulty_conn,
            response_timeout=60,
            retries=0,
        )
        dag_run = run_dag(dag)
        assert task_states(dag_run) == {"gate": "failed", "after": "upstream_failed"}
        assert faulty_server.calls == {}  # nothing was asked of anyone
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_provider_hlml.gate.policy import ApprovalPolicy, ApprovalRule

        gate = dag.get_task("gate")
        for policy, what in (
            (ApprovalPolicy(approvers=("group:ml-leads",)), "approver groups"),
            (ApprovalPolicy(rules=(ApprovalRule("Two", ("a@x", "b@x"), 2),)), "approval rules with counts"),
        ):
            with pytest.raises(
                AirflowFailException, match=f"uses {what}, which the server at .* does not support"
            ):
                gate.check_server_supports(policy)
        gate.check_server_supports(ApprovalPolicy(approvers=("a@x",)))  # a plain list needs nothing


class TestSeparationOfDuties:
    def test_the_model_author_cannot_approve_its_promotion(
        self, gate_env: Any, mlflow_conn: str, mlflow_server: Any
    ) -> None:
        from mlflow.tracking import MlflowClient

        service = gate_env
        client = MlflowClient(tracking_uri=mlflow_server.url)
        experiment = client.create_experiment(unique("sod"))
        run = client.create_run(experiment, tags={"mlflow.user": "alice"})
        dag_id = unique("gate_model_author")
        dag = gate_dag(
            dag_id,
            subject="Promote churn v1?",
            approval_type="model_promotion",
            context={"model_name": "churn", "model_version": "1", "mlflow_run_id": run.info.run_id},
            response_timeout=60,
        )
        reviewer = Reviewer(
            service,
            dag_id,
            [
                Decision(service.reviewer_key, True, "my model is great"),
                Decision(service.reviewer2_key, True, "ok", delay=1),
            ],
        ).start()
        dag_run = run_dag(dag)
        reviewer.join()
        assert reviewer.outcomes[0].startswith("refused")
        assert "trained this model" in reviewer.outcomes[0]
        assert reviewer.outcomes[1] == "accepted"
        assert task_states(dag_run) == {"gate": "success", "after": "success"}
        (call,) = calls_for_dag(service, dag_id)
        forbidden = call["spec"]["state"]["hlml"]["forbidden"]
        assert {"who": "alice", "duty": "model_author"}.items() <= forbidden[0].items()
        assert call["spec"]["state"]["hlml"]["digest"]  # what alice and bob were shown, digested


class RecordingNotifier:
    """An Airflow notifier (``BaseNotifier``) that appends what it was told to a file."""

    def __new__(cls, path: Path) -> Any:
        from airflow.sdk import BaseNotifier

        class _Recording(BaseNotifier):
            template_fields = ("message",)

            def __init__(self, message: str) -> None:
                super().__init__()
                self.message = message

            def notify(self, context: Any) -> None:
                approval = context["approval"]
                with open(path, "a") as fh:
                    fh.write(f"{self.message}|{approval['call_id']}|{approval['comment']}\n")

        return _Recording("rejected {{ ti.task_id }}")


class TestEscalationAndRejectionPolicy:
    def test_timeout_escalates_to_a_group_whose_member_then_decides(
        self, gate_env: Any, directory: Directory
    ) -> None:
        service = gate_env
        dave = unique("dave")
        dave_key = directory.reviewer(dave)
        oncall = directory.group([dave])
        dag_id = unique("gate_escalate_group")
        dag = gate_dag(
            dag_id,
            subject="Go?",
            approvers=["alice@example.com"],
            response_timeout=1.5,
            on_timeout="escalate",
            escalation_approvers=[oncall],
            escalation_timeout=30,
        )
        reviewer = Reviewer(
            service,
            dag_id,
            [Decision(dave_key, True, "too early"), Decision(dave_key, True, "on call: ok", delay=3)],
        ).start()
        dag_run = run_dag(dag)
        reviewer.join()
        assert reviewer.outcomes[0].startswith("refused")  # not an approver before the escalation
        assert reviewer.outcomes[1] == "accepted"
        assert task_states(dag_run) == {"gate": "success", "after": "success"}
        assert xcom_value(dag_run, "gate")["responded_by_user"]["name"] == dave
        escalated = next(e for e in audit(service, reviewer.call_id or "") if e["event"] == "escalated")
        assert escalated["metadata"]["members"] == {oncall: [dave, f"{dave}@example.com"]}

    def test_a_rejection_notifies_the_rejection_notifiers(self, gate_env: Any, tmp_path: Path) -> None:
        service = gate_env
        record = tmp_path / "rejections.txt"
        dag_id = unique("gate_reject_notify")
        dag = gate_dag(
            dag_id,
            subject="Go?",
            response_timeout=60,
            rejection_notifiers=[RecordingNotifier(record)],
        )
        reviewer = Reviewer(service, dag_id, [Decision(service.reviewer_key, False, "not this one")]).start()
        dag_run = run_dag(dag)
        reviewer.join()
        assert task_states(dag_run) == {"gate": "failed", "after": "upstream_failed"}
        assert record.read_text().splitlines() == [f"rejected gate|{reviewer.call_id}|not this one"]
