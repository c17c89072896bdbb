"""The gate's wire models: HumanLayer's with the approvals-service extension fields.

The SDK's pydantic models are the wire format; these subclasses only add the optional fields the
self-hosted service returns (who decided, the escalation approvers, cancellation), which the SDK
itself ignores. The classes are built on first access, so importing this module does not import
``humanlayer``.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

__all__ = [
    "AUTO_DECISION_PATH",
    "CALL_ID_TAKEN",
    "FEATURES_PATH",
    "FEATURE_AUTO_DECISIONS",
    "FEATURE_GROUPS",
    "FEATURE_PUSH",
    "FEATURE_RULES",
    "FEATURE_SETTLED",
    "REGISTRY_EVENTS",
    "REGISTRY_EVENTS_PATH",
    "REPLAYED_HEADER",
    "SETTLED_PATH",
    "AnswerInfo",
    "GateFunctionCall",
    "GateFunctionCallStatus",
    "RuleStatus",
    "UserInfo",
    "spec_differences",
]

# The approvals service's 409 error code when a call id already holds another request, or one
# created by another principal: a gate never adopts such a request.
CALL_ID_TAKEN = "call_id_taken"
# Set (to "true") on the approvals service's answer to a create that returned an existing request.
REPLAYED_HEADER = "Idempotent-Replayed"
# The approvals service's extension route (under the API root) naming what it supports beyond
# HumanLayer's API; other servers answer 404. A gate with groups or approval rules asks it first.
FEATURES_PATH = "/hlml/features"
FEATURE_GROUPS = "groups"
FEATURE_RULES = "approval_rules"
# The service answers ``POST {SETTLED_PATH}`` (below).
FEATURE_SETTLED = "settled_lookup"
# The service pushes every settled request somewhere at once (in-process listeners, such as the
# Airflow plugin when the service is mounted in the API server, or webhook URLs); listed only then.
FEATURE_PUSH = "decision_push"
# The approvals service's extension route (under the API root) for reconciliation:
# ``{"call_ids": [...]}`` (1 to 10000) in, ``{"function_calls": [...]}`` out: those of the calls
# that exist and are settled (decided, cancelled or expired), as ``GET /function_calls/{id}``.
SETTLED_PATH = "/hlml/function_calls/settled"
# The service records the decision policy's decision a request carries (``spec.state.hlml.auto``):
# at once when it has no override window, or on ``POST`` here (``{call_id}``) by the request's
# creator once the window has passed.
FEATURE_AUTO_DECISIONS = "auto_decisions"
AUTO_DECISION_PATH = "/hlml/function_calls/{call_id}/decide_by_policy"
# The approvals service's extension route (under the API root) recording model-registry events
# that concern no request in the audit chain: ``POST`` one (agent or admin key), ``GET`` the latest.
REGISTRY_EVENTS_PATH = "/hlml/registry_events"
# What the alias guard records there: a protected alias found on a version without a valid
# attestation, and the guard moving it back to the last attested version.
REGISTRY_EVENTS = ("alias_moved", "alias_reverted")


class UserInfo(BaseModel):
    """Who decided a request, as the approvals service reports it in ``status.user_info``.

    The service always writes all four fields (``via_delegate`` as a boolean); other servers may
    leave any out.

    :param name: the person who answered.
    :param email: their e-mail address, if known.
    :param principal: the key's principal (a delegate service when ``via_delegate``).
    :param via_delegate: whether a delegate key answered on the person's behalf.
    """

    name: str | None = None
    email: str | None = None
    principal: str | None = None
    via_delegate: str | bool | None = None


class AnswerInfo(UserInfo):
    """One answer of a request with approval rules, as the service reports it in ``status.answers``.

    :param approved: approve (True) or reject (False).
    :param comment: the answer's comment.
    :param at: when it was given (ISO 8601).
    :param rule: the rule this approval counts toward now (None: a rejection, or it counts toward none).
    """

    approved: bool
    comment: str | None = None
    at: str | None = None
    rule: str | None = None


class RuleStatus(BaseModel):
    """One rule's progress, as the service reports it in ``status.rules``."""

    name: str
    approvers: list[str] = []
    required: int = 1
    veto: bool = True
    source: str = "gate"
    approved_by: list[str] = []
    met: bool = False


def spec_differences(old: Any, new: Any, path: str = "", depth: int = 4) -> list[str]:
    """Dotted paths (up to ``depth`` levels) where two JSON documents differ, e.g. ``spec.kwargs.context``."""
    if old == new:
        return []
    if depth and isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted({*old, *new}, key=str):
            if old.get(key) != new.get(key):
                out += spec_differences(
                    old.get(key), new.get(key), f"{path}.{key}" if path else str(key), depth - 1
                )
        return out
    return [path or "value"]


def _build() -> dict[str, Any]:
    from humanlayer.core.models import FunctionCall, FunctionCallStatus

    class GateFunctionCallStatus(FunctionCallStatus):
        """``FunctionCallStatus`` plus the service's ``user_info``, ``extra_approvers``,
        ``cancelled_at``, ``cancel_reason`` and, for approval rules, ``answers``, ``rules`` (each
        rule's progress) and ``members`` (the groups as resolved when the request opened)."""

        user_info: UserInfo | None = None
        extra_approvers: list[str] | None = None
        cancelled_at: datetime | None = None
        cancel_reason: str | None = None
        answers: list[AnswerInfo] | None = None
        rules: list[RuleStatus] | None = None
        members: dict[str, list[str]] | None = None

        @property
        def is_cancelled(self) -> bool:
            return self.cancelled_at is not None or self.cancel_reason is not None

        @property
        def is_decided(self) -> bool:
            return self.approved is not None

    class GateFunctionCall(FunctionCall):
        """``FunctionCall`` whose status carries the extension fields."""

        status: GateFunctionCallStatus | None = None

    GateFunctionCallStatus.__module__ = GateFunctionCall.__module__ = __name__
    return {"GateFunctionCallStatus": GateFunctionCallStatus, "GateFunctionCall": GateFunctionCall}


if TYPE_CHECKING:
    from humanlayer.core.models import FunctionCall, FunctionCallStatus

    class GateFunctionCallStatus(FunctionCallStatus):
        user_info: UserInfo | None
        extra_approvers: list[str] | None
        cancelled_at: datetime | None
        cancel_reason: str | None
        answers: list[AnswerInfo] | None
        rules: list[RuleStatus] | None
        members: dict[str, list[str]] | None

        @property
        def is_cancelled(self) -> bool: ...

        @property
        def is_decided(self) -> bool: ...

    class GateFunctionCall(FunctionCall):
        status: GateFunctionCallStatus | None


def __getattr__(name: str) -> Any:
    if name in ("GateFunctionCall", "GateFunctionCallStatus"):
        built = _build()
        globals().update(built)
        return built[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
