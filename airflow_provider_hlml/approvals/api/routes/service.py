"""Health and metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import text

from airflow_provider_hlml.approvals import store
from airflow_provider_hlml.approvals.api.deps import CurrentActor, SessionDep, StateDep
from airflow_provider_hlml.approvals.api.routes.function_calls import ERRORS
from airflow_provider_hlml.approvals.schemas import MetricsPublic
from airflow_provider_hlml.gate.wire import (
    FEATURE_AUTO_DECISIONS,
    FEATURE_GROUPS,
    FEATURE_PUSH,
    FEATURE_RULES,
    FEATURE_SETTLED,
    FEATURES_PATH,
)

router = APIRouter(tags=["service"])


@router.get("/healthz")
def healthz(session: SessionDep, state: StateDep) -> dict[str, Any]:
    """Liveness, database reachability and the number of waiting long-polls (no authentication)."""
    session.execute(text("SELECT 1"))
    return {"status": "ok", "long_poll_waiters": state.hub.waiting}


@router.get(FEATURES_PATH, responses=ERRORS)
def features(actor: CurrentActor, state: StateDep) -> dict[str, Any]:
    """What this service supports beyond HumanLayer's API (a gate with groups or rules checks it);
    ``decision_push`` only while settled requests are pushed somewhere (webhook URLs configured, or
    an in-process listener such as the Airflow plugin's)."""
    listed = [FEATURE_GROUPS, FEATURE_RULES, FEATURE_SETTLED, FEATURE_AUTO_DECISIONS]
    if state.publisher.active:
        listed.append(FEATURE_PUSH)
    return {"service": "hlml-approvals", "features": listed}


@router.get("/metrics/approvals", response_model=MetricsPublic, responses=ERRORS)
def approval_metrics(session: SessionDep, actor: CurrentActor) -> Any:
    """Pending count, approval rate, response times and timeout/cancel rates of function calls."""
    return store.metrics(session)
