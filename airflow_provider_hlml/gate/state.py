"""The gate's part of a request: ``spec.state["hlml"]``, typed.

The sensor writes it when it creates a request; the approvals service reads the approval policy
from it, and the API server's wake path and the dashboard read which task instance is waiting.
``spec.state`` is whatever a request's creator wrote, so :meth:`GateState.from_state` checks every
level and reads what it cannot use as missing, as each reader used to do by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["STATE_KEY", "GateLocation", "GateState"]

#: The key of the gate's part in ``spec.state``.
STATE_KEY = "hlml"


def _text(value: Any) -> str | None:
    """``value`` when it is a non-empty string, else None."""
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    """``value`` when it is an integer (not a boolean), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _names(value: Any) -> tuple[str, ...]:
    """An approver list as names: one string, or the non-empty items of a list.

    Anything else that is not empty stays a (non-matching) restriction rather than becoming
    "any reviewer".
    """
    if not value:
        return ()
    items = (value,) if isinstance(value, str) else value if isinstance(value, list | tuple) else (value,)
    return tuple(str(a) for a in items if a)


@dataclass(frozen=True)
class GateLocation:
    """The Airflow task instance (and deployment) that made a request.

    :param dag_id: DAG id.
    :param run_id: DAG run id.
    :param task_id: task id.
    :param map_index: map index (-1 when not mapped).
    :param try_number: the task-instance try that made the request.
    :param ti_url: the task instance's log URL as the gate knew it.
    :param deployment_id: the ``[hlml] deployment_id`` of the Airflow deployment.
    """

    dag_id: str | None = None
    run_id: str | None = None
    task_id: str | None = None
    map_index: int = -1
    try_number: int | None = None
    ti_url: str | None = None
    deployment_id: str | None = None

    @classmethod
    def from_json(cls, raw: Any) -> GateLocation | None:
        if not isinstance(raw, Mapping):
            return None
        map_index = _int(raw.get("map_index", -1))
        return cls(
            dag_id=_text(raw.get("dag_id")),
            run_id=_text(raw.get("run_id")),
            task_id=_text(raw.get("task_id")),
            map_index=-1 if map_index is None else map_index,
            try_number=_int(raw.get("try_number")),
            ti_url=_text(raw.get("ti_url")),
            deployment_id=_text(raw.get("deployment_id")),
        )

    @property
    def complete(self) -> bool:
        """Whether the DAG, run and task ids are all known."""
        return bool(self.dag_id and self.run_id and self.task_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "dag_id": self.dag_id,
            "run_id": self.run_id,
            "task_id": self.task_id,
            "map_index": self.map_index,
            "try_number": self.try_number,
            "ti_url": self.ti_url,
            "deployment_id": self.deployment_id,
        }


@dataclass(frozen=True)
class GateState:
    """The approval policy and the origin a gate writes into ``spec.state["hlml"]``.

    :param approvers: e-mail addresses or names allowed to respond; empty means any reviewer.
    :param requester: the user who triggered the DAG run, if known.
    :param allow_self_approval: whether the requester may answer their own request.
    :param airflow: the task instance that made the request (None when the creator was no gate).
    """

    approvers: tuple[str, ...] = ()
    requester: str | None = None
    allow_self_approval: bool = False
    airflow: GateLocation | None = field(default=None)

    @classmethod
    def from_state(cls, state: Any) -> GateState:
        """Read a request's ``spec.state``; a missing or malformed part reads as missing."""
        raw = state.get(STATE_KEY) if isinstance(state, Mapping) else None
        if not isinstance(raw, Mapping):
            return cls()
        requester = raw.get("requester")
        return cls(
            approvers=_names(raw.get("approvers")),
            requester=str(requester) if requester else None,
            allow_self_approval=bool(raw.get("allow_self_approval", False)),
            airflow=GateLocation.from_json(raw.get("airflow")),
        )

    def to_state(self) -> dict[str, Any]:
        """The ``spec.state`` a gate sends: ``{"hlml": {...}}`` (the wire format)."""
        hlml: dict[str, Any] = {
            "approvers": list(self.approvers),
            "requester": self.requester,
            "allow_self_approval": self.allow_self_approval,
        }
        if self.airflow is not None:
            hlml["airflow"] = self.airflow.to_json()
        return {STATE_KEY: hlml}
