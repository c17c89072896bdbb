"""Decide approval requests as a reviewer through the HumanLayer API (the ``humanlayer`` SDK).

Used by ``scripts/demo.py --approve`` and the end-to-end tests to play the human: it lists the
pending function calls of one DAG run (``GET /function_calls?status=pending``, an extension of
the approvals service) and answers them with the SDK's ``respond``, exactly as any HumanLayer
client would.
"""

from __future__ import annotations

import time
from typing import Any


def pending_calls(
    base_url: str, api_key: str, *, dag_id: str | None = None, run_id: str | None = None
) -> list[dict[str, Any]]:
    """Pending function calls, optionally only those of one DAG (run).

    :param base_url: the HumanLayer API base, e.g. ``http://127.0.0.1:8000/humanlayer/v1``.
    :param api_key: a key allowed to list calls (reviewer or admin).
    :param dag_id: keep calls whose ``spec.state.hlml.airflow.dag_id`` is this.
    :param run_id: keep calls of this DAG run.
    """
    from humanlayer.core.cloud import HumanLayerCloudConnection
    from humanlayer.core.protocol import HumanLayerException

    connection = HumanLayerCloudConnection(api_key=api_key, api_base_url=base_url, http_timeout_seconds=15)
    response = connection.request("GET", "/function_calls", params={"status": "pending", "limit": 200})
    HumanLayerException.raise_for_status(response)
    body = response.json()
    calls = body if isinstance(body, list) else body.get("items") or body.get("function_calls") or []
    from airflow_provider_hlml.gate.state import GateLocation, GateState

    selected = []
    for call in calls:
        where = GateState.from_state((call.get("spec") or {}).get("state")).airflow or GateLocation()
        if dag_id is not None and where.dag_id != dag_id:
            continue
        if run_id is not None and where.run_id != run_id:
            continue
        selected.append(call)
    return selected


def respond(
    base_url: str,
    api_key: str,
    call_id: str,
    *,
    approved: bool,
    comment: str | None = None,
    reject_option: str | None = None,
) -> Any:
    """Answer one call with the SDK (a rejection needs a comment, as in HumanLayer, and may name
    one of the call's reject options)."""
    from humanlayer.core.cloud import CloudHumanLayerBackend, HumanLayerCloudConnection
    from humanlayer.core.models import FunctionCallStatus

    if not approved and not comment:
        raise ValueError("a rejection needs a comment")
    backend = CloudHumanLayerBackend(
        HumanLayerCloudConnection(api_key=api_key, api_base_url=base_url, http_timeout_seconds=15)
    )
    status = FunctionCallStatus(approved=approved, comment=comment, reject_option_name=reject_option)
    return backend.functions().respond(call_id, status)


def approve_when_pending(
    base_url: str,
    api_key: str,
    *,
    dag_id: str,
    run_id: str | None = None,
    count: int = 1,
    timeout: float = 300.0,
    poll_interval: float = 1.0,
    comment: str = "Approved",
    approved: bool = True,
    reject_option: str | None = None,
    stop: Any = None,
) -> list[dict[str, Any]]:
    """Wait for ``count`` approval requests of a DAG (run) and decide each as it appears.

    :param base_url: HumanLayer API base URL.
    :param api_key: the reviewer's key.
    :param dag_id: the DAG whose gates to answer.
    :param run_id: only this DAG run.
    :param count: how many calls to answer before returning.
    :param timeout: seconds to wait in total.
    :param poll_interval: seconds between listings.
    :param comment: the reviewer's comment.
    :param approved: approve (default) or reject.
    :param reject_option: with a rejection, the reject option (reason) to name.
    :param stop: optional ``threading.Event``; set it to give up early.
    :return: the calls as answered (the SDK's ``FunctionCall`` dumps).
    :raises TimeoutError: when fewer than ``count`` calls appeared in time.
    """
    deadline = time.monotonic() + timeout
    answered: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(answered) < count:
        if stop is not None and stop.is_set():
            break
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"only {len(answered)} of {count} approval request(s) of {dag_id} appeared within {timeout:.0f}s"
            )
        for call in pending_calls(base_url, api_key, dag_id=dag_id, run_id=run_id):
            call_id = str(call["call_id"])
            if call_id in seen:
                continue
            seen.add(call_id)
            result = respond(
                base_url, api_key, call_id, approved=approved, comment=comment, reject_option=reject_option
            )
            answered.append(result.model_dump(mode="json") if hasattr(result, "model_dump") else dict(result))
            if len(answered) >= count:
                break
        else:
            time.sleep(poll_interval)
    return answered
