"""The promotion decision policy on constructed data where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from airflow_provider_hlml.policy.decision import (
    AUTO_APPROVE,
    AUTO_REJECT,
    HUMAN,
    DecisionPolicy,
    MetricRule,
    PolicyError,
    decide,
)

ROWS = 4000


def labels(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, ROWS)


def classifier(y: np.ndarray, accuracy: float, seed: int) -> np.ndarray:
    """Predictions that are right on a fraction ``accuracy`` of the rows (exactly, shuffled)."""
    wrong = np.zeros(len(y), dtype=bool)
    wrong[: round(len(y) * (1 - accuracy))] = True
    np.random.default_rng(seed).shuffle(wrong)
    return np.where(wrong, 1 - y, y)


POLICY = DecisionPolicy(
    rules=(MetricRule("accuracy", threshold=0.7, min_improvement=0.01, max_regression=0.01),),
    seed=7,
)


class TestBranches:
    def test_a_planted_five_point_win_is_approved_by_the_policy(self) -> None:
        y = labels()
        decision = decide(POLICY, y, classifier(y, 0.85, 1), classifier(y, 0.80, 2))
        assert decision.outcome == AUTO_APPROVE
        assert decision.principal == "policy:champion-margin-v1"
        (accuracy,) = decision.evidence
        assert accuracy.verdict == "win"
        assert accuracy.improvement == pytest.approx(0.05)
        assert accuracy.low is not None
        assert accuracy.high is not None
        assert 0.01 < accuracy.low < 0.05 < accuracy.high
        assert "accuracy improves by 0.05" in decision.reason

    def test_a_planted_five_point_regression_is_rejected_by_the_policy(self) -> None:
        y = labels()
        decision = decide(POLICY, y, classifier(y, 0.75, 1), classifier(y, 0.80, 2))
        assert decision.outcome == AUTO_REJECT
        assert decision.evidence[0].verdict == "regression"
        assert decision.evidence[0].high is not None
        assert decision.evidence[0].high < -0.01
        assert "worse than the champion's" in decision.reason

    def test_a_tie_within_noise_goes_to_a_person(self) -> None:
        y = labels()
        decision = decide(POLICY, y, classifier(y, 0.805, 1), classifier(y, 0.80, 2))
        assert decision.outcome == HUMAN
        assert decision.principal is None
        assert decision.evidence[0].verdict == "tie"
        assert decision.evidence[0].low is not None
        assert decision.evidence[0].high is not None
        assert decision.evidence[0].low < 0.01
        assert "not a clear win or regression on accuracy" in decision.reason

    def test_a_missed_threshold_is_rejected_even_when_better_than_the_champion(self) -> None:
        y = labels()
        decision = decide(POLICY, y, classifier(y, 0.68, 1), classifier(y, 0.60, 2))
        assert decision.outcome == AUTO_REJECT
        assert "accuracy 0.68 misses its threshold" in decision.reason

    def test_without_a_champion_a_person_decides(self) -> None:
        y = labels()
        assert decide(POLICY, y, classifier(y, 0.9, 1), None).outcome == HUMAN
        assert decide(POLICY, y, classifier(y, 0.6, 1), None).outcome == AUTO_REJECT

    def test_a_policy_that_forbids_auto_approval_asks_a_person_about_a_clear_win(self) -> None:
        y = labels()
        strict = DecisionPolicy(rules=POLICY.rules, seed=7, allow_auto_approve=False)
        decision = decide(strict, y, classifier(y, 0.85, 1), classifier(y, 0.80, 2))
        assert decision.outcome == HUMAN
        assert "auto-approval is not allowed" in decision.reason

    def test_every_metric_must_win_for_an_auto_approval(self) -> None:
        y = labels()
        both = DecisionPolicy(
            rules=(MetricRule("accuracy", min_improvement=0.01), MetricRule("f1", min_improvement=0.2)),
            seed=7,
        )
        decision = decide(both, y, classifier(y, 0.85, 1), classifier(y, 0.80, 2))
        assert decision.outcome == HUMAN
        assert [e.verdict for e in decision.evidence] == ["win", "tie"]

    def test_error_metrics_improve_downwards(self) -> None:
        rng = np.random.default_rng(3)
        y = rng.normal(size=ROWS)
        better, worse = y + rng.normal(scale=0.5, size=ROWS), y + rng.normal(scale=1.0, size=ROWS)
        policy = DecisionPolicy(rules=(MetricRule("rmse", threshold=2.0, min_improvement=0.1),), seed=1)
        assert decide(policy, y, better, worse).outcome == AUTO_APPROVE
        assert decide(policy, y, worse, better).outcome == AUTO_REJECT


class TestReproducibility:
    def test_the_same_seed_gives_the_same_interval_and_another_seed_another(self) -> None:
        y = labels()
        cand, champ = classifier(y, 0.82, 1), classifier(y, 0.80, 2)
        first, again = decide(POLICY, y, cand, champ), decide(POLICY, y, cand, champ)
        assert first.to_json() == again.to_json()
        other = decide(DecisionPolicy(rules=POLICY.rules, seed=8), y, cand, champ)
        assert (other.evidence[0].low, other.evidence[0].high) != (
            first.evidence[0].low,
            first.evidence[0].high,
        )
        assert other.evidence[0].improvement == first.evidence[0].improvement


class TestPolicyFromItsFile:
    def test_a_mapping_round_trips(self) -> None:
        raw = {
            "name": "margin",
            "version": 2,
            "metrics": {"accuracy": {"threshold": 0.7, "min_improvement": 0.02}, "f1": 0.6},
            "allow_auto_approve": False,
        }
        policy = DecisionPolicy.from_mapping(raw)
        assert policy.principal == "policy:margin-v2"
        assert policy.allow_auto_approve is False
        assert policy.to_json()["metrics"]["f1"] == {
            "threshold": 0.6,
            "min_improvement": 0.0,
            "max_regression": 0.0,
        }

    @pytest.mark.parametrize(
        ("raw", "message"),
        [
            ({"metrics": {"auc_pr": 0.5}}, "one of"),
            ({"metrics": {}}, "metrics"),
            ({"metrics": {"accuracy": {"min_improvement": -1}}}, ">= 0"),
            ({"metrics": {"accuracy": {"margin": 1}}}, "unknown keys"),
            ({"metrics": {"accuracy": 0.5}, "resamples": 5}, "resamples"),
            ({"metrics": {"accuracy": 0.5}, "colour": "red"}, "unknown keys"),
        ],
    )
    def test_a_policy_that_cannot_be_evaluated_is_refused_where_it_is_written(
        self, raw: dict[str, object], message: str
    ) -> None:
        with pytest.raises(PolicyError, match=message):
            DecisionPolicy.from_mapping(raw)

    def test_mismatched_inputs_are_refused(self) -> None:
        with pytest.raises(PolicyError, match="same length"):
            decide(POLICY, [0, 1, 1], [0, 1], [0, 1, 1])


class TestMetricsAgreeWithScikitLearn:
    @pytest.mark.parametrize("metric", ["accuracy", "precision", "recall", "f1", "rmse", "mae"])
    def test_the_point_improvement_is_the_libraries_difference(self, metric: str) -> None:
        from sklearn import metrics

        rng = np.random.default_rng(5)
        if metric in ("rmse", "mae"):
            y = rng.normal(size=ROWS)
            cand, champ = y + rng.normal(scale=0.4, size=ROWS), y + rng.normal(scale=0.6, size=ROWS)
            score = {
                "rmse": lambda t, p: metrics.mean_squared_error(t, p) ** 0.5,
                "mae": metrics.mean_absolute_error,
            }[metric]
            expected = score(y, champ) - score(y, cand)  # lower is better
        else:
            y = labels(5)
            cand, champ = classifier(y, 0.84, 1), classifier(y, 0.80, 2)
            score = {
                "accuracy": metrics.accuracy_score,
                "precision": metrics.precision_score,
                "recall": metrics.recall_score,
                "f1": metrics.f1_score,
            }[metric]
            expected = score(y, cand) - score(y, champ)
        policy = DecisionPolicy(rules=(MetricRule(metric),), seed=3)
        (evidence,) = decide(policy, y, cand, champ).evidence
        assert evidence.improvement == pytest.approx(expected)
        assert evidence.low is not None
        assert evidence.high is not None
        assert evidence.low < expected < evidence.high
