"""The builder: task ids, dependencies, gates and their contexts, the YAML folder loader."""

from __future__ import annotations

import copy
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk.definitions.xcom_arg import PlainXComArg

from airflow_provider_hlml.examples import churn
from airflow_provider_hlml.operators.mlflow import (
    MLflowTrainOperator,
    MLflowValidateOperator,
    ModelPromoteOperator,
)
from airflow_provider_hlml.sensors.approval import HumanApprovalSensor
from airflow_provider_hlml.workflows.builder import build_ml_workflow_dag, load_workflows
from airflow_provider_hlml.workflows.monitoring import log_monitoring_metrics
from airflow_provider_hlml.workflows.spec import WorkflowSpec, WorkflowSpecError
from tests.unit.workflows.test_spec import CHURN_YAML, good_spec


def edges(dag: Any) -> set[tuple[str, str]]:
    return {(up, task.task_id) for task in dag.tasks for up in task.upstream_task_ids}


def gated_spec() -> dict[str, Any]:
    data = good_spec()
    data["default_approvers"] = ["alice@example.com"]
    data["poll_interval"] = 0.5
    data["stages"][2]["approval_required"] = True
    data["stages"][3].update(
        approvers=["bob@example.com"], response_timeout="1h", on_timeout="reject", urgency="high"
    )
    return data


class TestBuildMlWorkflowDag:
    def test_tasks_in_order_with_gates(self) -> None:
        dag = build_ml_workflow_dag(gated_spec())
        assert dag.dag_id == "customer_churn_prediction_pipeline"
        assert edges(dag) == {
            ("data_preparation", "model_training"),
            ("model_training", "approve_model_validation"),
            ("approve_model_validation", "model_validation"),
            ("model_validation", "approve_production_deployment"),
            ("approve_production_deployment", "production_deployment"),
            ("production_deployment", "performance_monitoring"),
        }
        kinds = {task.task_id: type(task) for task in dag.tasks}
        assert kinds == {
            "data_preparation": PythonOperator,
            "model_training": MLflowTrainOperator,
            "approve_model_validation": HumanApprovalSensor,
            "model_validation": MLflowValidateOperator,
            "approve_production_deployment": HumanApprovalSensor,
            "production_deployment": ModelPromoteOperator,
            "performance_monitoring": PythonOperator,
        }

    def test_dag_settings(self) -> None:
        data = gated_spec()
        data.update(schedule="0 3 * * 1", tags=["team-a"], max_active_runs=2, owner="ml-team")
        dag = build_ml_workflow_dag(data)
        assert dag.schedule == "0 3 * * 1"
        assert set(dag.tags) == {"hlml", "ml-workflow", "team-a"}
        assert dag.max_active_runs == 2
        assert not dag.catchup
        assert dag.get_task("model_training").owner == "ml-team"
        assert "| 3 | Production Deployment (`production_deployment`) | deployment | required |" in (
            dag.doc_md or ""
        )

    def test_gate_contexts_come_from_previous_stages(self) -> None:
        dag = build_ml_workflow_dag(gated_spec())
        before_validation = dag.get_task("approve_model_validation")
        before_deploy = dag.get_task("approve_production_deployment")
        # Before validation the reviewer sees the training result, before deployment the report.
        assert isinstance(before_validation.context, PlainXComArg)
        assert before_validation.context.operator.task_id == "model_training"
        assert isinstance(before_deploy.context, PlainXComArg)
        assert before_deploy.context.operator.task_id == "model_validation"
        assert before_deploy.approval_type == "model_promotion"
        assert before_validation.approval_type == "workflow_decision"

    def test_gate_policy_from_stage_and_defaults(self) -> None:
        dag = build_ml_workflow_dag(gated_spec())
        before_validation = dag.get_task("approve_model_validation")
        before_deploy = dag.get_task("approve_production_deployment")
        assert before_validation.approvers == ["alice@example.com"]
        assert before_deploy.approvers == ["bob@example.com"]
        assert before_deploy.response_timeout_seconds == timedelta(hours=1).total_seconds()
        assert before_deploy.on_timeout == "reject"
        assert before_deploy.urgency == "high"
        assert before_deploy.poke_interval == 0.5
        assert before_deploy.subject == "Promote churn_predictor to alias 'champion'"

    def test_gate_rules_and_duties_from_the_stage(self) -> None:
        spec = gated_spec()
        rules = [{"name": "ML lead", "approvers": ["group:ml-leads"], "required": 2}]
        spec["stages"][3].update(approval_rules=rules, forbid=["model_author"])
        spec["mlflow_conn_id"] = "mlflow_spec"
        gate = build_ml_workflow_dag(spec).get_task("approve_production_deployment")
        assert gate.approval_rules == [{**rules[0], "veto": True, "source": "gate"}]
        assert gate.forbid == ["model_author"]
        assert gate.mlflow_conn_id == "mlflow_spec"  # where the model's author is read
        assert [o["name"] for o in gate.reject_options] == ["needs_retraining", "data_issue", "not_now"]
        assert build_ml_workflow_dag(spec).get_task("approve_model_validation").reject_options == []
        assert build_ml_workflow_dag(gated_spec()).get_task("approve_production_deployment").forbid == [
            "requester",
            "model_author",
        ]

    def test_stage_wiring(self) -> None:
        dag = build_ml_workflow_dag(gated_spec())
        train = dag.get_task("model_training")
        assert train.python_callable is churn.train_churn_model
        assert train.experiment_name == "churn_prediction_v2"
        assert train.registered_model_name == "churn_predictor"
        validate = dag.get_task("model_validation")
        assert validate.model_uri == "{{ ti.xcom_pull(task_ids='model_training')['model_uri'] }}"
        assert validate.data_callable is churn.churn_validation_data
        assert validate.target == "churned"
        assert validate.model_name == "churn_predictor"
        assert set(validate.thresholds) == {"accuracy", "precision"}
        assert validate.thresholds["accuracy"]["threshold"] == 0.85
        promote = dag.get_task("production_deployment")
        assert promote.approval_task_id == "approve_production_deployment"
        assert promote.version == "{{ ti.xcom_pull(task_ids='model_validation')['model_version'] }}"
        assert promote.run_id == "{{ ti.xcom_pull(task_ids='model_validation')['mlflow_run_id'] }}"
        assert promote.alias == "champion"
        monitor = dag.get_task("performance_monitoring")
        assert monitor.python_callable is log_monitoring_metrics
        assert monitor.op_kwargs["upstream_task_ids"] == [
            "model_training",
            "model_validation",
            "production_deployment",
        ]
        assert monitor.op_kwargs["alias"] == "champion"
        assert monitor.op_kwargs["metrics"] == ["accuracy"]

    def test_ungated_deployment_has_no_approval_binding(self) -> None:
        data = good_spec()
        data["stages"][3]["approval_required"] = False
        dag = build_ml_workflow_dag(data)
        assert dag.get_task("production_deployment").approval_task_id is None
        assert not [t for t in dag.tasks if isinstance(t, HumanApprovalSensor)]

    def test_deployment_without_validation_uses_training_output(self) -> None:
        data = good_spec()
        del data["stages"][2]
        dag = build_ml_workflow_dag(data)
        gate = dag.get_task("approve_production_deployment")
        assert gate.context.operator.task_id == "model_training"
        promote = dag.get_task("production_deployment")
        assert promote.run_id == "{{ ti.xcom_pull(task_ids='model_training')['mlflow_run_id'] }}"

    def test_custom_stage_and_gate_on_first_stage(self) -> None:
        data = good_spec()
        data["stages"].insert(
            0,
            {
                "name": "Check data contract",
                "type": "custom",
                "approval_required": True,
                "config": {
                    "callable": f"{churn.__name__}:generate_churn_data",
                    "op_kwargs": {"n_samples": 50},
                },
            },
        )
        dag = build_ml_workflow_dag(data)
        gate = dag.get_task("approve_check_data_contract")
        assert gate.upstream_task_ids == set()
        assert gate.context is None
        assert dag.get_task("check_data_contract").op_kwargs == {"n_samples": 50}

    def test_invalid_spec_raises_before_any_dag(self) -> None:
        data = good_spec()
        data["stages"][2]["config"]["thresholds"]["accuracy"] = 7
        with pytest.raises(
            WorkflowSpecError, match=r"stages\[2\]\.config\.thresholds\.accuracy: must be between 0 and 1"
        ):
            build_ml_workflow_dag(data, source="inline")

    def test_dag_is_serializable(self) -> None:
        from airflow.serialization.serialized_objects import DagSerialization

        dag = build_ml_workflow_dag(gated_spec())
        data = DagSerialization.to_dict(dag)
        restored = DagSerialization.from_dict(data)
        assert {t.task_id for t in restored.tasks} == {t.task_id for t in dag.tasks}


class TestLoadWorkflows:
    def test_shipped_folder(self) -> None:
        dags = load_workflows(CHURN_YAML.parent)
        assert set(dags) == {"churn_pipeline_spec"}
        dag = dags["churn_pipeline_spec"]
        assert [t.task_id for t in dag.topological_sort()] == [
            "prepare_data",
            "train_model",
            "approve_validate_model",
            "validate_model",
            "approve_promote_model",
            "promote_model",
            "monitor_model",
        ]
        assert dag.schedule == "@weekly"

    def test_one_bad_file_loads_nothing_and_names_every_problem(self, tmp_path: Path) -> None:
        good = good_spec()
        bad = copy.deepcopy(good)
        bad["dag_id"] = "other"
        bad["stages"][2]["config"]["thresholds"]["accuracy"] = 1.5
        (tmp_path / "a_good.yaml").write_text(yaml.safe_dump(good))
        (tmp_path / "b_bad.yml").write_text(yaml.safe_dump(bad))
        (tmp_path / "notes.txt").write_text("ignored")
        with pytest.raises(WorkflowSpecError) as excinfo:
            load_workflows(tmp_path)
        assert (
            f"{tmp_path / 'b_bad.yml'}: stages[2].config.thresholds.accuracy: must be between 0 and 1"
            in str(excinfo.value)
        )

    def test_duplicate_dag_ids_across_files(self, tmp_path: Path) -> None:
        (tmp_path / "one.yaml").write_text(yaml.safe_dump(good_spec()))
        (tmp_path / "two.yaml").write_text(yaml.safe_dump(good_spec()))
        with pytest.raises(WorkflowSpecError, match=r"already defined by .*one\.yaml"):
            load_workflows(tmp_path)

    def test_missing_folder(self, tmp_path: Path) -> None:
        with pytest.raises(WorkflowSpecError, match="no such file or folder"):
            load_workflows(tmp_path / "absent")

    def test_empty_folder(self, tmp_path: Path) -> None:
        assert load_workflows(tmp_path) == {}

    def test_single_file(self) -> None:
        assert set(load_workflows(CHURN_YAML)) == {"churn_pipeline_spec"}


class TestImportErrors:
    """A bad spec shows up as the DAG file's import error, and no DAG of the folder is loaded."""

    def test_dagbag_reports_bad_spec_as_import_error(self, tmp_path: Path) -> None:
        from airflow.dag_processing.dagbag import DagBag

        specs = tmp_path / "workflows"
        specs.mkdir()
        good = good_spec()
        bad = copy.deepcopy(good)
        bad["dag_id"] = "broken_one"
        bad["stages"][1]["type"] = "train"
        (specs / "good.yaml").write_text(yaml.safe_dump(good))
        (specs / "broken.yaml").write_text(yaml.safe_dump(bad))
        dag_file = tmp_path / "spec_workflows.py"
        dag_file.write_text(
            textwrap.dedent(
                """
                # DAGs from the workflow specs next to this file
                from pathlib import Path
                from airflow_provider_hlml.workflows.builder import load_workflows
                globals().update(load_workflows(Path(__file__).parent / "workflows"))
                """
            )
        )
        bag = DagBag(dag_folder=str(dag_file))
        assert bag.dag_ids == []
        assert list(bag.import_errors) == [str(dag_file)]
        assert f"{specs / 'broken.yaml'}: stages[1].type: must be one of" in bag.import_errors[str(dag_file)]

        (specs / "broken.yaml").unlink()
        bag = DagBag(dag_folder=str(dag_file))
        assert bag.import_errors == {}
        assert bag.dag_ids == [WorkflowSpec.from_mapping(good).resolved_dag_id]


class TestApprovalRequiredAuto:
    POLICY = {
        "name": "churn-margin",
        "version": 2,
        "metrics": {"accuracy": {"threshold": 0.8, "min_improvement": 0.01, "max_regression": 0.01}},
    }

    def spec(self, approval_required: Any = "auto", policy: Any = POLICY) -> dict[str, Any]:
        data = good_spec()
        if policy is not None:
            data["stages"][2]["config"]["decision_policy"] = policy
        data["stages"][3]["approval_required"] = approval_required
        return data

    def test_auto_gate_acts_on_the_validations_decision_policy(self) -> None:
        dag = build_ml_workflow_dag(self.spec())
        validate = dag.get_task("model_validation")
        gate = dag.get_task("approve_production_deployment")
        assert isinstance(validate, MLflowValidateOperator)
        assert validate.decision_policy is not None
        assert validate.decision_policy.principal == "policy:churn-margin-v2"
        assert isinstance(gate, HumanApprovalSensor)
        assert gate.auto_decisions is True
        assert isinstance(gate.context, PlainXComArg)
        assert gate.context.operator.task_id == "model_validation"
        assert "by evidence, else a person" in (dag.doc_md or "")

    def test_a_plain_true_gate_always_asks_a_person(self) -> None:
        gate = build_ml_workflow_dag(self.spec(True)).get_task("approve_production_deployment")
        assert gate.auto_decisions is False

    def test_auto_without_a_decision_policy_is_refused(self) -> None:
        with pytest.raises(WorkflowSpecError) as raised:
            WorkflowSpec.from_mapping(self.spec(policy=None), source="inline")
        assert raised.value.problems == [
            (
                "stages[3].approval_required",
                "'auto' needs a validation stage with a decision_policy before this stage (after its "
                "training stage): the gate acts on its decision",
            )
        ]

    @pytest.mark.parametrize(
        ("policy", "needle"),
        [
            ({"metrics": {"log_loss": 0.1}}, "metric 'log_loss'"),
            ({**POLICY, "name": "Bad Name!"}, "name:"),
            ({**POLICY, "override_window": -5}, "override_window"),
            ({**POLICY, "surprise": 1}, "unknown keys"),
        ],
    )
    def test_a_broken_decision_policy_names_the_field(self, policy: Any, needle: str) -> None:
        with pytest.raises(WorkflowSpecError) as raised:
            WorkflowSpec.from_mapping(self.spec(policy=policy), source="inline")
        ((where, problem),) = raised.value.problems
        assert where == "stages[2].config.decision_policy"
        assert needle in problem
