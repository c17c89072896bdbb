"""The approval gate end to end: ``dag.test()`` against the real approvals service over HTTP.

Reviewers decide from a background thread through the unmodified ``humanlayer`` SDK with their
own API keys, the way a person would from the dashboard or the CLI.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pendulum
import pytest
import requests

from airflow_provider_hlml.sensors.approval import HumanApprovalSensor
from tests.fixtures.processes import VENV_BIN

pytestmark = pytest.mark.integration

POLL = 0.3


# ----------------------------------------------------------------------------- helpers
def run_dag(dag: Any) -> Any:
    """Serialize ``dag`` to the metadata DB and run it in-process; returns the DagRun."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=os.devnull, collect_dags=False)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)
    return dag.test()


def task_states(dag_run: Any) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance.task_id, TaskInstance.state).filter(
            TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id
        )
        return {task_id: str(state) for task_id, state in rows}


def xcom_value(dag_run: Any, task_id: str, key: str = "return_value") -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=task_id, key=key)
        row = session.scalars(query).first()
        return None if row is None else XComModel.deserialize_value(row)


def calls_for_dag(service: Any, dag_id: str, status: str | None = None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"limit": 1000}
    if status:
        params["status"] = status
    resp = requests.get(
        f"{service.base_url}/function_calls",
        params=params,
        headers={"Authorization": f"Bearer {service.admin_key}"},
        timeout=10,
    )
    resp.raise_for_status()
    return [
        c
        for c in resp.json()
        if ((c["spec"].get("state") or {}).get("hlml") or {}).get("airflow", {}).get("dag_id") == dag_id
    ]


def audit(service: Any, call_id: str) -> list[dict[str, Any]]:
    resp = requests.get(
        f"{service.base_url}/function_calls/{call_id}/audit",
        headers={"Authorization": f"Bearer {service.admin_key}"},
        timeout=10,
    )
    resp.raise_for_status()
    return list(resp.json())


@dataclass
class Decision:
    key: str
    approved: bool
    comment: str | None = None
    reject_option: str | None = None
    delay: float = 0.0


@dataclass
class Reviewer:
    """Waits for the DAG's pending request, then answers it through the real SDK, decision by decision."""

    service: Any
    dag_id: str
    decisions: list[Decision]
    outcomes: list[str] = field(default_factory=list)
    call_id: str | None = None
    thread: threading.Thread | None = None

    def start(self) -> Reviewer:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        from humanlayer import FunctionCallStatus, HumanLayer

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.call_id is None:
            pending = calls_for_dag(self.service, self.dag_id, "pending")
            if pending:
                self.call_id = pending[0]["call_id"]
                break
            time.sleep(0.2)
        if self.call_id is None:
            self.outcomes.append("no request appeared")
            return
        for decision in self.decisions:
            time.sleep(decision.delay)
            client = HumanLayer.cloud(api_key=decision.key, api_base_url=self.service.base_url)
            try:
                client.backend.functions().respond(  # type: ignore[union-attr]
                    self.call_id,
                    FunctionCallStatus(
                        approved=decision.approved,
                        comment=decision.comment,
                        reject_option_name=decision.reject_option,
                    ),
                )
                self.outcomes.append("accepted")
            except Exception as exc:
                self.outcomes.append(f"refused: {exc}")

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(timeout=30)


def gate_dag(dag_id: str, downstream: bool = True, **sensor_kwargs: Any) -> Any:
    from airflow.sdk import DAG
    from airflow.sdk.bases.operator import BaseOperator

    class Record(BaseOperator):
        def execute(self, context: Any) -> str:
            return "ran"

    sensor_kwargs.setdefault("poll_interval", POLL)
    sensor_kwargs.setdefault("deferrable", True)
    with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2025, 1, 1), catchup=False) as dag:
        gate = HumanApprovalSensor(task_id="gate", **sensor_kwargs)
        if downstream:
            gate >> Record(task_id="after")
    return dag


def unique(name: str) -> str:
    return f"{name}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def gate_env(
    approvals_service: Any, humanlayer_conn: str, airflow_db: Any, monkeypatch: pytest.MonkeyPatch
) -> Any:
    monkeypatch.setenv("AIRFLOW__HLML__LONG_POLL_SECONDS", "5")
    return approvals_service


# ------------------------------------------------------------------------------- tests
class TestHumanApprovalSensorEndToEnd:
    def test_approve_pushes_the_result_and_runs_downstream(self, gate_env: Any) -> None:
        service = gate_env
        dag_id = unique("gate_approve")
        secret = "hlml-db-password-8f2b1c"
        os.environ["AIRFLOW_CONN_GATE_DB"] = (
            f'{{"conn_type": "generic", "host": "db", "password": "{secret}"}}'
        )
        try:
            dag = gate_dag(
                dag_id,
                subject="Promote churn {{ params.version }}?",
                body="Accuracy **0.91**",
                context={
                    "model_name": "churn",
                    "model_version": "3",
                    "db": "{{ conn.gate_db.password }}",
                    "api_key": "plain-but-sensitive-name",
                },
                approval_type="model_promotion",
                urgency="high",
                reject_options=[{"name": "needs_review", "title": "Needs another review"}],
                approvers=["alice@example.com"],
                params={"version": "v3"},
            )
            reviewer = Reviewer(service, dag_id, [Decision(service.reviewer_key, True, "ship it")]).start()
            dag_run = run_dag(dag)
            reviewer.join()
        finally:
            os.environ.pop("AIRFLOW_CONN_GATE_DB", None)
        assert reviewer.outcomes == ["accepted"]
        assert task_states(dag_run) == {"gate": "success", "after": "success"}
        result = xcom_value(dag_run, "gate")
        assert result["approved"] is True
        assert result["chosen_options"] == ["Approve"]
        assert result["comment"] == "ship it"
        assert result["responded_by_user"]["name"] == "alice"
        assert result["responded_by_user"]["email"] == "alice@example.com"
        assert result["call_id"] == reviewer.call_id
        assert result["call_id"] in result["approval_url"]
        assert result["response_seconds"] is not None
        assert result["response_seconds"] >= 0
        assert set(result) >= {
            "approved", "chosen_options", "reject_option", "comment", "responded_by_user",
            "responded_at", "requested_at", "response_seconds", "call_id", "approval_url", "context",
        }  # fmt: skip
        # What the reviewer saw: templated, secrets redacted, policy in spec.state.
        (call,) = calls_for_dag(service, dag_id)
        kwargs = call["spec"]["kwargs"]
        assert call["spec"]["fn"] == "model_promotion"
        assert kwargs["subject"] == "Promote churn v3?"
        assert kwargs["urgency"] == "high"
        assert kwargs["context"]["model_name"] == "churn"
        assert kwargs["context"]["db"] == "***"
        assert kwargs["context"]["api_key"] == "***"
        assert secret not in str(call)
        assert service.agent_key not in str(call)
        assert result["context"] == kwargs["context"]
        hlml = call["spec"]["state"]["hlml"]
        assert hlml["approvers"] == ["alice@example.com"]
        assert hlml["requester"] == "dag_test"
        assert hlml["allow_self_approval"] is False
        assert hlml["airflow"]["dag_id"] == dag_id
        assert hlml["airflow"]["task_id"] == "gate"
        assert call["spec"]["reject_options"][0]["name"] == "needs_review"

    def test_reject_fails_without_retry(self, gate_env: Any) -> None:
        service = gate_env
        dag_id = unique("gate_reject_fail")
        dag = gate_dag(dag_id, subject="Go?", on_reject="fail", retries=2, reject_options=["not_now"])
        reviewer = Reviewer(
            service, dag_id, [Decision(service.reviewer_key, False, "metrics regressed", "not_now")]
        ).start()
        dag_run = run_dag(dag)
        reviewer.join()
        assert task_states(dag_run) == {"gate": "failed", "after": "upstream_failed"}
        assert len(calls_for_dag(service, dag_id)) == 1  # AirflowFailException: no retry asked again
        # The failed gate still records who rejected and why.
        result = xcom_value(dag_run, "gate")
        assert (result["approved"], result["reject_option"], result["comment"]) == (
            False,
            "not_now",
            "metrics regressed",
        )

    def test_reject_skip_skips_downstream(self, gate_env: Any) -> None:
        service = gate_env
        dag_id = unique("gate_reject_skip")
        dag = gate_dag(dag_id, subject="Go?", on_reject="skip")
        reviewer = Reviewer(service, dag_id, [Decision(service.reviewer2_key, False, "no")]).start()
        dag_run = run_dag(dag)
        reviewer.join()
        assert task_states(dag_run) == {"gate": "success", "after": "skipped"}
        result = xcom_value(dag_run, "gate")
        assert result["approved"] is False
        assert result["chosen_options"] == ["Reject"]
        assert result["responded_by_user"]["name"] == "bob"

    @pytest.mark.parametrize(
        ("on_timeout", "gate_state", "after_state", "approved"),
        [
            ("fail", "failed", "upstream_failed", None),
            ("skip", "skipped", "skipped", None),
            ("approve", "success", "success", True),
            ("reject", "success", "skipped", False),
        ],
    )
    def test_timeout_policies(
        self, gate_env: Any, on_timeout: str, gate_state: str, after_state: str, approved: bool | None
    ) -> None:
        service = gate_env
        dag_id = unique(f"gate_timeout_{on_timeout}")
        dag = gate_dag(dag_id, subject="Go?", response_timeout=1.5, on_timeout=on_timeout, on_reject="skip")
        started = time.monotonic()
        dag_run = run_dag(dag)
        assert time.monotonic() - started < 45
        assert task_states(dag_run) == {"gate": gate_state, "after": after_state}
        (call,) = calls_for_dag(service, dag_id)
        assert call["status"]["cancel_reason"] == "timeout"  # withdrawn: nobody can decide it any more
        assert any(e["event"] in ("expired", "cancelled") for e in audit(service, call["call_id"]))
        if approved is not None:
            result = xcom_value(dag_run, "gate")
            assert result["approved"] is approved
            assert result["timed_out"] is True
            assert result["responded_by_user"] is None

    def test_escalation_lets_the_escalation_approver_decide(self, gate_env: Any) -> None:
        service = gate_env
        dag_id = unique("gate_escalate")
        dag = gate_dag(
            dag_id,
            subject="Go?",
            approvers=["alice@example.com"],
            response_timeout=1.5,
            on_timeout="escalate",
            escalation_approvers=["bob@example.com"],
            escalation_timeout=30,
        )
        # bob may decide only after the escalation; his early attempt is refused.
        reviewer = Reviewer(
            service,
            dag_id,
            [
                Decision(service.reviewer2_key, True, "too early"),
                Decision(service.reviewer2_key, True, "ok", delay=3),
            ],
        ).start()
        dag_run = run_dag(dag)
        reviewer.join()
        assert reviewer.outcomes[0].startswith("refused")
        assert "403" in reviewer.outcomes[0]
        assert reviewer.outcomes[1] == "accepted"
        assert task_states(dag_run) == {"gate": "success", "after": "success"}
        assert xcom_value(dag_run, "gate")["responded_by_user"]["name"] == "bob"
        events = [e["event"] for e in audit(service, reviewer.call_id or "")]
        assert "escalated" in events
        assert "refused" in events

    def test_escalation_then_timeout_fails(self, gate_env: Any) -> None:
        service = gate_env
        dag_id = unique("gate_escalate_timeout")
        dag = gate_dag(
            dag_id,
            subject="Go?",
            response_timeout=1,
            on_timeout="escalate",
            escalation_approvers=["bob@example.com"],
            escalation_timeout=1,
        )
        dag_run = run_dag(dag)
        assert task_states(dag_run) == {"gate": "failed", "after": "upstream_failed"}
        (call,) = calls_for_dag(service, dag_id)
        events = [e["event"] for e in audit(service, call["call_id"])]
        assert events.count("escalated") == 1
        assert call["status"]["cancel_reason"] == "timeout"

    def test_non_approver_is_refused_and_the_gate_keeps_waiting(self, gate_env: Any) -> None:
        service = gate_env
        dag_id = unique("gate_non_approver")
        dag = gate_dag(dag_id, subject="Go?", approvers=["alice@example.com"], response_timeout=40)
        reviewer = Reviewer(
            service,
            dag_id,
            [
                Decision(service.reviewer2_key, True, "bob says yes"),
                Decision(service.reviewer_key, False, "alice says no", delay=1),
            ],
        ).start()
        dag_run = run_dag(dag)
        reviewer.join()
        assert reviewer.outcomes[0].startswith("refused")
        assert reviewer.outcomes[1] == "accepted"
        assert task_states(dag_run) == {"gate": "failed", "after": "upstream_failed"}

    def test_self_approval_is_refused(self, gate_env: Any) -> None:
        service = gate_env
        # dag.test() runs are triggered by the user "dag_test": give that user a reviewer key.
        out = subprocess.run(
            [str(VENV_BIN / "hlml-approvals"), "keys", "create", "--role", "reviewer", "--name", "dag_test",
             "--email", "dag_test@example.com", "--database-url", service.database_url, "--json"],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        import json

        self_key = json.loads(out.stdout)["key"]
        dag_id = unique("gate_self")
        dag = gate_dag(dag_id, subject="Go?", response_timeout=40)
        reviewer = Reviewer(
            service,
            dag_id,
            [Decision(self_key, True, "my own run"), Decision(service.reviewer_key, True, "ok", delay=1)],
        ).start()
        dag_run = run_dag(dag)
        reviewer.join()
        assert reviewer.outcomes[0].startswith("refused")
        assert "self-approval" in reviewer.outcomes[0]
        assert task_states(dag_run) == {"gate": "success", "after": "success"}
        assert xcom_value(dag_run, "gate")["responded_by_user"]["name"] == "alice"

    def test_reschedule_mode_when_not_deferrable(self, gate_env: Any) -> None:
        service = gate_env
        dag_id = unique("gate_reschedule")
        dag = gate_dag(dag_id, subject="Go?", deferrable=False, poll_interval=0.5)
        assert dag.get_task("gate").mode == "reschedule"
        reviewer = Reviewer(service, dag_id, [Decision(service.reviewer_key, True, "fine", delay=1)]).start()
        dag_run = run_dag(dag)
        reviewer.join()
        assert task_states(dag_run) == {"gate": "success", "after": "success"}
        assert xcom_value(dag_run, "gate")["approved"] is True
        assert len(calls_for_dag(service, dag_id)) == 1  # every poke found the same request


def _utc_in(seconds: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat()
