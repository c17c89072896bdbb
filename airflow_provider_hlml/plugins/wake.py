"""Hand a decision to the waiting gate at once, from the Airflow API server.

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
from typing import Any

from airflow_provider_hlml import settings as hlml_settings
from airflow_provider_hlml.gate.state import GateState

log = logging.getLogger(__name__)

#: Outcomes of :func:`wake_gate`.
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

    :param call_body: the function call as the approvals service returns it (trusted: from the
        mounted service's own database, a signed webhook, or a fresh read).
    """
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.trigger import Trigger
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
        if ti.state == TaskInstanceState.DEFERRED and ti.trigger_id is not None:
            event = _deferred_event(session, ti, call)
            if event is None or event is NOT_WAITING:
                return UNDECIDED if event is None else NOT_WAITING
            Trigger.submit_event(trigger_id=ti.trigger_id, event=TriggerEvent(dict(event)), session=session)
        elif ti.state == AWAITING_INPUT:
            parked = parked_gate(ti)
            if parked is None or parked.get("call_id") != call.call_id:
                return NOT_WAITING  # another operator, or another try's request
            event = _accepted(call, parked.get("policy"))
            if event is None:
                return UNDECIDED
            from airflow.models.trigger import handle_event_submit

            # What the native response handler does: the event goes into next_kwargs, the task is
            # scheduled again and resumes in execute_complete on a worker.
            handle_event_submit(TriggerEvent(dict(event)), task_instance=ti, session=session)
        elif (
            ti.state in _ABOUT_TO_WAIT
            and where.get("try_number") in (None, ti.try_number)
            and not _resumed(ti)
        ):
            return NOT_YET
        else:
            return NOT_WAITING
    log.info(
        "Approval request %s: resumed %s.%s of %s",
        call.call_id,
        where["dag_id"],
        where["task_id"],
        where["run_id"],
    )
    return RESUMED


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


def _deferred_event(session: Any, ti: Any, call: Any) -> Any:
    """The trigger's event for ``call`` of a deferred gate; ``None`` undecided; NOT_WAITING when
    the task defers on something else."""
    from airflow.models.trigger import Trigger

    from airflow_provider_hlml.triggers.approval import TRIGGER_CLASSPATH, HumanApprovalTrigger

    row = session.get(Trigger, ti.trigger_id)
    if row is None or row.classpath != TRIGGER_CLASSPATH:
        return NOT_WAITING
    kwargs = _decode_kwargs(row.kwargs)
    if kwargs.get("call_id") != call.call_id:
        return NOT_WAITING  # another try's request
    return HumanApprovalTrigger(**kwargs).accept(call)


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
                if wake_gate(body) == RESUMED:
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
