"""Alerts raised from Airflow task callbacks, delivered by Airflow's own notifiers.

:class:`ConsecutiveFailuresAlert` counts the consecutive finally-failed runs of a task in an Airflow
Variable and, when the count reaches its threshold, calls notifiers: any
:class:`airflow.sdk.BaseNotifier` (``SmtpNotifier`` of the SMTP provider, ``SlackWebhookNotifier``
of the Slack provider, your own) or plain ``callable(context)``. Nothing here sends e-mail or chat
messages itself.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from airflow.sdk import BaseNotifier

from airflow_provider_hlml import settings

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = [
    "DEFAULT_ALERT_HTML",
    "DEFAULT_ALERT_SUBJECT",
    "VARIABLE_PREFIX",
    "ConsecutiveFailuresAlert",
    "default_training_alert",
]

log = logging.getLogger(__name__)

#: Prefix of the Airflow Variables holding the counters (one per counted task).
VARIABLE_PREFIX = "hlml_consecutive_failures."
#: Longest Variable key Airflow stores.
_MAX_VARIABLE_KEY = 250

DEFAULT_ALERT_SUBJECT = (
    "[hlml] {{ ti.task_id }} of {{ dag.dag_id }} failed {{ hlml_alert.consecutive_failures }} times in a row"
)
DEFAULT_ALERT_HTML = (
    "<p>Task <b>{{ ti.task_id }}</b> of DAG <b>{{ dag.dag_id }}</b> has failed "
    "{{ hlml_alert.consecutive_failures }} runs in a row (alert threshold "
    "{{ hlml_alert.threshold }}). Retries are not counted; the next success ends the episode.</p>"
    "<p>Latest failed run: {{ run_id }}<br>"
    "Error: {{ exception | e }}<br>"
    'Log: <a href="{{ ti.log_url }}">{{ ti.log_url }}</a></p>'
)


@dataclass(frozen=True)
class _Counter:
    consecutive_failures: int = 0
    alerted: bool = False


class ConsecutiveFailuresAlert:
    """
    Notify when a task has finally failed ``threshold`` runs in a row; once per episode.

    Use one instance as both the ``on_failure_callback`` and the ``on_success_callback`` of a task
    (it tells them apart by the task instance's state); one instance may serve several tasks, each
    counted on its own. A failure adds one to the task's counter, a success deletes it. When the
    counter reaches ``threshold``, every notifier is called once, with the callback's context plus
    ``hlml_alert`` = ``{"consecutive_failures", "threshold", "dag_id", "task_id", "map_index",
    "key"}`` (so templated notifier fields may use ``{{ hlml_alert.consecutive_failures }}``).
    Further failures do not notify again until a success has ended the episode.

    Retries are not counted: Airflow calls ``on_failure_callback`` only when the task instance is
    finally failed (``on_retry_callback`` for ``up_for_retry``). The counter is the Airflow
    Variable ``hlml_consecutive_failures.<dag_id>.<task_id>`` (``[<map_index>]`` appended for a
    mapped task instance; ``hlml_consecutive_failures.<key>`` when ``key`` is given), read and
    written through the Task SDK, which callbacks may use both in the task runner and in the DAG
    processor (heartbeat timeouts). Two runs of a task finishing at the same moment may count
    once.

    A notifier that raises is logged and does not stop the others. Each
    :class:`~airflow.sdk.BaseNotifier` is called on a shallow copy, because rendering its templated
    fields replaces them in place: the next alert renders the templates afresh.

    :param notifiers: notifiers (``BaseNotifier`` instances) or callables taking the context.
    :param threshold: consecutive failures that fire the alert (>= 1); default
        ``[hlml] training_failure_alert_threshold`` (3), read when a failure is counted.
    :param key: name of the counter instead of ``<dag_id>.<task_id>``; tasks given the same key
        share one counter.
    """

    def __init__(
        self,
        notifiers: Sequence[BaseNotifier | Callable[[Context], None]] | BaseNotifier,
        threshold: int | None = None,
        key: str | None = None,
    ) -> None:
        if isinstance(notifiers, BaseNotifier) or (
            callable(notifiers) and not isinstance(notifiers, Sequence)
        ):
            notifiers = [notifiers]
        listed = list(notifiers)
        for notifier in listed:
            if not callable(notifier):
                raise TypeError(f"notifier {notifier!r} is not callable")
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int)):
            raise TypeError(f"threshold must be an int, got {threshold!r}")
        if threshold is not None and threshold < 1:
            raise ValueError(f"threshold must be >= 1, got {threshold}")
        if key is not None and not key.strip():
            raise ValueError("key must not be blank")
        self.notifiers: list[BaseNotifier | Callable[[Context], None]] = listed
        self.threshold = threshold
        self.key = key

    def __repr__(self) -> str:
        names = ", ".join(
            type(n).__name__ if isinstance(n, BaseNotifier) else repr(n) for n in self.notifiers
        )
        return f"{type(self).__name__}(notifiers=[{names}], threshold={self.threshold!r}, key={self.key!r})"

    # -- the callback -------------------------------------------------------------------------
    def __call__(self, context: Context) -> None:
        """Count a failure or end the episode on success, by the state of ``context["ti"]``."""
        ti = context["ti"]
        state = getattr(ti, "state", None)
        if state == "success":
            self._reset(context)
        elif state is None or state == "failed":
            # The DAG processor runs failure callbacks (heartbeat timeouts) with no state set.
            self._count_failure(context)
        else:
            log.debug("%r called for state %s: neither a failure nor a success, ignored", self, state)

    def effective_threshold(self) -> int:
        """``threshold``, or ``[hlml] training_failure_alert_threshold`` when none was given."""
        return self.threshold if self.threshold is not None else settings.training_failure_alert_threshold()

    def variable_key(self, context: Context) -> str:
        """The Airflow Variable holding the counter of the task instance in ``context``."""
        ti = context["ti"]
        if self.key is not None:
            name = self.key
        else:
            name = f"{ti.dag_id}.{ti.task_id}"
            map_index = getattr(ti, "map_index", -1)
            if map_index is not None and map_index >= 0:
                name += f"[{map_index}]"
        key = VARIABLE_PREFIX + name
        if len(key) > _MAX_VARIABLE_KEY:
            digest = hashlib.sha256(name.encode()).hexdigest()[:32]
            key = f"{key[: _MAX_VARIABLE_KEY - len(digest) - 1]}~{digest}"
        return key

    # -- counter ------------------------------------------------------------------------------
    @staticmethod
    def _read(variable_key: str) -> _Counter | None:
        from airflow.sdk import Variable

        raw = Variable.get(variable_key, default=None)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return _Counter(int(data["consecutive_failures"]), bool(data.get("alerted", False)))
        except (TypeError, ValueError, KeyError):
            log.warning("Variable %s holds no failure counter (%r): counting from 0", variable_key, raw)
            return _Counter()

    def _count_failure(self, context: Context) -> None:
        from airflow.sdk import Variable

        threshold = self.effective_threshold()
        variable_key = self.variable_key(context)
        previous = self._read(variable_key) or _Counter()
        count = previous.consecutive_failures + 1
        fire = count >= threshold and not previous.alerted
        Variable.set(
            variable_key,
            json.dumps({"consecutive_failures": count, "alerted": previous.alerted or fire}),
            description="hlml: consecutive failed runs counted by ConsecutiveFailuresAlert; "
            "deleted when the task succeeds",
        )
        log.info("%s: %d consecutive failed run(s); alert threshold %d", variable_key, count, threshold)
        if fire:
            self._notify(context, count, threshold)

    def _reset(self, context: Context) -> None:
        from airflow.sdk import Variable

        variable_key = self.variable_key(context)
        previous = self._read(variable_key)
        if previous is None:
            return
        Variable.delete(variable_key)
        log.info(
            "%s: succeeded after %d consecutive failed run(s); counter reset",
            variable_key,
            previous.consecutive_failures,
        )

    # -- notifying ----------------------------------------------------------------------------
    def _notify(self, context: Context, count: int, threshold: int) -> None:
        ti = context["ti"]
        info = {
            "consecutive_failures": count,
            "threshold": threshold,
            "dag_id": ti.dag_id,
            "task_id": ti.task_id,
            "map_index": getattr(ti, "map_index", -1),
            "key": self.key,
        }
        for notifier in self.notifiers:
            # Each notifier gets its own context: BaseNotifier adds its template fields to it.
            enriched = cast("Context", {**cast("dict[str, Any]", context), "hlml_alert": dict(info)})
            target = copy.copy(notifier) if isinstance(notifier, BaseNotifier) else notifier
            try:
                target(enriched)
            except Exception:
                log.exception(
                    "Alert notifier %r failed (%s.%s, %d consecutive failures)",
                    notifier,
                    ti.dag_id,
                    ti.task_id,
                    count,
                )


def _addresses(value: str) -> list[str]:
    return [address.strip() for address in value.split(",") if address.strip()]


def alert_email_notifier(subject: str, html_content: str, *, what: str) -> BaseNotifier | None:
    """
    The SMTP provider's ``SmtpNotifier`` sending ``subject`` / ``html_content`` (Jinja templates
    rendered with the alert's context) to ``[hlml] alert_email_to`` through connection ``[hlml]
    alert_smtp_conn_id``, from ``[email] from_email`` or else the connection's ``from_email``
    extra; ``None`` when no address is configured, or (logged as an error naming ``what`` goes
    unalerted) when the SMTP provider is not installed.
    """
    to = _addresses(settings.alert_email_to())
    if not to:
        return None
    try:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier
    except ImportError:
        log.error("[hlml] alert_email_to is set but apache-airflow-providers-smtp is not installed: %s", what)
        return None
    from airflow.sdk import conf

    return SmtpNotifier(
        to=to,
        from_email=conf.get("email", "from_email", fallback=None) or None,
        subject=subject,
        html_content=html_content,
        smtp_conn_id=settings.alert_smtp_conn_id(),
    )


def default_training_alert() -> ConsecutiveFailuresAlert | None:
    """
    The alert training tasks get unless given one: an e-mail, or ``None`` when none is configured.

    With ``[hlml] alert_email_to`` set, a :class:`ConsecutiveFailuresAlert` (threshold ``[hlml]
    training_failure_alert_threshold``) with the e-mail of :func:`alert_email_notifier`
    (:data:`DEFAULT_ALERT_SUBJECT` / :data:`DEFAULT_ALERT_HTML`). Without the SMTP provider
    installed it logs an error and returns ``None``.
    """
    notifier = alert_email_notifier(
        DEFAULT_ALERT_SUBJECT, DEFAULT_ALERT_HTML, what="training tasks get no failure alert"
    )
    return ConsecutiveFailuresAlert([notifier]) if notifier is not None else None
