"""The drift policy on constructed data where the right answer is known (seeded)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2_contingency, ks_2samp

from airflow_provider_hlml.policy.drift import (
    EPSILON,
    DriftError,
    DriftPolicy,
    drift_report,
    population_stability_index,
)

ROWS = 3000


def frame(
    seed: int, rows: int = ROWS, *, shift: float = 0.0, plan_mix: tuple[float, ...] = (0.5, 0.3, 0.2)
) -> pd.DataFrame:
    """Two numeric features (``income`` moved by ``shift`` standard deviations), one categorical
    (``plan``, drawn with ``plan_mix``) and one low-cardinality integer (``children``)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "income": rng.normal(50.0 + 10.0 * shift, 10.0, rows),
            "age": rng.normal(40.0, 12.0, rows),
            "plan": rng.choice(["basic", "plus", "pro"], rows, p=list(plan_mix)),
            "children": rng.integers(0, 4, rows),
        }
    )


class TestPopulationStabilityIndex:
    def test_identical_histograms_have_zero_psi(self) -> None:
        assert population_stability_index([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)

    def test_matches_the_textbook_formula(self) -> None:
        ref, cur = np.array([0.25, 0.25, 0.5]), np.array([0.1, 0.4, 0.5])
        expected = float(np.sum((cur - ref) * np.log(cur / ref)))
        assert population_stability_index(ref * 1000, cur * 400) == pytest.approx(expected)

    def test_an_empty_bin_stays_finite(self) -> None:
        psi = population_stability_index([50, 50, 0], [0, 50, 50])
        assert math.isfinite(psi)
        assert psi == pytest.approx(2 * (0.5 - EPSILON) * math.log(0.5 / EPSILON))

    def test_refuses_mismatched_or_empty_histograms(self) -> None:
        with pytest.raises(DriftError, match="same bins"):
            population_stability_index([1, 2], [1, 2, 3])
        with pytest.raises(DriftError, match="non-empty"):
            population_stability_index([0, 0], [1, 2])


class TestFeatureDrift:
    def test_the_same_distribution_is_not_drifted(self) -> None:
        report = drift_report(frame(1), frame(2))
        assert report.drifted is False
        assert report.drifted_features == ()
        assert report.reason.startswith("no drift: none of 4 features drifted")
        income = report.to_json()["features"]["income"]
        assert income["test"] == "ks"
        assert income["psi"] < 0.05
        assert income["p_value"] > 0.01

    def test_a_shifted_mean_drifts_that_feature_only(self) -> None:
        reference, current = frame(1), frame(2, shift=1.0)
        report = drift_report(reference, current)
        assert report.drifted is True
        assert [f.name for f in report.drifted_features] == ["income"]
        income = next(f for f in report.features if f.name == "income")
        assert income.kind == "numeric"
        assert income.psi >= 0.2
        assert income.p_value is not None
        assert income.p_value < 0.01
        # The test is scipy's, on the values as given.
        expected = ks_2samp(reference["income"], current["income"])
        assert income.statistic == pytest.approx(expected.statistic)
        assert income.p_value == pytest.approx(expected.pvalue)
        assert "1 of 4 features drifted: income (PSI" in report.reason

    def test_a_small_shift_on_many_rows_is_significant_but_not_drifted(self) -> None:
        """The test alone flags a trivial shift on a large batch; the PSI rule holds it back."""
        report = drift_report(frame(1, 20_000), frame(2, 20_000, shift=0.08))
        income = next(f for f in report.features if f.name == "income")
        assert income.p_value is not None
        assert income.p_value < 0.01
        assert income.psi < 0.2
        assert income.drifted is False
        assert report.drifted is False

    def test_a_categorical_shift_is_tested_with_chi_squared(self) -> None:
        reference, current = frame(1), frame(2, plan_mix=(0.2, 0.3, 0.5))
        report = drift_report(reference, current)
        plan = next(f for f in report.features if f.name == "plan")
        assert plan.kind == "categorical"
        assert plan.test == "chi2"
        assert plan.drifted is True
        table = np.vstack(
            [reference["plan"].value_counts().sort_index(), current["plan"].value_counts().sort_index()]
        )
        assert plan.statistic == pytest.approx(chi2_contingency(table).statistic)
        assert [f.name for f in report.drifted_features] == ["plan"]

    def test_a_low_cardinality_integer_is_categorical_unless_the_policy_says_otherwise(self) -> None:
        report = drift_report(frame(1), frame(2))
        assert next(f for f in report.features if f.name == "children").test == "chi2"
        numeric = drift_report(frame(1), frame(2), policy={"categorical_max_unique": 0})
        assert next(f for f in numeric.features if f.name == "children").test == "ks"

    def test_a_new_category_counts(self) -> None:
        current = frame(2)
        current.loc[: ROWS // 2, "plan"] = "enterprise"
        plan = next(f for f in drift_report(frame(1), current).features if f.name == "plan")
        assert plan.drifted is True
        assert math.isfinite(plan.psi)

    def test_a_feature_gone_missing_is_drifted(self) -> None:
        current = frame(2)
        current["age"] = np.nan
        age = next(f for f in drift_report(frame(1), current).features if f.name == "age")
        assert age.test is None
        assert age.p_value is None
        assert age.missing_current == 1.0
        assert age.drifted is True

    def test_min_drifted_features(self) -> None:
        current = frame(2, shift=1.0)
        report = drift_report(frame(1), current, policy={"min_drifted_features": 2})
        assert [f.name for f in report.drifted_features] == ["income"]
        assert report.drifted is False
        assert "fewer than the 2 needed" in report.reason
        with pytest.raises(DriftError, match="exceeds the 1 features"):
            drift_report(frame(1), current, features=["income"], policy={"min_drifted_features": 2})

    def test_is_reproducible(self) -> None:
        first = drift_report(frame(1), frame(2, shift=0.5)).to_json()
        assert drift_report(frame(1), frame(2, shift=0.5)).to_json() == first


class TestPredictionsAndLiveMetric:
    @staticmethod
    def labels_and_predictions(
        seed: int, rows: int, accuracy: float, positives: float = 0.5
    ) -> tuple[Any, Any]:
        rng = np.random.default_rng(seed)
        y = (rng.uniform(size=rows) < positives).astype(int)
        wrong = rng.uniform(size=rows) > accuracy
        return y, np.where(wrong, 1 - y, y)

    def test_drifted_predictions_alone_make_the_model_drifted(self) -> None:
        _, ref_pred = self.labels_and_predictions(1, ROWS, 0.9, positives=0.2)
        _, cur_pred = self.labels_and_predictions(2, ROWS, 0.9, positives=0.6)
        report = drift_report(
            frame(1), frame(2), reference_predictions=ref_pred, current_predictions=cur_pred
        )
        assert report.drifted_features == ()
        assert report.predictions is not None
        assert report.predictions.test == "chi2"
        assert report.predictions.drifted is True
        assert report.drifted is True
        assert "predictions drifted" in report.reason
        ignored = drift_report(
            frame(1),
            frame(2),
            reference_predictions=ref_pred,
            current_predictions=cur_pred,
            policy={"include_predictions": False},
        )
        assert ignored.drifted is False

    def test_the_live_metric_below_its_floor_or_dropped_is_drift(self) -> None:
        ref_y, ref_pred = self.labels_and_predictions(1, ROWS, 0.92)
        cur_y, cur_pred = self.labels_and_predictions(2, ROWS, 0.78)
        common: dict[str, Any] = {
            "reference_predictions": ref_pred,
            "current_predictions": cur_pred,
            "labels": cur_y,
            "reference_labels": ref_y,
        }
        floor = drift_report(
            frame(1), frame(2), policy={"metric": "accuracy", "metric_threshold": 0.85}, **common
        )
        assert floor.live_metric is not None
        assert floor.live_metric.value == pytest.approx(float(np.mean(cur_y == cur_pred)))
        assert floor.live_metric.breached is True
        assert floor.drifted is True
        assert "misses its floor 0.85" in floor.reason
        drop = drift_report(
            frame(1), frame(2), policy={"metric": "accuracy", "metric_max_drop": 0.05}, **common
        )
        assert drop.live_metric is not None
        assert drop.live_metric.reference_value == pytest.approx(float(np.mean(ref_y == ref_pred)))
        assert drop.drifted is True
        assert "worse than on the reference rows" in drop.reason
        fine = drift_report(
            frame(1), frame(2), policy={"metric": "accuracy", "metric_max_drop": 0.2}, **common
        )
        assert fine.live_metric is not None
        assert fine.live_metric.breached is False
        assert fine.drifted is False

    def test_only_labelled_rows_count_and_error_metrics_have_a_ceiling(self) -> None:
        rng = np.random.default_rng(3)
        truth = rng.normal(size=ROWS)
        predicted = truth + rng.normal(scale=0.5, size=ROWS)
        labels = truth.copy()
        labels[: ROWS // 2] = np.nan  # the labels of half the rows have not arrived
        report = drift_report(
            frame(1),
            frame(2),
            reference_predictions=predicted,
            current_predictions=predicted,
            labels=labels,
            policy={"metric": "rmse", "metric_threshold": 0.4},
        )
        live = report.live_metric
        assert live is not None
        assert live.rows == ROWS - ROWS // 2
        half = slice(ROWS // 2, None)
        assert live.value == pytest.approx(float(np.sqrt(np.mean((truth[half] - predicted[half]) ** 2))))
        assert live.breached is True
        assert "misses its ceiling 0.4" in live.reason

    def test_no_labels_no_live_metric(self) -> None:
        report = drift_report(frame(1), frame(2), current_predictions=[0] * ROWS, policy={"metric": "f1"})
        assert report.live_metric is None


class TestReport:
    def test_to_json_is_plain_json_with_the_policy(self) -> None:
        report = drift_report(frame(1), frame(2, shift=1.0), policy={"psi_threshold": 0.25})
        payload = report.to_json()
        assert json.loads(json.dumps(payload, allow_nan=False)) == payload
        assert payload["drifted"] is True
        assert payload["drifted_features"] == ["income"]
        assert payload["policy"]["psi_threshold"] == 0.25
        assert set(payload["features"]["income"]) >= {"psi", "statistic", "p_value", "drifted", "test"}
        assert payload["reason"] == report.reason

    def test_bad_inputs_are_refused(self) -> None:
        with pytest.raises(DriftError, match="no column 'salary'"):
            drift_report(frame(1), frame(2), features=["salary"])
        with pytest.raises(DriftError, match="not one string"):
            drift_report(frame(1), frame(2), features="income")  # type: ignore[arg-type]
        with pytest.raises(DriftError, match="at least 2 rows"):
            drift_report(frame(1), frame(2).head(1))
        with pytest.raises(DriftError, match="DataFrame"):
            drift_report({"income": [1, 2]}, frame(2))  # type: ignore[arg-type]
        hostile = frame(1).rename(columns={"age": "age\n| injected"})
        with pytest.raises(DriftError, match="control characters"):
            drift_report(hostile, hostile)
        with pytest.raises(DriftError, match="one per row"):
            drift_report(frame(1), frame(2), reference_predictions=[1, 0], current_predictions=[1, 0])


class TestPolicy:
    def test_defaults(self) -> None:
        policy = DriftPolicy()
        assert (policy.psi_threshold, policy.p_value, policy.bins, policy.min_drifted_features) == (
            0.2,
            0.01,
            10,
            1,
        )
        assert DriftPolicy.from_mapping(policy.to_json()) == policy

    @pytest.mark.parametrize(
        ("raw", "message"),
        [
            ([("psi_threshold", 0.2)], "a drift policy is a mapping"),
            ("psi_threshold: 0.2", "a drift policy is a mapping"),
            ({"psi": 0.2}, "unknown drift policy keys 'psi'; known: bins, "),
            ({"__class__": "x"}, "unknown drift policy keys"),
            ({1: 2}, "unknown drift policy keys"),
            ({"psi_threshold": "0.2"}, "psi_threshold: a finite number"),
            ({"psi_threshold": True}, "psi_threshold: a finite number"),
            ({"psi_threshold": float("nan")}, "psi_threshold: a finite number"),
            ({"psi_threshold": 0}, r"psi_threshold: a number in \(0, 100\]"),
            ({"p_value": 1.5}, r"p_value: a number in \(0, 1\]"),
            ({"p_value": -0.01}, "p_value: a number in"),
            ({"bins": 2.5}, "bins: a whole number from 2 to 100"),
            ({"bins": 1}, "bins: a whole number"),
            ({"bins": 10**9}, "bins: a whole number"),
            ({"min_drifted_features": 0}, "min_drifted_features: a whole number from 1"),
            ({"include_predictions": "yes"}, "include_predictions: true or false"),
            ({"metric": "auc"}, "metric: one of accuracy"),
            ({"metric": ["accuracy"]}, "metric: one of"),
            ({"metric": "x" * 10_000}, r"got 'xxxx.*\.\.\.$"),
            ({"metric_threshold": 0.8}, "need metric"),
            ({"metric": "accuracy", "metric_max_drop": -0.1}, "metric_max_drop: a number in"),
            ({"metric": "accuracy", "metric_threshold": float("inf")}, "metric_threshold: a finite number"),
        ],
    )
    def test_hostile_mappings_are_refused_with_a_clear_message(self, raw: Any, message: str) -> None:
        with pytest.raises(DriftError, match=message) as caught:
            DriftPolicy.from_mapping(raw)
        assert isinstance(caught.value, ValueError)
        assert len(str(caught.value)) < 400

    def test_constructing_directly_is_checked_too(self) -> None:
        with pytest.raises(DriftError, match="bins"):
            DriftPolicy(bins=0)


def test_importing_the_module_loads_nothing_heavy_and_no_airflow() -> None:
    code = (
        "import sys, json\n"
        "import airflow_provider_hlml.policy.drift\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'numpy', 'scipy', 'pandas', 'sklearn', 'airflow'})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
