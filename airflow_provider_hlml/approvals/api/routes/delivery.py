"""Answers from outside the API: one-click links (a confirmation page, then a POST), Slack's
interactivity requests, and where each request was delivered.

Both answer paths end in :func:`~airflow_provider_hlml.approvals.store.respond_function_call`, as
the person the link was sent to or the Slack user is, so the request's policy and audit apply
exactly as for any other answer. A GET never decides (mail scanners open links); a link works
once, until it expires; a Slack request must carry a valid signature made in the last 300 s.
"""

from __future__ import annotations

import logging
import threading
from functools import cache
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from airflow_provider_hlml.approvals import store
from airflow_provider_hlml.approvals.api.deps import CurrentActor, SessionDep, StateDep
from airflow_provider_hlml.approvals.api.serialize import function_call_body
from airflow_provider_hlml.approvals.delivery import ACTION_PATH, outbox
from airflow_provider_hlml.approvals.models import ApprovalRequest, utcnow
from airflow_provider_hlml.approvals.webhooks import FUNCTION_CALL_COMPLETED
from airflow_provider_hlml.review.card import build_card

log = logging.getLogger(__name__)

router = APIRouter(tags=["delivery"])

#: Where Slack posts button clicks (the app's "Interactivity Request URL" is ``{public_url}`` + this).
SLACK_INTERACTIONS_PATH = "/hlml/slack/interactions"
DELIVERIES_PATH = "/hlml/deliveries"
#: Longest comment a confirmation page accepts.
MAX_COMMENT = 4000

#: Headers of every page of a one-click link: never cached, framed, or leaking the URL onward.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex, nofollow",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}


@cache
def _templates() -> Any:
    from pathlib import Path

    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).resolve().parents[2] / "templates"),
        autoescape=True,
    )


def _page(status: int, **values: Any) -> HTMLResponse:
    html = _templates().get_template("act.html").render(**values)
    return HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)


def _card(row: ApprovalRequest, state: Any) -> Any:
    links = state.delivery.links if state.delivery is not None else None
    return build_card(function_call_body(row), links)


@router.get(ACTION_PATH + "/{token}", response_class=HTMLResponse)
def confirm_page(token: str, session: SessionDep, state: StateDep) -> HTMLResponse:
    """The confirmation page of a one-click link: what is being decided, as whom; never decides."""
    view = outbox.read_token(session, token, now=utcnow())
    if view.problem is not None or view.token is None or view.request is None:
        card = _card(view.request, state) if view.request is not None else None
        return _page(view.status, problem=view.problem, card=card)
    outbox.audit_link_opened(session, view.token)
    return _page(200, card=_card(view.request, state), token=view.token, confirm=True)


def _decide(state: Any, token: str, fields: dict[str, str]) -> tuple[int, dict[str, Any]]:
    with state.sessions() as session:
        now = utcnow()
        view = outbox.read_token(session, token, now=now)
        if view.problem is not None or view.token is None or view.request is None:
            card = _card(view.request, state) if view.request is not None else None
            return view.status, {"problem": view.problem, "card": card}
        link, row = view.token, view.request
        approve = link.action == "approve"
        comment = fields.get("comment", "").strip()[:MAX_COMMENT] or None
        reason = fields.get("reject_option_name") or None
        if approve:
            reason = None
        if not outbox.use_token(session, link, now=now):
            session.rollback()
            return 410, {"problem": "This link has been used already: each link works once."}
        try:
            # The token's use commits with the answer (or with its audited refusal).
            decided = store.respond_function_call(
                session,
                call_id=row.call_id,
                approved=approve,
                comment=comment,
                reject_option_name=reason,
                actor=outbox.EMAIL_LINK_ACTOR,
                on_behalf_of={"name": link.recipient_name or link.recipient, "email": link.recipient},
            )
        except store.ServiceError as exc:
            session.rollback()
            return exc.status, {"problem": exc.message, "card": _card(row, state)}
        body = function_call_body(decided)
        state.announce(store.FUNCTION_CALL, decided.call_id, body, FUNCTION_CALL_COMPLETED)
        return 200, {
            "done": True,
            "card": _card(decided, state),
            "recipient": link.recipient,
            "action": link.action,
        }


@router.post(ACTION_PATH + "/{token}", response_class=HTMLResponse)
async def confirm(token: str, request: Request, state: StateDep) -> HTMLResponse:
    """Decide as the link's recipient (the confirmation page's form posts here)."""
    raw = await request.body()
    try:
        text = raw.decode("utf-8")
        fields = dict(parse_qsl(text, keep_blank_values=True, max_num_fields=10))
    except (UnicodeDecodeError, ValueError):
        return _page(400, problem="The form could not be read.")
    try:
        store.check_clean(list(fields.values()), "form")
    except store.ServiceError as exc:
        return _page(exc.status, problem=exc.message)
    status, values = await run_in_threadpool(_decide, state, token, fields)
    return _page(status, **values)


# ---- Slack --------------------------------------------------------------------------------


_seen_lock = threading.Lock()
_seen: dict[str, float] = {}


def _replayed(signature: str, now: float) -> bool:
    """Whether this exact signed request was seen in the last 300 s (by this process)."""
    with _seen_lock:
        for key in [k for k, at in _seen.items() if now - at > 300]:
            del _seen[key]
        if signature in _seen:
            return True
        if len(_seen) < 100_000:
            _seen[signature] = now
        return False


def _slack_answer(state: Any, action: Any) -> str:
    """Record a Slack button's answer; the sentence shown to the user (ephemeral)."""
    from airflow_provider_hlml.approvals.channels.slack import SlackChannel

    settings = state.settings
    channel = state.delivery.channels.get("slack") if state.delivery is not None else None
    principal = settings.slack_users.get(action.user_id)
    email = channel.user_email(action.user_id) if isinstance(channel, SlackChannel) else None
    with state.sessions() as session:
        if principal is None and email:
            principal = store.principal_name_for_email(session, email)
        if principal is None and not email:
            return "Your Slack account is not linked to an approver of this service (no e-mail address)."
        try:
            row = store.respond_function_call(
                session,
                call_id=action.call_id,
                approved=action.approve,
                comment=None,
                reject_option_name=action.reject_option,
                actor=outbox.SLACK_ACTOR,
                on_behalf_of={"name": principal or email, "email": email},
            )
        except store.ServiceError as exc:
            session.rollback()
            return f"Not recorded: {exc.message}"
        body = function_call_body(row)
        state.announce(store.FUNCTION_CALL, row.call_id, body, FUNCTION_CALL_COMPLETED)
        verb = "approval" if action.approve else "rejection"
        progress = build_card(body).progress
        return f"Your {verb} of {row.call_id} was recorded as {principal or email} ({row.state}; {progress})."


def _reply_later(state: Any, action: Any, text: str) -> None:
    channel = state.delivery.channels.get("slack") if state.delivery is not None else None
    if channel is not None and action.response_url:
        threading.Thread(
            target=channel.post_ephemeral_reply, args=(action.response_url, text), daemon=True
        ).start()


@router.post(SLACK_INTERACTIONS_PATH)
async def slack_interactions(request: Request, state: StateDep) -> Response:
    """Slack's interactivity requests: Approve / Reject buttons and the reject-reason picker."""
    from airflow_provider_hlml.approvals.channels.slack import parse_interaction, verify_request

    secret = state.settings.slack_signing_secret
    if secret is None or state.delivery is None or "slack" not in state.delivery.channels:
        raise store.ServiceError(404, "not_found", "Slack is not configured on this service")
    body = await request.body()
    signature = request.headers.get("X-Slack-Signature")
    problem = verify_request(
        secret.get_secret_value(), body, request.headers.get("X-Slack-Request-Timestamp"), signature
    )
    if problem is not None:
        raise store.ServiceError(401, "unauthorized", problem)
    import time

    if signature and _replayed(signature, time.time()):
        return Response(status_code=200)
    action = parse_interaction(body)
    if action is None:
        return Response(status_code=200)  # not one of our buttons: nothing to do
    text = await run_in_threadpool(_slack_answer, state, action)
    _reply_later(state, action, text)
    return Response(status_code=200)


# ---- delivery status --------------------------------------------------------------------------


@router.get(DELIVERIES_PATH)
def deliveries(
    session: SessionDep,
    actor: CurrentActor,
    call_id: Annotated[list[str] | None, Query(max_length=200)] = None,
) -> JSONResponse:
    """Where each function call was delivered: ``{call_id: [{channel, recipient, notice, state,
    attempts, sent_at, next_attempt_at, error}]}``."""
    call_ids = (call_id or [])[:200]
    store.check_clean(call_ids, "query.call_id")
    ids = store.request_ids(session, kind=store.FUNCTION_CALL, call_ids=call_ids)
    found = outbox.deliveries_of(session, list(ids.values()))
    return JSONResponse({cid: found.get(rid, []) for cid, rid in ids.items()})
