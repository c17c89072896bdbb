"""What every deployment's end-to-end tests check of gates that end where the decision lands.

A gate resumed on a worker is scheduled and queued again after its decision (its ``queued_when``
moves past the decision); a gate that ended in place keeps the ``queued_when`` of its first
start, and its log names who decided. DAG ``e2e_in_place`` (tests/e2e/dags/e2e_in_place.py) has
one gate of each kind: ended in place, opted out, rejected.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from airflow_provider_hlml.utils.ids import approval_call_id
from tests.fixtures.airflow_stack import AirflowStack, HumanLayerApi

IN_PLACE = "e2e_in_place"
GATES = ("gate", "opted_out", "rejected")
#: The line a gate that ended in place writes to its task log (the triggerer's or the API server's).
ENDED_LINE = "no worker resume"


def _ts(value: str | None) -> float:
    assert value, "missing timestamp"
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def queued_after(ti: dict[str, Any], moment: float) -> bool:
    """Whether the task instance was queued (for a worker) after ``moment``."""
    return ti.get("queued_when") is not None and _ts(ti["queued_when"]) > moment


def assert_ended_in_place(
    stack: AirflowStack, dag_id: str, run_id: str, decided_at: float, **ti: Any
) -> None:
    """The gate finished successfully on its first try, no worker ran it after ``decided_at``, and
    its log says where it ended and who decided."""
    task_id = ti.get("task_id", "gate")
    map_index = ti.get("map_index", -1)
    found = [
        t
        for t in stack.api.task_instances(dag_id, run_id)
        if t["task_id"] == task_id and t["map_index"] == map_index
    ]
    assert len(found) == 1, found
    gate = found[0]
    assert (gate["state"], gate["try_number"]) == ("success", 1), gate
    assert not queued_after(gate, decided_at), f"{task_id} was queued for a worker after its decision: {gate}"
    assert gate["end_date"], gate
    assert gate["duration"] is not None, gate
    log = stack.api.task_log(dag_id, run_id, task_id, 1, map_index=map_index)
    assert ENDED_LINE in log, log
    assert "approved by" in log, log


def run_in_place_scenario(stack: AirflowStack, reviewer: HumanLayerApi, waiting_state: str) -> str:
    """Run ``e2e_in_place`` once: approve ``gate`` and ``opted_out``, reject ``rejected``; check
    what each did and what the downstream tasks read. Returns the run id."""
    api = stack.api
    api.wait_for_dag(IN_PLACE)
    api.unpause(IN_PLACE)
    run_id = api.trigger(IN_PLACE)
    for task_id in GATES:
        stack.wait_until_parked(IN_PLACE, run_id, task_id, waiting_state)
    decided_at = time.time()
    call = {task_id: approval_call_id(IN_PLACE, run_id, task_id, -1, 1) for task_id in GATES}
    reviewer.respond(call["gate"], approved=True, comment="ends in place")
    reviewer.respond(call["opted_out"], approved=True, comment="resumes")
    reviewer.respond(call["rejected"], approved=False, comment="not this one")
    run = api.wait_for_run(IN_PLACE, run_id, timeout=240)
    assert run["state"] == "success", stack.diagnose(IN_PLACE, run_id)

    assert_ended_in_place(stack, IN_PLACE, run_id, decided_at)
    # Downstream reads the result dict unchanged, in Python and in a template.
    read = api.xcom(IN_PLACE, run_id, "read")
    assert read == {
        "type": "dict",
        "approved": True,
        "comment": "ends in place",
        "by": read["by"],
        "template_comment": "ends in place",
        "template_approved": "True",
    }
    assert read["by"], read
    # The "Approval request" extra link, which a worker pushes when a task finishes, is there.
    links = api.get(f"/dags/{IN_PLACE}/dagRuns/{run_id}/taskInstances/gate/links")["extra_links"]
    assert call["gate"] in (links.get("Approval request") or ""), links
    gate_result = api.xcom(IN_PLACE, run_id, "gate")
    assert gate_result["approved"] is True
    assert gate_result["call_id"] == call["gate"]

    tis = {t["task_id"]: t for t in api.task_instances(IN_PLACE, run_id)}
    # Opted out, and rejected: resumed on a worker after the decision, as before.
    for task_id in ("opted_out", "rejected"):
        assert tis[task_id]["state"] == "success", tis[task_id]
        assert queued_after(tis[task_id], decided_at), tis[task_id]
        assert ENDED_LINE not in api.task_log(IN_PLACE, run_id, task_id, 1)
    assert api.xcom(IN_PLACE, run_id, "after_opted_out") is True
    assert tis["after_rejected"]["state"] == "skipped"
    assert api.xcom(IN_PLACE, run_id, "rejected")["approved"] is False
    return run_id
