"""Handing a decision to the deferred gate from the API server (``wake_gate`` and the webhook route).

A real metadata DB: a gate DAG is serialized, a run created, the gate put in ``deferred`` on its
real trigger row, exactly as the scheduler and the execution API leave it; then the decision body
the approvals service publishes is handed to :func:`wake_gate` (directly, and through the webhook
route served by uvicorn over real HTTP).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pendulum
import pytest
from airflow.listeners import hookimpl

from airflow_provider_hlml.approvals.webhooks import SIGNATURE_HEADER, signed_headers
from airflow_provider_hlml.plugins import wake
from airflow_provider_hlml.sensors.approval import HumanApprovalSensor
from airflow_provider_hlml.triggers.approval import HumanApprovalTrigger
from airflow_provider_hlml.utils.ids import approval_call_id
from tests.fixtures.processes import free_port

ALICE = {"name": "alice", "email": "alice@example.com", "principal": "alice", "via_delegate": None}
MALLORY = {"name": "mallory", "email": "mallory@example.com", "principal": "mallory", "via_delegate": None}


class DeferredGate:
    """One DAG run whose gate waits, deferred, on its trigger row (or ``parked`` in
    ``awaiting_input``, with the ``next_kwargs`` the task runner stores for it)."""

    def __init__(
        self,
        *,
        approvers: list[str] | None = None,
        parked: bool = False,
        finish: dict[str, Any] | None = None,
    ) -> None:
        from airflow.dag_processing.bundles.manager import DagBundlesManager
        from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
        from airflow.models.dag import DagModel
        from airflow.models.dagbag import DBDagBag
        from airflow.models.taskinstance import TaskInstance
        from airflow.models.trigger import Trigger
        from airflow.sdk import DAG
        from airflow.utils.session import create_session
        from airflow.utils.state import DagRunState, TaskInstanceState
        from airflow.utils.types import DagRunTriggeredByType, DagRunType

        self.dag_id = f"wake_{uuid.uuid4().hex[:8]}"
        self.run_id = "manual__wake"
        with DAG(self.dag_id, schedule=None, start_date=pendulum.datetime(2025, 1, 1), catchup=False) as dag:
            HumanApprovalSensor(task_id="gate", subject="Go?", deferrable=True)
        DagBundlesManager().sync_bundles_to_db()
        bag = DagBag(dag_folder=os.devnull, collect_dags=False)
        bag.bag_dag(dag)
        sync_bag_to_db(bag, "dags-folder", None)
        self.call_id = approval_call_id(self.dag_id, self.run_id, "gate", -1, 1)
        trigger = HumanApprovalTrigger(
            call_id=self.call_id,
            approvers=approvers or [],
            finish=finish,
        )
        with create_session() as session:
            # As the dag processor records it for a DAG read from a file.
            session.execute(
                DagModel.__table__.update()  # type: ignore[attr-defined]
                .where(DagModel.dag_id == self.dag_id)
                .values(relative_fileloc=f"{self.dag_id}.py")
            )
            serialized = DBDagBag().get_latest_version_of_dag(self.dag_id, session=session)
            assert serialized is not None
            now = pendulum.now("UTC")
            serialized.create_dagrun(
                run_id=self.run_id,
                logical_date=now,
                run_after=now,
                run_type=DagRunType.MANUAL,
                triggered_by=DagRunTriggeredByType.TEST,
                state=DagRunState.RUNNING,
                session=session,
            )
            if parked:
                from airflow.sdk.serde import serialize

                from airflow_provider_hlml.gate.policy import ApprovalPolicy
                from airflow_provider_hlml.sensors.approval import PARKED_KWARG

                policy = ApprovalPolicy(approvers=tuple(approvers or []))
                kept = {
                    "call_id": self.call_id,
                    "humanlayer_conn_id": "humanlayer_default",
                    "policy": policy.to_json(),
                    "escalated": False,
                    "deadline": None,
                    "finish": finish,
                }
                self.set_state(session, "awaiting_input", next_kwargs=serialize({PARKED_KWARG: kept}))
                return
            row = Trigger.from_object(trigger)
            session.add(row)
            session.flush()
            ti = session.scalar(
                TaskInstance.__table__.select().where(  # type: ignore[attr-defined]
                    TaskInstance.dag_id == self.dag_id, TaskInstance.task_id == "gate"
                )
            )
            assert ti is not None
            session.execute(
                TaskInstance.__table__.update()  # type: ignore[attr-defined]
                .where(TaskInstance.dag_id == self.dag_id, TaskInstance.task_id == "gate")
                .values(
                    state=TaskInstanceState.DEFERRED,
                    trigger_id=row.id,
                    try_number=1,
                    next_method="execute_complete",
                    start_date=pendulum.now("UTC").subtract(minutes=5),
                )
            )

    def set_state(self, session: Any, state: str, **values: Any) -> None:
        from airflow.models.taskinstance import TaskInstance

        session.execute(
            TaskInstance.__table__.update()  # type: ignore[attr-defined]
            .where(TaskInstance.dag_id == self.dag_id, TaskInstance.task_id == "gate")
            .values(
                state=state,
                try_number=1,
                next_method="execute_complete",
                start_date=pendulum.now("UTC").subtract(minutes=5),
                **values,
            )
        )

    def body(
        self, *, approved: bool | None = True, user: dict[str, Any] | None = None, **status: Any
    ) -> dict[str, Any]:
        """The function call as the approvals service publishes it."""
        return {
            "run_id": f"{self.dag_id}/{self.run_id}",
            "call_id": self.call_id,
            "spec": {
                "fn": "custom",
                "kwargs": {"subject": "Go?", "context": {"model_version": "7"}},
                "state": {
                    "hlml": {
                        "airflow": {
                            "dag_id": self.dag_id,
                            "run_id": self.run_id,
                            "task_id": "gate",
                            "map_index": -1,
                        }
                    }
                },
            },
            "status": {
                "requested_at": "2026-01-01T00:00:00+00:00",
                "responded_at": "2026-01-01T00:01:00+00:00" if approved is not None else None,
                "approved": approved,
                "comment": "looks good" if approved is not None else None,
                "reject_option_name": None,
                "slack_message_ts": None,
                "user_info": user if user is not None else ALICE,
                **status,
            },
        }

    def gate(self) -> Any:
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session

        with create_session() as session:
            ti = session.query(TaskInstance).filter_by(dag_id=self.dag_id, task_id="gate").one()
            session.expunge(ti)
            return ti


@pytest.fixture
def gate(airflow_db: Any) -> DeferredGate:
    return DeferredGate()


class TestWakeGate:
    def test_decision_resumes_the_gate_with_the_trigger_event(self, gate: DeferredGate) -> None:
        assert wake.wake_gate(gate.body(approved=True)) == wake.RESUMED
        ti = gate.gate()
        assert str(ti.state) == "scheduled"
        assert ti.trigger_id is None
        event = ti.next_kwargs["event"]
        assert event["status"] == "approved"
        assert event["call_id"] == gate.call_id
        assert event["comment"] == "looks good"
        assert event["context"] == {"model_version": "7"}
        assert event["responded_by_user"]["email"] == "alice@example.com"
        # A second delivery (the trigger's own, or a webhook retry) changes nothing.
        assert wake.wake_gate(gate.body(approved=True)) == wake.NOT_WAITING

    def test_pending_request_changes_nothing(self, gate: DeferredGate) -> None:
        assert wake.wake_gate(gate.body(approved=None)) == wake.UNDECIDED
        assert str(gate.gate().state) == "deferred"

    def test_decision_the_policy_refuses_changes_nothing(self, airflow_db: Any) -> None:
        gate = DeferredGate(approvers=["alice@example.com"])
        assert wake.wake_gate(gate.body(approved=True, user=MALLORY)) == wake.UNDECIDED
        assert str(gate.gate().state) == "deferred"
        assert wake.wake_gate(gate.body(approved=True, user=ALICE)) == wake.RESUMED

    def test_request_of_another_try_changes_nothing(self, gate: DeferredGate) -> None:
        body = gate.body(approved=True)
        body["call_id"] = approval_call_id(gate.dag_id, gate.run_id, "gate", -1, 2)
        assert wake.wake_gate(body) == wake.NOT_WAITING
        assert str(gate.gate().state) == "deferred"

    def test_request_not_made_by_a_gate(self, gate: DeferredGate) -> None:
        body = gate.body(approved=True)
        body["spec"]["state"] = None
        assert wake.wake_gate(body) == wake.NOT_A_GATE


FINISH = {
    "approval_url": "http://airflow.example/hlml/requests/x",
    "xcom": True,
    "links": {"_link_ApprovalRequestLink": "http://airflow.example/hlml/requests/x"},
}


class EndListener:
    """A task-instance listener, registered with Airflow's listener manager."""

    def __init__(self) -> None:
        self.successes: list[tuple[Any, str]] = []

    @hookimpl
    def on_task_instance_success(self, previous_state: Any, task_instance: Any) -> None:
        self.successes.append((previous_state, task_instance.task_id))


@pytest.fixture
def end_listener() -> Iterator[EndListener]:
    from airflow.listeners.listener import get_listener_manager

    listener = EndListener()
    manager = get_listener_manager()
    manager.add_listener(listener)
    yield listener
    manager.pm.unregister(listener)


def _stored_result(gate: DeferredGate, key: str = "return_value") -> Any:
    """The gate's ``return_value`` as the metadata DB holds it (the JSON column, decoded once:
    what the execution API hands a worker's ``xcom_pull``)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return session.scalar(
            select(XComModel.value).where(
                XComModel.dag_id == gate.dag_id,
                XComModel.task_id == "gate",
                XComModel.key == key,
            )
        )


class TestEndInPlace:
    """An approved gate that handed over ``finish`` ends in the API server: successful, its result
    written once as a worker writes it, with no resume on a worker."""

    @pytest.mark.parametrize("parked", [False, True], ids=["deferred", "parked"])
    def test_approval_ends_the_gate_with_its_result(
        self, airflow_db: Any, parked: bool, end_listener: EndListener, tmp_path: Any
    ) -> None:
        from airflow.models.xcom import XComModel

        gate = DeferredGate(parked=parked, finish=FINISH)
        previous = "awaiting_input" if parked else "deferred"
        log_file = _task_log_file(gate)
        assert wake.wake_gate(gate.body(approved=True)) == wake.ENDED
        ti = gate.gate()
        assert str(ti.state) == "success"
        assert ti.trigger_id is None
        assert ti.end_date is not None
        assert ti.duration is not None
        assert ti.duration >= 300
        stored = _stored_result(gate)
        # Stored as a JSON object, once: a worker's xcom_pull (and a template) reads the dict.
        assert isinstance(stored, dict), stored
        assert stored["approved"] is True
        assert stored["call_id"] == gate.call_id
        assert stored["comment"] == "looks good"
        assert stored["approval_url"] == FINISH["approval_url"]
        assert stored["context"] == {"model_version": "7"}
        assert stored["responded_by_user"]["email"] == "alice@example.com"
        assert stored["response_seconds"] == 60.0
        assert XComModel.deserialize_value(type("Row", (), {"value": stored})()) == stored
        # The extra link's XCom, as a worker's finalize() pushes it: the UI reads the link there.
        assert (
            _stored_result(gate, "_link_ApprovalRequestLink") == FINISH["links"]["_link_ApprovalRequestLink"]
        )
        # The listeners saw a finished task, and the task's log names who decided.
        assert end_listener.successes == [(previous, "gate")]
        lines = [json.loads(line) for line in log_file.read_text().splitlines()]
        assert lines[-1]["level"] == "info"
        assert "approved by alice <alice@example.com>" in lines[-1]["event"]
        assert "no worker resume" in lines[-1]["event"]
        # Delivered again: nothing happens twice.
        assert wake.wake_gate(gate.body(approved=True)) == wake.NOT_WAITING
        assert end_listener.successes == [(previous, "gate")]

    @pytest.mark.parametrize("parked", [False, True], ids=["deferred", "parked"])
    def test_rejection_still_resumes_on_a_worker(self, airflow_db: Any, parked: bool) -> None:
        gate = DeferredGate(parked=parked, finish=FINISH)
        assert wake.wake_gate(gate.body(approved=False)) == wake.RESUMED
        ti = gate.gate()
        assert str(ti.state) == "scheduled"
        assert _stored_result(gate) is None

    def test_without_finish_an_approval_resumes_on_a_worker(self, airflow_db: Any) -> None:
        gate = DeferredGate(parked=True, finish=None)  # opted out, or a gate of an earlier version
        assert wake.wake_gate(gate.body(approved=True)) == wake.RESUMED
        assert str(gate.gate().state) == "scheduled"

    def test_without_xcom_push_no_result_is_written(self, airflow_db: Any) -> None:
        gate = DeferredGate(parked=True, finish={**FINISH, "xcom": False})
        assert wake.wake_gate(gate.body(approved=True)) == wake.ENDED
        assert str(gate.gate().state) == "success"
        assert _stored_result(gate) is None

    def test_a_result_that_needs_the_task_resumes_it(self, airflow_db: Any) -> None:
        """A request carrying no context: the result needs the context the task sent."""
        gate = DeferredGate(parked=True, finish=FINISH)
        body = gate.body(approved=True)
        del body["spec"]["kwargs"]["context"]
        assert wake.wake_gate(body) == wake.RESUMED

    def test_airflow_stores_a_task_success_events_xcoms_json_encoded_twice(self, airflow_db: Any) -> None:
        """The Airflow 3.3 behaviour that makes the gate write its result itself
        (docs/deployment.md, "Ending in place"): ``TaskSuccessEvent(xcoms=...)`` goes through
        ``TaskInstance.xcom_push`` -> ``XComModel.set(serialize=True)``, which ``json.dumps`` the
        value into a JSON column, so a worker pulls a string. When this test fails, Airflow has
        fixed it and the gate could pass its result in the event instead."""
        from airflow.models.trigger import handle_event_submit
        from airflow.triggers.base import TaskSuccessEvent
        from airflow.utils.session import create_session

        gate = DeferredGate(parked=True)
        with create_session() as session:
            from airflow.models.taskinstance import TaskInstance

            ti = session.query(TaskInstance).filter_by(dag_id=gate.dag_id, task_id="gate").one()
            handle_event_submit(
                TaskSuccessEvent(xcoms={"return_value": {"approved": True}}),
                task_instance=ti,
                session=session,
            )
        stored = _stored_result(gate)
        assert stored == '{"approved": true}', "Airflow now stores TaskSuccessEvent xcoms once"


def _task_log_file(gate: DeferredGate) -> Any:
    """Create the gate's log file for its first try where a worker would have (it parked or
    deferred from there), and return its path."""
    from pathlib import Path

    from airflow.configuration import conf
    from airflow.utils.helpers import log_filename_template_renderer

    ti = gate.gate()
    path = Path(conf.get("logging", "base_log_folder")) / log_filename_template_renderer()(
        ti=ti, try_number=1
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"event": "Waiting for a decision", "level": "info"}) + "\n")
    return path


class TestWakeParkedGate:
    """A gate parked in ``awaiting_input`` (Airflow 3.3+): resumed as the native HITL response
    handler resumes its tasks, only ever once, only by an accepted decision on its own request."""

    @pytest.fixture
    def parked(self, airflow_db: Any) -> DeferredGate:
        return DeferredGate(parked=True)

    def test_decision_resumes_the_parked_gate_once(self, parked: DeferredGate) -> None:
        from airflow.models.trigger import _decode_next_kwargs

        from airflow_provider_hlml.sensors.approval import PARKED_KWARG

        assert wake.parked_calls() == {"humanlayer_default": [parked.call_id]}
        assert wake.wake_gate(parked.body(approved=True)) == wake.RESUMED
        ti = parked.gate()
        assert str(ti.state) == "scheduled"
        assert ti.next_method == "execute_complete"
        kwargs = _decode_next_kwargs(ti.next_kwargs)
        assert kwargs[PARKED_KWARG]["call_id"] == parked.call_id  # kept for execute_complete
        event = kwargs["event"]
        assert event["status"] == "approved"
        assert event["call_id"] == parked.call_id
        assert event["responded_by_user"]["email"] == "alice@example.com"
        assert wake.parked_calls() == {}
        # A duplicate, and a late delivery of the pending request, change nothing.
        assert wake.wake_gate(parked.body(approved=True)) == wake.NOT_WAITING
        assert wake.wake_gate(parked.body(approved=None)) == wake.NOT_WAITING
        assert str(parked.gate().state) == "scheduled"

    def test_undecided_or_refused_decisions_leave_it_parked(self, airflow_db: Any) -> None:
        parked = DeferredGate(approvers=["alice@example.com"], parked=True)
        assert wake.wake_gate(parked.body(approved=None)) == wake.UNDECIDED
        assert wake.wake_gate(parked.body(approved=True, user=MALLORY)) == wake.UNDECIDED
        assert str(parked.gate().state) == "awaiting_input"
        assert wake.wake_gate(parked.body(approved=False, user=ALICE)) == wake.RESUMED

    def test_request_of_another_try_changes_nothing(self, parked: DeferredGate) -> None:
        body = parked.body(approved=True)
        body["call_id"] = approval_call_id(parked.dag_id, parked.run_id, "gate", -1, 2)
        assert wake.wake_gate(body) == wake.NOT_WAITING
        assert str(parked.gate().state) == "awaiting_input"

    def test_decision_before_the_gate_parks_is_handed_over_once_it_has(self, parked: DeferredGate) -> None:
        """A decision made between the gate's first check and its parking finds the task running:
        :func:`wake_with_retries` hands it over again once the task has parked."""
        from airflow.utils.session import create_session

        with create_session() as session:
            parked.set_state(session, "running")
        assert wake.wake_gate(parked.body(approved=True)) == wake.NOT_YET

        def park_soon() -> None:
            time.sleep(0.8)
            with create_session() as session:
                parked.set_state(session, "awaiting_input")

        thread = threading.Thread(target=park_soon)
        thread.start()
        try:
            assert (
                wake.wake_with_retries(parked.body(approved=True), delays=(0.5, 0.5, 0.5, 1.0))
                == wake.RESUMED
            )
        finally:
            thread.join()
        assert str(parked.gate().state) == "scheduled"

    def test_webhook_for_a_gate_about_to_park_is_not_acknowledged(
        self, parked: DeferredGate, webhook_url: str
    ) -> None:
        from airflow.utils.session import create_session

        with create_session() as session:
            parked.set_state(session, "queued")
        resp = _post(webhook_url, parked.body(approved=True))
        assert resp.status_code == 503, resp.text
        assert resp.headers["retry-after"] == "2"
        assert resp.json()["outcome"] == wake.NOT_YET
        with create_session() as session:
            parked.set_state(session, "awaiting_input")
        resp = _post(webhook_url, parked.body(approved=True))  # the service's next attempt
        assert resp.status_code == 200
        assert resp.json()["outcome"] == wake.RESUMED


class TestReconcile:
    """The API server's batched reconciliation against the real approvals service."""

    def _create(self, service: Any, gate: DeferredGate) -> None:
        """Create the parked gate's request on the service, as the gate did (agent key)."""
        body = gate.body(approved=None)
        resp = httpx.post(
            f"{service.base_url}/function_calls",
            json={"run_id": body["run_id"], "call_id": body["call_id"], "spec": body["spec"]},
            headers={"Authorization": f"Bearer {service.agent_key}"},
            timeout=10,
        )
        assert resp.status_code == 201, resp.text

    def _approve(self, service: Any, call_id: str) -> None:
        resp = httpx.post(
            f"{service.base_url}/agent/function_calls/{call_id}/respond",
            json={"approved": True, "comment": "while nobody listened"},
            headers={"Authorization": f"Bearer {service.reviewer_key}"},
            timeout=10,
        )
        assert resp.status_code == 200, resp.text

    def test_settled_requests_resume_their_parked_gates_in_one_batch(
        self, airflow_db: Any, approvals_service: Any, humanlayer_conn: str
    ) -> None:
        decided, pending = DeferredGate(parked=True), DeferredGate(parked=True)
        for gate in (decided, pending):
            self._create(approvals_service, gate)
        self._approve(approvals_service, decided.call_id)

        counts = wake.reconcile_parked_gates()
        assert counts["parked"] >= 2  # earlier tests of the session may have left parked gates
        assert counts["failed"] == 0
        assert counts["resumed"] == 1
        assert str(decided.gate().state) == "scheduled"
        assert str(pending.gate().state) == "awaiting_input"
        # Again: nothing more to resume (the decided gate is no longer parked).
        again = wake.reconcile_parked_gates()
        assert again["resumed"] == 0
        assert pending.call_id in wake.parked_calls()["humanlayer_default"]
        assert decided.call_id not in wake.parked_calls()["humanlayer_default"]

    def test_an_unreachable_backend_is_counted_and_changes_nothing(
        self, airflow_db: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        gate = DeferredGate(parked=True)
        monkeypatch.setenv(
            "AIRFLOW_CONN_HUMANLAYER_DEFAULT",
            json.dumps(
                {"conn_type": "humanlayer", "host": f"http://127.0.0.1:{free_port()}", "password": "k"}
            ),
        )
        counts = wake.reconcile_parked_gates()
        assert counts["failed"] >= 1
        assert counts["resumed"] == 0
        assert str(gate.gate().state) == "awaiting_input"


# ----------------------------------------------------------------------------- the webhook route
SECRET = "wake-webhook-secret"


@pytest.fixture
def webhook_url(airflow_db: Any) -> Iterator[str]:
    """The receiver app (signed bodies) served by uvicorn on a free port."""
    import uvicorn

    from airflow_provider_hlml.plugins.webhooks import create_webhook_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_webhook_app(data=None, secret=SECRET), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/humanlayer"
    finally:
        server.should_exit = True
        thread.join(10)


def _post(url: str, payload: Any, secret: str | None = SECRET) -> httpx.Response:
    raw = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if secret:
        headers.update(signed_headers(secret, raw))
    return httpx.post(url, content=raw, headers=headers, timeout=30)


class TestWebhookRoute:
    def test_signed_webhook_resumes_the_gate(self, gate: DeferredGate, webhook_url: str) -> None:
        envelope = {"is_test": False, "type": "function_call.completed", "event": gate.body(approved=True)}
        resp = _post(webhook_url, envelope)
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"call_id": gate.call_id, "outcome": wake.RESUMED}
        assert str(gate.gate().state) == "scheduled"

    def test_unsigned_or_forged_bodies_are_refused(self, gate: DeferredGate, webhook_url: str) -> None:
        envelope = {"type": "function_call.completed", "event": gate.body(approved=True)}
        for secret in (None, "not-the-secret"):
            resp = _post(webhook_url, envelope, secret=secret)
            assert resp.status_code == 401
            assert SIGNATURE_HEADER in resp.json()["error"]["message"]
        assert str(gate.gate().state) == "deferred"

    @pytest.mark.parametrize(
        ("payload", "message"),
        [
            ({"type": "function_call.completed", "event": {"spec": {}}}, "event.call_id: missing"),
            (
                {"type": "function_call.completed", "event": {"call_id": "x", "spec": 3}},
                "not a HumanLayer function call",
            ),
            ([1, 2], "event.call_id: missing"),
        ],
    )
    def test_bad_bodies_name_the_field(self, webhook_url: str, payload: Any, message: str) -> None:
        resp = _post(webhook_url, payload)
        assert resp.status_code == 422
        assert message in resp.json()["error"]["message"]

    def test_non_json_body(self, webhook_url: str) -> None:
        raw = b"not json"
        resp = httpx.post(webhook_url, content=raw, headers=signed_headers(SECRET, raw), timeout=30)
        assert resp.status_code == 422
        assert resp.json()["error"]["message"] == "body: not JSON"

    def test_human_contacts_are_ignored(self, webhook_url: str) -> None:
        resp = _post(webhook_url, {"type": "human_contact.completed", "event": {"call_id": "c"}})
        assert resp.status_code == 200
        assert resp.json()["outcome"] == "ignored"
