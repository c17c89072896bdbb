"""What a reviewer was shown, as facts and a digest (``gate.digest``): pure functions, no servers."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import pytest

from airflow_provider_hlml.gate.digest import changed_facts, review_digest, review_facts


def _validation_report(**overrides: Any) -> dict[str, Any]:
    """A ValidationReport as MLflowValidateOperator returns it (and the gate sends it)."""
    report: dict[str, Any] = {
        "passed": True,
        "metrics": {
            "accuracy": {
                "candidate": 0.91,
                "champion": 0.88,
                "threshold": {"threshold": 0.8},
                "passed": True,
                "reason": "passed",
                "mlflow_metric": "accuracy_score",
            },
            "f1": {
                "candidate": 0.87,
                "champion": None,
                "threshold": {"threshold": 0.5},
                "passed": True,
                "reason": "passed",
                "mlflow_metric": "f1_score",
            },
        },
        "model_name": "churn",
        "model_version": "3",
        "mlflow_run_id": "run-train",
        "model_uri": "models:/churn/3",
        "champion_version": "2",
        "validation_run_id": "run-validate",
    }
    report.update(overrides)
    return report


def _train_result(**overrides: Any) -> dict[str, Any]:
    """A TrainResult as MLflowTrainOperator returns it."""
    result: dict[str, Any] = {
        "model_name": "churn",
        "model_version": 4,
        "mlflow_run_id": "run-train",
        "run_id": "run-train",
        "model_uri": "models:/churn/4",
        "experiment_id": "7",
        "metrics": {"accuracy": 0.93, "loss": 0.2},
    }
    result.update(overrides)
    return result


class TestReviewFacts:
    def test_validation_report_shows_the_candidate_values_and_the_verdict(self) -> None:
        assert review_facts(_validation_report()) == {
            "model_name": "churn",
            "model_version": "3",
            "mlflow_run_id": "run-train",
            "passed": True,
            "champion_version": "2",
            "validation_run_id": "run-validate",
            "metrics": {"accuracy": 0.91, "f1": 0.87},
        }

    def test_train_result_shows_plain_metrics_and_only_the_keys_it_has(self) -> None:
        facts = review_facts(_train_result())
        assert facts == {
            "model_name": "churn",
            "model_version": "4",  # versions compare as text, whatever type the context used
            "mlflow_run_id": "run-train",
            "metrics": {"accuracy": 0.93, "loss": 0.2},
        }
        # Keys that are not reviewed facts (model_uri, experiment_id, run_id) change nothing.
        assert review_facts(_train_result(model_uri="elsewhere", experiment_id="8", run_id="x")) == facts

    def test_no_champion_is_a_fact_too(self) -> None:
        facts = review_facts(_validation_report(champion_version=None))
        assert facts is not None
        assert facts["champion_version"] is None
        assert review_digest(facts) != review_digest(review_facts(_validation_report()) or {})

    @pytest.mark.parametrize(
        "context",
        [
            None,
            "promote churn v3",
            ["churn", "3"],
            {},
            {"summary": "nightly export", "rows": 1200},
            {"model_name": "", "model_version": None, "mlflow_run_id": ""},
        ],
    )
    def test_contexts_not_about_a_model_have_no_facts(self, context: Any) -> None:
        assert review_facts(context) is None

    def test_one_model_key_is_enough(self) -> None:
        assert review_facts({"mlflow_run_id": "r1", "metrics": {"x": 1}}) == {
            "mlflow_run_id": "r1",
            "metrics": {"x": 1.0},
        }

    def test_non_finite_non_numeric_and_bool_metrics_read_as_none(self) -> None:
        facts = review_facts(
            _train_result(
                metrics={
                    "nan": math.nan,
                    "inf": math.inf,
                    "minus_inf": -math.inf,
                    "flag": True,
                    "text": "0.9",
                    "missing": None,
                    "huge": 10**400,
                    "nan_candidate": {"candidate": math.nan},
                    "bool_candidate": {"candidate": False},
                    "int": 1,
                }
            )
        )
        assert facts is not None
        assert facts["metrics"] == {
            "nan": None,
            "inf": None,
            "minus_inf": None,
            "flag": None,
            "text": None,
            "missing": None,
            "huge": None,
            "nan_candidate": None,
            "bool_candidate": None,
            "int": 1.0,
        }
        review_digest(facts)  # canonical JSON refuses NaN: the facts never hold one

    def test_passed_stays_a_bool(self) -> None:
        facts = review_facts(_validation_report(passed=False))
        assert facts is not None
        assert facts["passed"] is False


class TestReviewDigest:
    def test_is_sha256_of_canonical_json(self) -> None:
        facts = {"model_name": "churn", "metrics": {"b": 2.0, "a": 1.0}}
        canonical = '{"metrics":{"a":1.0,"b":2.0},"model_name":"churn"}'
        assert review_digest(facts) == hashlib.sha256(canonical.encode()).hexdigest()

    def test_order_of_keys_and_metrics_does_not_matter(self) -> None:
        report = _validation_report()
        reordered = dict(reversed(list(report.items())))
        reordered["metrics"] = dict(reversed(list(report["metrics"].items())))
        assert list(reordered) != list(report)
        assert review_digest(review_facts(reordered) or {}) == review_digest(review_facts(report) or {})

    def test_survives_the_json_round_trip_of_the_gate(self) -> None:
        report = _validation_report()
        sent = json.loads(json.dumps(report))
        assert review_digest(review_facts(sent) or {}) == review_digest(review_facts(report) or {})
        # An int version and its text are the same fact.
        assert review_digest(review_facts(_train_result(model_version=4)) or {}) == review_digest(
            review_facts(_train_result(model_version="4")) or {}
        )

    @pytest.mark.parametrize(
        "change",
        [
            {"model_version": "4"},
            {"mlflow_run_id": "run-other"},
            {"passed": False},
            {"champion_version": "1"},
            {"validation_run_id": "run-validate-2"},
        ],
    )
    def test_any_reviewed_fact_changes_the_digest(self, change: dict[str, Any]) -> None:
        before = review_digest(review_facts(_validation_report()) or {})
        assert review_digest(review_facts(_validation_report(**change)) or {}) != before

    def test_a_metric_value_changes_the_digest_but_its_threshold_and_reason_do_not(self) -> None:
        report = _validation_report()
        before = review_digest(review_facts(report) or {})
        cosmetic = json.loads(json.dumps(report))
        cosmetic["metrics"]["accuracy"]["reason"] = "fine"
        cosmetic["metrics"]["accuracy"]["threshold"] = {"threshold": 0.5}
        assert review_digest(review_facts(cosmetic) or {}) == before
        changed = json.loads(json.dumps(report))
        changed["metrics"]["accuracy"]["candidate"] = 0.85
        assert review_digest(review_facts(changed) or {}) != before

    def test_passed_true_and_the_text_true_differ(self) -> None:
        as_bool = review_digest(review_facts(_validation_report(passed=True)) or {})
        assert review_digest(review_facts(_validation_report(passed="True")) or {}) != as_bool


class TestChangedFacts:
    def test_names_each_change_with_shown_and_now(self) -> None:
        shown = review_facts(_validation_report()) or {}
        now = review_facts(
            _validation_report(
                passed=False,
                champion_version="5",
                metrics={"accuracy": {"candidate": 0.85}, "f1": {"candidate": 0.87}},
            )
        )
        assert changed_facts(shown, now or {}) == [
            "champion_version: shown '2', now '5'",
            "metrics.accuracy: shown 0.91, now 0.85",
            "passed: shown True, now False",
        ]

    def test_nothing_changed(self) -> None:
        shown = review_facts(_validation_report()) or {}
        assert changed_facts(shown, dict(shown)) == []

    def test_only_shown_facts_are_compared_and_missing_ones_read_as_none(self) -> None:
        shown = {"model_version": "3", "metrics": {"accuracy": 0.91}}
        now = {"model_version": "3", "passed": False, "metrics": {"accuracy": 0.91, "extra": 1.0}}
        assert changed_facts(shown, now) == []
        assert changed_facts(shown, {"model_version": "3"}) == ["metrics.accuracy: shown 0.91, now None"]
        assert changed_facts({"validation_run_id": "v1"}, {}) == ["validation_run_id: shown 'v1', now None"]
