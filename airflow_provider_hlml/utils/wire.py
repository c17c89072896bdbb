"""HumanLayer wire models with the approvals-service extension fields.

The SDK's pydantic models are the wire format; these subclasses only add the optional fields the
self-hosted service returns (who decided, cancellation), which the SDK itself ignores. This module
imports ``humanlayer`` at module level, so import it only inside functions of DAG-parse code.
"""

from __future__ import annotations

from datetime import datetime

from humanlayer.core.models import FunctionCall, FunctionCallStatus  # noqa: TID253
from pydantic import BaseModel


class UserInfo(BaseModel):
    """Who decided a request, as the approvals service reports it in ``status.user_info``."""

    name: str | None = None
    email: str | None = None
    principal: str | None = None
    via_delegate: str | bool | None = None


class GateFunctionCallStatus(FunctionCallStatus):
    """``FunctionCallStatus`` plus the service's ``user_info``, ``cancelled_at`` and ``cancel_reason``."""

    user_info: UserInfo | None = None
    cancelled_at: datetime | None = None
    cancel_reason: str | None = None

    @property
    def is_cancelled(self) -> bool:
        return self.cancelled_at is not None or self.cancel_reason is not None

    @property
    def is_decided(self) -> bool:
        return self.approved is not None


class GateFunctionCall(FunctionCall):
    """``FunctionCall`` whose status carries the extension fields."""

    status: GateFunctionCallStatus | None = None
