"""Hand a decision to the waiting gate at once, from the Airflow API server.

An approval the gate's policy accepts ends the gate here (:func:`end_in_place`: its result
written as a worker writes it, the task marked successful), unless the gate asked to resume on a
worker (``finish_in_place``); every other decision resumes it on a worker.

A gate waits in one of two ways (``wait_mode``):

- **deferred**: its trigger reads the request; the triggerer then needs up to a couple of its loop
  turns to write the event. :func:`wake_gate` does what the triggerer would do, right away, and the
  trigger stays the source of truth; if both deliver, Airflow applies the first and ignores the
  second, as it does for any trigger event.
- **parked** (Airflow 3.3+, ``awaiting_input``): nothing polls. :func:`wake_gate` is the only way
  a decision reaches it, through the same call the native Human-in-the-loop response handler
  makes (``handle_event_submit``: the task is scheduled again with the event in ``next_kwargs``);
  the scheduler's sweep resumes it at its deadline.

Decisions reach :func:`wake_gate` from the approvals service mounted in this API server (its
listener), from a standalone service's webhook (an outbox, re-delivered until this server answers
2xx), and from :func:`reconcile_parked_gates`, which this server runs when it starts and every
``[hlml] reconcile_interval`` seconds: one batched read of every parked gate's request per
approvals connection, so a decision made while no API server ran reaches its gate. Each way
applies the gate's own policy (approvers, rules, separation of duties) to what it read, locks the
task instance and acts only on a gate still waiting on that very request: duplicates and late,
out-of-order deliveries change nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from airflow_provider_hlml import settings as hlml_settings
from airflow_provider_hlml.gate.events import ApprovalResult, decided_by, finished_in_place, link_xcoms
from airflow_provider_hlml.gate.state import GateState

log = logging.getLogger(__name__)

#: Outcomes of :func:`wake_gate`.
ENDED = "ended"  # an approved gate ended here, successful, with its result as XCom
RESUMED = "resumed"  # the gate resumes on a worker with the decision event
NOT_WAITING = "not-waiting"  # no task instance is deferred on this request (any more)
NOT_YET = "not-yet"  # the gate's task runs: it is about to park or defer (try again in a moment)
NOT_A_GATE = "not-a-gate"  # the request was not made by an Airflow gate
UNDECIDED = "undecided"  # pending, or a decision the gate's policy does not accept


def _decode_kwargs(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Trigger kwargs as the triggerer decodes them (Airflow 3.3+ and 3.1/3.2 spellings)."""
    try:
        from airflow.serialization.decoders import smart_decode_trigger_kwargs

        return {k: smart_decode_trigger_kwargs(v) for k, v in raw.items()}
    except ImportError:  # Airflow < 3.3
        from airflow.serialization.serialized_objects import BaseSerialization

        return {k: BaseSerialization.deserialize(v) for k, v in raw.items()}


#: Largest map index a task instance can have (the column is a 32-bit integer).
MAX_MAP_INDEX = 2**31 - 1


def _gate_location(state: Any) -> dict[str, Any] | None:
    """``dag_id``, ``run_id``, ``task_id`` and ``map_index`` of the gate that made a request, if any.

    ``spec.state`` is whatever the request's creator wrote: :class:`GateState` checks every level.
    """
    where = GateState.from_state(state).airflow
    if where is None or not where.complete or not -1 <= where.map_index <= MAX_MAP_INDEX:
        return None
    return {
        "dag_id": where.dag_id,
        "run_id": where.run_id,
        "task_id": where.task_id,
        "map_index": where.map_index,
        "try_number": where.try_number,
    }


def wake_gate(call_body: Mapping[str, Any]) -> str:
    """
    Submit the decision in ``call_body`` to the gate waiting on it; returns what happened.

    An approval of a gate that handed over what it needs (``finish``, see
    :func:`~airflow_provider_hlml.gate.events.finished_in_place`) ends the gate here: its result
    is written as its ``return_value`` XCom and the task is marked successful
    (:data:`ENDED`). Every other decision resumes the task on a worker (:data:`RESUMED`).

    :param call_body: the function call as the approvals service returns it (trusted: from the
        mounted service's own database, a signed webhook, or a fresh read).
    """
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.trigger import Trigger, handle_event_submit
    from airflow.triggers.base import TriggerEvent
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select

    from airflow_provider_hlml.gate.wire import GateFunctionCall

    call = GateFunctionCall.model_validate(dict(call_body))
    where = _gate_location(call.spec.state)
    if where is None:
        return NOT_A_GATE
    map_index = where["map_index"]
    ended: tuple[Any, str, ApprovalResult] | None = None
    with create_session() as session:
        ti = session.scalar(
            select(TaskInstance)
            .where(
                TaskInstance.dag_id == where["dag_id"],
                TaskInstance.run_id == where["run_id"],
                TaskInstance.task_id == where["task_id"],
                TaskInstance.map_index == map_index,
            )
            .with_for_update()
        )
        if ti is None:
            return NOT_WAITING
        previous = str(ti.state)
        if ti.state == TaskInstanceState.DEFERRED and ti.trigger_id is not None:
            found = _deferred_gate(session, ti, call)
            if found is None:
                return NOT_WAITING
            event, finish = found
            if event is None:
                return UNDECIDED
            result = finished_in_place(event, call, finish)
            if result is not None:
                end_in_place(session, ti, result, finish)
                ended = (ti, previous, result)
            else:
                trigger_event = TriggerEvent(dict(event))
                Trigger.submit_event(trigger_id=ti.trigger_id, event=trigger_event, session=session)
        elif ti.state == AWAITING_INPUT:
            parked = parked_gate(ti)
            if parked is None or parked.get("call_id") != call.call_id:
                return NOT_WAITING  # another operator, or another try's request
            event = _accepted(call, parked.get("policy"))
            if event is None:
                return UNDECIDED
            result = finished_in_place(event, call, parked.get("finish"))
            if result is not None:
                end_in_place(session, ti, result, parked.get("finish"))
                ended = (ti, previous, result)
            else:
                # What the native response handler does: the event goes into next_kwargs, the task
                # is scheduled again and resumes in execute_complete on a worker.
                handle_event_submit(TriggerEvent(dict(event)), task_instance=ti, session=session)
        elif (
            ti.state in _ABOUT_TO_WAIT
            and where.get("try_number") in (None, ti.try_number)
            and not _resumed(ti)
        ):
            return NOT_YET
        else:
            return NOT_WAITING
    if ended is not None:
        _announce_end(*ended)
        return ENDED
    log.info(
        "Approval request %s: resumed %s.%s of %s",
        call.call_id,
        where["dag_id"],
        where["task_id"],
        where["run_id"],
    )
    return RESUMED


def end_in_place(session: Any, ti: Any, result: ApprovalResult, finish: Mapping[str, Any] | None) -> None:
    """End the waiting gate ``ti`` successfully with ``result``, in ``session`` (not committed).

    The result is written the way a worker's return value is: serialized by the configured XCom
    backend (``[core] xcom_backend``), stored by ``XComModel.set(serialize=False)`` as the
    execution API stores it. (A ``TaskSuccessEvent``'s own ``xcoms`` are stored JSON-encoded
    twice by Airflow 3.3, so workers would read the result as a string: docs/deployment.md.) The
    state change is Airflow's own for a task a trigger ends (``handle_event_submit`` with a
    ``TaskSuccessEvent``): end date, duration, the task's success callbacks.
    """
    from airflow.models.trigger import handle_event_submit
    from airflow.models.xcom import XComModel
    from airflow.sdk.execution_time.xcom import XCom
    from airflow.triggers.base import TaskSuccessEvent

    where = {"dag_id": ti.dag_id, "task_id": ti.task_id, "run_id": ti.run_id, "map_index": ti.map_index}
    # The extra links as a worker's finalize() pushes them: the URL as is, past any custom backend.
    values: dict[str, Any] = dict(link_xcoms(finish))
    if finish is None or finish.get("xcom", True):
        key = XCom.XCOM_RETURN_KEY
        values[key] = XCom.serialize_value(value=result, key=key, **where)
    for key, value in values.items():
        XComModel.set(key=key, value=value, serialize=False, session=session, **where)
    handle_event_submit(TaskSuccessEvent(), task_instance=ti, session=session)


def _announce_end(ti: Any, previous_state: str, result: ApprovalResult) -> None:
    """After the commit: the log line in the task's log, and the task-instance listeners (as the
    REST API's state change calls them)."""
    message = (
        f"Request {result['call_id']} approved by {decided_by(result)}: the gate ended in the API "
        "server with its result (no worker resume)."
    )
    log.info("%s.%s of %s: %s", ti.dag_id, ti.task_id, ti.run_id, message)
    append_task_log(ti, message)
    try:
        from airflow.listeners.listener import get_listener_manager

        get_listener_manager().hook.on_task_instance_success(previous_state=previous_state, task_instance=ti)
    except Exception:
        log.exception("A task-instance listener failed on %s", ti)


def append_task_log(ti: Any, message: str) -> bool:
    """Append ``message`` to the task's log file for its current try, in the JSON lines a worker
    writes, when this server keeps task logs on its own disk (``[logging] base_log_folder``);
    returns whether it did."""
    import json
    from pathlib import Path

    from airflow.configuration import conf
    from airflow.utils.helpers import log_filename_template_renderer

    try:
        base = Path(conf.get("logging", "base_log_folder"))
        path = base / log_filename_template_renderer()(ti=ti, try_number=ti.try_number)
        if not path.is_file():
            return False  # remote logging, or workers on other machines: this server's log has it
        stamp = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
        line = {"timestamp": stamp, "level": "info", "event": message, "logger": __name__}
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
        return True
    except Exception:
        log.warning("Could not append to the task log of %s", ti, exc_info=True)
        return False


#: ``TaskInstanceState.AWAITING_INPUT`` (Airflow 3.3+), compared as a string so older Airflow works.
AWAITING_INPUT = "awaiting_input"
#: States of a task that runs (or is about to) and may park or defer in a moment.
_ABOUT_TO_WAIT = frozenset({"running", "queued", "restarting"})


def _resumed(ti: Any) -> bool:
    """Whether the task instance runs because it was resumed with an event (a decision or a
    deadline reached it already), rather than on its way to waiting."""
    if not ti.next_kwargs:
        return False
    kwargs = _next_kwargs(ti)
    return kwargs is None or "event" in kwargs  # unreadable: nothing to hand over to


def _next_kwargs(ti: Any) -> Mapping[str, Any] | None:
    """A task instance's ``next_kwargs`` as Airflow decodes them on resume; ``None`` (logged)
    when they cannot be read."""
    try:
        from airflow.models.trigger import _decode_next_kwargs

        kwargs = _decode_next_kwargs(ti.next_kwargs)
    except Exception:
        log.warning("Could not read the next_kwargs of %s", ti, exc_info=True)
        return None
    return kwargs if isinstance(kwargs, Mapping) else None


def _deferred_gate(session: Any, ti: Any, call: Any) -> tuple[dict[str, Any] | None, Any] | None:
    """``(event, finish)`` of a gate deferred on ``call`` (``event`` ``None``: undecided; ``finish``:
    what its trigger holds to end it in place); ``None`` when the task defers on something else."""
    from airflow.models.trigger import Trigger

    from airflow_provider_hlml.triggers.approval import TRIGGER_CLASSPATH, HumanApprovalTrigger

    row = session.get(Trigger, ti.trigger_id)
    if row is None or row.classpath != TRIGGER_CLASSPATH:
        return None
    kwargs = _decode_kwargs(row.kwargs)
    if kwargs.get("call_id") != call.call_id:
        return None  # another try's request
    trigger = HumanApprovalTrigger(**kwargs)
    event = trigger.accept(call)
    return (dict(event) if event is not None else None), trigger.finish


def _accepted(call: Any, policy_json: Any) -> dict[str, Any] | None:
    """The event of ``call`` under a parked gate's policy, or ``None`` to keep waiting."""
    from airflow_provider_hlml.gate.events import settled_event
    from airflow_provider_hlml.gate.policy import ApprovalPolicy

    if not isinstance(policy_json, Mapping):
        return None  # nothing to check the decision against: leave it to the deadline
    event, refused = settled_event(call, ApprovalPolicy.from_json(dict(policy_json)))
    if refused is not None:
        log.warning("Ignoring the decision on %s: %s", call.call_id, refused)
    return dict(event) if event is not None else None


def parked_gate(ti: Any) -> dict[str, Any] | None:
    """What a gate parked in ``awaiting_input`` kept (its ``next_kwargs``), or ``None`` when the
    task instance is not one of our parked gates."""
    from airflow_provider_hlml.sensors.approval import PARKED_KWARG

    if ti.next_method != "execute_complete" or not ti.next_kwargs:
        return None
    kwargs = _next_kwargs(ti)
    parked = kwargs.get(PARKED_KWARG) if kwargs is not None else None
    if not isinstance(parked, Mapping) or not isinstance(parked.get("call_id"), str):
        return None
    return dict(parked)


def parked_calls() -> dict[str, list[str]]:
    """The request ids of every gate parked in this deployment, by approvals connection id."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    found: dict[str, list[str]] = {}
    with create_session() as session:
        rows = session.scalars(
            select(TaskInstance).where(
                TaskInstance.state == AWAITING_INPUT, TaskInstance.next_method == "execute_complete"
            )
        )
        for ti in rows:
            parked = parked_gate(ti)
            if parked is not None:
                conn_id = str(parked.get("humanlayer_conn_id") or hlml_settings.humanlayer_conn_id())
                found.setdefault(conn_id, []).append(parked["call_id"])
    return found


def reconcile_parked_gates() -> dict[str, int]:
    """Resume every parked gate whose request was settled without its decision reaching it.

    One batched read per approvals connection (:meth:`HumanLayerHook.settled_function_calls`),
    none when no gate is parked. Returns counts: ``parked``, ``settled``, ``resumed``, and
    ``failed`` (gates whose backend could not be read).
    """
    from airflow_provider_hlml.hooks.humanlayer import HumanLayerError, HumanLayerHook

    counts = {"parked": 0, "settled": 0, "resumed": 0, "failed": 0}
    for conn_id, call_ids in parked_calls().items():
        counts["parked"] += len(call_ids)
        try:
            bodies = HumanLayerHook(humanlayer_conn_id=conn_id).settled_function_calls(call_ids)
        except HumanLayerError as exc:
            counts["failed"] += len(call_ids)
            log.warning("Reconciling %d parked gates of %r failed: %s", len(call_ids), conn_id, exc)
            continue
        counts["settled"] += len(bodies)
        for body in bodies:
            try:
                if wake_gate(body) in (RESUMED, ENDED):
                    counts["resumed"] += 1
            except Exception:
                log.exception("Resuming the gate of %s failed", body.get("call_id"))
    if counts["resumed"]:
        log.info("Reconciled parked gates: %s", counts)
    return counts


class Reconciler:
    """The API server's thread that runs :func:`reconcile_parked_gates` at start and every
    ``interval`` seconds (0: at start only). A turn that could not read a backend (this server
    still starting, the backend down) is tried again after ``retry_delay`` seconds."""

    def __init__(self, interval: float, first_delay: float = 3.0, retry_delay: float = 10.0) -> None:
        self.interval = interval
        self.first_delay = first_delay
        self.retry_delay = retry_delay
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="hlml-reconcile", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        delay = self.first_delay
        while not self._stop.wait(delay):
            try:
                failed = reconcile_parked_gates()["failed"] > 0
            except Exception:
                log.exception("Reconciling parked gates failed; trying again later")
                failed = True
            if failed:
                delay = min(self.retry_delay, self.interval or self.retry_delay)
            elif not self.interval:
                return
            else:
                delay = self.interval


#: Seconds after which a decision that found its gate still running is handed over again.
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)


def wake_with_retries(call_body: Mapping[str, Any], delays: tuple[float, ...] = RETRY_DELAYS) -> str:
    """:func:`wake_gate`, again after each of ``delays`` while the gate is still about to wait
    (a decision made in the instant between its first check and its parking)."""
    outcome = wake_gate(call_body)
    for delay in delays:
        if outcome != NOT_YET:
            break
        time.sleep(delay)
        outcome = wake_gate(call_body)
    return outcome


def wake_listener(event_type: str, body: dict[str, Any]) -> None:
    """Listener of the mounted approvals service: wake the gate of every settled function call."""
    from airflow_provider_hlml.approvals.webhooks import FUNCTION_CALL_COMPLETED

    if event_type == FUNCTION_CALL_COMPLETED:
        wake_with_retries(body)
