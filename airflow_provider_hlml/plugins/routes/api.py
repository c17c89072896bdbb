"""The dashboard's JSON endpoints under ``/api`` (described by the app's OpenAPI document)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.concurrency import run_in_threadpool

from airflow_provider_hlml.plugins import views
from airflow_provider_hlml.plugins.approvals_client import ApprovalsRequestError, ApprovalsUnavailable
from airflow_provider_hlml.plugins.auth import Identity, can_edit_dag, require_same_origin
from airflow_provider_hlml.plugins.routes import data as gather
from airflow_provider_hlml.plugins.routes.deps import CurrentUser, Data
from airflow_provider_hlml.plugins.routes.schemas import (
    Analytics,
    ApprovalDetail,
    ApprovalItem,
    ApprovalList,
    BackendStatus,
    DecisionBody,
    DecisionResult,
    Experiments,
    Overview,
    StatusFilter,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api", tags=["dashboard"])


@router.get("/overview", response_model=Overview, summary="Key figures and recent activity")
async def overview_json(user: CurrentUser, data: Data) -> Overview:
    return Overview(**await gather.overview(data, user))


@router.get("/approvals", response_model=ApprovalList, summary="Approval requests the user may see")
async def approvals_json(
    user: CurrentUser,
    data: Data,
    status_filter: Annotated[StatusFilter, Query(alias="status")] = "all",
    fn: Annotated[str | None, Query(max_length=200)] = None,
    dag_id: Annotated[str | None, Query(max_length=250)] = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
) -> ApprovalList:
    selected, _all, problem = await gather.approvals(data, user, status_filter, fn, dag_id, q)
    return ApprovalList(
        items=[ApprovalItem(**i) for i in selected],
        total=len(selected),
        backends=BackendStatus.of(problem, None),
    )


@router.get(
    "/approvals/{call_id}",
    response_model=ApprovalDetail,
    summary="One approval request with its audit trail",
)
async def approval_json(user: CurrentUser, data: Data, call_id: str) -> ApprovalDetail:
    return ApprovalDetail(**await gather.approval_detail(data, user, call_id))


@router.post(
    "/approvals/{call_id}/decision",
    response_model=DecisionResult,
    summary="Approve or reject a pending request as the logged-in user",
    dependencies=[Depends(require_same_origin)],
    responses={403: {"description": "Not allowed to decide"}, 409: {"description": "Already decided"}},
)
async def decide(user: CurrentUser, data: Data, call_id: str, body: DecisionBody) -> DecisionResult:
    client, item = await gather.load_call(data, user, call_id)
    identity = Identity.of(user)
    may_edit = await run_in_threadpool(can_edit_dag, user, item["dag_id"])
    reason = views.decision_block_reason(item, identity, may_edit_dag=may_edit)
    if reason is not None:
        code = status.HTTP_409_CONFLICT if item["status"] != "pending" else status.HTTP_403_FORBIDDEN
        raise HTTPException(code, reason)
    comment = (body.comment or "").strip() or None
    if not body.approved and comment is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, "comment: a rejection needs a comment")
    valid_options = {o["name"] for o in item["reject_options"]}
    if body.reject_option and (body.approved or body.reject_option not in valid_options):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY,
            f"reject_option: {body.reject_option!r} is not one of {sorted(valid_options)} for a rejection",
        )
    try:
        result = await client.respond(
            call_id,
            approved=body.approved,
            comment=comment,
            reject_option_name=body.reject_option,
            requested_at=item["requested_at"],
            user_info=identity.user_info(),
        )
    except ApprovalsUnavailable as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
    except ApprovalsRequestError as exc:
        code = exc.status_code if exc.status_code in (403, 404, 409, 422) else status.HTTP_502_BAD_GATEWAY
        raise HTTPException(code, f"approvals service: {exc.message}") from exc
    decided = views.normalize_call(result, airflow_base_path=data.base_path) if result else item
    outcome = decided["status"] if result else ("approved" if body.approved else "rejected")
    responded_by = decided.get("responded_by") or identity.name
    log.info(
        "Approval %s %s by %s (now %s)",
        call_id,
        "approved" if body.approved else "rejected",
        identity.name,
        outcome,
    )
    if outcome == "pending":
        # The answer counted, but the request's rules need more approvals.
        message = views.recorded_message(decided, approved=body.approved)
    else:
        message = f"{outcome.capitalize()} as {responded_by}."
    return DecisionResult(
        call_id=call_id,
        status=outcome,
        responded_by=responded_by,
        comment=comment,
        progress=decided.get("progress") if result else None,
        message=message,
    )


@router.get("/experiments", response_model=Experiments, summary="MLflow experiments, runs and models")
async def experiments_json(user: CurrentUser, data: Data) -> Experiments:
    return Experiments(**await gather.experiments(data, user))


@router.get("/analytics", response_model=Analytics, summary="Series behind the Analytics charts")
async def analytics_json(user: CurrentUser, data: Data) -> Analytics:
    return Analytics(**await gather.analytics(data, user))
