"""The scheduled churn pipeline on a CeleryExecutor deployment: two workers, Redis, PostgreSQL.

Nothing in the provider may assume one machine: tasks land on either worker, models travel through
the MLflow server to its artifact root, approvals through the approvals service.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_provider_hlml.utils.ids import approval_call_id
from tests.e2e.in_place import IN_PLACE, run_in_place_scenario
from tests.fixtures.airflow_stack import AirflowStack, HumanLayerApi, wait_until
from tests.fixtures.approvals import ApprovalsService
from tests.fixtures.mlflow_server import MLflowServer

# Setup starts a whole deployment, which counts against the per-test timeout.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

CHURN = "churn_pipeline"
MODEL = "churn_predictor"


@pytest.fixture(scope="module")
def reviewer(pg_approvals: ApprovalsService) -> Iterator[HumanLayerApi]:
    client = HumanLayerApi(pg_approvals.base_url, pg_approvals.reviewer_key)
    yield client
    client.close()


def _tasks_received(stack: AirflowStack) -> dict[str, int]:
    return {
        name: proc.log_path.read_text(errors="replace").count("] received")
        for name, proc in stack.processes.items()
        if name.startswith("worker-") and proc.log_path is not None
    }


class TestCeleryDeployment:
    def test_scheduled_churn_pipeline_runs_across_two_workers(
        self, celery_stack: AirflowStack, e2e_mlflow: MLflowServer, reviewer: HumanLayerApi
    ) -> None:
        from mlflow import MlflowClient

        api = celery_stack.api
        api.wait_for_dag(CHURN, timeout=240)
        api.unpause(CHURN)
        runs = wait_until(lambda: api.dag_runs(CHURN), 90, "the scheduler to create a churn run")
        run_id = runs[0]["dag_run_id"]
        assert runs[0]["run_type"] == "scheduled"
        try:
            # The service pushes its decisions to the API server (webhooks): the gate parks.
            celery_stack.wait_until_parked(CHURN, run_id, "approve_promotion", "awaiting_input")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{celery_stack.diagnose(CHURN, run_id)}") from exc
        call_id = approval_call_id(CHURN, run_id, "approve_promotion", -1, 1)
        reviewer.respond(call_id, approved=True, comment="celery")
        run = api.wait_for_run(CHURN, run_id, timeout=400)

        assert run["state"] == "success", celery_stack.diagnose(CHURN, run_id)
        # The approvals service posted the decision to the API server, which took the signed body
        # and ended the approved gate there: the only way it could learn of it (nothing polls),
        # and no worker took the gate again.
        api_log = celery_stack.processes["api-server"].log_path
        assert api_log is not None
        assert f"Webhook for approval request {call_id} (signed): ended" in api_log.read_text(
            errors="replace"
        )
        report = api.xcom(CHURN, run_id, "validate_model")
        champion = MlflowClient(tracking_uri=e2e_mlflow.url).get_model_version_by_alias(MODEL, "champion")
        assert champion.version == str(report["model_version"])
        # Both workers took tasks, and the model went through the server into its artifact root.
        received = _tasks_received(celery_stack)
        assert len(received) == 2
        assert all(count >= 1 for count in received.values()), received
        assert sum(received.values()) >= len(api.task_instances(CHURN, run_id))
        stored = list((e2e_mlflow.root / "artifacts").rglob("MLmodel"))
        assert stored, "no model reached the MLflow server's artifact root"

    def test_approved_gate_ends_in_the_api_server_and_downstream_reads_its_result(
        self, celery_stack: AirflowStack, reviewer: HumanLayerApi
    ) -> None:
        """Gates park (webhooks); the approved one ends in the API server, no Celery worker runs it
        again; opted-out and rejected ones resume on a worker."""
        received_before = sum(_tasks_received(celery_stack).values())
        run_id = run_in_place_scenario(celery_stack, reviewer, "awaiting_input")
        tis = celery_stack.api.task_instances(IN_PLACE, run_id)
        # Each task that ran reached a Celery worker once, except the two gates that resumed on
        # a worker (twice): the gate that ended in place never went back to the broker.
        ran = [t["task_id"] for t in tis if t["state"] != "skipped"]
        assert len(ran) == 5, tis
        received = sum(_tasks_received(celery_stack).values()) - received_before
        assert received == len(ran) + 2, (received, ran)
