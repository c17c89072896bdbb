"""No duplicate requests: triggerer restarts, resumed tasks and re-runs reuse the request; a cleared task asks again.

Runs the sensor and its trigger against the real approvals service over HTTP. The task instance
is a plain record of the five fields the call id is derived from.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from airflow_provider_hlml.sensors.approval import HumanApprovalSensor
from airflow_provider_hlml.triggers.approval import HumanApprovalTrigger
from airflow_provider_hlml.utils.ids import approval_call_id

pytestmark = pytest.mark.integration


@dataclass
class TaskInstanceRecord:
    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    try_number: int
    log_url: str = "http://airflow.example/log"


@dataclass
class DagRunRecord:
    triggering_user_name: str | None


class CountingNotifier:
    """A notifier in the shape Airflow calls (``notifier(context)``), counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, context: Any) -> None:
        self.calls += 1


def make_context(sensor: HumanApprovalSensor, try_number: int, run_id: str) -> dict[str, Any]:
    ti = TaskInstanceRecord("restart_dag", run_id, sensor.task_id, -1, try_number)
    return {"ti": ti, "task_instance": ti, "task": sensor, "dag_run": DagRunRecord("carol")}


def requests_of_run(service: Any, run_id: str) -> list[dict[str, Any]]:
    resp = requests.get(
        f"{service.base_url}/function_calls",
        params={"run_id": f"restart_dag/{run_id}", "limit": 100},
        headers={"Authorization": f"Bearer {service.admin_key}"},
        timeout=10,
    )
    resp.raise_for_status()
    return list(resp.json())


def approve(service: Any, call_id: str) -> None:
    from humanlayer import FunctionCallStatus, HumanLayer

    client = HumanLayer.cloud(api_key=service.reviewer_key, api_base_url=service.base_url)
    client.backend.functions().respond(call_id, FunctionCallStatus(approved=True, comment="after restart"))  # type: ignore[union-attr]


def defer(sensor: HumanApprovalSensor, context: dict[str, Any]) -> HumanApprovalTrigger:
    from airflow.sdk.exceptions import TaskDeferred

    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context)
    trigger = deferred.value.trigger
    assert isinstance(trigger, HumanApprovalTrigger)
    return trigger


class TestApprovalRestart:
    def test_recreated_trigger_resumed_task_and_cleared_task(
        self, approvals_service: Any, humanlayer_conn: str, airflow_db: Any
    ) -> None:
        service = approvals_service
        notifier = CountingNotifier()
        sensor = HumanApprovalSensor(
            task_id="gate",
            subject="Restart-safe?",
            deferrable=True,
            poll_interval=0.2,
            response_timeout=120,
            notifiers=[notifier],  # type: ignore[list-item]
        )
        run_id = "manual__restart"
        context = make_context(sensor, try_number=1, run_id=run_id)
        trigger = defer(sensor, context)
        assert trigger.call_id == approval_call_id("restart_dag", run_id, "gate", -1, 1)
        assert notifier.calls == 1

        async def drop_then_recreate() -> dict[str, Any]:
            gen = trigger.run()
            first_wait = asyncio.ensure_future(gen.__anext__())
            await asyncio.sleep(0.6)  # the trigger is mid-wait (long-polling the service)
            first_wait.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first_wait
            await gen.aclose()
            await trigger.cleanup()
            classpath, kwargs = trigger.serialize()
            assert classpath == "airflow_provider_hlml.triggers.approval.HumanApprovalTrigger"
            recreated = HumanApprovalTrigger(**kwargs)
            timer = threading.Timer(0.5, approve, args=(service, trigger.call_id))
            timer.start()
            gen2 = recreated.run()
            try:
                event = await asyncio.wait_for(gen2.__anext__(), 30)
            finally:
                await gen2.aclose()
                timer.join()
            return dict(event.payload)

        event = asyncio.run(drop_then_recreate())
        assert event["status"] == "approved"

        # The task resumes on a worker (a fresh instance of the same operator) and re-runs the same
        # try: same request.
        resumed = HumanApprovalSensor(
            task_id="gate",
            subject="Restart-safe?",
            deferrable=True,
            poll_interval=0.2,
            response_timeout=120,
            notifiers=[notifier],  # type: ignore[list-item]
        )
        result = resumed.execute(make_context(resumed, try_number=1, run_id=run_id))
        assert result["approved"] is True
        assert result["call_id"] == trigger.call_id
        assert notifier.calls == 1
        assert len(requests_of_run(service, run_id)) == 1
        completed = resumed.execute_complete(make_context(resumed, 1, run_id), event)
        assert completed["comment"] == "after restart"

        # A cleared task is a new try: it asks again, under a new call id.
        second = defer(sensor, make_context(sensor, try_number=2, run_id=run_id))
        assert second.call_id != trigger.call_id
        assert notifier.calls == 2
        calls = requests_of_run(service, run_id)
        assert sorted(c["call_id"] for c in calls) == sorted([trigger.call_id, second.call_id])

        # A user stopping the deferred task withdraws its request.
        asyncio.run(second.on_kill())
        (killed,) = [c for c in requests_of_run(service, run_id) if c["call_id"] == second.call_id]
        assert killed["status"]["cancel_reason"] == "killed"
        assert killed["status"]["approved"] is None

    def test_event_for_another_request_is_refused(self, approvals_service: Any, humanlayer_conn: str) -> None:
        from airflow.sdk.exceptions import AirflowException

        sensor = HumanApprovalSensor(task_id="gate", subject="x", deferrable=True)
        context = make_context(sensor, 1, "manual__other")
        with pytest.raises(AirflowException, match="unexpected trigger event"):
            sensor.execute_complete(context, {"status": "maybe"})
        with pytest.raises(AirflowException, match="is for request 'someone-else'"):
            sensor.execute_complete(context, {"status": "approved", "call_id": "someone-else"})
