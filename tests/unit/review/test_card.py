"""The reviewer's card: one view model of a request, whatever the channel."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from airflow_provider_hlml.gate.state import GateLocation
from airflow_provider_hlml.review.card import build_card, metric_rows

REPORT = {
    "model_name": "churn_predictor",
    "model_version": "4",
    "mlflow_run_id": "run-cand",
    "model_uri": "models:/churn_predictor/4",
    "validation_run_id": "run-val",
    "passed": True,
    "champion_version": "3",
    "metrics": {
        "accuracy": {
            "candidate": 0.912,
            "champion": 0.9,
            "threshold": {"threshold": 0.85, "min_absolute_change": 0.01, "greater_is_better": True},
            "passed": True,
            "reason": "passed",
            "mlflow_metric": "accuracy_score",
        },
        "log_loss": {
            "candidate": 0.31,
            "champion": 0.3,
            "threshold": {"threshold": 0.5, "greater_is_better": False},
            "passed": True,
            "reason": "passed",
            "mlflow_metric": "log_loss",
        },
    },
    "dataset_rows": 4000,
}


class Links:
    """A channel's links, recording what it was asked."""

    def __init__(self, base: str = "http://mlflow.test:5000") -> None:
        self.base = base

    def mlflow_run(self, run_id: str) -> str | None:
        return f"{self.base}/#/experiments/1/runs/{run_id}"

    def mlflow_model_version(self, name: str, version: str) -> str | None:
        return f"{self.base}/#/models/{name}/versions/{version}"

    def mlflow_compare_runs(self, run_ids: Sequence[str]) -> str | None:
        return f"{self.base}/#/compare-runs?runs={','.join(run_ids)}"

    def airflow_task(self, location: GateLocation) -> str | None:
        return f"/dags/{location.dag_id}/runs/{location.run_id}/tasks/{location.task_id}"

    def airflow_dag_run(self, location: GateLocation) -> str | None:
        return f"/dags/{location.dag_id}/runs/{location.run_id}"


def call(
    context: Any = None, *, status: dict[str, Any] | None = None, body: Any = "", **spec: Any
) -> dict[str, Any]:
    return {
        "call_id": "hlml-1",
        "run_id": "r",
        "spec": {
            "fn": "model_promotion",
            "kwargs": {
                "subject": "Promote churn_predictor v4?",
                "body": body,
                "context": REPORT if context is None else context,
                "approval_type": "model_promotion",
                "urgency": "high",
            },
            "state": {
                "hlml": {
                    "approvers": ["alice@example.com"],
                    "airflow": {
                        "dag_id": "churn",
                        "run_id": "manual__1",
                        "task_id": "approve",
                        "map_index": -1,
                    },
                }
            },
            "reject_options": [
                {"name": "needs_retraining", "title": "Needs retraining"},
                {"name": "not_now", "title": "Not now", "description": "later"},
                {"title": "no name"},
            ],
            **spec,
        },
        "status": status or {"approved": None},
    }


class TestComparison:
    def test_candidate_champion_and_difference_in_the_metrics_direction(self) -> None:
        accuracy, loss = metric_rows(REPORT["metrics"])
        assert (accuracy.candidate, accuracy.champion) == (0.912, 0.9)
        assert accuracy.delta == pytest.approx(0.012)
        assert accuracy.delta_relative == pytest.approx(0.012 / 0.9)
        assert accuracy.better is True
        assert accuracy.rule == ">= 0.85, +0.01 vs champion"
        assert accuracy.direction == "higher is better"
        # Lower is better for a loss: a higher candidate is worse.
        assert loss.delta == pytest.approx(0.01)
        assert loss.better is False
        assert loss.rule == "<= 0.5"
        assert loss.direction == "lower is better"

    def test_no_champion_yet(self) -> None:
        first = {**REPORT, "champion_version": None}
        first["metrics"] = {k: {**v, "champion": None} for k, v in REPORT["metrics"].items()}
        card = build_card(call(first), Links())
        assert card.no_champion is True
        assert all(r.champion is None and r.delta is None and r.better is None for r in card.metrics)
        assert card.link("champion_version") is None
        assert card.link("compare") is None
        assert build_card(call(), Links()).no_champion is False

    @pytest.mark.parametrize(
        ("metrics", "expected"),
        [
            ({"accuracy": 0.91}, [("accuracy", 0.91, None)]),  # a training result: plain values
            (
                {"x": float("nan"), "y": True, "z": "high"},
                [("x", None, None), ("y", None, None), ("z", None, None)],
            ),
            ({"a": {"candidate": 1.0, "champion": 0.0}}, [("a", 1.0, 0.0)]),
            ("not metrics", []),
        ],
    )
    def test_odd_metrics_never_break_the_card(self, metrics: Any, expected: list[Any]) -> None:
        rows = metric_rows(metrics)
        assert [(r.name, r.candidate, r.champion) for r in rows] == expected
        for row in rows:
            if row.champion == 0:
                assert row.delta_relative is None  # no relative change against zero


class TestCard:
    def test_the_card_of_a_promotion(self) -> None:
        card = build_card(call(body="Move `champion` to **v4**."), Links(), champion_run_id="run-champ")
        assert card.subject == "Promote churn_predictor v4?"
        assert card.body_html == "<p>Move <code>champion</code> to <strong>v4</strong>.</p>\n"
        assert card.model == {
            "model_name": "churn_predictor",
            "model_version": "4",
            "mlflow_run_id": "run-cand",
            "model_uri": "models:/churn_predictor/4",
            "validation_run_id": "run-val",
            "champion_version": "3",
        }
        assert card.has_report is True
        assert [(lk.kind, lk.label, lk.url) for lk in card.links] == [
            ("mlflow_run", "MLflow run", "http://mlflow.test:5000/#/experiments/1/runs/run-cand"),
            (
                "model_version",
                "churn_predictor v4",
                "http://mlflow.test:5000/#/models/churn_predictor/versions/4",
            ),
            (
                "champion_version",
                "champion v3",
                "http://mlflow.test:5000/#/models/churn_predictor/versions/3",
            ),
            (
                "compare",
                "compare with the champion",
                "http://mlflow.test:5000/#/compare-runs?runs=run-cand,run-champ",
            ),
            ("validation_run", "validation run", "http://mlflow.test:5000/#/experiments/1/runs/run-val"),
            ("airflow_task", "churn / approve", "/dags/churn/runs/manual__1/tasks/approve"),
            ("airflow_dag_run", "DAG run", "/dags/churn/runs/manual__1"),
        ]
        assert card.context == {"dataset_rows": 4000}
        assert [(o.name, o.title) for o in card.reject_options] == [
            ("needs_retraining", "Needs retraining"),
            ("not_now", "Not now"),
        ]
        assert card.progress == "Approvers 0 of 1"
        assert card.decision is None

    def test_links_that_fail_the_url_rule_are_text(self) -> None:
        card = build_card(call(), Links(base="javascript:alert(1)//"))
        assert card.link("mlflow_run") is not None
        assert all(lk.url is None for lk in card.links if lk.kind.startswith(("mlflow", "model", "champion")))
        assert card.link("airflow_task").url == "/dags/churn/runs/manual__1/tasks/approve"  # type: ignore[union-attr]

    def test_a_request_url_is_never_a_link(self) -> None:
        hostile = call()
        hostile["spec"]["state"]["hlml"]["airflow"]["ti_url"] = "javascript:alert(1)"
        card = build_card(hostile, Links())
        assert all("javascript" not in (lk.url or "") for lk in card.links)
        assert build_card(call(), None).links == ()

    def test_the_decision_names_the_reject_reason_by_its_title(self) -> None:
        status = {
            "approved": False,
            "comment": "drift in the last week",
            "reject_option_name": "needs_retraining",
            "responded_at": "2026-11-26T10:00:00+00:00",
            "user_info": {"name": "alice", "email": "alice@example.com"},
        }
        card = build_card(call(status=status))
        assert card.status == "rejected"
        assert card.decision == {
            "status": "rejected",
            "by": "alice",
            "at": "2026-11-26T10:00:00+00:00",
            "comment": "drift in the last week",
            "reject_option": "needs_retraining",
            "reject_option_title": "Needs retraining",
        }

    @pytest.mark.parametrize(
        ("status", "expected"),
        [
            ({"approved": True}, "approved"),
            ({"approved": None, "cancel_reason": "timeout", "cancelled_at": "t"}, "expired"),
            ({"approved": None, "cancel_reason": "killed", "cancelled_at": "t"}, "cancelled"),
            ({"approved": None}, "pending"),
        ],
    )
    def test_status(self, status: dict[str, Any], expected: str) -> None:
        assert build_card(call(status=status)).status == expected

    def test_rules_and_progress_are_on_the_card(self) -> None:
        rules = [{"name": "ML lead", "approvers": ["group:ml-leads"], "required": 2}]
        request = call()
        request["spec"]["state"]["hlml"]["rules"] = rules
        request["status"] = {
            "approved": None,
            "answers": [{"name": "alice", "email": "alice@example.com", "approved": True, "rule": "ML lead"}],
            "members": {"group:ml-leads": ["alice", "bob"]},
        }
        assert build_card(request).progress == "ML lead 1 of 2: alice"

    @pytest.mark.parametrize(
        "garbage",
        [
            {},
            {"spec": None, "status": None},
            {"spec": {"kwargs": "x", "state": 3, "reject_options": "no"}, "status": []},
            {"spec": {"kwargs": {"context": ["a"], "body": 5, "subject": None}}},
        ],
    )
    def test_a_malformed_request_still_gives_a_card(self, garbage: dict[str, Any]) -> None:
        card = build_card(garbage, Links())
        assert card.status == "pending"
        assert card.metrics == ()
        assert card.body_html == ""


class TestPolicyNote:
    def call(self, auto: Any = None, declined: str | None = None, **status: Any) -> dict[str, Any]:
        hlml: dict[str, Any] = {"approvers": []}
        if auto is not None:
            hlml["auto"] = auto
        if declined is not None:
            hlml["auto_declined"] = declined
        return {
            "call_id": "c1",
            "spec": {
                "fn": "model_promotion",
                "kwargs": {"subject": "s", "context": {}},
                "state": {"hlml": hlml},
            },
            "status": {"requested_at": "2026-11-27T10:00:00+00:00", **status},
        }

    def test_a_pending_request_says_what_the_policy_would_do_and_when(self) -> None:
        auto = {
            "outcome": "approve",
            "principal": "policy:margin-v1",
            "reason": "clear win",
            "override_seconds": 3600,
        }
        card = build_card(self.call(auto))
        assert card.policy_note == (
            "policy:margin-v1 would approve this request: clear win. It decides at "
            "2026-11-27T11:00:00+00:00 unless a person answers first."
        )
        answered = self.call(auto, answers=[{"name": "alice", "approved": False, "at": "x"}])
        assert build_card(answered).policy_note is None
        assert build_card(self.call(auto, approved=True, responded_at="x")).policy_note is None

    def test_a_declined_policy_says_why_a_person_decides(self) -> None:
        card = build_card(self.call(declined="the approval policy file forbids it: a person decides"))
        assert card.policy_note == "the approval policy file forbids it: a person decides"
        assert build_card(self.call()).policy_note is None
