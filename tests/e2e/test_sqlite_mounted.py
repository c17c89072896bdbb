"""Scenarios on the embedded default: SQLite metadata DB, approvals service inside the API server."""

from __future__ import annotations

import httpx
import pytest

from airflow_provider_hlml.utils.ids import approval_call_id
from tests.e2e.conftest import MountedApprovals
from tests.fixtures.airflow_stack import MOUNTED_APPROVALS_PATH, AirflowStack, HumanLayerApi

# Setup starts a whole deployment, which counts against the per-test timeout.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

FANOUT = "e2e_gate_fanout"


class TestMountedApprovals:
    def test_gates_wait_on_the_service_mounted_in_the_api_server(
        self, sqlite_mounted_stack: tuple[AirflowStack, MountedApprovals]
    ) -> None:
        stack, keys = sqlite_mounted_stack
        base_url = stack.api_url + MOUNTED_APPROVALS_PATH
        assert stack.approvals_base_url == base_url
        # The mounted service is the API server itself: nothing else listens for it.
        assert httpx.get(f"{base_url}/function_calls", timeout=10).status_code == 401

        api = stack.api
        api.wait_for_dag(FANOUT)
        api.unpause(FANOUT)
        run_id = api.trigger(FANOUT, conf={"count": 2})
        stack.wait_until_parked(FANOUT, run_id, "gate", "deferred", count=2)

        reviewer = HumanLayerApi(base_url, keys.reviewer_key)
        try:
            for map_index in range(2):
                call_id = approval_call_id(FANOUT, run_id, "gate", map_index, 1)
                assert reviewer.get(call_id)["status"]["approved"] is None
                reviewer.respond(call_id, approved=True, comment=f"mounted {map_index}")
        finally:
            reviewer.close()
        run = api.wait_for_run(FANOUT, run_id, timeout=240)

        assert run["state"] == "success", stack.diagnose(FANOUT, run_id)
        assert api.xcom(FANOUT, run_id, "tally") == {"count": 2, "approved": 2, "calls": 2}
        decision = api.xcom(FANOUT, run_id, "gate", map_index=1)
        assert decision["comment"] == "mounted 1"
        assert decision["responded_by_user"]
