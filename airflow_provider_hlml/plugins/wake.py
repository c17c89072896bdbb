"""Hand a decision to the waiting gate at once, from the Airflow API server.

A deferred :class:`~airflow_provider_hlml.sensors.approval.HumanApprovalSensor` learns of a
decision through its trigger, which reads the request; the triggerer then needs up to a couple of
its loop turns to write the event. When the decision is recorded by the approvals service mounted
in this API server (or reported by a webhook of a standalone service), :func:`wake_gate` does what
the triggerer would do, right away: it finds the task instance deferred on this request, applies
the same policy as the trigger (approvers, self-approval) and submits the same event to Airflow.
The trigger stays the source of truth for everything else; if both deliver, Airflow applies the
first and ignores the second, as it does for any trigger event.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from airflow_provider_hlml.gate.state import GateState

log = logging.getLogger(__name__)

#: Outcomes of :func:`wake_gate`.
RESUMED = "resumed"  # the gate resumes on a worker with the decision event
NOT_WAITING = "not-waiting"  # no task instance is deferred on this request (any more)
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
    }


def wake_gate(call_body: Mapping[str, Any]) -> str:
    """
    Submit the decision in ``call_body`` to the gate deferred on it; returns what happened.

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
    from airflow_provider_hlml.triggers.approval import TRIGGER_CLASSPATH, HumanApprovalTrigger

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
        if ti is None or ti.state != TaskInstanceState.DEFERRED or ti.trigger_id is None:
            return NOT_WAITING
        row = session.get(Trigger, ti.trigger_id)
        if row is None or row.classpath != TRIGGER_CLASSPATH:
            return NOT_WAITING
        kwargs = _decode_kwargs(row.kwargs)
        if kwargs.get("call_id") != call.call_id:
            return NOT_WAITING  # another try's request
        trigger = HumanApprovalTrigger(**kwargs)
        event = trigger.accept(call)
        if event is None:
            return UNDECIDED
        Trigger.submit_event(trigger_id=ti.trigger_id, event=TriggerEvent(dict(event)), session=session)
    log.info(
        "Approval request %s: resumed %s.%s of %s",
        call.call_id,
        where["dag_id"],
        where["task_id"],
        where["run_id"],
    )
    return RESUMED


def wake_listener(event_type: str, body: dict[str, Any]) -> None:
    """Listener of the mounted approvals service: wake the gate of every settled function call."""
    from airflow_provider_hlml.approvals.webhooks import FUNCTION_CALL_COMPLETED

    if event_type == FUNCTION_CALL_COMPLETED:
        wake_gate(body)
