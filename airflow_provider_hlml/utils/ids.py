"""The one place where approval-request identifiers are derived from a task instance.

A gate must find the request it already made when its trigger is re-created (triggerer restart),
when the task resumes after deferral, or when the same try runs again; a cleared task (a new try)
must ask again. Both follow from deriving the ``call_id`` from
``(dag_id, run_id, task_id, map_index, try_number)``, plus ``[hlml] deployment_id`` when set.

Two Airflow deployments that share one approvals backend (staging and production on one
HumanLayer project, say) run DAGs with the same ids and, for scheduled runs, the same run ids:
without a ``deployment_id`` of its own, each would find the other's requests. The gate refuses a
request made by another deployment (see ``HumanApprovalSensor.ensure_request``), and a distinct
``deployment_id`` per deployment keeps them apart.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

CALL_ID_PREFIX = "hlml-"
_SLUG_RE = re.compile(r"[^a-z0-9]+")


def _slug(text: str, limit: int) -> str:
    return _SLUG_RE.sub("-", text.lower()).strip("-")[:limit].strip("-") or "task"


def deployment_id() -> str:
    """``[hlml] deployment_id``: what sets this Airflow deployment's requests apart ("" = nothing)."""
    from airflow_provider_hlml import settings

    return settings.deployment_id()


def approval_call_id(
    dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int, deployment: str = ""
) -> str:
    """
    Return the HumanLayer ``call_id`` of the approval request of one task-instance try.

    The id is URL-safe, at most 64 characters, starts with a readable slug of the task id and ends
    with a SHA-256 digest of all the parts, so distinct tries never collide.

    :param dag_id: DAG id.
    :param run_id: DAG run id.
    :param task_id: task id.
    :param map_index: map index (-1 for unmapped tasks).
    :param try_number: try number of the task instance.
    :param deployment: the deployment's ``[hlml] deployment_id``; "" leaves the id as without one.
    """
    parts = (dag_id, run_id, task_id, str(int(map_index)), str(int(try_number)))
    key = "\x1f".join((deployment, *parts) if deployment else parts)
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return f"{CALL_ID_PREFIX}{_slug(task_id, 26)}-{digest}"


def approval_call_id_from_ti(ti: Any) -> str:
    """
    Return :func:`approval_call_id` for a task instance (runtime or database model), with this
    deployment's ``[hlml] deployment_id``.

    :param ti: an object with ``dag_id``, ``run_id``, ``task_id``, ``map_index``, ``try_number``.
    """
    map_index = getattr(ti, "map_index", -1)
    return approval_call_id(
        ti.dag_id,
        ti.run_id,
        ti.task_id,
        -1 if map_index is None else map_index,
        ti.try_number,
        deployment_id(),
    )


def humanlayer_run_id(dag_id: str, run_id: str, prefix: str | None = None) -> str:
    """
    Return the HumanLayer ``run_id`` that groups the requests of one DAG run.

    :param dag_id: DAG id.
    :param run_id: DAG run id.
    :param prefix: optional prefix from the connection's ``run_id_prefix`` extra.
    """
    return f"{prefix or ''}{dag_id}/{run_id}"
