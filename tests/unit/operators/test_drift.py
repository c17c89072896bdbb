"""DriftMonitorOperator's checks before it touches MLflow, its metrics, and the shared frame loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from airflow_provider_hlml.operators.data import load_frame
from airflow_provider_hlml.operators.drift import DriftMonitorOperator, drift_metrics
from airflow_provider_hlml.policy.drift import DriftError, DriftPolicy
from airflow_provider_hlml.utils.names import check_alias, check_model_name


class TestDriftMonitorOperator:
    def test_callables_stay_out_of_the_template_fields(self) -> None:
        def rows() -> pd.DataFrame:
            return pd.DataFrame({"a": [1, 2]})

        op = DriftMonitorOperator(
            task_id="m", model_name="churn", reference=rows, current="{{ params.path }}"
        )
        assert op.reference is None
        assert op.reference_callable is rows
        assert op.current == "{{ params.path }}"
        assert op.alias == "champion"
        assert op.drift_policy == DriftPolicy()
        assert set(op.template_fields) >= {"model_name", "alias", "reference", "current", "label_column"}

    def test_the_policy_is_checked_when_the_dag_is_parsed(self) -> None:
        op = DriftMonitorOperator(
            task_id="m", model_name="c", reference="r.csv", current="c.csv", drift_policy={"bins": 20}
        )
        assert op.drift_policy.bins == 20
        with pytest.raises(DriftError, match="unknown drift policy keys"):
            DriftMonitorOperator(
                task_id="m", model_name="c", reference="r.csv", current="c.csv", drift_policy={"x": 1}
            )

    @pytest.mark.parametrize("features", ["income", [], ["ok", ""], ["ok", 3]])
    def test_bad_feature_lists_are_refused(self, features: Any) -> None:
        with pytest.raises(ValueError, match="features"):
            DriftMonitorOperator(
                task_id="m", model_name="c", reference="r.csv", current="c.csv", features=features
            )


class TestRenderedNames:
    @pytest.mark.parametrize("alias", ["champion", "prod-2", "a_b"])
    def test_good_aliases(self, alias: str) -> None:
        assert check_alias(alias) == alias

    @pytest.mark.parametrize("alias", ["", "latest", "v3", "champ ion", "a/b", "x" * 300, None, "c\nx"])
    def test_bad_aliases(self, alias: Any) -> None:
        with pytest.raises(ValueError, match="alias"):
            check_alias(alias)

    @pytest.mark.parametrize("name", ["", "  ", "a\x00b", "line\nbreak", "x" * 257, 5])
    def test_bad_model_names(self, name: Any) -> None:
        with pytest.raises(ValueError, match="model_name"):
            check_model_name(name)


class TestDriftMetrics:
    def test_feature_names_become_unique_valid_metric_keys(self) -> None:
        report = {
            "drifted": True,
            "drifted_features": ["a b"],
            "features": {
                "a b": {"psi": 0.5, "p_value": 0.001},
                "a/b": {"psi": 0.1, "p_value": 0.5},
                "é<script>": {"psi": 0.0, "p_value": None},
            },
            "predictions": {"psi": 0.2, "p_value": 0.03},
            "live_metric": {"metric": "accuracy", "value": 0.8, "reference_value": 0.9},
        }
        metrics = drift_metrics(report)
        assert metrics["drift.detected"] == 1.0
        assert metrics["drift.drifted_features"] == 1.0
        assert metrics["drift.psi.a_b"] == 0.5
        assert metrics["drift.psi.a_b_2"] == 0.1
        assert metrics["drift.psi.__script_"] == 0.0
        assert "drift.p_value.__script_" not in metrics
        assert metrics["drift.predictions.psi"] == 0.2
        assert (metrics["live.accuracy"], metrics["reference.accuracy"]) == (0.8, 0.9)
        from mlflow.utils.validation import validate_param_and_metric_name

        assert all(validate_param_and_metric_name(key) for key in metrics)


class TestLoadFrame:
    def test_reads_a_local_csv_or_calls_the_callable(self, tmp_path: Path) -> None:
        path = tmp_path / "rows.csv"
        pd.DataFrame({"a": [1, 2]}).to_csv(path, index=False)
        assert load_frame(str(path), {}, what="reference", task_id="t")["a"].tolist() == [1, 2]
        assert load_frame(
            lambda context: pd.DataFrame({"b": [context["x"]]}), {"x": 3}, what="current", task_id="t"
        )["b"].tolist() == [3]

    @pytest.mark.parametrize(
        ("source", "error", "message"),
        [
            ("https://example.com/rows.csv", FileNotFoundError, "does not exist"),
            ("s3://bucket/rows.csv", FileNotFoundError, "does not exist"),
            ("", ValueError, "is required"),
            (None, ValueError, "is required"),
            (lambda: {"a": [1]}, TypeError, "must give a pandas DataFrame"),
        ],
    )
    def test_refuses_urls_blanks_and_non_frames(
        self, source: Any, error: type[Exception], message: str
    ) -> None:
        with pytest.raises(error, match=message):
            load_frame(source, {}, what="current", task_id="t")

    def test_refuses_other_file_types(self, tmp_path: Path) -> None:
        path = tmp_path / "rows.json"
        path.write_text("{}")
        with pytest.raises(ValueError, match=r"use a \.csv or \.parquet file"):
            load_frame(path, {}, what="current", task_id="t")
