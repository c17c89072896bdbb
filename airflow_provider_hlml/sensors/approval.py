"""HumanApprovalSensor: a pipeline stage that waits until a person approves, through HumanLayer."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseNotifier, BaseSensorOperator, PokeReturnValue, SkipMixin, conf
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
)

from airflow_provider_hlml import settings as hlml_settings
from airflow_provider_hlml.gate.digest import review_digest, review_facts
from airflow_provider_hlml.gate.events import (
    EVENT_STATUSES,
    ApprovalDecisionEvent,
    ApprovalResult,
    ApprovalTimeoutEvent,
    FinishInPlace,
    approval_result,
    settled_event,
)
from airflow_provider_hlml.gate.policy import ApprovalPolicy
from airflow_provider_hlml.gate.state import (
    DUTIES,
    ApprovalRule,
    AutoDecision,
    Forbidden,
    GateLocation,
    GateState,
    Reminders,
    is_group,
)
from airflow_provider_hlml.links.approval import ApprovalRequestLink, approval_url
from airflow_provider_hlml.utils.ids import approval_call_id_from_ti, deployment_id, humanlayer_run_id

if TYPE_CHECKING:
    from types import ModuleType

    from airflow.sdk import Context

    from airflow_provider_hlml.gate.routing import Requirement
    from airflow_provider_hlml.gate.wire import GateFunctionCall
    from airflow_provider_hlml.hooks.humanlayer import HumanLayerHook


def _awaiting_input() -> Any:
    """Airflow's ``TaskAwaitingInput`` (3.3+), or ``None`` on an Airflow that cannot park a task."""
    try:
        from airflow.sdk.exceptions import TaskAwaitingInput
    except ImportError:  # Airflow 3.1 / 3.2
        return None
    return TaskAwaitingInput


#: The ``next_kwargs`` key under which a parked gate keeps what resuming it needs (the API server's
#: wake and reconciliation read it: :mod:`airflow_provider_hlml.plugins.wake`).
PARKED_KWARG = "hlml_gate"


def _triggers() -> ModuleType:
    """The trigger module, imported when a gate first needs it: it loads ``airflow.triggers.base``,
    which DAG parsing can do without."""
    from airflow_provider_hlml.triggers import approval

    return approval


APPROVAL_TYPES = ("code_execution", "content_publishing", "workflow_decision", "model_promotion", "custom")
URGENCIES = ("low", "medium", "high", "critical")
ON_TIMEOUT = ("fail", "skip", "approve", "reject", "escalate")
ON_REJECT = ("fail", "skip")
#: Reasons a reviewer can pick when rejecting a model promotion (the example gates offer them;
#: the chosen one is the result's ``reject_option``).
MODEL_REJECT_OPTIONS: tuple[dict[str, str], ...] = (
    {
        "name": "needs_retraining",
        "title": "Needs retraining",
        "description": "The model is not good enough: retrain it (other data, features or parameters).",
    },
    {
        "name": "data_issue",
        "title": "Data issue",
        "description": "The training or validation data looks wrong: fix the data before anything else.",
    },
    {"name": "not_now", "title": "Not now", "description": "Fine, but not the moment to change production."},
)
DEPLOYMENT_HINT = " Deployments sharing an approvals backend need distinct [hlml] deployment_id values."


def _seconds(value: timedelta | float | None, name: str) -> float | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return seconds


def _choice(value: str, allowed: Sequence[str], name: str) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _as_plain(value: Any, name: str) -> dict[str, Any]:
    """A ResponseOption / ContactChannel (or dict, or option name) as a plain dict, without importing the SDK."""
    if hasattr(value, "model_dump"):
        return dict(value.model_dump(exclude_none=True))
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{name}: expected a HumanLayer model, a dict or a name, got {type(value).__name__}")


def _names(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _jsonable(value: Any) -> Any:
    """A JSON-safe copy (datetimes and other objects become strings; the SDK refuses datetimes)."""
    return json.loads(json.dumps(value, default=str))


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class _KeepWaiting:
    """The gate escalated and waits again (in the escalation phase)."""

    escalated: bool


class HumanApprovalSensor(BaseSensorOperator, SkipMixin):
    """
    Wait until a person approves (or rejects) a HumanLayer approval request.

    The sensor creates the request once per task-instance try (its ``call_id`` is derived from the
    try, so resuming, re-running the same try or restarting the triggerer never asks twice; a
    cleared task asks again), checks it once, then defers to :class:`HumanApprovalTrigger`
    (``deferrable=True``) or re-checks in ``reschedule`` mode, freeing the worker slot either way.

    The result (XCom ``return_value``) has the keys ``approved``, ``chosen_options``,
    ``reject_option``, ``comment``, ``responded_by_user``, ``responded_at``, ``requested_at``,
    ``response_seconds``, ``call_id``, ``approval_url``, ``context`` (the request context as sent)
    and ``timed_out`` (the outcome came from ``on_timeout``).

    :param subject: headline shown to the reviewer (templated).
    :param body: Markdown details (templated).
    :param context: dict shown to the reviewer (templated; may be an ``XComArg``). Values of
        secrets known to Airflow and keys named like secrets are redacted before sending.
    :param approval_type: ``code_execution``, ``content_publishing``, ``workflow_decision``,
        ``model_promotion`` or ``custom``; sent as the request's ``fn``.
    :param urgency: ``low``, ``medium``, ``high`` or ``critical``.
    :param options: what approving means, as HumanLayer ``ResponseOption``s (or dicts / names).
    :param reject_options: reasons a reviewer can pick when rejecting (``ResponseOption``s).
    :param channel: HumanLayer ``ContactChannel`` (Slack, e-mail, ...), passed through.
    :param approvers: e-mails, principal names or ``group:<name>`` entries allowed to decide
        (templated); one of them decides. Empty: any reviewer.
    :param approval_rules: rules that must all be met (templated), e.g. ``[{"name": "ML lead",
        "approvers": ["group:ml-leads"], "required": 2}, {"name": "Compliance", "approvers":
        ["group:compliance"], "required": 1}]``: each rule needs ``required`` distinct people among
        its approvers; each person counts once; a rejection ends the request unless the rule says
        ``"veto": false``. With rules, a non-empty ``approvers`` list is one more rule ("one of
        these"). ``[hlml] approval_policy_file`` can add rules; nothing here removes them. Groups
        and counts need the provider's approvals service (the gate fails at once on a server
        without them).
    :param forbid: who may not decide (separation of duties): ``"requester"`` (the user who
        triggered the DAG run) and ``"model_author"`` (the MLflow run's ``mlflow.user`` and the
        Airflow user who triggered the training, read from the run named by the context's
        ``mlflow_run_id``). Default: both for ``model_promotion``, else ``["requester"]``, without
        ``"requester"`` when ``allow_self_approval`` is true.
    :param allow_self_approval: whether the user who triggered the DAG run may decide.
    :param response_timeout: how long to wait for a decision (timedelta or seconds); ``None`` waits forever.
    :param on_timeout: ``fail`` (no retry), ``skip``, ``approve``, ``reject`` (then ``on_reject``
        applies) or ``escalate`` (to ``escalation_approvers``, then wait ``escalation_timeout``
        and fail).
    :param on_reject: ``fail`` (no retry) or ``skip`` (the sensor succeeds and its direct
        downstream tasks are skipped, like the native ``ApprovalOperator``).
    :param escalation_approvers: e-mail addresses (or names) the request escalates to (templated).
    :param escalation_timeout: how long to wait after escalating.
    :param escalation_message: message of the escalation e-mail.
    :param reminders: the request's ladder over time, delivered by the provider's approvals
        service: ``{"remind_after": timedelta or seconds, "escalate_after": ..., "escalate_to":
        [people or "group:<name>"], "repeat_every": ...}`` (default: the service's
        ``HLML_APPROVALS_REMIND_AFTER_SECONDS`` etc.). Other servers ignore it.
    :param notifiers: Airflow ``BaseNotifier``s called once when the request is created.
    :param rejection_notifiers: Airflow ``BaseNotifier``s called when the request is rejected
        (their context has ``approval``, the gate's result).
    :param mlflow_conn_id: MLflow connection to read the model's author from (default
        ``[hlml] mlflow_conn_id``).
    :param deferrable: wait in the triggerer (default ``[operators] default_deferrable``);
        otherwise the sensor runs in ``reschedule`` mode. Ignored when the gate parks.
    :param wait_mode: ``park`` (Airflow 3.3+: the task waits in ``awaiting_input``, holding no
        worker or triggerer slot, and the API server resumes it when the decision is pushed to it;
        the deadline is the scheduler's), ``defer`` (``deferrable`` / ``reschedule`` as above) or
        ``auto`` (park on Airflow 3.3+ when the approvals backend pushes decisions to this
        Airflow, defer otherwise); default ``[hlml] wait_mode``.
    :param finish_in_place: whether an approval ends the gate where the decision lands (the
        triggerer for a deferred gate, the API server for a parked one) with the same
        ``return_value`` XCom, instead of scheduling the task again to resume on a worker; default
        ``[hlml] finish_in_place`` (on). Rejections, timeouts and escalations always resume on a
        worker, and so does every decision of a gate with ``outlets``, one whose result a task is
        mapped over, or one of a subclass that overrides how an outcome is settled (see
        :meth:`finish_in_place_spec`).
    :param poll_interval: seconds between status reads (default ``[hlml] poll_interval``).
    :param humanlayer_conn_id: Airflow connection of type ``humanlayer`` (default
        ``[hlml] humanlayer_conn_id``).
    :param auto_decisions: act on a promotion decision policy's outcome in the context
        (``context["decision"]``, as ``MLflowValidateOperator(decision_policy=...)`` reports it):
        for ``auto_approve`` / ``auto_reject`` the request carries the decision and the approvals
        service records it as the policy's principal (``policy:<name>-v<version>``), with the
        evidence, attested like any decision; with the policy's ``override_window`` the request
        stays open that long and a person answering first decides instead. ``human`` (and any
        decision the approval policy file forbids: ``auto_approve: false`` / ``auto_reject:
        false`` for the gate's type, urgency or model; or a server that cannot record it, such as
        the HumanLayer cloud) asks a person as always. The result's ``branch`` and
        ``branch_reason`` say which branch decided and why. Default on.
    """

    template_fields: Sequence[str] = (
        "subject",
        "body",
        "context",
        "approvers",
        "approval_rules",
        "escalation_approvers",
    )
    template_fields_renderers = {"body": "md", "context": "json"}
    operator_extra_links = (ApprovalRequestLink(),)
    inherits_from_skipmixin = True
    ui_color = "#fde7c8"

    def __init__(
        self,
        *,
        subject: str,
        body: str = "",
        context: Any = None,
        approval_type: str = "custom",
        urgency: str = "medium",
        options: Sequence[Any] | None = None,
        reject_options: Sequence[Any] | None = None,
        channel: Any = None,
        approvers: str | Sequence[str] | None = None,
        approval_rules: Sequence[Mapping[str, Any]] | str | None = None,
        forbid: Sequence[str] | None = None,
        allow_self_approval: bool = False,
        response_timeout: timedelta | float | None = None,
        on_timeout: str = "fail",
        on_reject: str = "fail",
        escalation_approvers: str | Sequence[str] | None = None,
        escalation_timeout: timedelta | float | None = None,
        escalation_message: str | None = None,
        reminders: Mapping[str, Any] | None = None,
        notifiers: Sequence[BaseNotifier] | BaseNotifier | None = None,
        rejection_notifiers: Sequence[BaseNotifier] | BaseNotifier | None = None,
        mlflow_conn_id: str | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = hlml_settings.poll_interval(),
        humanlayer_conn_id: str | None = None,
        wait_mode: str | None = None,
        finish_in_place: bool | None = None,
        auto_decisions: bool = True,
        **kwargs: Any,
    ) -> None:
        self.auto_decisions = auto_decisions
        self.finish_in_place = finish_in_place
        self.wait_mode = _choice(wait_mode, hlml_settings.WAIT_MODES, "wait_mode") if wait_mode else None
        self.response_timeout_seconds = _seconds(response_timeout, "response_timeout")
        self.escalation_timeout_seconds = _seconds(escalation_timeout, "escalation_timeout")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval!r}")
        if not deferrable:
            kwargs.setdefault("mode", "reschedule")
        kwargs.setdefault("poke_interval", poll_interval)
        if "timeout" not in kwargs and self.response_timeout_seconds is not None:
            # The gate enforces its own deadlines; the sensor timeout is only a safety net behind them.
            grace = max(60.0, 3 * poll_interval)
            kwargs["timeout"] = self.response_timeout_seconds + (self.escalation_timeout_seconds or 0) + grace
        super().__init__(**kwargs)
        self.subject = subject
        self.body = body
        self.context = context
        self.approval_type = _choice(approval_type, APPROVAL_TYPES, "approval_type")
        self.urgency = _choice(urgency, URGENCIES, "urgency")
        self.options = [_as_plain(o, "options") for o in options or []]
        self.reject_options = [_as_plain(o, "reject_options") for o in reject_options or []]
        self.channel = _as_plain(channel, "channel") if channel is not None else None
        self.approvers = approvers
        self.approval_rules = approval_rules
        if (
            approval_rules is not None
            and not isinstance(approval_rules, str)
            and "{{" not in str(approval_rules)
        ):
            ApprovalRule.parse_all(list(approval_rules))  # a mistake fails at DAG parse, not at run time
        if forbid is not None and (isinstance(forbid, str) or any(d not in DUTIES for d in forbid)):
            raise ValueError(f"forbid must be a list of {', '.join(DUTIES)}; got {forbid!r}")
        if forbid is not None and allow_self_approval and "requester" in forbid:
            raise ValueError("forbid=['requester', ...] contradicts allow_self_approval=True")
        if forbid is None:
            forbid = ["requester", "model_author"] if approval_type == "model_promotion" else ["requester"]
            if allow_self_approval:
                forbid.remove("requester")
        self.forbid = list(forbid)
        self.allow_self_approval = allow_self_approval
        self.on_timeout = _choice(on_timeout, ON_TIMEOUT, "on_timeout")
        self.on_reject = _choice(on_reject, ON_REJECT, "on_reject")
        self.escalation_approvers = escalation_approvers
        self.escalation_message = escalation_message
        self.reminders = Reminders.parse(reminders)  # a mistake fails at DAG parse, not at run time
        if on_timeout == "escalate":
            if not escalation_approvers and channel is None:
                raise ValueError("on_timeout='escalate' needs escalation_approvers (or a channel)")
            if self.escalation_timeout_seconds is None:
                raise ValueError("on_timeout='escalate' needs escalation_timeout")
        if on_timeout != "fail" and self.response_timeout_seconds is None:
            raise ValueError(f"on_timeout={on_timeout!r} needs response_timeout")
        self.notifiers: list[BaseNotifier] = (
            [notifiers] if isinstance(notifiers, BaseNotifier) else list(notifiers or [])
        )
        self.rejection_notifiers: list[BaseNotifier] = (
            [rejection_notifiers]
            if isinstance(rejection_notifiers, BaseNotifier)
            else list(rejection_notifiers or [])
        )
        self.mlflow_conn_id = mlflow_conn_id or hlml_settings.mlflow_conn_id()
        self.deferrable = deferrable
        self.poll_interval = float(poll_interval)
        self.humanlayer_conn_id = humanlayer_conn_id or hlml_settings.humanlayer_conn_id()

    # ------------------------------------------------------------------ helpers
    @property
    def total_timeout_seconds(self) -> float | None:
        """Seconds from the request's creation to the gate's last deadline (escalation included)."""
        if self.response_timeout_seconds is None:
            return None
        extra = self.escalation_timeout_seconds if self.on_timeout == "escalate" else None
        return self.response_timeout_seconds + (extra or 0)

    @cached_property
    def hook(self) -> HumanLayerHook:
        from airflow_provider_hlml.hooks.humanlayer import HumanLayerHook

        return HumanLayerHook(humanlayer_conn_id=self.humanlayer_conn_id)

    @staticmethod
    def call_id_for(context: Context) -> str:
        """The request id of this task-instance try (see :mod:`airflow_provider_hlml.utils.ids`)."""
        return approval_call_id_from_ti(context["ti"])

    @staticmethod
    def requester_of(context: Context) -> str | None:
        """The user who triggered the DAG run (``None`` for scheduled runs)."""
        dag_run = context.get("dag_run")
        return getattr(dag_run, "triggering_user_name", None) or None

    def policy_for(
        self, context: Context, escalated: bool, call: GateFunctionCall | None = None
    ) -> ApprovalPolicy:
        """The approval policy now: the request's own (the gate checked it is the request it
        sends), with the escalation approvers once escalated."""
        if call is not None and call.spec.state:
            policy = ApprovalPolicy.from_state(call.spec.state)
        else:
            policy = ApprovalPolicy(
                approvers=tuple(_names(self.approvers)),
                requester=self.requester_of(context),
                allow_self_approval="requester" not in self.forbid,
            )
        return policy.escalated_to(_names(self.escalation_approvers)) if escalated else policy

    def approvers_for(self, escalated: bool) -> list[str]:
        """Who may decide now: the approvers, plus the escalation approvers once escalated."""
        policy = ApprovalPolicy(approvers=tuple(_names(self.approvers)))
        return list((policy.escalated_to(_names(self.escalation_approvers)) if escalated else policy).allowed)

    def gate_rules(self, with_others: bool = False) -> tuple[ApprovalRule, ...]:
        """The gate's own rules: ``approval_rules``, plus ``approvers`` as a "one of these" rule
        when there are rules (its own, or ``with_others`` from the policy file)."""
        raw: Any = self.approval_rules
        if isinstance(raw, str):
            text = raw
            try:
                raw = json.loads(text) if text.strip() else None
            except ValueError:
                raise ValueError(
                    f"approval_rules rendered to {text[:200]!r}, which is not a JSON list"
                ) from None
        rules = ApprovalRule.parse_all(list(raw) if isinstance(raw, list | tuple) else raw)
        approvers = tuple(_names(self.approvers))
        if (rules or with_others) and approvers:
            rules = (*rules, ApprovalRule(name="Approvers", approvers=approvers))
        return rules

    def model_authors(self, sent_context: Any) -> tuple[Forbidden, ...]:
        """Who authored the model the context names: the training run's ``mlflow.user`` and the
        Airflow user who triggered the training (MLflow is asked; none when no run is named)."""
        run_id = sent_context.get("mlflow_run_id") if isinstance(sent_context, Mapping) else None
        if not run_id:
            self.log.warning(
                "forbid has model_author but the context names no mlflow_run_id: no author known"
            )
            return ()
        from airflow_provider_hlml.hooks.mlflow import MLflowHook

        try:
            authors = MLflowHook(self.mlflow_conn_id).run_authors(str(run_id))
        except Exception as exc:
            # Separation of duties cannot be enforced without the author: no request is made.
            raise AirflowException(
                f"forbid has model_author, but the author of MLflow run {run_id!r} cannot be read "
                f"through connection {self.mlflow_conn_id!r}: {exc}"
            ) from None
        return tuple(Forbidden(who=who, duty="model_author", why=why) for who, why in authors)

    def policy_requirement(self, sent_context: Any, urgency: str) -> Requirement:
        """What ``[hlml] approval_policy_file`` requires of this gate (its type, urgency and the
        model the context names); nothing when no file is configured."""
        from airflow_provider_hlml.gate.routing import Requirement, load_policy_file

        path = hlml_settings.approval_policy_file()
        if not path:
            return Requirement()
        model = sent_context.get("model_name") if isinstance(sent_context, Mapping) else None
        return load_policy_file(path).requirement(
            self.approval_type, urgency, model if isinstance(model, str) else None
        )

    def request_policy(
        self, context: Context, sent_context: Any, urgency: str, required: Requirement | None = None
    ) -> ApprovalPolicy:
        """The policy this gate sends: the policy file's rules and duties (``required``, read
        when not given), then the gate's own."""
        if required is None:
            required = self.policy_requirement(sent_context, urgency)
        path = hlml_settings.approval_policy_file()
        if "requester" in required.forbid and self.allow_self_approval:
            raise AirflowFailException(
                f"allow_self_approval=True is refused: the approval policy file ({path}) forbids "
                f"the requester from deciding {self.approval_type} gates"
            )
        rules = (*required.rules, *self.gate_rules(with_others=bool(required.rules)))
        forbid = tuple(dict.fromkeys((*required.forbid, *self.forbid)))
        forbidden = self.model_authors(sent_context) if "model_author" in forbid else ()
        return ApprovalPolicy(
            approvers=tuple(_names(self.approvers)),
            requester=self.requester_of(context),
            allow_self_approval="requester" not in forbid,
            rules=rules,
            forbidden=forbidden,
        )

    def auto_decision(
        self, sent_context: Any, required: Requirement
    ) -> tuple[AutoDecision | None, str | None]:
        """The decision policy's decision this gate's request carries, if any, and otherwise why a
        person decides although the policy decided (``None`` when it did not: ``human``, or no
        policy). ``required``: what the approval policy file requires of this gate."""
        decision = sent_context.get("decision") if isinstance(sent_context, Mapping) else None
        if not self.auto_decisions or not isinstance(decision, Mapping):
            return None, None
        outcome = {"auto_approve": "approve", "auto_reject": "reject"}.get(str(decision.get("outcome")))
        if outcome is None:
            return None, None
        verb = "approve" if outcome == "approve" else "reject"
        policy = decision.get("policy")
        window = policy.get("override_window", 0) if isinstance(policy, Mapping) else 0
        try:
            auto = AutoDecision(
                outcome=outcome,
                principal=str(decision.get("principal")),
                reason=str(decision.get("reason") or "")[:2000],
                override_seconds=float(window),
            )
        except (TypeError, ValueError) as exc:
            self.log.warning("The context's decision cannot be used (%s): a person decides.", exc)
            return None, f"the decision policy's decision is unreadable ({exc}): a person decides"
        if not required.allows(outcome):
            model = sent_context.get("model_name") if isinstance(sent_context, Mapping) else None
            about = f"model {model!r}, " if isinstance(model, str) else ""
            return None, (
                f"{auto.principal} would {verb} ({auto.reason}), but the approval policy file forbids "
                f"a decision policy to {verb} this gate ({about}{self.approval_type}, "
                f"{self.request_urgency(sent_context)} urgency): a person decides"
            )
        from airflow_provider_hlml.gate.wire import FEATURE_AUTO_DECISIONS

        if FEATURE_AUTO_DECISIONS not in self.hook.features():
            return None, (
                f"{auto.principal} would {verb} ({auto.reason}), but the approvals backend cannot "
                "record a decision policy's decision: a person decides"
            )
        return auto, None

    def request_context(self, context: Context) -> dict[str, Any]:
        """
        The context shown to the reviewer, before redaction. Subclasses may add to it.

        :param context: the Airflow task context.
        """
        value = self.context
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            return {"value": value}
        return dict(value)

    def request_urgency(self, request_context: Mapping[str, Any]) -> str:
        """The urgency to send; subclasses may derive it from the context."""
        return self.urgency

    def sent_context(self, context: Context) -> Any:
        """The request context as it is sent: JSON, secrets redacted."""
        from airflow.sdk.log import redact

        return _jsonable(redact(_jsonable(self.request_context(context))))

    def build_request(self, context: Context) -> Any:
        """
        The HumanLayer ``FunctionCall`` this gate sends, secrets redacted.

        :param context: the Airflow task context.
        """
        from airflow.sdk.log import redact
        from humanlayer.core.models import ContactChannel, FunctionCall, FunctionCallSpec, ResponseOption

        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        sent_context = self.sent_context(context)
        urgency = self.request_urgency(sent_context)
        required = self.policy_requirement(sent_context, urgency)
        policy = self.request_policy(context, sent_context, urgency, required)
        self._policy = policy
        auto, auto_declined = self.auto_decision(sent_context, required)
        facts = review_facts(sent_context)
        options = [ResponseOption.model_validate(o) for o in self.options]
        reject_options = [ResponseOption.model_validate(o) for o in self.reject_options]
        channel = ContactChannel.model_validate(self.channel) if self.channel else None
        kwargs = {
            "subject": str(redact(str(self.subject))),
            "body": str(redact(str(self.body or ""))),
            "context": sent_context,
            "approval_type": self.approval_type,
            "urgency": urgency,
            "options": [o.model_dump(mode="json") for o in options],
        }
        state = GateState(
            approvers=policy.approvers,
            requester=policy.requester,
            allow_self_approval=policy.allow_self_approval,
            rules=policy.rules,
            forbid=tuple(self.forbid),
            forbidden=policy.forbidden,
            digest=review_digest(facts) if facts is not None else None,
            reminders=self.reminders,
            timeout=self.total_timeout_seconds,
            auto=auto,
            auto_declined=auto_declined,
            airflow=GateLocation(
                dag_id=ti.dag_id,
                run_id=ti.run_id,
                task_id=ti.task_id,
                map_index=-1 if map_index is None else map_index,
                try_number=ti.try_number,
                ti_url=getattr(ti, "log_url", None),
                deployment_id=deployment_id(),
            ),
        ).to_state()
        return FunctionCall(
            run_id=humanlayer_run_id(ti.dag_id, ti.run_id, self.hook.settings.run_id_prefix),
            call_id=self.call_id_for(context),
            spec=FunctionCallSpec(
                fn=self.approval_type,
                kwargs=kwargs,
                channel=channel,
                reject_options=reject_options or None,
                state=state,
            ),
        )

    def ensure_request(self, context: Context) -> GateFunctionCall:
        """Create this try's request, or take the existing one only if it is exactly this request.

        Call ids are predictable, so another key could create a request under this gate's id
        first (with harmless-looking content) and wait for the gate to adopt it. A gate only waits
        on a request that its own agent principal created with the spec it would send: the
        approvals service refuses anything else (409 ``call_id_taken``), and the spec is compared
        here as well for servers that do not (the HumanLayer cloud).
        """
        from airflow_provider_hlml.hooks.humanlayer import HumanLayerConflictError

        request = self.build_request(context)
        self.check_server_supports(self._policy)
        try:
            call, created = self.hook.get_or_create_function_call(request)
        except HumanLayerConflictError as exc:
            raise AirflowFailException(
                f"Approval request {request.call_id} cannot be used by this gate: {exc}"
                + (DEPLOYMENT_HINT if "spec.state.hlml.airflow" in str(exc) else "")
            ) from None
        # Also when "created": a server may answer a create with a request it already had.
        self.check_same_request(call, request)
        url = approval_url(call.call_id)
        decided = call.status is not None and call.status.approved is not None
        if created and decided:
            self.log.info("Request %s was decided by its decision policy (%s)", call.call_id, url)
        elif created:
            auto = GateState.from_state(call.spec.state).auto
            if auto is not None:
                self.log.info(
                    "%s would %s: request %s stays open %.0f s for a person to decide instead (%s)",
                    auto.principal,
                    auto.outcome,
                    call.call_id,
                    auto.override_seconds,
                    url,
                )
            else:
                self.log.info("Asked for approval: request %s, decide at %s", call.call_id, url)
            for notifier in self.notifiers:
                notifier(context)
        else:
            self.log.info("Waiting on the existing approval request %s (%s)", call.call_id, url)
        return call

    def check_server_supports(self, policy: ApprovalPolicy) -> None:
        """Fail at once when the policy needs groups or counted rules and the server has none."""
        from airflow_provider_hlml.gate.wire import FEATURE_GROUPS, FEATURE_RULES

        groups = bool(policy.groups) or any(is_group(a) for a in _names(self.escalation_approvers))
        needed = [f for f, used in ((FEATURE_GROUPS, groups), (FEATURE_RULES, policy.is_quorum)) if used]
        if not needed:
            return
        missing = [f for f in needed if f not in self.hook.features()]
        if missing:
            what = " and ".join(
                "approver groups" if f == FEATURE_GROUPS else "approval rules with counts" for f in missing
            )
            raise AirflowFailException(
                f"This gate uses {what}, which the server at {self.hook.settings.base_url} does not "
                "support (the HumanLayer cloud has neither): point the connection "
                f"{self.humanlayer_conn_id!r} at the provider's approvals service, or use a plain "
                "approvers list."
            )

    @staticmethod
    def check_same_request(call: GateFunctionCall, request: Any) -> None:
        """Refuse an existing request that is not the one this gate would have sent.

        Compared: the run id and the whole spec (subject, body, context, options, approvers,
        requester, the Airflow task instance and deployment), so a decision is never taken from a
        request that showed the reviewer something else, nor from another task instance's or
        another deployment's request. A server that does not keep ``state`` is compared on the rest.
        """
        from airflow_provider_hlml.gate.wire import spec_differences

        their_spec: dict[str, Any] = call.spec.model_dump(mode="json")
        our_spec: dict[str, Any] = request.spec.model_dump(mode="json")
        if their_spec.get("state") is None:
            our_spec["state"] = None
        differ = spec_differences(
            {"run_id": call.run_id, "spec": their_spec}, {"run_id": request.run_id, "spec": our_spec}
        )
        if differ:
            hint = DEPLOYMENT_HINT if any(d.startswith("spec.state.hlml.airflow") for d in differ) else ""
            raise AirflowFailException(
                f"Approval request {call.call_id} already exists but is not the request this gate "
                f"would send: it differs in {', '.join(differ)}. A gate only waits on its own request." + hint
            )

    def deadline_of(self, call: GateFunctionCall, escalated: bool) -> datetime | None:
        """When the current waiting phase ends, counted from the request's ``requested_at``: the
        gate's timeout, or sooner the end of a decision policy's override window."""
        requested = (call.status.requested_at if call.status else None) or _now()
        requested = requested if requested.tzinfo else requested.replace(tzinfo=timezone.utc)
        window = self.override_window_end(call, requested)
        deadline = self.gate_deadline(requested, escalated)
        if window is None or deadline is None:
            return window or deadline
        return min(deadline, window)

    def gate_deadline(self, requested: datetime, escalated: bool) -> datetime | None:
        """When the gate's own timeout (and escalation) ends for a request made at ``requested``."""
        if self.response_timeout_seconds is None:
            return None
        seconds = self.response_timeout_seconds
        if escalated:
            seconds += self.escalation_timeout_seconds or 0
        return requested + timedelta(seconds=seconds)

    @staticmethod
    def override_window_end(call: GateFunctionCall, requested: datetime) -> datetime | None:
        """When the request's decision policy decides it, while nobody has answered."""
        status = call.status
        if status is None or status.approved is not None or status.answers:
            return None
        auto = GateState.from_state(call.spec.state).auto
        return requested + timedelta(seconds=auto.override_seconds) if auto is not None else None

    def decide_by_policy(
        self, context: Context, call: GateFunctionCall | None, call_id: str, escalated: bool
    ) -> dict[str, Any] | _KeepWaiting | None:
        """At the end of an override window nobody used: have the service record the policy's
        decision and return its event; keep waiting when a person has answered meanwhile; None
        when the request carries no auto-decision (a real timeout)."""
        from airflow_provider_hlml.hooks.humanlayer import HumanLayerConflictError

        if call is None:
            call = self.hook.get_function_call(call_id)
        if GateState.from_state(call.spec.state).auto is None:
            return None
        if call.status is not None and call.status.approved is None and not call.status.answers:
            try:
                call = self.hook.decide_by_policy(call_id)
            except HumanLayerConflictError as exc:
                self.log.info("The decision policy did not decide %s: %s", call_id, exc)
                call = self.hook.get_function_call(call_id)
        event = self.check(call, context, escalated)
        if event is not None and event["status"] != "timeout":
            return event
        requested = (call.status.requested_at if call.status else None) or _now()
        requested = requested if requested.tzinfo else requested.replace(tzinfo=timezone.utc)
        deadline = self.gate_deadline(requested, escalated)
        if deadline is not None and _now() >= deadline:
            return None  # the gate's own deadline passed too: on_timeout applies
        # A person answered within the window (wait for them), or the service's clock is behind.
        return _KeepWaiting(escalated=escalated)

    def already_escalated(self, call: GateFunctionCall) -> bool:
        """Whether this request was escalated before (read from the approvals service's audit trail)."""
        if self.on_timeout != "escalate":
            return False
        first_deadline = self.deadline_of(call, escalated=False)
        if first_deadline is None or _now() < first_deadline:
            return False
        from airflow_provider_hlml.hooks.humanlayer import HumanLayerError

        try:
            events = self.hook.get_audit(call.call_id)
        except HumanLayerError:
            # No audit trail (the cloud): only the first check after the deadline escalates.
            return _now() > first_deadline + timedelta(seconds=1.5 * self.poll_interval)
        return any(e.get("event") == "escalated" for e in events)

    def check(self, call: GateFunctionCall, context: Context, escalated: bool) -> dict[str, Any] | None:
        """The event this read settles (decision, cancellation, deadline passed), or ``None``."""
        event, refused = settled_event(call, self.policy_for(context, escalated, call))
        if refused is not None:
            self.log.warning("Ignoring the decision on %s: %s. Still waiting.", call.call_id, refused)
        elif event is None and call.status is not None and call.status.answers:
            progress = "; ".join(
                f"{r.name} {len(r.approved_by)} of {r.required}" for r in call.status.rules or []
            )
            self.log.info("Partly approved %s: %s", call.call_id, progress)
        if event is not None:
            return dict(event)
        deadline = self.deadline_of(call, escalated)
        if deadline is not None and _now() >= deadline:
            return dict(
                ApprovalTimeoutEvent(
                    status="timeout",
                    call_id=call.call_id,
                    deadline=deadline.isoformat(),
                    escalated=escalated,
                    requested_at=call.status.requested_at.isoformat()
                    if call.status and call.status.requested_at
                    else None,
                )
            )
        return None

    # -------------------------------------------------------------- execution
    def execute(self, context: Context) -> Any:
        parks = self.parks()
        if not parks and not self.deferrable:
            return super().execute(context)
        call = self.ensure_request(context)
        escalated = self.already_escalated(call)
        event = self.check(call, context, escalated)
        if event is not None:
            outcome = self.settle(context, event, call)
            if not isinstance(outcome, _KeepWaiting):
                return outcome
            escalated = outcome.escalated
        self.wait_on(call, context, escalated, parks)

    def parks(self) -> bool:
        """Whether this gate waits parked in ``awaiting_input`` (see ``wait_mode``)."""
        mode = self.wait_mode or hlml_settings.wait_mode()
        if mode == "defer":
            return False
        if _awaiting_input() is None:
            if mode == "park":
                raise AirflowFailException(
                    "wait_mode='park' needs Airflow 3.3+ (TaskAwaitingInput); use 'auto' or 'defer'"
                )
            return False
        from airflow_provider_hlml.gate.wire import FEATURE_PUSH, FEATURE_SETTLED
        from airflow_provider_hlml.hooks.humanlayer import HumanLayerError

        try:
            features = self.hook.features()
        except HumanLayerError as exc:
            if mode == "park":
                return True
            self.log.warning("Could not read the approvals backend's features (%s): deferring.", exc)
            return False
        pushes = FEATURE_PUSH in features
        if mode == "park":
            if not pushes and FEATURE_SETTLED not in features:
                self.log.warning(
                    "wait_mode='park', but the approvals backend of %r neither pushes decisions nor "
                    "answers the batched lookup: a decision reaches this gate only at its deadline.",
                    self.humanlayer_conn_id,
                )
            return True
        if not pushes:
            self.log.info(
                "The approvals backend of %r does not push decisions to Airflow: the gate defers.",
                self.humanlayer_conn_id,
            )
        return pushes

    def wait_on(self, call: GateFunctionCall, context: Context, escalated: bool, parks: bool) -> None:
        """Park (``parks``) or hand the wait over to the triggerer."""
        if parks:
            self.park_on(call, context, escalated)
        self.defer_on(call, context, escalated)

    def park_on(self, call: GateFunctionCall, context: Context, escalated: bool) -> None:
        """Park the task in ``awaiting_input`` until the API server resumes it with the decision,
        or the scheduler's timeout sweep resumes it at the deadline (no trigger, no polling)."""
        awaiting = _awaiting_input()
        assert awaiting is not None  # parks() checked
        policy = self.policy_for(context, escalated, call)
        deadline = self.deadline_of(call, escalated)
        self.log.info(
            "Waiting for a decision on %s, parked (no worker or triggerer slot)%s.",
            call.call_id,
            f" until {deadline.isoformat()}" if deadline else "",
        )
        parked = {
            "call_id": call.call_id,
            "humanlayer_conn_id": self.humanlayer_conn_id,
            "policy": policy.to_json(),
            "escalated": escalated,
            "deadline": deadline.isoformat() if deadline else None,
            "finish": self.finish_in_place_spec(context),
        }
        raise awaiting(
            method_name="execute_complete",
            kwargs={PARKED_KWARG: parked},
            timeout=max(deadline - _now(), timedelta(seconds=1)) if deadline else None,
        )

    #: Methods whose override makes an approval need the operator: such a gate resumes on a worker.
    _SETTLING_METHODS = ("execute_complete", "settle", "result", "post_execute")

    def finish_in_place_spec(self, context: Context) -> FinishInPlace | None:
        """What the waiting path needs to end this gate in place on an approval, or ``None`` when
        the gate must resume on a worker for every decision.

        In place, Airflow marks the task successful and calls its success callbacks; the operator
        does not run again. So a gate ends in place only when that gives the same as resuming:
        the option is on (``finish_in_place``, ``[hlml] finish_in_place``), the gate has no
        ``outlets`` (asset events are the worker's to emit), no task is mapped over its result
        (the worker records the mapping's length with it), and its class settles outcomes with
        this class's own methods.
        """
        enabled = (
            self.finish_in_place if self.finish_in_place is not None else hlml_settings.finish_in_place()
        )
        if not enabled or self.outlets:
            return None
        if self.has_dag() and next(self.iter_mapped_dependants(), None) is not None:
            return None
        if any(
            getattr(type(self), name) is not getattr(HumanApprovalSensor, name)
            for name in self._SETTLING_METHODS
        ):
            return None
        return FinishInPlace(
            approval_url=approval_url(self.call_id_for(context)),
            xcom=bool(self.do_xcom_push),
            links=self.extra_link_xcoms(context),
        )

    def extra_link_xcoms(self, context: Context) -> dict[str, str]:
        """``xcom_key`` -> URL of this gate's operator extra links, as a worker pushes them when the
        task finishes (the UI reads the links from these XComs)."""
        ti_key = getattr(context["ti"], "key", None)
        links: dict[str, str] = {}
        if ti_key is None:
            return links
        for link in self.operator_extra_links:
            try:
                url = link.get_link(operator=self, ti_key=ti_key)
            except Exception:
                self.log.warning("Could not build the %r link", getattr(link, "name", link), exc_info=True)
                continue
            if url:
                links[link.xcom_key] = str(url)
        return links

    def poke(self, context: Context) -> bool | PokeReturnValue:
        call = self.ensure_request(context)
        event = self.check(call, context, self.already_escalated(call))
        if event is None:
            return False
        outcome = self.settle(context, event, call)
        if isinstance(outcome, _KeepWaiting):
            return False
        return PokeReturnValue(is_done=True, xcom_value=outcome)

    def defer_on(self, call: GateFunctionCall, context: Context, escalated: bool) -> None:
        """Hand the wait over to the triggerer."""
        policy = self.policy_for(context, escalated, call)
        deadline = self.deadline_of(call, escalated)
        timeout = None
        if deadline is not None:
            # Airflow's own bound is a safety net behind the trigger's deadline.
            grace = max(120.0, 3 * self.poll_interval + self.hook.settings.timeout + 30)
            timeout = max(deadline - _now(), timedelta(0)) + timedelta(seconds=grace)
        self.defer(
            trigger=_triggers().HumanApprovalTrigger(
                call_id=call.call_id,
                humanlayer_conn_id=self.humanlayer_conn_id,
                deadline=deadline.isoformat() if deadline else None,
                poll_interval=self.poll_interval,
                long_poll_seconds=hlml_settings.long_poll_seconds(),
                approvers=list(policy.allowed),
                requester=policy.requester,
                allow_self_approval=policy.allow_self_approval,
                policy=policy.to_json(),
                escalated=escalated,
                finish=self.finish_in_place_spec(context),
            ),
            method_name="execute_complete",
            timeout=timeout,
        )

    def execute_complete(
        self,
        context: Context,
        event: dict[str, Any] | str | None = None,
        hlml_gate: Mapping[str, Any] | None = None,
    ) -> Any:
        """Resume after the trigger fired, or the parked task was resumed: validate the event,
        then apply the outcome.

        :param event: the decision (or timeout) event.
        :param hlml_gate: what a parked gate kept (``None`` when it deferred).
        """
        call_id = self.call_id_for(context)
        call: GateFunctionCall | None = None
        parked = hlml_gate is not None
        if parked and isinstance(event, Mapping) and event.get("error_type") == "timeout":
            # The scheduler's sweep resumes a parked task at its deadline with a timeout error
            # (our gates have no native HITL row). A decision that landed just before still wins.
            call, event = self.settle_deadline(context, dict(hlml_gate or {}))
        if event == "success":
            # The trigger ended the task in place (an approval), but this runner resumes the task
            # with the task-end event instead (``dag.test()`` does): settle from the request.
            call = self.hook.get_function_call(call_id)
            event = self.check(call, context, self.already_escalated(call))
            if event is None or event.get("status") != "approved":
                raise AirflowException(
                    f"Approval gate {call_id}: the trigger ended the task, but the request "
                    "is not approved on the server"
                )
        if not isinstance(event, Mapping) or event.get("status") not in EVENT_STATUSES:
            raise AirflowException(f"Approval gate {call_id}: unexpected trigger event {event!r}")
        if event.get("call_id") != call_id:
            raise AirflowException(
                f"Approval gate {call_id}: the trigger event is for request {event.get('call_id')!r}"
            )
        # A decision event carries what the result needs: reading the request again here would
        # load the HumanLayer client on every resume (half a second of imports on a worker).
        needs_read = event["status"] == "timeout" or (
            event["status"] in ("approved", "rejected") and "context" not in event
        )
        if call is None and needs_read:
            from airflow_provider_hlml.hooks.humanlayer import HumanLayerError

            try:
                call = self.hook.get_function_call(call_id)
            except HumanLayerError as exc:
                self.log.warning("Could not re-read %s (%s); using the event alone.", call_id, exc)
        outcome = self.settle(context, dict(event), call)
        if isinstance(outcome, _KeepWaiting):
            if call is None:
                call = self.hook.get_function_call(call_id)
            # Escalated: wait again the same way, until the second deadline.
            self.wait_on(call, context, outcome.escalated, parked)
        return outcome

    def settle_deadline(
        self, context: Context, parked: Mapping[str, Any]
    ) -> tuple[GateFunctionCall | None, dict[str, Any]]:
        """The event of a parked gate whose deadline passed: its decision when one was accepted
        in time (or the request was cancelled), the timeout event otherwise."""
        from airflow_provider_hlml.hooks.humanlayer import HumanLayerError

        call_id = self.call_id_for(context)
        escalated = bool(parked.get("escalated"))
        call: GateFunctionCall | None = None
        try:
            call = self.hook.get_function_call(call_id)
        except HumanLayerError as exc:
            self.log.warning("Final read of %s at its deadline failed: %s", call_id, exc)
        if call is not None:
            event = self.check(call, context, escalated)
            if event is not None:
                return call, event
        requested = call.status.requested_at if call is not None and call.status else None
        return call, dict(
            ApprovalTimeoutEvent(
                status="timeout",
                call_id=call_id,
                deadline=str(parked.get("deadline") or ""),
                escalated=escalated,
                requested_at=requested.isoformat() if requested else None,
            )
        )

    def on_kill(self) -> None:
        """The task was stopped while checking: withdraw the pending request."""
        call_id = getattr(self, "_call_id", None)
        if not call_id:
            return
        from airflow_provider_hlml.hooks.humanlayer import HumanLayerError

        try:
            self.hook.cancel(call_id, reason="killed", comment="The Airflow task was stopped.")
        except HumanLayerError as exc:
            self.log.warning("Could not cancel %s: %s", call_id, exc)

    def pre_execute(self, context: Context) -> None:
        self._call_id = self.call_id_for(context)
        super().pre_execute(context)

    # -------------------------------------------------------------- outcomes
    def settle(self, context: Context, event: dict[str, Any], call: GateFunctionCall | None) -> Any:
        """Apply an event: return the XCom result, raise, skip, or escalate and keep waiting."""
        status = event["status"]
        call_id = event["call_id"]
        if status == "approved":
            self.log.info("Approved: %s", call_id)
        if status in ("approved", "rejected"):
            return self.result(context, event, call)
        if status == "timeout":
            return self.timed_out(context, event, call)
        if status == "cancelled":
            raise AirflowFailException(
                f"Approval request {call_id} was cancelled on the server (reason: {event.get('reason')})."
            )
        raise AirflowException(f"Approval request {call_id}: {event.get('message')}")

    def result(
        self,
        context: Context,
        event: Mapping[str, Any],
        call: GateFunctionCall | None,
        timed_out: bool = False,
    ) -> ApprovalResult:
        """The XCom result for a decision; a rejection then applies ``on_reject``.

        ``on_reject="fail"`` pushes the result (who rejected, the ``reject_option``, the comment)
        and fails the task without retry; ``"skip"`` skips the direct downstream tasks and returns
        the result.
        """
        sent_context = None
        if event.get("context") is None and (call is None or call.spec.kwargs.get("context") is None):
            sent_context = self.sent_context(context)
        result = approval_result(
            dict(event),
            call,
            approval_url=approval_url(event["call_id"]),
            timed_out=timed_out,
            sent_context=sent_context,
        )
        if event["approved"]:
            return result
        who = (event.get("responded_by_user") or {}).get("name") or "the on_timeout policy"
        reason = f" ({event['reject_option']})" if event.get("reject_option") else ""
        message = f"Approval request {event['call_id']} was rejected by {who}{reason}: {event.get('comment')}"
        self.notify_rejection(context, result)
        downstream = [t for t in context["task"].get_direct_relatives(upstream=False) if not t.is_teardown]
        if self.on_reject == "fail" or downstream:
            # Failing, and skip() (it raises DownstreamTasksSkipped), end the task: push the
            # result first, so the rejection and its reason stay readable in XCom.
            context["ti"].xcom_push(key="return_value", value=result)
        if self.on_reject == "fail":
            raise AirflowFailException(message)
        self.log.info("%s. Skipping the downstream tasks.", message)
        if downstream:
            self.skip(ti=context["ti"], tasks=downstream)
        return result

    def notify_rejection(self, context: Context, approval: Mapping[str, Any]) -> None:
        """Call the ``rejection_notifiers`` (a failing notifier is logged, never fatal)."""
        for notifier in self.rejection_notifiers:
            try:
                notifier({**context, "approval": dict(approval)})
            except Exception:
                self.log.exception("Rejection notifier %s failed", type(notifier).__name__)

    def timed_out(
        self, context: Context, event: Mapping[str, Any], call: GateFunctionCall | None
    ) -> ApprovalResult | _KeepWaiting:
        call_id = event["call_id"]
        by_policy = self.decide_by_policy(context, call, call_id, bool(event.get("escalated")))
        if isinstance(by_policy, _KeepWaiting):
            return by_policy
        if by_policy is not None:
            return self.settle(context, by_policy, None)
        policy = self.on_timeout
        if policy == "escalate" and not event.get("escalated"):
            self.escalate(call_id)
            return _KeepWaiting(escalated=True)
        decided = self.expire(call_id, context, bool(event.get("escalated")))
        if decided is not None:
            return self.settle(context, decided, call)
        when = f"by {event.get('deadline')}" if event.get("deadline") else "in time"
        if policy in ("fail", "escalate"):
            after = " after escalating" if event.get("escalated") else ""
            raise AirflowSensorTimeout(f"No decision on approval request {call_id} {when}{after}.")
        if policy == "skip":
            raise AirflowSkipException(f"No decision on approval request {call_id} {when}; skipping.")
        synthetic = ApprovalDecisionEvent(
            status="approved" if policy == "approve" else "rejected",
            call_id=call_id,
            approved=policy == "approve",
            comment=f"No decision {when}: {'approved' if policy == 'approve' else 'rejected'} by on_timeout.",
            reject_option=None,
            responded_by_user=None,
            responded_at=_now().isoformat(),
            requested_at=event.get("requested_at"),
        )
        self.log.warning(synthetic["comment"])
        return self.result(context, synthetic, call, timed_out=True)

    def escalate(self, call_id: str) -> None:
        """Send the request to the escalation approvers; their e-mails become approvers too."""
        from humanlayer.core.models import ContactChannel, EmailRecipient, Escalation

        # E-mail addresses, and groups (the approvals service makes their members approvers).
        recipients = [
            EmailRecipient(address=a) for a in _names(self.escalation_approvers) if "@" in a or is_group(a)
        ]
        escalation = Escalation(
            escalation_msg=self.escalation_message
            or f"No decision within {self.response_timeout_seconds:g}s: please decide on this request.",
            additional_recipients=recipients or None,
            channel=ContactChannel.model_validate(self.channel) if self.channel else None,
        )
        self.hook.escalate_email(call_id, escalation)
        self.log.warning(
            "No decision on %s in time: escalated to %s; waiting %ss more.",
            call_id,
            ", ".join(_names(self.escalation_approvers)) or "the channel",
            f"{self.escalation_timeout_seconds:g}",
        )

    def expire(self, call_id: str, context: Context, escalated: bool) -> dict[str, Any] | None:
        """Cancel the request as expired; if a decision beat us to it, return that decision instead."""
        from airflow_provider_hlml.hooks.humanlayer import HumanLayerError

        try:
            self.hook.cancel(call_id, reason="timeout", comment="No decision before the gate's deadline.")
            return None
        except HumanLayerError as exc:
            self.log.info("Could not expire %s (%s); reading it again.", call_id, exc)
        try:
            call = self.hook.get_function_call(call_id)
        except HumanLayerError:
            return None
        event, _ = settled_event(call, self.policy_for(context, escalated, call))
        return dict(event) if event is not None and event["status"] != "cancelled" else None


_FACTORIES = ("code_execution_approval", "content_approval", "workflow_approval")


def __getattr__(name: str) -> Any:
    """The gate factories live in :mod:`.factories`; they stay importable from here."""
    if name in _FACTORIES:
        from airflow_provider_hlml.sensors import factories

        return getattr(factories, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
