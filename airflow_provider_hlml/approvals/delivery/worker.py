"""The delivery worker: a background thread of the service that plans, sends and retries notices.

One loop per service process: plan new requests, plan the webhook notifications of settled
requests, run due steps (reminders, escalations, the "pending too long" alert), check the "more
than N pending" alert, plan outcome updates, then claim due notices and send them on a small
thread pool, recording each result. A request created or settled by this process wakes the loop
at once (on PostgreSQL, one created or settled by any process does); other work written by other
processes (a second replica, the CLI) is found at the next tick (``delivery_interval``). A channel
that is down only delays its notices (retried with backoff, each attempt audited); it never
delays or fails a request or a decision, which never wait on this thread.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from airflow_provider_hlml.approvals.channels.base import ActionLinks, Channel, DeliveryFailed, Notice
from airflow_provider_hlml.approvals.delivery import outbox
from airflow_provider_hlml.approvals.models import AlertEpisode, ApprovalRequest, utcnow
from airflow_provider_hlml.approvals.settings import ApprovalsSettings
from airflow_provider_hlml.approvals.store import HUMAN_CONTACT
from airflow_provider_hlml.approvals.webhooks import FUNCTION_CALL_COMPLETED, HUMAN_CONTACT_COMPLETED
from airflow_provider_hlml.gate.state import GateLocation
from airflow_provider_hlml.review.card import Card, build_card
from airflow_provider_hlml.review.links import (
    airflow_ui_path,
    dashboard_request_url,
    mlflow_model_url,
    safe_link,
)

log = logging.getLogger(__name__)

#: The path of a one-click link under the service's public URL: ``{public_url}{ACTION_PATH}/{token}``.
ACTION_PATH = "/hlml/act"
#: Seconds between two checks of the pending-count alert.
ALERT_CHECK_SECONDS = 5.0
#: Each tick looks for settled requests without webhook notices among those changed this many
#: seconds back (a decision commits moments after its ``updated_at``) ...
RECENT_DECISIONS_SECONDS = 60.0
#: ... and this often over the whole webhook window (and at start), so nothing is missed.
DECISIONS_FULL_SCAN_SECONDS = 300.0


class ServiceLinks:
    """The :class:`~airflow_provider_hlml.review.card.LinkMaker` of messages sent by the service:
    absolute URLs into the Airflow UI and the MLflow UI (when their URLs are configured)."""

    def __init__(self, airflow_url: str = "", mlflow_url: str = "") -> None:
        self.airflow_url = airflow_url
        self.mlflow_url = mlflow_url

    def mlflow_run(self, run_id: str) -> str | None:
        return None  # a run's page needs its experiment id, which the request does not carry

    def mlflow_model_version(self, name: str, version: str) -> str | None:
        return mlflow_model_url(self.mlflow_url, name, version) if self.mlflow_url else None

    def mlflow_compare_runs(self, run_ids: Any) -> str | None:
        return None

    def airflow_task(self, location: GateLocation) -> str | None:
        if not (self.airflow_url and location.complete):
            return None
        return airflow_ui_path(
            self.airflow_url, location.dag_id or "", location.run_id, location.task_id, location.map_index
        )

    def airflow_dag_run(self, location: GateLocation) -> str | None:
        if not (self.airflow_url and location.dag_id and location.run_id):
            return None
        return airflow_ui_path(self.airflow_url, location.dag_id, location.run_id)


def channels_from_settings(settings: ApprovalsSettings) -> dict[str, Channel]:
    """The channels the settings configure, by name (a new channel is added here)."""
    channels: dict[str, Channel] = {}
    if settings.smtp_url:
        from airflow_provider_hlml.approvals.channels.email import EmailChannel, SmtpTarget

        target = SmtpTarget.from_url(
            settings.smtp_url,
            username=settings.smtp_username or None,
            password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
        )
        channels["email"] = EmailChannel(target, settings.smtp_from)
    if settings.slack_bot_token:
        from airflow_provider_hlml.approvals.channels.slack import SlackChannel

        # 2.5 s per call: an interaction looks its user up in users.info and must answer Slack in 3 s.
        channels["slack"] = SlackChannel(
            settings.slack_bot_token.get_secret_value(), base_url=settings.slack_api_url, timeout=2.5
        )
    if settings.webhook_url_list:
        from airflow_provider_hlml.approvals.channels.webhook import WebhookChannel

        channels[outbox.WEBHOOK] = WebhookChannel(
            settings.webhook_secret.get_secret_value() if settings.webhook_secret else None,
            timeout=settings.webhook_timeout_seconds,
        )
    return channels


def _minutes(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 1:
        return f"{int(seconds)} s"
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h"


class DeliveryWorker:
    """Plans and sends the notices of one service process (see the module's docstring).

    :param settings: the service's settings.
    :param sessions: the service's sessions.
    :param channels: the channels by name (default: those the settings configure).
    :param body_of: a request's wire body, of either kind (the card is built from a function
        call's; a webhook POSTs it).
    :param run_loop: whether this process runs the loop (else only its channels and links are used).
    """

    def __init__(
        self,
        settings: ApprovalsSettings,
        sessions: sessionmaker[Session],
        body_of: Callable[[ApprovalRequest], Mapping[str, Any]],
        channels: Mapping[str, Channel] | None = None,
        run_loop: bool = True,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.channels = dict(channels if channels is not None else channels_from_settings(settings))
        self.config = outbox.Config.of(settings, self.channels)
        self.links = ServiceLinks(settings.airflow_url, settings.mlflow_url)
        self._body_of = body_of
        self.run_loop = run_loop
        self._id = secrets.token_hex(8)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._next_alert_check = 0.0
        self._next_full_decision_scan = 0.0
        self._updatable = [name for name in self.channels if name == "slack"]
        self._cards: dict[int, Card] = {}

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop (idempotent; also after a fork, where the parent's thread is gone);
        nothing when this process does not deliver (``run_loop=False``: its channels still serve
        Slack's interactivity requests)."""
        if not self.run_loop or (self._thread is not None and self._thread.is_alive()):
            return  # the common case, on every request: no lock
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._pool = ThreadPoolExecutor(
                max_workers=self.settings.delivery_concurrency, thread_name_prefix="hlml-delivery-send"
            )
            self._thread = threading.Thread(target=self._run, name="hlml-delivery", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """Look for work now (a request was created or decided in this process)."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        for channel in self.channels.values():
            try:
                channel.close()
            except Exception:
                log.debug("Closing channel %s failed", channel.name, exc_info=True)

    # ---- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.tick()
            except Exception:
                log.exception("The delivery worker's turn failed; trying again")
                busy = False
            if not busy:
                self._wake.wait(self.settings.delivery_interval)
                self._wake.clear()

    def tick(self) -> bool:
        """One turn of the loop; True when it found work (the loop then goes on at once).

        Each part runs on its own: a failure in one (logged) does not keep the others from running.
        """
        now = utcnow()
        self._cards = {}
        planned = self._part("planning", outbox.plan_new_requests, self.config) or 0
        if self.config.webhook_urls:
            planned += self._plan_decisions(now)
        steps = self._part("claiming steps", lambda s: outbox.claim_due_steps(s, now=now)) or []
        for step_id in steps:
            self._part("a timed step", outbox.run_step, step_id, self.config)
        if time.monotonic() >= self._next_alert_check:
            self._next_alert_check = time.monotonic() + ALERT_CHECK_SECONDS
            self._part("the pending-count alert", outbox.check_pending_count, self.config, now=now)
        if self._updatable:
            self._part("planning outcomes", outbox.plan_outcomes, channels=self._updatable, now=now)
        jobs = (
            self._part(
                "claiming notices",
                outbox.claim_deliveries,
                self.config,
                worker=self._id,
                now=utcnow(),
                body_of=self._body_of,
            )
            or []
        )
        if jobs:
            pool = self._pool
            results = [self._send(job) for job in jobs] if pool is None else list(pool.map(self._send, jobs))
            self._part("recording results", outbox.record_results, results, self.config)
        return bool(planned or steps or jobs)

    def _plan_decisions(self, now: dt.datetime) -> int:
        """Plan the webhook notices of settled requests: those changed in the last minute, or
        every request of the window every few minutes (and until a scan finds no more)."""
        full = time.monotonic() >= self._next_full_decision_scan
        since = None if full else now - dt.timedelta(seconds=RECENT_DECISIONS_SECONDS)
        found = self._part("planning decisions", outbox.plan_decisions, self.config, now=now, since=since)
        planned, more = found if found is not None else (0, True)
        if full and not more:
            self._next_full_decision_scan = time.monotonic() + DECISIONS_FULL_SCAN_SECONDS
        return int(planned)

    def _part(self, what: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``fn(session, *args, **kwargs)`` in a fresh session; None (logged) when it fails."""
        try:
            with self.sessions() as session:
                return fn(session, *args, **kwargs)
        except Exception:
            log.exception("The delivery worker failed at %s; it goes on with the rest", what)
            return None

    # ---- one notice -------------------------------------------------------------------------

    def _send(self, job: outbox.Job) -> outbox.Result:
        channel = self.channels.get(job.channel)
        if channel is None:
            return outbox.Result(job, "failed", error=f"channel {job.channel!r} is not configured")
        try:
            notice = self.notice_for(job)
            if notice is None:
                return outbox.Result(job, "skipped")
            if job.notice == "outcome":
                if not job.ref:
                    return outbox.Result(job, "skipped")
                updated = channel.update(job.recipient, job.ref, notice)
                return outbox.Result(job, "sent" if updated is not None else "skipped", ref=job.ref)
            sent = channel.send(job.recipient, notice)
            return outbox.Result(job, "sent", ref=sent.ref)
        except DeliveryFailed as exc:
            return outbox.Result(job, "failed", error=str(exc), retryable=exc.retryable)
        except Exception as exc:  # a bug in a channel must not stop the others
            log.exception("Channel %s failed on notice %s", job.channel, job.delivery_id)
            return outbox.Result(job, "failed", error=f"{type(exc).__name__} in the {job.channel} channel")

    def notice_for(self, job: outbox.Job) -> Notice | None:
        """The notice a job sends, built from the request as it is now; None when it is no longer
        needed (a request decided before its reminder went out)."""
        if job.request_id is None:
            return self._episode_notice(job)
        if job.body is None or job.state is None or job.requested_at is None:
            return None
        body, state, requested_at = job.body, job.state, job.requested_at
        if job.notice == outbox.DECISION:
            return self._decision_notice(job, body)
        card = self._cards.get(job.request_id)
        if card is None:
            # One card per request and turn: its e-mail and Slack notices share it.
            card = self._cards[job.request_id] = build_card(body, self.links)
        dashboard = (
            safe_link(dashboard_request_url(self.settings.airflow_url, card.call_id))
            if self.settings.airflow_url
            else None
        )
        if job.notice == "alert":
            pending = _minutes((utcnow() - requested_at).total_seconds())
            return Notice(
                kind="alert",
                subject=f"[hlml] Approval pending for {pending}: {card.subject}"[:200],
                card=card,
                text=f"Request {card.call_id} has waited {pending} for a decision ({card.progress}).",
                dashboard_url=dashboard,
            )
        if job.notice == "outcome":
            return Notice(kind="outcome", subject=_outcome_subject(card), card=card, dashboard_url=dashboard)
        if state != "pending":
            return None
        links = None
        if job.links and self.settings.public_url:
            base = self.settings.public_url + ACTION_PATH
            links = ActionLinks(
                approve=safe_link(f"{base}/{job.links['approve']}"),
                reject=safe_link(f"{base}/{job.links['reject']}"),
            )
        waited = _minutes((utcnow() - requested_at).total_seconds())
        subject, text = {
            "request": (f"Approval needed: {card.subject}", None),
            "reminder": (
                f"Reminder: approval needed: {card.subject}",
                f"This request has waited {waited} for a decision ({card.progress}).",
            ),
            "escalation": (
                f"Escalated to you: {card.subject}",
                f"Nobody has decided this request in {waited}: it was escalated to you ({card.progress}).",
            ),
        }.get(job.notice, (card.subject, None))
        return Notice(
            kind=job.notice,  # type: ignore[arg-type]
            subject=subject[:200],
            card=card,
            text=text,
            links=links,
            dashboard_url=dashboard,
        )

    def _decision_notice(self, job: outbox.Job, body: dict[str, Any]) -> Notice | None:
        """A settled request's webhook body, as the request is now."""
        if job.state == "pending":
            return None  # cannot happen: a settled request never opens again
        event = HUMAN_CONTACT_COMPLETED if job.kind == HUMAN_CONTACT else FUNCTION_CALL_COMPLETED
        return Notice(
            kind="decision",
            subject=f"{event} {body.get('call_id')}"[:200],
            payload={"is_test": False, "type": event, "event": body},
        )

    def _episode_notice(self, job: outbox.Job) -> Notice | None:
        with self.sessions() as session:
            episode = session.get(AlertEpisode, job.episode_id) if job.episode_id else None
            if episode is None:
                return None
            details = dict(episode.details or {})
        dashboard = (
            safe_link(self.settings.airflow_url + "/hlml/approvals") if self.settings.airflow_url else None
        )
        return Notice(
            kind="alert",
            subject=f"[hlml] {details.get('pending')} approvals pending (more than {details.get('threshold')})",
            text=(
                f"{details.get('pending')} approval requests are pending at once, more than the "
                f"{details.get('threshold')} this service alerts on. This alert fires once until the "
                "number falls back."
            ),
            dashboard_url=dashboard,
        )


def _outcome_subject(card: Card) -> str:
    decision = card.decision or {}
    status = str(decision.get("status") or card.status)
    by = decision.get("by")
    return f"{status.capitalize()}{f' by {by}' if by else ''}: {card.subject}"[:200]
