"""Scenarios on the embedded default: SQLite metadata DB, approvals service inside the API server.

On Airflow 3.3+ the gates of this deployment park (``[hlml] wait_mode`` auto: the mounted service
pushes its decisions to the API server): the task waits in ``awaiting_input`` with no trigger, and
the triggerer is stopped for the whole module to prove that nothing needs it. Decisions reach the
gates through the mounted service's listener, the signed webhook route, and the API server's
reconciliation when it starts; deadlines through the scheduler's sweep.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from airflow_provider_hlml.approvals.webhooks import signed_headers
from airflow_provider_hlml.utils.ids import approval_call_id
from tests.e2e.conftest import MountedApprovals
from tests.e2e.in_place import IN_PLACE, assert_ended_in_place, run_in_place_scenario
from tests.fixtures.airflow_stack import MOUNTED_APPROVALS_PATH, AirflowStack, HumanLayerApi, wait_until
from tests.fixtures.processes import VENV_BIN

# Setup starts a whole deployment, which counts against the per-test timeout.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

FANOUT = "e2e_gate_fanout"
TIMEOUTS = "e2e_parked_timeouts"
PARKED = "awaiting_input"


@pytest.fixture(scope="module")
def parked_stack(
    sqlite_mounted_stack: tuple[AirflowStack, MountedApprovals],
) -> Iterator[tuple[AirflowStack, MountedApprovals]]:
    """The mounted deployment without its triggerer."""
    stack, keys = sqlite_mounted_stack
    stack.processes["triggerer"].stop()
    return stack, keys


def _reviewer(stack: AirflowStack, key: str) -> HumanLayerApi:
    return HumanLayerApi(stack.api_url + MOUNTED_APPROVALS_PATH, key)


def _assert_no_triggers(stack: AirflowStack, dag_id: str, run_id: str) -> None:
    """No task instance of the run waits on a trigger, and the triggerer is not running."""
    assert not stack.processes["triggerer"].alive()
    for ti in stack.api.task_instances(dag_id, run_id):
        assert ti["state"] != "deferred", ti
        assert ti.get("trigger") is None, ti


def _sign(secret: str, payload: dict[str, object]) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(payload).encode()
    return raw, {"Content-Type": "application/json", **signed_headers(secret, raw)}


class TestParkedGates:
    def test_parked_gates_resume_through_the_mounted_service_without_a_triggerer(
        self, parked_stack: tuple[AirflowStack, MountedApprovals]
    ) -> None:
        stack, keys = parked_stack
        base_url = stack.api_url + MOUNTED_APPROVALS_PATH
        assert stack.approvals_base_url == base_url
        # The mounted service is the API server itself: nothing else listens for it.
        assert httpx.get(f"{base_url}/function_calls", timeout=10).status_code == 401

        api = stack.api
        api.wait_for_dag(FANOUT)
        api.unpause(FANOUT)
        run_id = api.trigger(FANOUT, conf={"count": 3})
        stack.wait_until_parked(FANOUT, run_id, "gate", PARKED, count=3)
        _assert_no_triggers(stack, FANOUT, run_id)

        reviewer = _reviewer(stack, keys.reviewer_key)
        webhook = httpx.Client(timeout=10)
        try:
            calls = [approval_call_id(FANOUT, run_id, "gate", i, 1) for i in range(3)]
            pending = reviewer.get(calls[2])
            assert pending["status"]["approved"] is None
            # A delivery of the request still pending (late, out of order) changes nothing.
            raw, headers = _sign(keys.webhook_secret, {"type": "function_call.completed", "event": pending})
            resp = webhook.post(stack.webhook_url, content=raw, headers=headers)
            assert resp.status_code == 200, resp.text
            assert resp.json()["outcome"] == "undecided"
            states = {
                t["map_index"]: t["state"]
                for t in api.task_instances(FANOUT, run_id)
                if t["task_id"] == "gate"
            }
            assert states == {0: PARKED, 1: PARKED, 2: PARKED}
            decided_at = time.time()
            for map_index, call_id in enumerate(calls):
                reviewer.respond(call_id, approved=True, comment=f"mounted {map_index}")
            run = api.wait_for_run(FANOUT, run_id, timeout=240)
            assert run["state"] == "success", stack.diagnose(FANOUT, run_id)

            # The same decision delivered again, and the stale pending body after it: no effect.
            decided = reviewer.get(calls[0])
            for body in (decided, decided, pending):
                raw, headers = _sign(keys.webhook_secret, {"type": "function_call.completed", "event": body})
                resp = webhook.post(stack.webhook_url, content=raw, headers=headers)
                assert resp.status_code == 200, resp.text
                assert resp.json()["outcome"] == "not-waiting"
        finally:
            reviewer.close()
            webhook.close()

        assert api.xcom(FANOUT, run_id, "tally") == {"count": 3, "approved": 3, "calls": 3}
        decision = api.xcom(FANOUT, run_id, "gate", map_index=1)
        assert decision["comment"] == "mounted 1"
        assert decision["responded_by_user"]
        # Each gate ran its first try only, and ended in the API server: parked, never resumed.
        for map_index in range(3):
            assert_ended_in_place(stack, FANOUT, run_id, decided_at, map_index=map_index)

    def test_approved_gate_ends_in_the_api_server_and_downstream_reads_its_result(
        self, parked_stack: tuple[AirflowStack, MountedApprovals]
    ) -> None:
        stack, keys = parked_stack
        reviewer = _reviewer(stack, keys.reviewer_key)
        try:
            run_id = run_in_place_scenario(stack, reviewer, PARKED)
        finally:
            reviewer.close()
        _assert_no_triggers(stack, IN_PLACE, run_id)

    def test_deadlines_are_the_schedulers_sweep_and_escalation_parks_again(
        self, parked_stack: tuple[AirflowStack, MountedApprovals]
    ) -> None:
        stack, keys = parked_stack
        api = stack.api
        api.wait_for_dag(TIMEOUTS)
        api.unpause(TIMEOUTS)
        run_id = api.trigger(TIMEOUTS)
        stack.wait_until_parked(TIMEOUTS, run_id, "escalate", PARKED)
        escalate_call = approval_call_id(TIMEOUTS, run_id, "escalate", -1, 1)
        bob = _reviewer(stack, keys.reviewer2_key)
        try:
            # The first deadline passes: the sweep resumes the gate, which escalates and parks again.
            wait_until(
                lambda: any(e["event"] == "escalated" for e in bob.audit(escalate_call)),
                120,
                "the escalation",
            )
            wait_until(
                lambda: api.task_states(TIMEOUTS, run_id)["escalate"] == PARKED,
                60,
                "the escalated gate to park again",
            )

            def finished() -> dict[str, str | None] | None:
                states = api.task_states(TIMEOUTS, run_id)
                timeouts = {k: v for k, v in states.items() if k.startswith("timeout_")}
                return (
                    states if all(v in ("success", "failed", "skipped") for v in timeouts.values()) else None
                )

            states = wait_until(finished, 120, "the four timed-out gates")
            assert states == {
                "timeout_fail": "failed",
                "timeout_skip": "skipped",
                "timeout_approve": "success",
                "timeout_reject": "failed",
                "escalate": PARKED,
            }, stack.diagnose(TIMEOUTS, run_id)
            _assert_no_triggers(stack, TIMEOUTS, run_id)
            approved = api.xcom(TIMEOUTS, run_id, "timeout_approve")
            assert approved["approved"] is True
            assert approved["timed_out"] is True
            rejected = api.xcom(TIMEOUTS, run_id, "timeout_reject")
            assert rejected["approved"] is False
            assert rejected["timed_out"] is True
            # Failing on a deadline or a rejection does not retry (retries=2 in the DAG).
            tries = {t["task_id"]: t["try_number"] for t in api.task_instances(TIMEOUTS, run_id)}
            assert tries["timeout_fail"] == 1
            assert tries["timeout_reject"] == 1
            log = stack.api.task_log(TIMEOUTS, run_id, "timeout_fail", 1)
            assert "No decision on approval request" in log

            # The escalation approver decides the re-parked gate.
            bob.respond(escalate_call, approved=True, comment="escalated, approved")
        finally:
            bob.close()
        wait_until(
            lambda: api.task_states(TIMEOUTS, run_id)["escalate"] == "success",
            120,
            "the escalated gate to finish",
        )
        decision = api.xcom(TIMEOUTS, run_id, "escalate")
        assert decision["comment"] == "escalated, approved"
        assert decision["responded_by_user"]["email"] == "bob@example.com"

    def test_decisions_made_while_the_api_server_is_down_reach_their_gates_once(
        self, parked_stack: tuple[AirflowStack, MountedApprovals]
    ) -> None:
        stack, keys = parked_stack
        api = stack.api
        api.wait_for_dag(FANOUT)
        run_id = api.trigger(FANOUT, conf={"count": 3})
        stack.wait_until_parked(FANOUT, run_id, "gate", PARKED, count=3)
        calls = [approval_call_id(FANOUT, run_id, "gate", i, 1) for i in range(3)]

        api_server = stack.processes["api-server"]
        api_server.kill9()  # nothing gets to hear of what follows
        decided_at = time.time()
        for call_id in calls:
            subprocess.run(
                [
                    str(VENV_BIN / "hlml-approvals"),
                    "approve",
                    call_id,
                    "--comment",
                    "while the API server was down",
                    "--as",
                    "alice",
                    "--database-url",
                    keys.database_url,
                ],
                check=True,
                capture_output=True,
                timeout=120,
            )
        api_server.start()
        wait_until(lambda: _api_up(stack), 120, "the API server to come back")
        # The API server reconciles its parked gates when it starts: one batched read.
        run = api.wait_for_run(FANOUT, run_id, timeout=240)
        assert run["state"] == "success", stack.diagnose(FANOUT, run_id)
        # Each ended once, in the API server that came back: first try, never queued again.
        for map_index in range(3):
            assert_ended_in_place(stack, FANOUT, run_id, decided_at, map_index=map_index)
        assert api.xcom(FANOUT, run_id, "tally") == {"count": 3, "approved": 3, "calls": 3}
        log = api_server.log_path
        assert log is not None
        assert "Reconciled parked gates" in log.read_text(errors="replace")


def _api_up(stack: AirflowStack) -> bool:
    try:
        return stack.health().get("metadatabase", {}).get("status") == "healthy"
    except httpx.HTTPError:
        return False
