"""Scenarios on a CeleryExecutor deployment: two workers, Redis broker, PostgreSQL."""

from __future__ import annotations

import pytest

from tests.fixtures.airflow_stack import AirflowStack, wait_until

pytestmark = pytest.mark.e2e


class TestCeleryDeployment:
    def test_scheduled_run_is_spread_over_both_workers(self, celery_stack: AirflowStack) -> None:
        api = celery_stack.api
        api.wait_for_dag("e2e_smoke")
        api.unpause("e2e_smoke")
        try:
            runs = wait_until(lambda: api.dag_runs("e2e_smoke"), 60, "the scheduler to create a run")
            manual = api.trigger("e2e_smoke")
            run = api.wait_for_run("e2e_smoke", runs[0]["dag_run_id"], timeout=180)
            second = api.wait_for_run("e2e_smoke", manual, timeout=180)
        finally:
            api.pause("e2e_smoke")
        assert run["run_type"] == "scheduled"
        assert (run["state"], second["state"]) == ("success", "success"), celery_stack.logs()
        received = {
            name: proc.log_path.read_text(errors="replace").count(" received")
            for name, proc in celery_stack.processes.items()
            if name.startswith("worker-") and proc.log_path is not None
        }
        assert sum(received.values()) >= 6, received
        print(received)
