"""Scenarios on a LocalExecutor deployment, once with a PostgreSQL and once with a SQLite metadata DB.

One deployment per backend serves the whole module (api-server, scheduler, dag-processor,
triggerer, and a standalone approvals service on the same kind of database; the MLflow server is
shared by the e2e package); each scenario uses DAG runs of its own. Test ids end in the backend,
e.g. ``test_kill9_with_50_pending_gates_loses_none_and_asks_once[sqlite]``.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_provider_hlml.utils.ids import approval_call_id
from tests.e2e.in_place import assert_ended_in_place, queued_after, run_in_place_scenario
from tests.fixtures.airflow_stack import AirflowStack, HumanLayerApi, wait_until
from tests.fixtures.approvals import ApprovalsService
from tests.fixtures.mlflow_server import MLflowServer
from tests.fixtures.processes import VENV_BIN, wait_for_http

# Setup starts a whole deployment, which counts against the per-test timeout.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

FANOUT = "e2e_gate_fanout"


@pytest.fixture(scope="module")
def admin(stack_approvals: ApprovalsService) -> Iterator[HumanLayerApi]:
    client = HumanLayerApi(stack_approvals.base_url, stack_approvals.admin_key)
    yield client
    client.close()


@pytest.fixture(scope="module")
def reviewer(stack_approvals: ApprovalsService) -> Iterator[HumanLayerApi]:
    """alice, a reviewer, deciding through the HumanLayer API."""
    client = HumanLayerApi(stack_approvals.base_url, stack_approvals.reviewer_key)
    yield client
    client.close()


def gate_call_ids(run_id: str, count: int) -> list[str]:
    return [approval_call_id(FANOUT, run_id, "gate", i, 1) for i in range(count)]


def calls_of_run(admin: HumanLayerApi, run_id: str) -> list[dict]:
    return [
        c
        for c in admin.list(fn="workflow_decision")
        if ((c["spec"].get("state") or {}).get("hlml") or {}).get("airflow", {}).get("run_id") == run_id
    ]


def start_fanout(stack: AirflowStack, count: int) -> str:
    api = stack.api
    api.wait_for_dag(FANOUT)
    api.unpause(FANOUT)
    run_id = api.trigger(FANOUT, conf={"count": count})
    stack.wait_until_parked(FANOUT, run_id, "gate", "deferred", count=count)
    return run_id


def assert_all_gates_passed_first_try(stack: AirflowStack, run_id: str, count: int) -> None:
    gates = [ti for ti in stack.api.task_instances(FANOUT, run_id) if ti["task_id"] == "gate"]
    assert len(gates) == count
    assert {ti["state"] for ti in gates} == {"success"}
    assert {ti["try_number"] for ti in gates} == {1}, "a gate needed a retry"
    assert stack.api.xcom(FANOUT, run_id, "tally") == {"count": count, "approved": count, "calls": count}


class TestScheduledDeferral:
    def test_scheduled_run_defers_to_the_triggerer_and_succeeds(self, local_stack: AirflowStack) -> None:
        api = local_stack.api
        api.wait_for_dag("e2e_smoke")
        api.unpause("e2e_smoke")
        try:
            runs = wait_until(lambda: api.dag_runs("e2e_smoke"), 60, "the scheduler to create a run")
            run = api.wait_for_run("e2e_smoke", runs[0]["dag_run_id"], timeout=120)
        finally:
            api.pause("e2e_smoke")

        assert run["run_type"] == "scheduled", run
        assert run["state"] == "success", local_stack.diagnose("e2e_smoke", run["dag_run_id"])
        states = api.task_states("e2e_smoke", run["dag_run_id"])
        assert states == {"first": "success", "wait_in_triggerer": "success", "last": "success"}
        # The wait ran in the triggerer: the task resumed after at least its 10 s deferral.
        assert api.xcom("e2e_smoke", run["dag_run_id"], "wait_in_triggerer") >= 10.0


class TestEndInPlace:
    def test_approved_gate_ends_in_the_triggerer_and_downstream_reads_its_result(
        self, local_stack: AirflowStack, reviewer: HumanLayerApi
    ) -> None:
        """No webhook here: the gates defer; the approved one ends in the triggerer."""
        run_in_place_scenario(local_stack, reviewer, "deferred")


class TestTriggererChaos:
    COUNT = 50

    def test_kill9_with_50_pending_gates_loses_none_and_asks_once(
        self, local_stack: AirflowStack, admin: HumanLayerApi, reviewer: HumanLayerApi
    ) -> None:
        run_id = start_fanout(local_stack, self.COUNT)
        expected = set(gate_call_ids(run_id, self.COUNT))
        wait_until(
            lambda: expected <= {c["call_id"] for c in admin.list(fn="workflow_decision", status="pending")},
            60,
            "50 pending requests on the approvals service",
        )

        triggerer = local_stack.processes["triggerer"]
        triggerer.kill9()
        assert not triggerer.alive()
        # Half are decided while no triggerer runs (between decision and end), half after.
        decided_at = time.time()
        ordered = sorted(expected)
        for call_id in ordered[: self.COUNT // 2]:
            reviewer.respond(call_id, approved=True, comment="e2e: approved while the triggerer was down")
        local_stack.start_process("triggerer", "triggerer")
        local_stack.wait_healthy(("triggerer",))

        for call_id in ordered[self.COUNT // 2 :]:
            reviewer.respond(call_id, approved=True, comment="e2e: approved after the triggerer restart")
        run = local_stack.api.wait_for_run(FANOUT, run_id, timeout=300)

        assert run["state"] == "success", local_stack.diagnose(FANOUT, run_id)
        assert_all_gates_passed_first_try(local_stack, run_id, self.COUNT)
        # Every gate ended once, in the restarted triggerer: none was queued for a worker again.
        gates = [ti for ti in local_stack.api.task_instances(FANOUT, run_id) if ti["task_id"] == "gate"]
        assert not [ti["map_index"] for ti in gates if queued_after(ti, decided_at)]
        assert_ended_in_place(local_stack, FANOUT, run_id, decided_at, map_index=0)
        calls = calls_of_run(admin, run_id)
        assert len(calls) == self.COUNT, "the service must hold exactly one request per gate"
        assert {c["call_id"] for c in calls} == expected
        assert all(c["status"]["approved"] is True for c in calls)


class TestApprovalsServiceChaos:
    COUNT = 4
    OUTAGE_SECONDS = 8.0  # poll interval is 1 s

    def test_outage_fails_no_gate_and_loses_no_decision(
        self, local_stack: AirflowStack, stack_approvals: ApprovalsService, reviewer: HumanLayerApi
    ) -> None:
        api = local_stack.api
        run_id = start_fanout(local_stack, self.COUNT)
        call_ids = gate_call_ids(run_id, self.COUNT)

        stack_approvals.stop()
        down_since = time.monotonic()
        try:
            # Two decisions are made while the API is down, straight in the service's database.
            for call_id in call_ids[:2]:
                subprocess.run(
                    [
                        str(VENV_BIN / "hlml-approvals"),
                        "approve",
                        call_id,
                        "--as",
                        "alice",
                        "--comment",
                        "decided during the outage",
                        "--database-url",
                        stack_approvals.database_url,
                    ],
                    check=True,
                    capture_output=True,
                    timeout=120,
                )
            time.sleep(max(0.0, self.OUTAGE_SECONDS - (time.monotonic() - down_since)))
            states = api.task_states(FANOUT, run_id)
            gate_states = {k: v for k, v in states.items() if k.startswith("gate[")}
            assert set(gate_states.values()) == {"deferred"}, f"a gate gave up during the outage: {states}"
        finally:
            stack_approvals.start()

        for call_id in call_ids[2:]:
            reviewer.respond(call_id, approved=True, comment="decided after the outage")
        run = api.wait_for_run(FANOUT, run_id, timeout=240)

        assert run["state"] == "success", local_stack.diagnose(FANOUT, run_id)
        assert_all_gates_passed_first_try(local_stack, run_id, self.COUNT)
        for map_index, call_id in enumerate(call_ids):
            result = api.xcom(FANOUT, run_id, "gate", map_index=map_index)
            assert result["call_id"] == call_id
            assert result["approved"] is True
            expected = "decided during the outage" if map_index < 2 else "decided after the outage"
            assert result["comment"] == expected


CHURN = "churn_pipeline"
MODEL = "churn_predictor"


def _wait_for_gate(stack: AirflowStack, run_id: str) -> None:
    try:
        stack.wait_until_parked(CHURN, run_id, "approve_promotion", "deferred")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{stack.diagnose(CHURN, run_id)}") from exc


class TestChurnPipeline:
    """The example pipeline, scheduled, its gate answered by a reviewer through the HumanLayer API."""

    def test_scheduled_run_approved_by_a_reviewer_promotes_that_version(
        self, local_stack: AirflowStack, e2e_mlflow: MLflowServer, reviewer: HumanLayerApi
    ) -> None:
        from mlflow import MlflowClient

        from airflow_provider_hlml import audit

        api = local_stack.api
        api.wait_for_dag(CHURN, timeout=240)
        api.unpause(CHURN)
        runs = wait_until(lambda: api.dag_runs(CHURN), 90, "the scheduler to create a churn run")
        run_id = runs[0]["dag_run_id"]
        assert runs[0]["run_type"] == "scheduled"
        _wait_for_gate(local_stack, run_id)

        call_id = approval_call_id(CHURN, run_id, "approve_promotion", -1, 1)
        request = reviewer.get(call_id)
        assert request["status"]["approved"] is None
        assert request["spec"]["fn"] == "model_promotion"
        report = api.xcom(CHURN, run_id, "validate_model")
        assert request["spec"]["kwargs"]["context"]["model_version"] == report["model_version"]
        reviewer.respond(call_id, approved=True, comment="metrics hold up; ship it")
        run = api.wait_for_run(CHURN, run_id, timeout=400)

        assert run["state"] == "success", local_stack.diagnose(CHURN, run_id)
        champion = MlflowClient(tracking_uri=e2e_mlflow.url).get_model_version_by_alias(MODEL, "champion")
        assert champion.version == str(report["model_version"])
        assert champion.run_id == report["mlflow_run_id"]
        assert champion.tags[audit.APPROVAL_CALL_ID] == call_id
        assert champion.tags[audit.APPROVAL_COMMENT] == "metrics hold up; ship it"
        assert "alice" in champion.tags[audit.APPROVED_BY]
        assert champion.tags[audit.PROMOTED_BY_RUN_ID] == run_id

    def test_rejected_run_promotes_nothing(
        self, local_stack: AirflowStack, e2e_mlflow: MLflowServer, reviewer: HumanLayerApi
    ) -> None:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=e2e_mlflow.url)
        before = client.get_registered_model(MODEL).aliases.get("champion")
        api = local_stack.api
        run_id = api.trigger(CHURN)
        _wait_for_gate(local_stack, run_id)
        candidate = api.xcom(CHURN, run_id, "validate_model")["model_version"]

        reviewer.respond(
            approval_call_id(CHURN, run_id, "approve_promotion", -1, 1),
            approved=False,
            comment="precision on the new segment is too low",
        )
        run = api.wait_for_run(CHURN, run_id, timeout=300)

        states = api.task_states(CHURN, run_id)
        assert run["state"] == "failed", states
        assert states["approve_promotion"] == "failed"
        assert states["promote_model"] == "upstream_failed"
        model = client.get_registered_model(MODEL)
        assert model.aliases.get("champion") == before, "a rejected version must not be promoted"
        assert not client.get_model_version(MODEL, str(candidate)).aliases


class TestMLflowOutage:
    """The MLflow server goes away while a training task runs (kept last: it restarts MLflow)."""

    def test_training_fails_clearly_and_succeeds_on_retry_after_restart(
        self, local_stack: AirflowStack, e2e_mlflow: MLflowServer, tmp_path: Path
    ) -> None:
        from mlflow import MlflowClient

        from airflow_provider_hlml import audit

        dag_id = "e2e_mlflow_outage"
        api = local_stack.api
        api.wait_for_dag(dag_id)
        api.unpause(dag_id)
        run_id = api.trigger(dag_id, conf={"control_dir": str(tmp_path)})
        wait_until(lambda: (tmp_path / "started-1").exists(), 300, "the first try to start training")

        e2e_mlflow.process.stop()
        try:
            (tmp_path / "release").touch()
            api.wait_for_task_state(dag_id, run_id, "train", "up_for_retry", timeout=180)
        finally:
            e2e_mlflow.process.start()
            wait_for_http(f"{e2e_mlflow.url}/health", timeout=300, proc=e2e_mlflow.process.proc)
        run = api.wait_for_run(dag_id, run_id, timeout=300)

        assert run["state"] == "success", local_stack.diagnose(dag_id, run_id)
        (train,) = api.task_instances(dag_id, run_id)
        assert train["try_number"] >= 2
        first_log = api.task_log(dag_id, run_id, "train", 1)
        assert "is unreachable" in first_log, first_log[-3000:]
        assert e2e_mlflow.url in first_log

        client = MlflowClient(tracking_uri=e2e_mlflow.url)
        experiment = client.get_experiment_by_name("e2e_mlflow_outage")
        # The experiment is shared by both backends' deployments: keep this DAG run's MLflow runs.
        runs = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`{audit.AIRFLOW_DAG_RUN}` = '{dag_id}/{run_id}'"
        )
        assert runs, "no MLflow run carries this DAG run's tag"
        statuses = sorted(r.info.status for r in runs)
        assert "RUNNING" not in statuses, statuses
        assert statuses.count("FINISHED") == 1, statuses
        (interrupted,) = [r for r in runs if r.data.tags.get("airflow.try_number") == "1"]
        assert interrupted.info.status in ("FAILED", "KILLED")
