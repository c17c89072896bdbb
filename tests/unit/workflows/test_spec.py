"""Workflow spec validation: good specs parse, each kind of broken spec names its file and field."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from airflow_provider_hlml.workflows.spec import (
    DeploymentConfig,
    MetricThresholdSpec,
    WorkflowSpec,
    WorkflowSpecError,
    resolve_callable,
    slugify,
)

REPO = Path(__file__).resolve().parents[3]
CHURN_YAML = REPO / "dags" / "workflows" / "churn_pipeline.yaml"
CHURN = "airflow_provider_hlml.examples.churn"


def good_spec() -> dict[str, Any]:
    return {
        "name": "Customer Churn Prediction Pipeline",
        "experiment_name": "churn_prediction_v2",
        "model_name": "churn_predictor",
        "schedule": "@weekly",
        "stages": [
            {
                "name": "Data Preparation",
                "type": "data_prep",
                "config": {"callable": f"{CHURN}:prepare_churn_data"},
            },
            {
                "name": "Model Training",
                "type": "training",
                "config": {"callable": f"{CHURN}:train_churn_model", "params": {"C": 0.5}},
            },
            {
                "name": "Model Validation",
                "type": "validation",
                "config": {
                    "dataset": f"{CHURN}:churn_validation_data",
                    "target": "churned",
                    "thresholds": {"accuracy": 0.85, "precision": {"threshold": 0.8}},
                },
            },
            {"name": "Production Deployment", "type": "deployment", "approval_required": True},
            {"name": "Performance Monitoring", "type": "monitoring", "config": {"metrics": ["accuracy"]}},
        ],
    }


def write_spec(tmp_path: Path, data: Any, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def problems_of(tmp_path: Path, data: Any) -> tuple[str, list[tuple[str, str]]]:
    path = write_spec(tmp_path, data)
    with pytest.raises(WorkflowSpecError) as excinfo:
        WorkflowSpec.from_yaml(path)
    assert excinfo.value.source == str(path)
    return str(excinfo.value), excinfo.value.problems


def broken(mutate: Any) -> dict[str, Any]:
    data = copy.deepcopy(good_spec())
    mutate(data)
    return data


class TestWorkflowSpec:
    def test_good_spec_parses_with_defaults(self) -> None:
        spec = WorkflowSpec.from_mapping(good_spec())
        assert spec.resolved_dag_id == "customer_churn_prediction_pipeline"
        assert [s.stage_task_id for s in spec.stages] == [
            "data_preparation",
            "model_training",
            "model_validation",
            "production_deployment",
            "performance_monitoring",
        ]
        validation = spec.stages[2].config
        assert validation.thresholds["accuracy"] == MetricThresholdSpec(threshold=0.85)
        assert validation.baseline_alias == "champion"
        assert spec.stages[3].config.target_alias == "champion"
        assert spec.stages[3].gate_task_id == "approve_production_deployment"
        assert spec.resolved_start_date == datetime(2024, 1, 1, tzinfo=timezone.utc)

    def test_shipped_yaml_spec_parses(self) -> None:
        spec = WorkflowSpec.from_yaml(CHURN_YAML)
        assert spec.resolved_dag_id == "churn_pipeline_spec"
        assert spec.schedule == "@weekly"
        assert [s.type for s in spec.stages] == [
            "data_prep",
            "training",
            "validation",
            "deployment",
            "monitoring",
        ]
        assert [s.approval_required for s in spec.stages] == [False, False, True, True, False]

    @pytest.mark.parametrize(
        ("schedule", "expected"),
        [
            ("0 3 * * 1", "0 3 * * 1"),
            ("@daily", "@daily"),
            ("7d", timedelta(days=7)),
            ("12h", timedelta(hours=12)),
            ({"days": 1}, timedelta(days=1)),
            ("P1D", timedelta(days=1)),
            (None, None),
        ],
    )
    def test_schedule_forms(self, schedule: Any, expected: Any) -> None:
        data = good_spec()
        data["schedule"] = schedule
        assert WorkflowSpec.from_mapping(data).schedule == expected

    def test_response_timeout_accepts_short_durations(self) -> None:
        data = good_spec()
        data["stages"][3]["response_timeout"] = "30m"
        assert WorkflowSpec.from_mapping(data).stages[3].response_timeout == timedelta(minutes=30)

    def test_relative_csv_dataset_resolves_against_spec_folder(self, tmp_path: Path) -> None:
        data = good_spec()
        data["stages"][2]["config"]["dataset"] = "data/validation.csv"
        spec = WorkflowSpec.from_yaml(write_spec(tmp_path, data))
        assert spec.stages[2].config.dataset == str(tmp_path / "data" / "validation.csv")
        assert spec.stages[2].config.dataset_is_file

    def test_python_spec_is_the_same_as_yaml(self, tmp_path: Path) -> None:
        assert WorkflowSpec.from_yaml(write_spec(tmp_path, good_spec())) == WorkflowSpec(**good_spec())


# Each case: how to break the good spec, the field path, and a piece of the message.
BROKEN_SPECS: list[tuple[str, Any, str, str]] = [
    (
        "approval_rule_needs_more_than_it_names",
        lambda d: d["stages"][3].update(
            approval_rules=[{"name": "Two", "approvers": ["a@x"], "required": 2}]
        ),
        "stages[3].approval_rules",
        "requires 2 approvals but names only 1 approvers",
    ),
    (
        "approval_rules_without_a_gate",
        lambda d: d["stages"][2].update(approval_rules=[{"name": "Any"}]),
        "stages[2].approval_rules",
        "set approval_required: true to use approval_rules",
    ),
    (
        "unknown_duty",
        lambda d: d["stages"][3].update(forbid=["everyone"]),
        "stages[3].forbid[0]",
        "'requester' or 'model_author'",
    ),
    (
        "threshold_out_of_range",
        lambda d: d["stages"][2]["config"]["thresholds"].update(accuracy=1.5),
        "stages[2].config.thresholds.accuracy",
        "must be between 0 and 1",
    ),
    (
        "unknown_stage_type",
        lambda d: d["stages"][1].update(type="train"),
        "stages[1].type",
        "must be one of data_prep, training, validation, deployment, monitoring, custom",
    ),
    (
        "missing_stage_type",
        lambda d: d["stages"][0].pop("type"),
        "stages[0]",
        "field 'type' required",
    ),
    (
        "callable_not_importable",
        lambda d: d["stages"][1]["config"].update(callable="no_such_module.train:fit"),
        "stages[1].config.callable",
        "cannot import 'no_such_module.train:fit'",
    ),
    (
        "callable_missing_attribute",
        lambda d: d["stages"][0]["config"].update(callable=f"{CHURN}:nope"),
        "stages[0].config.callable",
        "has no attribute 'nope'",
    ),
    (
        "callable_not_callable",
        lambda d: d["stages"][0]["config"].update(callable=f"{CHURN}:TARGET"),
        "stages[0].config.callable",
        "is not callable",
    ),
    (
        "validation_without_target",
        lambda d: d["stages"][2]["config"].pop("target"),
        "stages[2].config.target",
        "field required",
    ),
    (
        "validation_without_thresholds",
        lambda d: d["stages"][2]["config"].update(thresholds={}),
        "stages[2].config.thresholds",
        "at least 1 item",
    ),
    (
        "threshold_rule_empty",
        lambda d: d["stages"][2]["config"]["thresholds"].update(precision={"greater_is_better": True}),
        "stages[2].config.thresholds.precision",
        "set at least one of threshold, min_absolute_change, min_relative_change",
    ),
    (
        "negative_relative_change",
        lambda d: d["stages"][2]["config"]["thresholds"].update(accuracy={"min_relative_change": -0.1}),
        "stages[2].config.thresholds.accuracy.min_relative_change",
        "must be between 0 and 1",
    ),
    (
        "misspelled_metric",
        lambda d: d["stages"][2]["config"]["thresholds"].update(acuracy=0.8),
        "stages[2].config.thresholds.acuracy",
        "not a metric of a classifier (did you mean 'accuracy'?)",
    ),
    (
        "regression_metric_for_a_classifier",
        lambda d: d["stages"][2]["config"]["thresholds"].update(rmse={"threshold": 0.3}),
        "stages[2].config.thresholds.rmse",
        "'rmse' is reported for model_type 'regressor'",
    ),
    (
        "zero_absolute_change",
        lambda d: d["stages"][2]["config"]["thresholds"].update(f1={"min_absolute_change": 0}),
        "stages[2].config.thresholds.f1.min_absolute_change",
        "must be greater than 0",
    ),
    (
        "dataset_neither_file_nor_callable",
        lambda d: d["stages"][2]["config"].update(dataset="validation_data"),
        "stages[2].config.dataset",
        "must be a .csv/.parquet file or the import path of a callable",
    ),
    (
        "deployment_alias_and_stage",
        lambda d: d["stages"][3].update(config={"alias": "champion", "stage": "Production"}),
        "stages[3].config.stage",
        "set either alias or stage, not both",
    ),
    (
        "deployment_reserved_alias",
        lambda d: d["stages"][3].update(config={"alias": "latest"}),
        "stages[3].config.alias",
        "reserved by MLflow",
    ),
    (
        "deployment_before_training",
        lambda d: d["stages"].insert(0, {"name": "Early deploy", "type": "deployment"}),
        "stages[0].type",
        "a deployment stage needs a training stage before it",
    ),
    (
        "gated_deployment_of_unregistered_model",
        lambda d: d["stages"][1]["config"].update(register_model=False),
        "stages[3].approval_required",
        "a gated deployment needs the training stage to register the model",
    ),
    (
        "duplicate_stage_names",
        lambda d: d["stages"][4].update(name="Model Training"),
        "stages[4].name",
        "task id 'model_training' is already used by stages[1]",
    ),
    (
        "camel_case_field",
        lambda d: d["stages"][3].update(approvalRequired=True),
        "stages[3].approvalRequired",
        "unknown field (did you mean 'approval_required'?)",
    ),
    (
        "misspelt_config_field",
        lambda d: d["stages"][1]["config"].update(parms={"C": 3}),
        "stages[1].config.parms",
        "unknown field (did you mean 'params'?)",
    ),
    (
        "bad_schedule",
        lambda d: d.update(schedule="every tuesday"),
        "schedule",
        "must be a cron expression, a preset like '@weekly', or a duration",
    ),
    (
        "bad_cron",
        lambda d: d.update(schedule="61 * * * *"),
        "schedule",
        "is not a valid cron expression",
    ),
    (
        "negative_timeout",
        lambda d: d["stages"][3].update(response_timeout=-5),
        "stages[3].response_timeout",
        "must be a positive duration",
    ),
    (
        "bad_on_timeout",
        lambda d: d["stages"][3].update(on_timeout="ignore"),
        "stages[3].on_timeout",
        "'fail'",
    ),
    (
        "timeout_policy_without_timeout",
        lambda d: d["stages"][3].update(on_timeout="skip"),
        "stages[3].response_timeout",
        "required when on_timeout is 'skip'",
    ),
    (
        "approvers_without_gate",
        lambda d: d["stages"][1].update(approvers=["alice@example.com"]),
        "stages[1].approvers",
        "set approval_required: true to use approvers",
    ),
    (
        "missing_model_name",
        lambda d: d.pop("model_name"),
        "model_name",
        "field required",
    ),
    (
        "no_stages",
        lambda d: d.update(stages=[]),
        "stages",
        "at least 1 item",
    ),
    (
        "monitoring_without_metrics",
        lambda d: d["stages"][4].update(config={"metrics": []}),
        "stages[4].config.metrics",
        "at least 1 item",
    ),
    (
        "bad_dag_id",
        lambda d: d.update(dag_id="churn pipeline!"),
        "dag_id",
        "may contain only letters",
    ),
]


class TestBrokenSpecs:
    @pytest.mark.parametrize(
        ("case", "mutate", "field", "message"), BROKEN_SPECS, ids=[c[0] for c in BROKEN_SPECS]
    )
    def test_names_file_field_and_problem(
        self, tmp_path: Path, case: str, mutate: Any, field: str, message: str
    ) -> None:
        text, problems = problems_of(tmp_path, broken(mutate))
        fields = [loc for loc, _ in problems]
        assert field in fields, f"{case}: {problems}"
        msg = dict(problems)[field]
        assert message in msg, f"{case}: {field}: {msg!r}"
        # The rendered error has one line per problem: "<file>: <field>: <message>".
        assert f"{tmp_path / 'spec.yaml'}: {field}: {msg}" in text.splitlines()

    def test_issue_example_message_exactly(self, tmp_path: Path) -> None:
        data = good_spec()
        data["stages"][2]["config"]["thresholds"]["accuracy"] = 1.2
        text, problems = problems_of(tmp_path, data)
        assert problems == [("stages[2].config.thresholds.accuracy", "must be between 0 and 1")]
        assert text.endswith(
            f"{tmp_path / 'spec.yaml'}: stages[2].config.thresholds.accuracy: must be between 0 and 1"
        )

    def test_spec_and_operator_share_one_threshold_validation(self, tmp_path: Path) -> None:
        from airflow_provider_hlml.operators.mlflow import MLflowValidateOperator
        from airflow_provider_hlml.utils.thresholds import ThresholdsError

        thresholds = {"accuracy": 1.5, "acuracy": 0.8, "f1": {"min_relative_change": -0.1}}
        data = good_spec()
        data["stages"][2]["config"]["thresholds"] = thresholds
        _, spec_problems = problems_of(tmp_path, data)
        with pytest.raises(ThresholdsError) as err:
            MLflowValidateOperator(
                task_id="validate", model_uri="models:/m/1", data="x.csv", target="y", thresholds=thresholds
            )
        prefix = "stages[2].config."
        assert [(loc.removeprefix(prefix), msg) for loc, msg in spec_problems] == err.value.problems

    def test_several_problems_reported_together(self, tmp_path: Path) -> None:
        data = good_spec()
        data["stages"][2]["config"]["thresholds"]["accuracy"] = 2
        data["stages"][1]["config"]["callable"] = "missing.module:fn"
        data.pop("experiment_name")
        _, problems = problems_of(tmp_path, data)
        assert {loc for loc, _ in problems} == {
            "experiment_name",
            "stages[1].config.callable",
            "stages[2].config.thresholds.accuracy",
        }

    def test_invalid_yaml_names_line(self, tmp_path: Path) -> None:
        text, problems = problems_of(tmp_path, "name: x\nstages: [\n  - a: b\n")
        assert problems[0][0] == ""
        assert "invalid YAML at line" in problems[0][1]
        assert str(tmp_path / "spec.yaml") in text

    def test_top_level_must_be_mapping(self, tmp_path: Path) -> None:
        _, problems = problems_of(tmp_path, "- just\n- a list\n")
        assert problems == [("", "a workflow spec must be a mapping, got list")]

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(WorkflowSpecError, match="cannot read the file"):
            WorkflowSpec.from_yaml(tmp_path / "absent.yaml")


class TestDeploymentConfig:
    def test_stage_instead_of_alias(self) -> None:
        config = DeploymentConfig(stage="Production")
        assert config.target_alias is None

    def test_default_alias_is_champion(self) -> None:
        assert DeploymentConfig().target_alias == "champion"
        assert DeploymentConfig(alias="staging-eu").target_alias == "staging-eu"


class TestHelpers:
    def test_resolve_callable_both_forms(self) -> None:
        from airflow_provider_hlml.examples.churn import prepare_churn_data

        assert resolve_callable(f"{CHURN}:prepare_churn_data") is prepare_churn_data
        assert resolve_callable(f"{CHURN}.prepare_churn_data") is prepare_churn_data

    def test_resolve_callable_rejects_garbage(self) -> None:
        with pytest.raises(ValueError, match="not an import path"):
            resolve_callable("rm -rf /")

    @pytest.mark.parametrize(
        ("name", "slug"),
        [("Model Training", "model_training"), ("  A/B test #2 ", "a_b_test_2"), ("!!", "stage")],
    )
    def test_slugify(self, name: str, slug: str) -> None:
        assert slugify(name) == slug
