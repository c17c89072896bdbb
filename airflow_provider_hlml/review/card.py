"""The reviewer's card: everything needed to decide on one request, built once, for every channel.

:func:`build_card` turns a function call as the approvals service (or the HumanLayer cloud)
returns it into a :class:`Card`: the subject, the Markdown body rendered and sanitised, the model
the request is about with links into MLflow and Airflow, the metrics as candidate / champion /
difference ("no champion yet" when there is none), the rules and their progress, the reject
reasons, and the decision once there is one. The dashboard lays the card out as HTML; an e-mail or
a Slack message lays out the same card, so the channels cannot drift apart, and every link on it
has passed :func:`.links.safe_link`.

Links come from a :class:`LinkMaker` that the channel supplies (the dashboard's knows the MLflow UI
and the Airflow UI); Airflow links are built from the ids the gate recorded, never from a URL in
the request. Nothing here imports Airflow.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from airflow_provider_hlml.gate.policy import Answer, ApprovalPolicy
from airflow_provider_hlml.gate.state import GateLocation, GateState
from airflow_provider_hlml.review.links import safe_link
from airflow_provider_hlml.review.markdown import render_markdown

__all__ = ["Card", "CardLink", "LinkMaker", "MetricRow", "RejectOption", "build_card", "status_of"]


class LinkMaker(Protocol):
    """Where a channel's links point; each method returns None when it cannot link."""

    def mlflow_run(self, run_id: str) -> str | None: ...

    def mlflow_model_version(self, name: str, version: str) -> str | None: ...

    def mlflow_compare_runs(self, run_ids: Sequence[str]) -> str | None: ...

    def airflow_task(self, location: GateLocation) -> str | None: ...

    def airflow_dag_run(self, location: GateLocation) -> str | None: ...


@dataclass(frozen=True)
class CardLink:
    """A labelled link; ``url`` is None when it cannot be a link (then the label is shown as text)."""

    label: str
    url: str | None
    kind: str = ""

    @classmethod
    def of(cls, label: str, url: str | None, kind: str = "") -> CardLink:
        return cls(label=label, url=safe_link(url), kind=kind)


@dataclass(frozen=True)
class MetricRow:
    """One metric as a reviewer compares it.

    :param delta: candidate minus champion (None without a champion value).
    :param delta_relative: ``delta`` over the champion's magnitude (None when it is 0 or missing).
    :param better: whether the candidate is better than the champion, in the metric's direction
        (``greater_is_better``); None without a champion or when they are equal.
    """

    name: str
    candidate: float | None
    champion: float | None
    rule: str
    passed: bool | None
    reason: str | None
    delta: float | None
    delta_relative: float | None
    better: bool | None
    greater_is_better: bool = True

    @property
    def direction(self) -> str:
        return "higher is better" if self.greater_is_better else "lower is better"


@dataclass(frozen=True)
class RejectOption:
    name: str
    title: str
    description: str | None = None


@dataclass(frozen=True)
class Card:
    """What a reviewer sees of one request, on any channel."""

    call_id: str
    subject: str
    body_markdown: str
    body_html: str
    approval_type: str
    urgency: str
    status: str
    model: Mapping[str, Any]
    metrics: tuple[MetricRow, ...]
    has_report: bool
    no_champion: bool
    links: tuple[CardLink, ...]
    context: Mapping[str, Any]
    reject_options: tuple[RejectOption, ...]
    progress: str
    decision: Mapping[str, Any] | None = None
    location: GateLocation = field(default_factory=GateLocation)
    #: What the request's decision policy does (it would decide, unless a person answers by a
    #: time), or why a person decides although it decided; None when no policy is involved.
    policy_note: str | None = None

    def link(self, kind: str) -> CardLink | None:
        """The first link of ``kind`` (``mlflow_run``, ``model_version``, ``champion_version``,
        ``compare``, ``validation_run``, ``airflow_task``, ``airflow_dag_run``)."""
        return next((lk for lk in self.links if lk.kind == kind), None)


#: Context keys the card shows as the model summary and the metric table, not as plain context.
MODEL_KEYS = ("model_name", "model_version", "mlflow_run_id", "model_uri", "validation_run_id")
REPORT_KEYS = ("metrics", "passed", "champion_version")


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value) if math.isfinite(value) else None
    except OverflowError:
        return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else (str(value) if isinstance(value, int) else None)


def _rule_text(threshold: Any) -> str:
    """A metric's rule in words: ``>= 0.85``, ``+0.01 over champion``, ..."""
    if not isinstance(threshold, Mapping):
        return ""
    up = threshold.get("greater_is_better", True) is not False
    parts = []
    value = _number(threshold.get("threshold"))
    if value is not None:
        parts.append(f"{'>=' if up else '<='} {value:g}")
    absolute = _number(threshold.get("min_absolute_change"))
    if absolute is not None:
        parts.append(f"{'+' if up else '-'}{absolute:g} vs champion")
    relative = _number(threshold.get("min_relative_change"))
    if relative is not None:
        parts.append(f"{'+' if up else '-'}{relative:.0%} vs champion")
    return ", ".join(parts)


def metric_rows(metrics: Any) -> tuple[MetricRow, ...]:
    """The rows of a validation report's ``metrics`` (metric -> MetricCheck), or of plain
    ``{name: value}`` metrics (a training result: no champion, no rule)."""
    if not isinstance(metrics, Mapping):
        return ()
    rows = []
    for name, check in metrics.items():
        if isinstance(check, Mapping):
            threshold = check.get("threshold")
            up = not (isinstance(threshold, Mapping) and threshold.get("greater_is_better") is False)
            candidate, champion = _number(check.get("candidate")), _number(check.get("champion"))
            passed = check.get("passed") if isinstance(check.get("passed"), bool) else None
            reason, rule = _text(check.get("reason")), _rule_text(threshold)
        else:
            up, candidate, champion, passed, reason, rule = True, _number(check), None, None, None, ""
        delta = candidate - champion if candidate is not None and champion is not None else None
        relative = delta / abs(champion) if delta is not None and champion else None
        better = None if delta is None or delta == 0 else (delta > 0) == up
        rows.append(
            MetricRow(str(name), candidate, champion, rule, passed, reason, delta, relative, better, up)
        )
    return tuple(rows)


def status_of(status: Mapping[str, Any] | None) -> str:
    """``pending``, ``approved``, ``rejected``, ``expired`` or ``cancelled`` of a function call's status."""
    status = status or {}
    if status.get("approved") is True:
        return "approved"
    if status.get("approved") is False:
        return "rejected"
    if status.get("cancelled_at") or status.get("cancel_reason"):
        return "expired" if status.get("cancel_reason") == "timeout" else "cancelled"
    return "pending"


def _links(
    model: Mapping[str, Any], champion_run: str | None, location: GateLocation, maker: LinkMaker | None
) -> tuple[CardLink, ...]:
    if maker is None:
        return ()
    links: list[CardLink] = []
    name, version, run_id = model.get("model_name"), model.get("model_version"), model.get("mlflow_run_id")
    if run_id:
        links.append(CardLink.of("MLflow run", maker.mlflow_run(run_id), "mlflow_run"))
    if name and version:
        links.append(
            CardLink.of(f"{name} v{version}", maker.mlflow_model_version(name, version), "model_version")
        )
    champion = model.get("champion_version")
    if name and champion:
        links.append(
            CardLink.of(
                f"champion v{champion}", maker.mlflow_model_version(name, champion), "champion_version"
            )
        )
    if run_id and champion_run and champion_run != run_id:
        links.append(
            CardLink.of(
                "compare with the champion", maker.mlflow_compare_runs([run_id, champion_run]), "compare"
            )
        )
    if model.get("validation_run_id"):
        links.append(
            CardLink.of("validation run", maker.mlflow_run(model["validation_run_id"]), "validation_run")
        )
    if location.complete:
        links.append(
            CardLink.of(
                f"{location.dag_id} / {location.task_id}", maker.airflow_task(location), "airflow_task"
            )
        )
        links.append(CardLink.of("DAG run", maker.airflow_dag_run(location), "airflow_dag_run"))
    return tuple(links)


def policy_note(gate: GateState, status: Mapping[str, Any], state: str) -> str | None:
    """The card's line about the request's decision policy (see :attr:`Card.policy_note`)."""
    auto = gate.auto
    if auto is not None and state == "pending" and not status.get("answers"):
        verb = "approve" if auto.approves else "reject"
        when = ""
        requested = _text(status.get("requested_at"))
        if requested:
            try:
                start = dt.datetime.fromisoformat(requested)
            except ValueError:
                start = None
            if start is not None:
                end = start + dt.timedelta(seconds=auto.override_seconds)
                when = f" at {end.isoformat(timespec='seconds')}"
        return (
            f"{auto.principal} would {verb} this request: {auto.reason}. It decides{when} "
            "unless a person answers first."
        )
    if gate.auto_declined and state == "pending":
        return gate.auto_declined
    return None


def build_card(
    call: Mapping[str, Any], links: LinkMaker | None = None, *, champion_run_id: str | None = None
) -> Card:
    """The card of ``call`` (a function call as the server returns it).

    :param call: the wire body: ``call_id``, ``spec`` and ``status``.
    :param links: the channel's links; None: a card without links.
    :param champion_run_id: the MLflow run of the champion version, when the channel looked it up
        (for the comparison link).
    """
    spec = _mapping(call.get("spec"))
    status = _mapping(call.get("status"))
    kwargs = _mapping(spec.get("kwargs"))
    context = _mapping(kwargs.get("context"))
    gate = GateState.from_state(spec.get("state"))
    location = gate.airflow or GateLocation()
    model = {k: _text(context.get(k)) for k in (*MODEL_KEYS, "champion_version")}
    model = {k: v for k, v in model.items() if v is not None}
    metrics = metric_rows(context.get("metrics"))
    has_report = isinstance(context.get("passed"), bool) and "champion_version" in context
    reject_options = tuple(
        RejectOption(str(o["name"]), str(o.get("title") or o["name"]), _text(o.get("description")))
        for o in spec.get("reject_options") or []
        if isinstance(o, Mapping) and isinstance(o.get("name"), str) and o["name"]
    )
    state = status_of(status)
    answers = [a for a in (Answer.from_json(r) for r in status.get("answers") or []) if a is not None]
    members = status.get("members") if isinstance(status.get("members"), Mapping) else None
    progress = (
        ApprovalPolicy.of_gate(gate, status.get("extra_approvers") or (), members).tally(answers).summary
    )
    decision = None
    if state != "pending":
        user = _mapping(status.get("user_info"))
        chosen = _text(status.get("reject_option_name"))
        titles = {o.name: o.title for o in reject_options}
        decision = {
            "status": state,
            "by": _text(user.get("name")) or _text(user.get("email")),
            "at": _text(status.get("responded_at")) or _text(status.get("cancelled_at")),
            "comment": _text(status.get("comment")),
            "reject_option": chosen,
            "reject_option_title": titles.get(chosen, chosen) if chosen else None,
        }
    body = str(kwargs.get("body")) if isinstance(kwargs.get("body"), str) else ""
    return Card(
        policy_note=policy_note(gate, status, state),
        call_id=str(call.get("call_id") or ""),
        subject=_text(kwargs.get("subject")) or _text(spec.get("fn")) or "",
        body_markdown=body,
        body_html=render_markdown(body),
        approval_type=_text(kwargs.get("approval_type")) or _text(spec.get("fn")) or "",
        urgency=_text(kwargs.get("urgency")) or "medium",
        status=state,
        model=model,
        metrics=metrics,
        has_report=has_report,
        no_champion=has_report and not context.get("champion_version"),
        links=_links(model, champion_run_id, location, links),
        context={k: v for k, v in context.items() if k not in MODEL_KEYS and k not in REPORT_KEYS},
        reject_options=reject_options,
        progress=progress,
        decision=decision,
        location=location,
    )
