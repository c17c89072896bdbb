"""The gate's governance arguments: approval_rules, forbid, and the policy file, as sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from airflow_provider_hlml.gate.digest import review_digest, review_facts
from airflow_provider_hlml.sensors.approval import HumanApprovalSensor
from tests.unit.sensors.test_approval import _context

RULES = [
    {"name": "ML lead", "approvers": ["group:ml-leads"], "required": 2},
    {"name": "Compliance", "approvers": ["group:compliance"]},
]


def sent_state(sensor: HumanApprovalSensor) -> dict[str, Any]:
    request = sensor.build_request(_context(sensor))
    return dict(request.model_dump(mode="json")["spec"]["state"]["hlml"])


class TestArguments:
    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"approval_rules": [{"name": "X", "required": 0}]}, "required"),
            ({"approval_rules": [{"name": "X", "approvers": ["a"], "required": 2}]}, "names only 1"),
            ({"approval_rules": [{"approvers": ["a"]}]}, "name"),
            ({"forbid": ["everyone"]}, "forbid must be a list of requester, model_author"),
            ({"forbid": "requester"}, "forbid must be a list"),
            ({"forbid": ["requester"], "allow_self_approval": True}, "contradicts allow_self_approval"),
        ],
    )
    def test_mistakes_fail_when_the_dag_is_parsed(self, kwargs: dict[str, Any], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            HumanApprovalSensor(task_id="gate", subject="Go?", **kwargs)

    def test_templated_rules_are_checked_when_rendered(self, faulty_conn: str) -> None:
        sensor = HumanApprovalSensor(
            task_id="gate", subject="Go?", approval_rules="{{ params.rules }}", humanlayer_conn_id=faulty_conn
        )
        sensor.approval_rules = '[{"name": "X", "required": 0}]'  # as rendered
        with pytest.raises(ValueError, match="required"):
            sent_state(sensor)
        sensor.approval_rules = "not json"
        with pytest.raises(ValueError, match="not a JSON list"):
            sent_state(sensor)
        sensor.approval_rules = '[{"name": "X", "approvers": ["a@x", "b@x"], "required": 2}]'
        assert sent_state(sensor)["rules"][0]["required"] == 2

    @pytest.mark.parametrize(
        ("approval_type", "allow_self", "expected"),
        [
            ("model_promotion", False, ["requester", "model_author"]),
            ("model_promotion", True, ["model_author"]),
            ("custom", False, ["requester"]),
            ("custom", True, []),
        ],
    )
    def test_default_duties(self, approval_type: str, allow_self: bool, expected: list[str]) -> None:
        sensor = HumanApprovalSensor(
            task_id="gate", subject="Go?", approval_type=approval_type, allow_self_approval=allow_self
        )
        assert sensor.forbid == expected


class TestSentPolicy:
    def test_rules_and_the_approver_list_are_sent_as_rules(self, faulty_conn: str) -> None:
        sensor = HumanApprovalSensor(
            task_id="gate",
            subject="Go?",
            approval_rules=RULES,
            approvers=["alice@example.com"],
            humanlayer_conn_id=faulty_conn,
        )
        state = sent_state(sensor)
        assert [(r["name"], r["required"], r["source"]) for r in state["rules"]] == [
            ("ML lead", 2, "gate"),
            ("Compliance", 1, "gate"),
            ("Approvers", 1, "gate"),  # the plain list is one more rule: "one of these"
        ]
        assert state["forbid"] == ["requester"]
        assert state["requester"] == "carol"

    def test_a_plain_list_alone_stays_a_plain_list(self, faulty_conn: str) -> None:
        state = sent_state(
            HumanApprovalSensor(
                task_id="gate", subject="Go?", approvers=["a@x"], humanlayer_conn_id=faulty_conn
            )
        )
        assert "rules" not in state
        assert state["approvers"] == ["a@x"]

    def test_the_policy_file_comes_first_and_the_gate_only_adds(
        self, faulty_conn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = tmp_path / "policy.yaml"
        path.write_text(
            "types:\n  custom:\n    rules: [{name: Product, approvers: [p@x]}]\n"
            "urgency:\n  critical:\n    rules: [{name: Executive, approvers: ['group:executives']}]\n"
        )
        monkeypatch.setenv("AIRFLOW__HLML__APPROVAL_POLICY_FILE", str(path))
        sensor = HumanApprovalSensor(
            task_id="gate",
            subject="Go?",
            urgency="critical",
            approvers=["a@x"],
            humanlayer_conn_id=faulty_conn,
        )
        names = [(r["name"], r["source"]) for r in sent_state(sensor)["rules"]]
        assert names == [("Product", "policy"), ("Executive", "policy"), ("Approvers", "gate")]

    def test_the_digest_covers_what_the_reviewer_is_shown(self, faulty_conn: str) -> None:
        shown = {
            "model_name": "churn",
            "model_version": "3",
            "mlflow_run_id": "abc",
            "passed": True,
            "metrics": {"accuracy": {"candidate": 0.91, "champion": 0.9}},
        }
        sensor = HumanApprovalSensor(
            task_id="gate", subject="Go?", context=shown, forbid=["requester"], humanlayer_conn_id=faulty_conn
        )
        facts = review_facts(shown)
        assert facts is not None
        assert sent_state(sensor)["digest"] == review_digest(facts)
        sensor.context = {**shown, "metrics": {"accuracy": {"candidate": 0.92, "champion": 0.9}}}
        assert sent_state(sensor)["digest"] != review_digest(facts)


class TestModelAuthor:
    def test_an_unreadable_author_makes_no_request(
        self, faulty_conn: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import json

        from airflow.sdk.exceptions import AirflowException

        monkeypatch.setenv(
            "AIRFLOW_CONN_MLFLOW_DOWN",
            json.dumps(
                {
                    "conn_type": "mlflow",
                    "host": "http://127.0.0.1:1",
                    "extra": {"max_retries": 0, "timeout": 2},
                }
            ),
        )
        sensor = HumanApprovalSensor(
            task_id="gate",
            subject="Promote?",
            approval_type="model_promotion",
            context={"model_name": "churn", "model_version": "1", "mlflow_run_id": "0123abcd"},
            mlflow_conn_id="mlflow_down",
            humanlayer_conn_id=faulty_conn,
        )
        with pytest.raises(AirflowException, match="author of MLflow run '0123abcd' cannot be read"):
            sent_state(sensor)
        # Without model_author in forbid, MLflow is not asked.
        sensor.forbid = ["requester"]
        assert "forbidden" not in sent_state(sensor)
