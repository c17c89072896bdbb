"""Request and response bodies, split by direction.

Requests reuse the ``humanlayer`` SDK's own pydantic models, so whatever the unmodified SDK sends
is accepted (unknown fields are ignored); responses extend them with fields the SDK ignores.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from humanlayer.core.models import (
    Escalation,
    FunctionCallSpec,
    FunctionCallStatus,
    HumanContactSpec,
    HumanContactStatus,
)
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, model_validator

from airflow_provider_hlml.gate.wire import AnswerInfo, RuleStatus, UserInfo

# Call ids appear in URL paths: no slashes, whitespace or URL delimiters.
CallId = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^/\s?#%\\]+$")]
RunId = Annotated[str, Field(min_length=1, max_length=256)]
# Datetimes always go out as ISO-8601 with an explicit offset.
IsoDatetime = Annotated[dt.datetime, PlainSerializer(lambda v: v.isoformat(), return_type=str)]

__all__ = [
    "AuditEventPublic",
    "CancelRequest",
    "ErrorBody",
    "Escalation",
    "FunctionCallCreate",
    "FunctionCallPublic",
    "FunctionCallRespond",
    "HumanContactCreate",
    "HumanContactPublic",
    "HumanContactRespond",
    "MetricsPublic",
    "OnBehalfOf",
    "SettledFunctionCalls",
    "SettledLookup",
    "UserInfo",
]


# ---- requests -------------------------------------------------------------------------------

MAX_JSON_DEPTH = 32


def check_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> Any:
    """Refuse JSON nested deeper than ``limit`` (checked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= limit:
                raise ValueError(f"nested deeper than {limit} levels")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return value


class _DepthLimited(BaseModel):
    @model_validator(mode="before")
    @classmethod
    def _limit_depth(cls, data: Any) -> Any:
        return check_depth(data)


class FunctionCallCreate(_DepthLimited):
    """POST /function_calls: the SDK's FunctionCall (its ``status`` is ignored)."""

    run_id: RunId
    call_id: CallId
    spec: FunctionCallSpec
    status: dict[str, Any] | None = None


class HumanContactCreate(_DepthLimited):
    """POST /contact_requests: the SDK's HumanContact (its ``status`` is ignored)."""

    run_id: RunId
    call_id: CallId
    spec: HumanContactSpec
    status: dict[str, Any] | None = None


class OnBehalfOf(BaseModel):
    """The person a delegate key answers for."""

    name: str = Field(min_length=1, max_length=200)
    email: str | None = Field(default=None, max_length=320)


class FunctionCallRespond(FunctionCallStatus):
    """POST /agent/function_calls/{id}/respond: the SDK's FunctionCallStatus, ``approved`` required.

    ``user_info`` names the person a ``delegate`` key acts for; other roles' values are ignored.
    """

    approved: bool
    comment: str | None = Field(default=None, max_length=20_000)
    user_info: OnBehalfOf | None = None


class HumanContactRespond(HumanContactStatus):
    """POST /agent/human_contacts/{id}/respond: the SDK's HumanContactStatus, ``response`` required."""

    response: str = Field(min_length=1, max_length=20_000)
    user_info: OnBehalfOf | None = None


class CancelRequest(BaseModel):
    """POST /agent/function_calls/{id}/cancel. ``timeout`` is recorded as *expired*."""

    reason: Literal["timeout", "killed", "cancelled"] = "cancelled"
    comment: str | None = Field(default=None, max_length=20_000)


#: The most call ids one settled lookup may name.
MAX_SETTLED_LOOKUP = 10_000


class SettledLookup(BaseModel):
    """POST /hlml/function_calls/settled: the call ids to look up (duplicates count once)."""

    call_ids: list[CallId] = Field(min_length=1, max_length=MAX_SETTLED_LOOKUP)


# ---- responses ------------------------------------------------------------------------------


class FunctionCallStatusPublic(BaseModel):
    requested_at: IsoDatetime | None = None
    responded_at: IsoDatetime | None = None
    approved: bool | None = None
    comment: str | None = None
    reject_option_name: str | None = None
    slack_message_ts: str | None = None
    user_info: UserInfo | None = None
    extra_approvers: list[str] = Field(default_factory=list)
    cancelled_at: IsoDatetime | None = None
    cancel_reason: str | None = None
    answers: list[AnswerInfo] = Field(default_factory=list)
    rules: list[RuleStatus] = Field(default_factory=list)
    members: dict[str, list[str]] = Field(default_factory=dict)


class FunctionCallPublic(BaseModel):
    run_id: str
    call_id: str
    spec: FunctionCallSpec
    status: FunctionCallStatusPublic | None = None


class SettledFunctionCalls(BaseModel):
    """The settled function calls among those a lookup named (unknown and pending ones left out)."""

    function_calls: list[FunctionCallPublic]


class HumanContactStatusPublic(BaseModel):
    requested_at: IsoDatetime | None = None
    responded_at: IsoDatetime | None = None
    response: str | None = None
    response_option_name: str | None = None
    user_info: UserInfo | None = None
    extra_approvers: list[str] = Field(default_factory=list)
    cancelled_at: IsoDatetime | None = None
    cancel_reason: str | None = None


class HumanContactPublic(BaseModel):
    run_id: str
    call_id: str
    spec: HumanContactSpec
    status: HumanContactStatusPublic | None = None


class AuditEventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    event: str
    at: IsoDatetime
    actor: str | None = None
    on_behalf_of: str | None = None
    comment: str | None = None
    metadata: dict[str, Any] | None = None


class MetricsPublic(BaseModel):
    pending: int
    total: int
    approved: int
    rejected: int
    cancelled: int
    expired: int
    approval_rate: float | None
    median_response_seconds: float | None
    p95_response_seconds: float | None
    timeout_rate: float | None
    cancel_rate: float | None


class ErrorDetail(BaseModel):
    message: str
    code: str


class ErrorBody(BaseModel):
    error: ErrorDetail
