"""Scenarios on a LocalExecutor deployment with a PostgreSQL metadata DB."""

from __future__ import annotations

import pytest

from tests.fixtures.airflow_stack import AirflowStack, wait_until

pytestmark = pytest.mark.e2e


class TestScheduledDeferral:
    def test_scheduled_run_defers_to_the_triggerer_and_succeeds(self, postgres_stack: AirflowStack) -> None:
        api = postgres_stack.api
        api.wait_for_dag("e2e_smoke")
        api.unpause("e2e_smoke")
        try:
            runs = wait_until(lambda: api.dag_runs("e2e_smoke"), 60, "the scheduler to create a run")
            run = api.wait_for_run("e2e_smoke", runs[0]["dag_run_id"], timeout=120)
        finally:
            api.pause("e2e_smoke")

        assert run["run_type"] == "scheduled", run
        assert run["state"] == "success", postgres_stack.logs()
        states = api.task_states("e2e_smoke", run["dag_run_id"])
        assert states == {"first": "success", "wait_in_triggerer": "success", "last": "success"}
        # The wait ran in the triggerer: the task resumed after at least its 2 s deferral.
        waited = api.xcom("e2e_smoke", run["dag_run_id"], "wait_in_triggerer")
        assert waited >= 2.0
        log = api.task_log("e2e_smoke", run["dag_run_id"], "wait_in_triggerer", 1)
        assert "Pausing task as DEFERRED" in log or "deferred" in log.lower(), log[-2000:]
