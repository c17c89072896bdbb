"""The gate after a drift report: a person chooses roll back, retrain or accept.

A HumanLayer approval carries a yes or a no, and a reason only with a no (``reject_option``):
there is no way to say *which* approve option a reviewer meant. So the one answer that changes
production, rolling the alias back, is the approval (with everything an approval carries: the
rules and counts, separation of duties, the digest of what was shown, the signed attestation, the
audit), and the other two are reasons of a rejection: ``retrain`` (keep the model serving and
start the training pipeline) and ``accept`` (keep it, do nothing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from airflow_provider_hlml.gate.events import approval_result
from airflow_provider_hlml.links.approval import approval_url
from airflow_provider_hlml.sensors.approval import HumanApprovalSensor

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_hlml.gate.events import ApprovalResult
    from airflow_provider_hlml.gate.wire import GateFunctionCall

__all__ = [
    "ACCEPT",
    "DRIFT_OPTIONS",
    "DRIFT_REJECT_OPTIONS",
    "RETRAIN",
    "ROLLBACK",
    "DriftResponseSensor",
]

ROLLBACK: Final = "rollback"
RETRAIN: Final = "retrain"
ACCEPT: Final = "accept"
#: What approving the drift request means.
DRIFT_OPTIONS: tuple[dict[str, str], ...] = (
    {
        "name": ROLLBACK,
        "title": "Roll back to the previous attested champion",
        "description": "Move the alias back to the version it held before the current one "
        "(checked to carry a signed approval attestation first).",
    },
)
#: The other answers: a rejection of the rollback naming what to do instead.
DRIFT_REJECT_OPTIONS: tuple[dict[str, str], ...] = (
    {
        "name": RETRAIN,
        "title": "Retrain",
        "description": "Keep the current model serving and start the training pipeline; the new "
        "model goes through validation and approval like any other.",
    },
    {
        "name": ACCEPT,
        "title": "Accept",
        "description": "Keep the current model: the drift is expected or harmless. Nothing changes.",
    },
)


class DriftResponseSensor(HumanApprovalSensor):
    """
    A :class:`~airflow_provider_hlml.sensors.approval.HumanApprovalSensor` asking what to do about
    a drifted model: approve = roll back (:data:`DRIFT_OPTIONS`), reject with ``retrain`` or
    ``accept`` (:data:`DRIFT_REJECT_OPTIONS`).

    A rejection naming one of ``act_on_reject`` (default ``retrain``) is an answer to act on: the
    gate succeeds with the result (``approved`` false, ``reject_option`` ``"retrain"``) and its
    downstream tasks run, so a branch can start the retraining. Any other rejection (``accept``,
    one without a reason, a timeout with ``on_timeout="reject"``) follows ``on_reject``, by
    default ``"skip"``: nothing downstream runs. ``on_timeout="approve"`` and ``auto_decisions``
    are refused: drift never rolls anything back without a person.

    Settling outcomes itself, this gate always resumes on a worker (never finishes in place).

    :param act_on_reject: reject options whose rejection the downstream tasks act on.
    :param kwargs: any :class:`HumanApprovalSensor` argument; ``approval_type`` defaults to
        ``workflow_decision``, ``options`` / ``reject_options`` to the drift answers and
        ``on_reject`` to ``skip``.
    """

    def __init__(self, *, act_on_reject: Sequence[str] = (RETRAIN,), **kwargs: Any) -> None:
        if kwargs.get("on_timeout") == "approve":
            raise ValueError(
                "on_timeout='approve' would act on drift without a person: use fail, skip or reject"
            )
        if kwargs.get("auto_decisions"):
            raise ValueError("auto_decisions: a drift response is always a person's decision")
        kwargs["auto_decisions"] = False
        kwargs.setdefault("approval_type", "workflow_decision")
        kwargs.setdefault("options", DRIFT_OPTIONS)
        kwargs.setdefault("reject_options", DRIFT_REJECT_OPTIONS)
        kwargs.setdefault("on_reject", "skip")
        super().__init__(**kwargs)
        offered = {str(o.get("name")) for o in self.reject_options}
        if isinstance(act_on_reject, str) or any(name not in offered for name in act_on_reject):
            raise ValueError(f"act_on_reject must name reject options of this gate ({sorted(offered)})")
        self.act_on_reject = tuple(act_on_reject)

    def result(
        self,
        context: Context,
        event: Mapping[str, Any],
        call: GateFunctionCall | None,
        timed_out: bool = False,
    ) -> ApprovalResult:
        """An approval, or a rejection naming one of ``act_on_reject``, is returned for the
        downstream tasks to act on; any other rejection follows ``on_reject``."""
        if event["approved"] or timed_out or event.get("reject_option") not in self.act_on_reject:
            return super().result(context, event, call, timed_out)
        sent_context = None
        if event.get("context") is None and (call is None or call.spec.kwargs.get("context") is None):
            sent_context = self.sent_context(context)
        result = approval_result(
            dict(event), call, approval_url=approval_url(event["call_id"]), sent_context=sent_context
        )
        self.notify_rejection(context, result)
        self.log.info(
            "Request %s answered %r by %s: continuing to act on it.",
            event["call_id"],
            event.get("reject_option"),
            (event.get("responded_by_user") or {}).get("name") or "a reviewer",
        )
        return result
