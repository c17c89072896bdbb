"""MLflow stages run with ``dag.test()`` against a real ``mlflow server`` and scikit-learn models."""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import uuid
import warnings
from typing import Any

import pendulum
import pytest

from airflow_provider_hlml import audit
from airflow_provider_hlml.hooks.mlflow import MLflowHook
from airflow_provider_hlml.operators.mlflow import (
    MLflowTrainOperator,
    MLflowValidateOperator,
    ModelPromoteOperator,
    TrainResult,
)
from airflow_provider_hlml.utils.thresholds import ThresholdsError
from tests.unit.operators.dagrun_helpers import churn_frame, run_dag, task_states, xcom_value

START = pendulum.datetime(2024, 1, 1, tz="UTC")
FEATURES = [f"f{i}" for i in range(5)]


def _uid(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def train_logreg(run: Any, params: dict[str, Any], context: Any) -> TrainResult:
    from sklearn.linear_model import LogisticRegression

    frame = churn_frame()
    model = LogisticRegression(C=float(params.get("C", 1.0)), max_iter=200).fit(
        frame[FEATURES], frame["churned"]
    )
    accuracy = float(model.score(frame[FEATURES], frame["churned"]))
    return TrainResult(metrics={"accuracy": accuracy}, model=model, input_example=frame[FEATURES].head(3))


def train_dummy() -> TrainResult:
    from sklearn.dummy import DummyClassifier

    frame = churn_frame()
    model = DummyClassifier(strategy="most_frequent").fit(frame[FEATURES], frame["churned"])
    return TrainResult(
        metrics={"accuracy": float(model.score(frame[FEATURES], frame["churned"]))}, model=model
    )


def _run_tags(client: Any, run_id: str) -> dict[str, str]:
    return dict(client.get_run(run_id).data.tags)


@pytest.fixture
def hook(mlflow_conn: str, airflow_db: Any) -> MLflowHook:
    return MLflowHook(mlflow_conn)


class TestMLflowTrainOperator:
    def test_trains_logs_tags_and_registers(self, hook: MLflowHook, mlflow_server: Any) -> None:
        from airflow.sdk import DAG

        dag_id, model_name = _uid("train"), _uid("churn")
        with DAG(dag_id, schedule=None, start_date=START) as dag:
            MLflowTrainOperator(
                task_id="train",
                python_callable=train_logreg,
                experiment_name="{{ dag.dag_id }}-exp",
                experiment_description="churn training",
                params={"C": 0.5, "solver": "lbfgs"},
                tags={"team": "ml"},
                registered_model_name=model_name,
            )
        dag_run = run_dag(dag)
        assert task_states(dag_run) == {"train": "success"}
        result = xcom_value(dag_run, "train")
        assert set(result) == {
            "mlflow_run_id",
            "run_id",
            "experiment_id",
            "model_uri",
            "metrics",
            "model_name",
            "model_version",
        }
        assert result["model_name"] == model_name
        assert result["metrics"]["accuracy"] > 0.7
        assert result["run_id"] == result["mlflow_run_id"]  # the deprecated alias stays

        client = hook.client
        run = client.get_run(result["run_id"])
        assert run.info.status == "FINISHED"
        assert run.info.experiment_id == result["experiment_id"]
        assert client.get_experiment(result["experiment_id"]).name == f"{dag_id}-exp"
        assert run.data.params == {"C": "0.5", "solver": "lbfgs"}
        assert run.data.metrics["accuracy"] == pytest.approx(result["metrics"]["accuracy"])
        tags = run.data.tags
        assert tags[audit.AIRFLOW_DAG_ID] == dag_id
        assert tags[audit.AIRFLOW_RUN_ID] == dag_run.run_id
        assert tags[audit.AIRFLOW_TASK_ID] == "train"
        assert tags[audit.AIRFLOW_TRY_NUMBER] == "1"
        assert tags[audit.AIRFLOW_DAG_RUN] == f"{dag_id}/{dag_run.run_id}"
        assert tags[audit.AIRFLOW_LOGICAL_DATE]
        assert f"/dags/{dag_id}/runs/" in tags[audit.AIRFLOW_TI_URL]
        assert tags["team"] == "ml"
        assert audit.RETRY_OF_RUN_ID not in tags

        version = client.get_model_version(model_name, result["model_version"])
        assert version.run_id == result["run_id"]
        assert version.aliases == []
        assert version.tags[audit.AIRFLOW_DAG_ID] == dag_id
        # sklearn flavor with a signature and an input example
        import mlflow

        with hook.fluent():
            info = mlflow.models.get_model_info(result["model_uri"])
        assert "sklearn" in info.flavors
        assert info.signature is not None
        assert info.saved_input_example_info is not None
        # the same grouping tag finds every run of this DAG run
        found = client.search_runs(
            [result["experiment_id"]], f"tags.`{audit.AIRFLOW_DAG_RUN}` = '{dag_id}/{dag_run.run_id}'"
        )
        assert [r.info.run_id for r in found] == [result["run_id"]]
        # extra link URL pushed for the "MLflow run" button
        link = xcom_value(dag_run, "train", "mlflow_run_url")
        assert link == f"{mlflow_server.url}/#/experiments/{result['experiment_id']}/runs/{result['run_id']}"
        # the fluent tracking URI did not leak out of the task
        assert mlflow.get_tracking_uri() != mlflow_server.url
        assert "MLFLOW_TRACKING_URI" not in os.environ

    def test_task_log_is_short_and_free_of_deprecation_noise(
        self, hook: MLflowHook, capfd: pytest.CaptureFixture[str]
    ) -> None:
        from airflow.sdk import DAG
        from airflow.utils.deprecation_tools import DeprecatedImportWarning

        with DAG(_uid("train_log"), schedule=None, start_date=START) as dag:
            MLflowTrainOperator(
                task_id="train",
                python_callable=train_logreg,
                experiment_name="{{ dag.dag_id }}",
                registered_model_name=_uid("churn_log"),
            )
        capfd.readouterr()
        with warnings.catch_warnings(record=True) as caught:
            # "always": a warning already shown by an earlier test in this process shows again.
            warnings.simplefilter("always")
            dag_run = run_dag(dag)
        out, err = capfd.readouterr()
        assert task_states(dag_run) == {"train": "success"}
        deprecated = [w for w in caught if issubclass(w.category, DeprecatedImportWarning)]
        assert deprecated == [], f"{len(deprecated)} warnings, first: {deprecated[:1]}"
        log_lines = (out + err).splitlines()
        assert not [line for line in log_lines if "DeprecatedImportWarning" in line]
        assert len(log_lines) < 200, "\n".join(log_lines[:50])

    def test_run_conf_overrides_params(self, hook: MLflowHook) -> None:
        from airflow.sdk import DAG

        def fit(params: dict[str, Any]) -> dict[str, float]:
            return {"c_seen": float(params["C"])}

        with DAG(_uid("conf"), schedule=None, start_date=START) as dag:
            MLflowTrainOperator(
                task_id="train", python_callable=fit, experiment_name="hlml-conf", params={"C": 1.0}
            )
        dag_run = run_dag(dag, conf={"C": 0.25})
        result = xcom_value(dag_run, "train")
        assert result["metrics"] == {"c_seen": 0.25}
        assert hook.client.get_run(result["run_id"]).data.params == {"C": "0.25"}
        assert result["model_uri"] is None
        assert result["model_version"] is None

    def test_failure_ends_run_failed_and_retry_links_to_it(self, hook: MLflowHook) -> None:
        from datetime import timedelta

        from airflow.sdk import DAG

        def flaky(context: Any) -> dict[str, float]:
            if context["ti"].try_number == 1:
                raise RuntimeError("feature store timed out")
            return {"accuracy": 0.9}

        dag_id = _uid("retry")
        with DAG(dag_id, schedule=None, start_date=START) as dag:
            MLflowTrainOperator(
                task_id="train",
                python_callable=flaky,
                experiment_name="hlml-retry",
                retries=1,
                retry_delay=timedelta(seconds=0),
            )
        dag_run = run_dag(dag)
        assert task_states(dag_run) == {"train": "success"}
        second = xcom_value(dag_run, "train")
        client = hook.client
        tags = _run_tags(client, second["run_id"])
        assert tags[audit.AIRFLOW_TRY_NUMBER] == "2"
        first = client.get_run(tags[audit.RETRY_OF_RUN_ID])
        assert first.info.status == "FAILED"
        assert first.data.tags[audit.AIRFLOW_TRY_NUMBER] == "1"
        assert first.data.tags[audit.RUN_ERROR] == "RuntimeError: feature store timed out"
        assert first.data.tags[audit.AIRFLOW_DAG_ID] == dag_id

    def test_bad_return_value_fails_the_task_and_the_run(self, hook: MLflowHook) -> None:
        from airflow.sdk import DAG

        dag_id = _uid("badret")
        with DAG(dag_id, schedule=None, start_date=START) as dag:
            MLflowTrainOperator(
                task_id="train", python_callable=lambda: {"accuracy": "high"}, experiment_name="hlml-bad"
            )
        dag_run = run_dag(dag)
        assert task_states(dag_run) == {"train": "failed"}
        exp = hook.client.get_experiment_by_name("hlml-bad")
        runs = hook.client.search_runs([exp.experiment_id], f"tags.`{audit.AIRFLOW_DAG_ID}` = '{dag_id}'")
        assert len(runs) == 1
        assert runs[0].info.status == "FAILED"
        assert "metric 'accuracy' returned by python_callable is str" in runs[0].data.tags[audit.RUN_ERROR]

    def test_on_kill_ends_run_killed(self, hook: MLflowHook) -> None:
        from airflow.sdk import DAG
        from airflow.sdk.exceptions import AirflowTaskTerminated

        def killed(context: Any) -> None:
            # What the task runner does on SIGTERM: on_kill(), then the task is terminated.
            context["task"].on_kill()
            raise AirflowTaskTerminated("SIGTERM")

        dag_id = _uid("kill")
        with DAG(dag_id, schedule=None, start_date=START) as dag:
            MLflowTrainOperator(task_id="train", python_callable=killed, experiment_name="hlml-kill")
        run_dag(dag)
        exp = hook.client.get_experiment_by_name("hlml-kill")
        runs = hook.client.search_runs([exp.experiment_id], f"tags.`{audit.AIRFLOW_DAG_ID}` = '{dag_id}'")
        assert [r.info.status for r in runs] == ["KILLED"]

    def test_secrets_stay_out_of_xcom_and_mlflow(
        self, mlflow_server: Any, airflow_db: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from airflow.sdk import DAG

        password = "pw-" + uuid.uuid4().hex
        conn = {"conn_type": "mlflow", "host": mlflow_server.url, "login": "svc", "password": password}
        monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_SECRET", json.dumps(conn))
        with DAG(_uid("secret"), schedule=None, start_date=START) as dag:
            MLflowTrainOperator(
                task_id="train",
                python_callable=lambda: {"accuracy": 1.0},
                experiment_name="hlml-secret",
                mlflow_conn_id="mlflow_secret",
            )
        dag_run = run_dag(dag)
        result = xcom_value(dag_run, "train")
        assert password not in json.dumps(result)
        assert password not in json.dumps(xcom_value(dag_run, "train", "mlflow_run_url"))
        run = MLflowHook("mlflow_secret").client.get_run(result["run_id"])
        assert password not in json.dumps({**run.data.tags, **run.data.params})

    def test_rejects_non_callable(self) -> None:
        with pytest.raises(TypeError, match="python_callable of task 'train' must be callable"):
            MLflowTrainOperator(task_id="train", python_callable="nope", experiment_name="x")  # type: ignore[arg-type]

    def test_autolog_records_the_fit_next_to_the_operators_own_tags(self, hook: MLflowHook) -> None:
        import mlflow
        from airflow.sdk import DAG
        from mlflow.utils.autologging_utils import autologging_is_disabled

        def fit(params: dict[str, Any]) -> dict[str, float]:
            from sklearn.linear_model import LogisticRegression

            frame = churn_frame()
            model = LogisticRegression(C=params["C"], max_iter=300).fit(frame[FEATURES], frame["churned"])
            return {"holdout_accuracy": float(model.score(frame[FEATURES], frame["churned"]))}

        dag_id, model_name = _uid("autolog"), _uid("autolog_model")
        with DAG(dag_id, schedule=None, start_date=START) as dag:
            MLflowTrainOperator(
                task_id="train",
                python_callable=fit,
                experiment_name="hlml-autolog",
                params={"C": 0.5},
                tags={"team": "ml"},
                autolog=True,
                registered_model_name=model_name,
            )
        dag_run = run_dag(dag)
        assert task_states(dag_run) == {"train": "success"}
        result = xcom_value(dag_run, "train")
        client = hook.client
        run = client.get_run(result["run_id"])
        assert run.info.status == "FINISHED"
        # scikit-learn autologging: the estimator's params and training metrics ...
        params = run.data.params
        assert params["C"] == "0.5"  # the operator's param and the estimator's agree
        assert params["max_iter"] == "300"
        assert params["solver"] == "lbfgs"
        metrics = run.data.metrics
        for name in ("training_accuracy_score", "training_f1_score", "training_log_loss", "holdout_accuracy"):
            assert name in metrics, sorted(metrics)
        assert metrics["training_accuracy_score"] == pytest.approx(metrics["holdout_accuracy"])
        assert run.data.tags["estimator_class"] == "sklearn.linear_model._logistic.LogisticRegression"
        # ... the operator's own tags untouched ...
        assert run.data.tags[audit.AIRFLOW_DAG_ID] == dag_id
        assert run.data.tags[audit.AIRFLOW_TASK_ID] == "train"
        assert run.data.tags[audit.AIRFLOW_DAG_RUN] == f"{dag_id}/{dag_run.run_id}"
        assert run.data.tags[audit.HLML_STAGE] == "train"
        assert run.data.tags["team"] == "ml"
        # ... and the autologged model is the run's model: returned, registered, loadable.
        assert result["model_uri"]
        with hook.fluent():
            logged = mlflow.get_logged_model(result["model_uri"].rsplit("/", 1)[-1])
            info = mlflow.models.get_model_info(result["model_uri"])
            loaded = mlflow.sklearn.load_model(f"models:/{model_name}/{result['model_version']}")
        assert logged.source_run_id == result["run_id"]
        assert "sklearn" in info.flavors
        assert info.signature is not None
        assert client.get_model_version(model_name, result["model_version"]).run_id == result["run_id"]
        frame = churn_frame("validation")
        assert 0.7 < loaded.score(frame[FEATURES], frame["churned"]) <= 1.0
        # autologging ends with the task
        assert autologging_is_disabled("sklearn")

    def test_autolog_keeps_the_estimators_params_when_an_operator_param_differs(
        self, hook: MLflowHook
    ) -> None:
        from airflow.sdk import DAG

        def fit(params: dict[str, Any]) -> TrainResult:
            from sklearn.linear_model import LogisticRegression

            frame = churn_frame()
            # C=1 arrives as an int and is fitted as 1.0: autologging records "1.0".
            LogisticRegression(C=float(params["C"]), max_iter=300).fit(frame[FEATURES], frame["churned"])
            return TrainResult(metrics={"done": 1.0}, params={"features": len(FEATURES)})

        with DAG(_uid("autolog_conflict"), schedule=None, start_date=START) as dag:
            MLflowTrainOperator(
                task_id="train",
                python_callable=fit,
                experiment_name="hlml-autolog",
                params={"C": 1, "dataset": "churn"},
                autolog=True,
            )
        dag_run = run_dag(dag)
        assert task_states(dag_run) == {"train": "success"}
        run = hook.client.get_run(xcom_value(dag_run, "train")["run_id"])
        params = run.data.params
        assert params["C"] == "1.0"  # what the model used
        assert params["max_iter"] == "300"
        assert params["solver"] == "lbfgs"
        assert params["dataset"] == "churn"  # the operator's other params ...
        assert params["features"] == "5"  # ... and the callable's are all there
        assert "training_accuracy_score" in run.data.metrics

    def test_registering_without_a_model_names_the_task(self, hook: MLflowHook) -> None:
        from airflow.sdk import DAG

        dag_id = _uid("nomodel")
        with DAG(dag_id, schedule=None, start_date=START) as dag:
            MLflowTrainOperator(
                task_id="train",
                python_callable=lambda: {"accuracy": 1.0},
                experiment_name="hlml-nomodel",
                registered_model_name=_uid("never"),
            )
        assert task_states(run_dag(dag)) == {"train": "failed"}
        exp = hook.client.get_experiment_by_name("hlml-nomodel")
        runs = hook.client.search_runs([exp.experiment_id], f"tags.`{audit.AIRFLOW_DAG_ID}` = '{dag_id}'")
        assert [r.info.status for r in runs] == ["FAILED"]
        assert "callable of task 'train' logged no model" in runs[0].data.tags[audit.RUN_ERROR]

    def test_autolog_off_logs_only_what_the_callable_returns(self, hook: MLflowHook) -> None:
        from airflow.sdk import DAG

        def fit() -> dict[str, float]:
            from sklearn.linear_model import LogisticRegression

            frame = churn_frame()
            LogisticRegression(max_iter=300).fit(frame[FEATURES], frame["churned"])
            return {"accuracy": 1.0}

        with DAG(_uid("noautolog"), schedule=None, start_date=START) as dag:
            MLflowTrainOperator(task_id="train", python_callable=fit, experiment_name="hlml-autolog")
        result = xcom_value(run_dag(dag), "train")
        run = hook.client.get_run(result["run_id"])
        assert run.data.metrics == {"accuracy": 1.0}
        assert run.data.params == {}
        assert result["model_uri"] is None


@pytest.fixture(scope="module")
def registered(mlflow_server: Any, airflow_db: Any) -> dict[str, Any]:
    """A registered model with a good (v1) and a poor (v2) version, trained for real."""
    import mlflow
    from mlflow.tracking import MlflowClient

    name = _uid("validate_model")
    client = MlflowClient(tracking_uri=mlflow_server.url)
    exp_id = client.create_experiment(_uid("validate-exp"))
    versions = {}
    mlflow.set_tracking_uri(mlflow_server.url)
    try:
        for label, fn in (("good", train_logreg), ("poor", train_dummy)):
            result = fn(None, {}, None) if fn is train_logreg else fn()
            with mlflow.start_run(experiment_id=exp_id) as run:
                info = mlflow.sklearn.log_model(result.model, name="model", pip_requirements=["scikit-learn"])
            mv = mlflow.register_model(info.model_uri, name)
            versions[label] = {"version": str(mv.version), "run_id": run.info.run_id}
    finally:
        from mlflow.tracking._tracking_service import utils

        utils._tracking_uri = None
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    return {"name": name, **versions}


def _write_validation_csv(tmp_path: Any) -> str:
    path = tmp_path / "validation.csv"
    churn_frame("validation").to_csv(path, index=False)
    return str(path)


class TestMLflowValidateOperator:
    def test_first_model_only_absolute_thresholds_then_champion_comparison(
        self, hook: MLflowHook, registered: dict[str, Any], tmp_path: Any
    ) -> None:
        from airflow.sdk import DAG

        name = registered["name"]
        thresholds = {"accuracy": {"threshold": 0.7, "min_relative_change": 0.05}}
        data = _write_validation_csv(tmp_path)
        with DAG(_uid("validate_first"), schedule=None, start_date=START) as dag:
            MLflowValidateOperator(
                task_id="validate",
                model_uri=f"models:/{name}/{registered['good']['version']}",
                data=data,
                target="churned",
                thresholds=thresholds,
            )
        report = xcom_value(run_dag(dag), "validate")
        assert report["passed"] is True
        assert report["champion_version"] is None
        assert report["model_name"] == name
        assert report["model_version"] == registered["good"]["version"]
        assert report["mlflow_run_id"] == registered["good"]["run_id"]
        row = report["metrics"]["accuracy"]
        assert row["candidate"] > 0.7
        assert row["champion"] is None
        assert "only the absolute threshold applies" in row["reason"]
        validation_run = hook.client.get_run(report["validation_run_id"])
        assert validation_run.data.tags["hlml.validation_passed"] == "true"
        assert validation_run.data.tags[audit.HLML_STAGE] == "validate"

        # v1 becomes champion; the poor v2 is now compared with it.
        hook.client.set_registered_model_alias(name, "champion", registered["good"]["version"])
        poor = f"models:/{name}/{registered['poor']['version']}"
        with DAG(_uid("validate_vs_champion"), schedule=None, start_date=START) as dag2:
            for on_fail in ("continue", "skip", "fail"):
                MLflowValidateOperator(
                    task_id=f"validate_{on_fail}",
                    model_uri=poor,
                    data=lambda: churn_frame("validation"),
                    target="churned",
                    thresholds={"accuracy": {"min_relative_change": 0.0}, "f1": 0.1},
                    on_fail=on_fail,
                )
        dag_run = run_dag(dag2)
        assert task_states(dag_run) == {
            "validate_continue": "success",
            "validate_skip": "skipped",
            "validate_fail": "failed",
        }
        report = xcom_value(dag_run, "validate_continue")
        assert report["passed"] is False
        assert report["champion_version"] == registered["good"]["version"]
        accuracy = report["metrics"]["accuracy"]
        assert accuracy["candidate"] < accuracy["champion"]
        assert accuracy["passed"] is False
        assert "minimum relative change check failed" in accuracy["reason"]
        assert accuracy["mlflow_metric"] == "accuracy_score"
        assert report["metrics"]["f1"]["passed"] is False  # most_frequent predicts one class
        assert xcom_value(dag_run, "validate_fail", "validation_report")["passed"] is False

    def test_a_decision_policy_decides_a_clear_win_and_a_clear_regression(
        self, hook: MLflowHook, registered: dict[str, Any]
    ) -> None:
        from airflow.sdk import DAG

        name = registered["name"]
        policy = {
            "name": "champion-margin",
            "version": 1,
            "metrics": {"accuracy": {"threshold": 0.5, "min_improvement": 0.02, "max_regression": 0.02}},
            "seed": 11,
        }

        def validate(dag_id: str, version: str, **kwargs: Any) -> dict[str, Any]:
            with DAG(_uid(dag_id), schedule=None, start_date=START) as dag:
                MLflowValidateOperator(
                    task_id="validate",
                    model_uri=f"models:/{name}/{version}",
                    data=lambda: churn_frame("validation"),
                    target="churned",
                    thresholds={"accuracy": 0.0},
                    on_fail="continue",
                    decision_policy=policy,
                    **kwargs,
                )
            report: dict[str, Any] = xcom_value(run_dag(dag), "validate")
            return report

        # The poor version against the good champion: a clear regression, rejected by the policy.
        hook.client.set_registered_model_alias(name, "champion", registered["good"]["version"])
        report = validate("policy_regression", registered["poor"]["version"])
        decision = report["decision"]
        assert decision["outcome"] == "auto_reject"
        assert decision["principal"] == "policy:champion-margin-v1"
        low, high = decision["metrics"]["accuracy"]["interval"]
        assert low < high < -0.02
        assert decision["policy"]["seed"] == 11
        tags = hook.client.get_run(report["validation_run_id"]).data.tags
        assert tags[audit.DECISION_OUTCOME] == "auto_reject"
        assert tags[audit.DECISION_PRINCIPAL] == "policy:champion-margin-v1"

        # The good version against the poor champion: a clear win, approved by the policy; the
        # same data and seed give the same interval.
        hook.client.set_registered_model_alias(name, "champion", registered["poor"]["version"])
        first = validate("policy_win", registered["good"]["version"])["decision"]
        assert first["outcome"] == "auto_approve"
        assert first["metrics"]["accuracy"]["interval"][0] > 0.02
        again = validate("policy_win_again", registered["good"]["version"])["decision"]
        assert again["metrics"] == first["metrics"]
        # A policy that forbids auto-approval asks a person about the same clear win.
        policy["allow_auto_approve"] = False
        strict = validate("policy_strict", registered["good"]["version"])
        assert strict["decision"]["outcome"] == "human"
        assert strict["decision"]["principal"] is None
        assert audit.DECISION_PRINCIPAL not in hook.client.get_run(strict["validation_run_id"]).data.tags

    def test_a_decision_policy_that_cannot_be_evaluated_is_refused_at_definition(self) -> None:
        from airflow_provider_hlml.policy.decision import PolicyError

        with pytest.raises(PolicyError, match="one of"):
            MLflowValidateOperator(
                task_id="v",
                model_uri="models:/m/1",
                data="x.csv",
                target="y",
                thresholds={"f1": 0.1},
                decision_policy={"metrics": {"log_loss": 0.5}},
            )

    def test_bad_thresholds_are_refused_at_definition(self) -> None:
        with pytest.raises(
            ThresholdsError,
            match=r"thresholds\.accuracy\.treshold: unknown key \(did you mean 'threshold'\?\)",
        ):
            MLflowValidateOperator(
                task_id="v",
                model_uri="models:/m/1",
                data="x.csv",
                target="y",
                thresholds={"accuracy": {"treshold": 1}},
            )
        with pytest.raises(ValueError, match="set at least one of threshold"):
            MLflowValidateOperator(
                task_id="v", model_uri="models:/m/1", data="x.csv", target="y", thresholds={"accuracy": {}}
            )
        with pytest.raises(ValueError, match="on_fail"):
            MLflowValidateOperator(
                task_id="v", model_uri="m", data="x.csv", target="y", thresholds={"f1": 1}, on_fail="ignore"
            )

    def test_impossible_thresholds_fail_when_the_dag_is_defined(self) -> None:
        from airflow.sdk import DAG

        with DAG(_uid("validate_defined"), schedule=None, start_date=START):
            with pytest.raises(ThresholdsError) as out_of_range:
                MLflowValidateOperator(
                    task_id="validate",
                    model_uri="models:/m/1",
                    data="x.csv",
                    target="y",
                    thresholds={"accuracy": 1.5},
                    on_fail="continue",
                )
            with pytest.raises(ThresholdsError) as typo:
                MLflowValidateOperator(
                    task_id="validate_typo",
                    model_uri="models:/m/1",
                    data="x.csv",
                    target="y",
                    thresholds={"acuracy": 0.8},
                )
            with pytest.raises(ThresholdsError) as wrong_type:
                MLflowValidateOperator(
                    task_id="validate_type",
                    model_uri="models:/m/1",
                    data="x.csv",
                    target="y",
                    thresholds={"rmse": 0.3, "f1": {"min_relative_change": 2}},
                )
        # The workflow spec's style: one line per problem, "<owner>: <field>: <message>".
        assert str(out_of_range.value) == (
            "invalid thresholds of task 'validate' (1 problem):\n"
            "task 'validate': thresholds.accuracy: must be between 0 and 1"
        )
        assert typo.value.problems == [
            ("thresholds.acuracy", "not a metric of a classifier (did you mean 'accuracy'?)")
        ]
        assert [loc for loc, _ in wrong_type.value.problems] == [
            "thresholds.rmse",
            "thresholds.f1.min_relative_change",
        ]
        assert "'rmse' is reported for model_type 'regressor'" in str(wrong_type.value)

    def test_thresholds_are_normalised_for_mlflow(self) -> None:
        op = MLflowValidateOperator(
            task_id="v",
            model_uri="m",
            data="x.csv",
            target="y",
            model_type="regressor",
            thresholds={
                "rmse": {"threshold": 1, "greater_is_better": False},
                "r2": {"min_relative_change": 0},
            },
        )
        assert op.thresholds == {
            "rmse": {
                "threshold": 1.0,
                "min_absolute_change": None,
                "min_relative_change": None,
                "greater_is_better": False,
            },
            "r2": {
                "threshold": None,
                "min_absolute_change": None,
                "min_relative_change": 0.0,
                "greater_is_better": True,
            },
        }

    def test_data_errors_name_the_problem(self, tmp_path: Any) -> None:
        path = _write_validation_csv(tmp_path)
        op = MLflowValidateOperator(
            task_id="v", model_uri="m", data=path, target="label", thresholds={"f1": 1}
        )
        with pytest.raises(ValueError, match="target column 'label' is not in the validation data"):
            op._load_data({})  # type: ignore[arg-type]
        op = MLflowValidateOperator(
            task_id="v2", model_uri="m", data=str(tmp_path / "missing.csv"), target="y", thresholds={"f1": 1}
        )
        with pytest.raises(FileNotFoundError, match=r"missing\.csv"):
            op._load_data({})  # type: ignore[arg-type]


def _gate_task(context_for_gate: dict[str, Any], approved: bool = True, task_id: str = "approve") -> Any:
    """A task whose XCom has the shape of HumanApprovalSensor's result."""
    from airflow.sdk import task

    @task(task_id=task_id)
    def approve() -> dict[str, Any]:
        return {
            "approved": approved,
            "chosen_options": [],
            "reject_option": None,
            "comment": "metrics look right",
            "responded_by_user": {"name": "alice", "email": "alice@example.com"},
            "responded_at": "2024-01-01T10:00:00+00:00",
            "requested_at": "2024-01-01T09:58:00+00:00",
            "response_seconds": 120.0,
            "call_id": "call-123",
            "approval_url": "http://approvals/calls/call-123",
            "context": context_for_gate,
        }

    return approve()


def _new_versions(hook: MLflowHook, name: str, count: int) -> list[dict[str, str]]:
    """Register ``count`` versions of ``name`` from real runs (no model files needed to move aliases)."""
    client = hook.client
    exp_id = hook.get_or_create_experiment("hlml-promote")
    if client.search_registered_models(f"name = '{name}'") == []:
        client.create_registered_model(name)
    out = []
    for _ in range(count):
        run = client.create_run(exp_id)
        client.set_terminated(run.info.run_id)
        mv = client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        out.append({"version": str(mv.version), "run_id": run.info.run_id})
    return out


class TestModelPromoteOperator:
    def test_promote_with_approval_then_rollback(self, hook: MLflowHook) -> None:
        from airflow.sdk import DAG

        client = hook.client
        name = _uid("promote")
        v1, v2 = _new_versions(hook, name, 2)
        client.set_registered_model_alias(name, "champion", v1["version"])
        client.set_model_version_tag(name, v1["version"], audit.previous_holder_tag("champion"), "")

        with DAG(_uid("promote_dag"), schedule=None, start_date=START) as dag:
            gate = _gate_task(
                {"model_name": name, "model_version": v2["version"], "mlflow_run_id": v2["run_id"]}
            )
            promote = ModelPromoteOperator(
                task_id="promote", model_name=name, version=v2["version"], approval_task_id="approve"
            )
            gate >> promote
        dag_run = run_dag(dag)
        assert task_states(dag_run) == {"approve": "success", "promote": "success"}
        result = xcom_value(dag_run, "promote")
        assert result["previous_version"] == v1["version"]
        assert client.get_model_version_by_alias(name, "champion").version == v2["version"]
        tags = client.get_model_version(name, v2["version"]).tags
        assert tags[audit.APPROVED_BY] == "alice@example.com"
        assert tags[audit.APPROVED_AT] == "2024-01-01T10:00:00+00:00"
        assert tags[audit.APPROVAL_COMMENT] == "metrics look right"
        assert tags[audit.APPROVAL_CALL_ID] == "call-123"
        assert tags[audit.PROMOTED_BY_DAG_ID] == dag.dag_id
        assert tags[audit.PROMOTED_BY_RUN_ID] == dag_run.run_id
        assert tags[audit.previous_holder_tag("champion")] == v1["version"]
        assert tags[audit.PROMOTED_ALIAS] == "champion"

        with DAG(_uid("rollback_dag"), schedule=None, start_date=START) as rollback_dag:
            ModelPromoteOperator(task_id="rollback", model_name=name, mode="rollback")
        rollback_run = run_dag(rollback_dag)
        assert task_states(rollback_run) == {"rollback": "success"}
        assert client.get_model_version_by_alias(name, "champion").version == v1["version"]
        rolled = client.get_model_version(name, v2["version"]).tags
        assert rolled[audit.ROLLED_BACK_TO] == v1["version"]
        assert audit.ROLLED_BACK_AT in rolled
        assert xcom_value(rollback_run, "rollback")["rolled_back_version"] == v2["version"]

    def test_refuses_when_approval_names_another_version(self, hook: MLflowHook) -> None:
        from airflow.sdk import DAG

        client = hook.client
        name = _uid("mismatch")
        v1, v2 = _new_versions(hook, name, 2)
        with DAG(_uid("mismatch_dag"), schedule=None, start_date=START) as dag:
            gate = _gate_task(
                {"model_name": name, "model_version": v1["version"], "mlflow_run_id": v1["run_id"]}
            )
            gate >> ModelPromoteOperator(
                task_id="promote", model_name=name, version=v2["version"], approval_task_id="approve"
            )
            rejected = _gate_task(
                {"model_name": name, "model_version": v2["version"]},
                approved=False,
                task_id="approve_rejected",
            )
            rejected >> ModelPromoteOperator(
                task_id="promote_rejected",
                model_name=name,
                version=v2["version"],
                approval_task_id="approve_rejected",
            )
        dag_run = run_dag(dag)
        states = task_states(dag_run)
        assert states["promote"] == "failed"
        assert states["promote_rejected"] == "failed"
        assert client.get_registered_model(name).aliases == {}
        assert audit.APPROVED_BY not in client.get_model_version(name, v2["version"]).tags

    def test_binding_message_names_each_mismatch(self, hook: MLflowHook) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        name = _uid("msg")
        (v1,) = _new_versions(hook, name, 1)
        op = ModelPromoteOperator(task_id="promote", model_name=name, approval_task_id="gate")
        mv = hook.client.get_model_version(name, v1["version"])
        decision = {"approved": True, "call_id": "c1", "context": {"model_name": name, "model_version": "99"}}
        with pytest.raises(AirflowFailException) as info:
            op._check_binding(decision, mv)
        message = str(info.value)
        assert f"model_version: approved '99', promoting '{v1['version']}'" in message
        assert f"mlflow_run_id: approved None, promoting '{v1['run_id']}'" in message

    def test_legacy_stage_mode_warns_and_archives(self, hook: MLflowHook) -> None:
        from airflow.exceptions import AirflowProviderDeprecationWarning
        from airflow.sdk import DAG

        client = hook.client
        name = _uid("stage")
        v1, v2 = _new_versions(hook, name, 2)
        with DAG(_uid("stage_dag"), schedule=None, start_date=START) as dag:
            ModelPromoteOperator(task_id="p1", model_name=name, version=v1["version"], stage="Production")
        with pytest.warns(AirflowProviderDeprecationWarning, match="stages are deprecated"):
            run_dag(dag)
        with DAG(_uid("stage_dag2"), schedule=None, start_date=START) as dag2:
            ModelPromoteOperator(task_id="p2", model_name=name, version=v2["version"], stage="Production")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_dag(dag2)
            assert client.get_model_version(name, v2["version"]).current_stage == "Production"
            assert client.get_model_version(name, v1["version"]).current_stage == "Archived"
            tags = client.get_model_version(name, v2["version"]).tags
            assert tags[audit.previous_stage_holder_tag("Production")] == v1["version"]
            with DAG(_uid("stage_rollback"), schedule=None, start_date=START) as dag3:
                ModelPromoteOperator(task_id="rb", model_name=name, stage="Production", mode="rollback")
            run_dag(dag3)
            assert client.get_model_version(name, v1["version"]).current_stage == "Production"
            assert client.get_model_version(name, v2["version"]).current_stage == "Archived"

    def test_racing_promotions_leave_a_consistent_registry(
        self, hook: MLflowHook, mlflow_server: Any
    ) -> None:
        client = hook.client
        name = _uid("race")
        v0, va, vb = _new_versions(hook, name, 3)
        client.set_registered_model_alias(name, "champion", v0["version"])
        ctx = multiprocessing.get_context("spawn")
        start = ctx.Event()
        procs = [
            ctx.Process(target=_promote_in_child, args=(mlflow_server.url, name, v["version"], start))
            for v in (va, vb)
        ]
        for proc in procs:
            proc.start()
        start.set()
        for proc in procs:
            proc.join(120)
            assert proc.exitcode == 0
        holder = client.get_model_version_by_alias(name, "champion").version
        assert holder in (va["version"], vb["version"])
        other = vb["version"] if holder == va["version"] else va["version"]
        tag = audit.previous_holder_tag("champion")
        # One chain: v0 -> other -> holder; each version names its true predecessor.
        assert client.get_model_version(name, holder).tags[tag] == other
        assert client.get_model_version(name, other).tags[tag] == v0["version"]


def _promote_in_child(url: str, name: str, version: str, start: Any) -> None:
    """Child process body for the race test: one promotion through the operator."""
    import types

    os.environ["AIRFLOW_CONN_MLFLOW_DEFAULT"] = json.dumps({"conn_type": "mlflow", "host": url})
    op = ModelPromoteOperator(task_id=f"promote_{version}", model_name=name, version=version)
    ti = types.SimpleNamespace(dag_id="race", run_id=f"run_{version}", task_id=op.task_id)
    start.wait(60)
    op.execute({"ti": ti})  # type: ignore[arg-type]


class ThresholdModel:
    """Not a scikit-learn estimator: predicts 1 where a weighted sum of the features is positive."""

    def __init__(self, weights: list[float]) -> None:
        self.weights = weights

    def predict(self, frame: Any) -> Any:
        import numpy as np

        return (np.asarray(frame, dtype=float) @ np.asarray(self.weights) > 0).astype(np.int64)


def _doubling_model() -> Any:
    import mlflow.pyfunc

    class DoublingModel(mlflow.pyfunc.PythonModel):
        def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
            return model_input * 2

    return DoublingModel()


class TestLogModel:
    def test_non_sklearn_model_is_logged_as_pyfunc_that_loads_and_predicts(self, hook: MLflowHook) -> None:
        import mlflow
        import numpy as np
        from airflow.sdk import DAG

        model = ThresholdModel([1.0, -0.5, 0.25, 0.0, 2.0])

        def train() -> TrainResult:
            frame = churn_frame()
            accuracy = float((model.predict(frame[FEATURES]) == frame["churned"]).mean())
            return TrainResult(
                metrics={"accuracy": accuracy}, model=model, input_example=frame[FEATURES].head(3)
            )

        with DAG(_uid("pyfunc"), schedule=None, start_date=START) as dag:
            MLflowTrainOperator(task_id="train", python_callable=train, experiment_name="hlml-pyfunc")
        dag_run = run_dag(dag)
        assert task_states(dag_run) == {"train": "success"}
        result = xcom_value(dag_run, "train")
        assert result["model_uri"]

        validation = churn_frame("validation")[FEATURES]
        with hook.fluent():
            info = mlflow.models.get_model_info(result["model_uri"])
            loaded = mlflow.pyfunc.load_model(result["model_uri"])
            example = mlflow.models.Model.load(result["model_uri"]).load_input_example()
        assert set(info.flavors) == {"python_function"}
        assert info.run_id == result["run_id"]
        signature = info.signature
        assert signature is not None
        assert signature.inputs.input_names() == FEATURES
        assert [spec.type.name for spec in signature.inputs.inputs] == ["double"] * 5
        assert signature.outputs is not None
        assert signature.outputs.inputs[0].type == np.dtype("int64")  # a tensor: predict() returns an array
        assert example is not None
        assert list(example.columns) == FEATURES
        assert len(example) == 3
        predictions = np.asarray(loaded.predict(validation))
        np.testing.assert_array_equal(predictions, model.predict(validation))
        assert set(np.unique(predictions)) == {0, 1}  # the weights split the table, not a constant

    def test_python_model_is_logged_as_itself(self, hook: MLflowHook) -> None:
        import mlflow
        import pandas as pd
        from airflow.sdk import DAG

        def train() -> TrainResult:
            return TrainResult(model=_doubling_model(), input_example=pd.DataFrame({"x": [1.0, 2.0, 3.0]}))

        with DAG(_uid("pythonmodel"), schedule=None, start_date=START) as dag:
            MLflowTrainOperator(task_id="train", python_callable=train, experiment_name="hlml-pyfunc")
        result = xcom_value(run_dag(dag), "train")
        with hook.fluent():
            info = mlflow.models.get_model_info(result["model_uri"])
            loaded = mlflow.pyfunc.load_model(result["model_uri"])
        assert info.signature is not None
        assert info.signature.inputs.input_names() == ["x"]
        assert info.saved_input_example_info is not None
        out = loaded.predict(pd.DataFrame({"x": [4.0, 5.0]}))
        assert list(pd.DataFrame(out).iloc[:, 0]) == [8.0, 10.0]

    def test_object_without_predict_fails_the_task_and_the_run(self, hook: MLflowHook) -> None:
        from airflow.sdk import DAG

        dag_id = _uid("nopredict")
        with DAG(dag_id, schedule=None, start_date=START) as dag:
            MLflowTrainOperator(
                task_id="train",
                python_callable=lambda: TrainResult(metrics={"accuracy": 1.0}, model=object()),
                experiment_name="hlml-pyfunc",
            )
        assert task_states(run_dag(dag)) == {"train": "failed"}
        exp = hook.client.get_experiment_by_name("hlml-pyfunc")
        runs = hook.client.search_runs([exp.experiment_id], f"tags.`{audit.AIRFLOW_DAG_ID}` = '{dag_id}'")
        assert [r.info.status for r in runs] == ["FAILED"]
        assert "cannot log a object" in runs[0].data.tags[audit.RUN_ERROR]

    def test_pyfunc_fallback_logs_without_type_hint_warnings(self, hook: MLflowHook) -> None:
        import mlflow
        import numpy as np

        from airflow_provider_hlml.operators.mlflow import log_model

        frame = churn_frame()[FEATURES]
        model = ThresholdModel([0.5, 0.5, -1.0, 0.0, 1.0])
        experiment_id = hook.get_or_create_experiment("hlml-pyfunc")
        with hook.fluent(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with mlflow.start_run(experiment_id=experiment_id):
                uri = log_model(model, "wrapped", input_example=frame.head(2))
            loaded = mlflow.pyfunc.load_model(uri)
        hints = [str(w.message) for w in caught if "type hint" in str(w.message).lower()]
        assert hints == []
        np.testing.assert_array_equal(np.asarray(loaded.predict(frame)), model.predict(frame))


@functools.cache
def _sklearn_model_zoo() -> dict[str, Any]:
    """Fitted models whose skops dumps hold types skops does not trust by default (and some without)."""
    import numpy as np
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.feature_selection import SelectKBest, f_classif
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.metrics import f1_score, make_scorer
    from sklearn.model_selection import GridSearchCV
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    frame = churn_frame()
    x, y = frame[FEATURES].to_numpy(), frame["churned"].to_numpy()
    return {
        "forest": RandomForestClassifier(n_estimators=3, random_state=0).fit(x, y),
        "hist_gradient_boosting": HistGradientBoostingClassifier(max_iter=3).fit(x, y),
        "pipeline_with_function": make_pipeline(
            StandardScaler(), SelectKBest(f_classif, k=3), LogisticRegression()
        ).fit(x, y),
        "sgd": SGDClassifier(random_state=0).fit(x, y),
        "kd_tree": KNeighborsClassifier(algorithm="kd_tree").fit(x, y),
        "mlp": MLPClassifier(max_iter=5, random_state=0).fit(x, y),
        "calibrated": CalibratedClassifierCV(LogisticRegression(), cv=2).fit(x, y),
        "grid_search": GridSearchCV(
            LogisticRegression(), {"C": [0.5, 1.0]}, cv=2, scoring=make_scorer(f1_score)
        ).fit(x, y),
        "class_as_value": FunctionTransformer(
            np.log1p, kw_args={"cls": LogisticRegression, "fitted": LogisticRegression().fit(x, y)}
        ),
    }


_SKOPS_IMPORT_PROBE = """
import sys, warnings
import airflow.sdk, airflow.models  # the deprecated-alias modules a worker has loaded
from airflow.utils.deprecation_tools import DeprecatedImportWarning
from airflow_provider_hlml.operators.mlflow import quiet_skops_module_scan

def count(quiet):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if quiet:
            with quiet_skops_module_scan():
                import skops.io
        else:
            import skops.io
    return sum(issubclass(w.category, DeprecatedImportWarning) for w in caught)

print(count(sys.argv[1] == "quiet"))
"""


class TestQuietSkopsModuleScan:
    def test_first_skops_import_in_a_task_process_is_silent(self) -> None:
        # skops names every scipy ufunc on its first import, probing each loaded module: in a
        # fresh process (as each task gets) that was about 1,160 DeprecatedImportWarnings.
        import subprocess
        import sys

        def probe(quiet: bool) -> int:
            argv = [sys.executable, "-c", _SKOPS_IMPORT_PROBE, "quiet" if quiet else "plain"]
            done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=300)
            return int(done.stdout.strip().splitlines()[-1])

        assert probe(quiet=False) > 100  # the noise is real without the filter ...
        assert probe(quiet=True) == 0  # ... and gone with it

    def test_filter_is_scoped_to_the_block(self) -> None:
        from airflow.utils.deprecation_tools import DeprecatedImportWarning

        from airflow_provider_hlml.operators.mlflow import quiet_skops_module_scan

        before = list(warnings.filters)
        with quiet_skops_module_scan():
            assert warnings.filters[0][2] is DeprecatedImportWarning
        assert warnings.filters == before


class TestOwnSklearnTypes:
    @pytest.mark.parametrize(
        "name",
        [
            "forest",
            "hist_gradient_boosting",
            "pipeline_with_function",
            "sgd",
            "kd_tree",
            "mlp",
            "calibrated",
            "grid_search",
            "class_as_value",
        ],
    )
    def test_names_what_skops_itself_reports_untrusted(self, name: str) -> None:
        import skops.io

        from airflow_provider_hlml.operators.mlflow import own_sklearn_types as _own_sklearn_types

        model = _sklearn_model_zoo()[name]
        dumped = skops.io.dumps(model)
        untrusted = skops.io.get_untrusted_types(data=dumped)
        expected = sorted(t for t in untrusted if t.startswith("sklearn."))
        assert _own_sklearn_types(model) == (expected or None)
        others = [t for t in untrusted if not t.startswith("sklearn.")]
        skops.io.loads(dumped, trusted=(expected + others) or None)  # nothing left untrusted


class TestDefaultMLflowConnection:
    """``[hlml] mlflow_conn_id`` is the connection of every MLflow stage not given one."""

    def operators(self, **kwargs: Any) -> list[Any]:
        return [
            MLflowTrainOperator(task_id="train", python_callable=dict, experiment_name="e", **kwargs),
            MLflowValidateOperator(
                task_id="validate",
                model_uri="models:/m/1",
                data="data.csv",
                target="y",
                thresholds={"accuracy": 0.5},
                **kwargs,
            ),
            ModelPromoteOperator(task_id="promote", model_name="m", **kwargs),
        ]

    def test_configured_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW__HLML__MLFLOW_CONN_ID", "mlflow_team")
        assert [op.mlflow_conn_id for op in self.operators()] == ["mlflow_team"] * 3

    def test_unconfigured_default_and_explicit_connection(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("AIRFLOW__HLML__MLFLOW_CONN_ID", raising=False)
        assert [op.mlflow_conn_id for op in self.operators()] == [MLflowHook.default_conn_name] * 3
        monkeypatch.setenv("AIRFLOW__HLML__MLFLOW_CONN_ID", "mlflow_team")
        assert [op.mlflow_conn_id for op in self.operators(mlflow_conn_id="mine")] == ["mine"] * 3
