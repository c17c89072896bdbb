"""Turning raw approvals, runs and MLflow data into what the pages and JSON endpoints show."""

from __future__ import annotations

import datetime as dt
import json
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from airflow_provider_hlml.gate.policy import Answer, ApprovalPolicy, is_group
from airflow_provider_hlml.gate.state import GateLocation, GateState, is_policy_principal
from airflow_provider_hlml.plugins.auth import Identity
from airflow_provider_hlml.review.card import Card, MetricRow, status_of

DECIDED_STATUSES = ("approved", "rejected", "expired", "cancelled")
ALL_STATUSES = ("pending", *DECIDED_STATUSES)
#: How a model decision was made: by a decision policy (approved or rejected as its principal,
#: ``policy:<name>-v<version>``) or by a person the gate asked (a human intervention).
DECISION_SOURCES = ("auto_approved", "auto_rejected", "human")
#: The approval type of a model decision (a gate may also be decided by a policy whatever its type).
MODEL_PROMOTION = "model_promotion"


def parse_time(value: Any) -> dt.datetime | None:
    if not value or not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def call_status(status: dict[str, Any] | None) -> str:
    """pending / approved / rejected / cancelled / expired of a HumanLayer function call status
    (the reviewer's card's rule, :func:`~airflow_provider_hlml.review.card.status_of`)."""
    return status_of(status)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def call_answers(status: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The answers of a request (``status.answers``), each with the ``label`` it is shown by.

    A backend that does not report answers (the HumanLayer cloud, a request decided before the
    service kept them) has one: the decision ``status.user_info`` reports.
    """
    raw = status.get("answers")
    entries = [a for a in raw if isinstance(a, dict)] if isinstance(raw, list) else []
    if not entries and kind in ("approved", "rejected") and isinstance(status.get("user_info"), dict):
        entries = [{**status["user_info"], "approved": kind == "approved", "comment": status.get("comment")}]
    answers = []
    for entry in entries:
        parsed = Answer.from_json(entry)
        if parsed is None:
            continue
        answers.append(
            {
                "name": _text(entry.get("name")),
                "email": _text(entry.get("email")),
                "principal": _text(entry.get("principal")),
                "via_delegate": entry.get("via_delegate") is True,
                "approved": parsed.approved,
                "comment": parsed.comment,
                "at": parsed.at,
                "rule": _text(entry.get("rule")),
                "label": parsed.who.label,
            }
        )
    return answers


def decided_by_policy(user_info: Mapping[str, Any] | None) -> bool:
    """Whether the decision ``status.user_info`` reports was made by a decision policy: its
    principal (or name) is a policy principal, ``policy:<name>-v<version>``, not a person."""
    if not isinstance(user_info, Mapping):
        return False
    return is_policy_principal(user_info.get("principal")) or is_policy_principal(user_info.get("name"))


def decision_source(item: Mapping[str, Any]) -> str | None:
    """How a normalized request was decided, as a model decision: ``auto_approved`` /
    ``auto_rejected`` (by a decision policy), ``human`` (by a person the gate asked), or None when
    it is no decided model decision (pending, expired, cancelled, or a gate of another type that
    no policy decided)."""
    if item.get("status") not in ("approved", "rejected"):
        return None
    if item.get("decided_by_policy"):
        return "auto_approved" if item["status"] == "approved" else "auto_rejected"
    return "human" if item.get("approval_type") == MODEL_PROMOTION else None


def item_policy(item: dict[str, Any]) -> ApprovalPolicy:
    """The approval policy of a normalized request: its gate's rules and separation of duties,
    the approvers an escalation added and the groups as the service resolved them."""
    members = item.get("members")
    return ApprovalPolicy.from_state(
        item.get("policy_state"),
        item.get("extra_approvers") or (),
        members if isinstance(members, dict) else None,
    )


def item_answers(item: dict[str, Any]) -> list[Answer]:
    """The answers of a normalized request, as the policy reads them."""
    return [a for a in (Answer.from_json(raw) for raw in item.get("answers") or ()) if a is not None]


def _eligible(policy: ApprovalPolicy, approvers: Iterable[str]) -> list[str]:
    """A rule's approvers as reviewers read them: a group with the members it resolved to."""
    shown = []
    for entry in approvers:
        people = policy.members.get(entry.strip().casefold()) if is_group(entry) else None
        shown.append(f"{entry} ({', '.join(people)})" if people else entry)
    return shown


def rule_progress(policy: ApprovalPolicy, answers: list[Answer]) -> tuple[list[dict[str, Any]], str]:
    """Each rule's progress (its JSON with ``count``, ``summary`` and ``eligible``, the approvers
    with their groups' members) and the one-line summary ``"ML lead 1 of 2: alice; ..."``."""
    tally = policy.tally(answers)
    rules = [
        {
            **p.to_json(),
            "count": p.count,
            "summary": p.summary,
            "eligible": _eligible(policy, p.rule.approvers),
        }
        for p in tally.rules
    ]
    return rules, tally.summary


def progress_text(rules: list[dict[str, Any]]) -> str:
    """Each rule's count without the names: ``"ML lead 1 of 2; Compliance 0 of 1"``."""
    return "; ".join(f"{r['name']} {r['count']} of {r['required']}" for r in rules)


def recorded_message(item: dict[str, Any], *, approved: bool) -> str:
    """What a reviewer is told after an answer that leaves the request pending."""
    what = "approval" if approved else "rejection (it does not veto this request)"
    return f"Your {what} was recorded: {progress_text(item['rules'])}"


def normalize_call(call: dict[str, Any], *, airflow_base_path: str) -> dict[str, Any]:
    """A flat view of one function call, with the gate's policy and its Airflow task."""
    spec = call.get("spec") or {}
    status = call.get("status") or {}
    kwargs = spec.get("kwargs") or {}
    gate = GateState.from_state(spec.get("state"))
    airflow = gate.airflow or GateLocation()
    requested = parse_time(status.get("requested_at"))
    responded = parse_time(status.get("responded_at")) or parse_time(status.get("cancelled_at"))
    kind = call_status(status)
    raw_user = status.get("user_info")
    user_info: dict[str, Any] = raw_user if isinstance(raw_user, dict) else {}
    reject_options = [
        {"name": o.get("name"), "title": o.get("title") or o.get("name"), "description": o.get("description")}
        for o in spec.get("reject_options") or []
        if isinstance(o, dict) and o.get("name")
    ]
    extra = status.get("extra_approvers")
    extra_approvers = [a for a in extra if isinstance(a, str)] if isinstance(extra, list) else []
    raw_members = status.get("members")
    members = (
        {str(k): [m for m in v if isinstance(m, str)] for k, v in raw_members.items() if isinstance(v, list)}
        if isinstance(raw_members, dict)
        else {}
    )
    answers = call_answers(status, kind)
    chosen = status.get("reject_option_name") if isinstance(status.get("reject_option_name"), str) else None
    titles = {o["name"]: str(o["title"]) for o in reject_options if isinstance(o["name"], str)}
    item: dict[str, Any] = {
        "call_id": call.get("call_id"),
        "run_id": call.get("run_id"),
        "fn": spec.get("fn"),
        "approval_type": kwargs.get("approval_type") or spec.get("fn"),
        "subject": kwargs.get("subject") or spec.get("fn"),
        "body": kwargs.get("body") or "",
        "urgency": kwargs.get("urgency") or "medium",
        "options": kwargs.get("options") or [],
        "context": kwargs.get("context") if isinstance(kwargs.get("context"), dict) else {},
        "reject_options": reject_options,
        "status": kind,
        "requested_at": requested.isoformat() if requested else None,
        "responded_at": responded.isoformat() if responded and kind != "pending" else None,
        "response_seconds": (responded - requested).total_seconds()
        if requested and responded and kind != "pending"
        else None,
        "comment": status.get("comment"),
        "reject_option_name": chosen,
        # The chosen reject reason as reviewers read it (its title among the request's options).
        "reject_option_title": (titles.get(chosen) or chosen) if chosen else None,
        "cancel_reason": status.get("cancel_reason"),
        "responded_by": user_info.get("name") or user_info.get("email") or user_info.get("principal"),
        "responded_by_email": user_info.get("email"),
        # Whether a decision policy made the decision (its principal answered, not a person).
        "decided_by_policy": kind in ("approved", "rejected") and decided_by_policy(user_info),
        "approvers": list(gate.approvers),
        # Approvers an escalation added (the service reports them; they extend the approvers).
        "extra_approvers": extra_approvers,
        "requester": gate.requester,
        "allow_self_approval": gate.allow_self_approval,
        # The policy as the gate wrote it and the groups as the service resolved them: what
        # item_policy() reads, so every check of this item uses the one ApprovalPolicy path.
        "policy_state": spec.get("state"),
        "members": members,
        # Who answered so far (each rule's progress is added below, from these answers).
        "answers": answers,
        "approved_by": [a["label"] for a in answers if a["approved"]],
        "dag_id": airflow.dag_id,
        "dag_run_id": airflow.run_id,
        "task_id": airflow.task_id,
        "try_number": airflow.try_number,
        # The request's own ``ti_url`` is whatever its creator wrote: the link is built from ids.
        "ti_url": task_instance_path(
            airflow_base_path, airflow.dag_id, airflow.run_id, airflow.task_id, airflow.map_index
        ),
    }
    policy = item_policy(item)
    item["rules"], item["progress"] = rule_progress(policy, item_answers(item))
    # Whether the gate declared rules (a plain approver list is one "one of these" rule).
    item["has_rules"] = bool(policy.rules)
    # The wire body, for the reviewer's card (built with links for the items a page shows).
    item["call"] = call
    return item


def format_delta(row: MetricRow) -> dict[str, str]:
    """A metric's difference column: ``{"text": "+0.012 (+1.4%)", "cls": "delta better"}``.

    The class says whether the candidate is better than the champion in the metric's direction
    (``better``, ``worse``, ``same``); without a champion value the text is ``-``.
    """
    if row.delta is None:
        return {"text": "-", "cls": "delta none"}
    text = f"{row.delta:+.4g}"
    if row.delta_relative is not None:
        text += f" ({row.delta_relative:+.1%})"
    verdict = "same" if row.better is None else ("better" if row.better else "worse")
    return {"text": text, "cls": f"delta {verdict}"}


def metric_json(row: MetricRow) -> dict[str, Any]:
    """One row of a card's metric table as the JSON API returns it."""
    return {
        "name": row.name,
        "candidate": row.candidate,
        "champion": row.champion,
        "delta": row.delta,
        "delta_relative": row.delta_relative,
        "delta_text": format_delta(row)["text"],
        "better": row.better,
        "greater_is_better": row.greater_is_better,
        "direction": row.direction,
        "rule": row.rule,
        "passed": row.passed,
        "reason": row.reason,
    }


def attach_card(item: dict[str, Any], card: Card) -> dict[str, Any]:
    """``item`` with its reviewer's card (``item["card"]``, what the page renders) and the card's
    parts the JSON API returns: the rendered body, the model, the metric rows and the links."""
    item["card"] = card
    item["body_html"] = card.body_html
    item["model"] = dict(card.model)
    item["metrics"] = [metric_json(r) for r in card.metrics]
    item["has_report"] = card.has_report
    item["no_champion"] = card.no_champion
    item["links"] = [{"label": lk.label, "url": lk.url, "kind": lk.kind} for lk in card.links]
    item["policy_note"] = card.policy_note
    if card.decision and card.decision.get("reject_option_title"):
        item["reject_option_title"] = card.decision["reject_option_title"]
    return item


def task_instance_path(
    base_path: str, dag_id: str | None, run_id: str | None, task_id: str | None, map_index: Any
) -> str | None:
    """The Airflow UI path of a gate's task instance, from its ids; None without all three ids."""
    from airflow_provider_hlml.plugins.airflow_data import ui_path

    if not (dag_id and run_id and task_id):
        return None
    index = map_index if isinstance(map_index, int) and not isinstance(map_index, bool) else None
    return ui_path(base_path, dag_id, run_id, task_id, index)


def decision_block_reason(item: dict[str, Any], identity: Identity, *, may_edit_dag: bool) -> str | None:
    """Why this user may not decide this request, or None when they may."""
    if item["status"] != "pending":
        return f"Already {item['status']}"
    if not may_edit_dag:
        target = f"DAG {item['dag_id']}" if item["dag_id"] else "all DAGs"
        return f"You need edit access to {target} to decide"
    return item_policy(item).block_reason(identity.responder, item_answers(item))


def approval_figures(items: list[dict[str, Any]], metrics: dict[str, Any] | None) -> dict[str, Any]:
    """Approval key figures: from the service's metrics when offered, else from the listed calls.

    Also the decided model decisions by how they were made (``auto_approved``, ``auto_rejected``,
    ``human_decided``, ``model_decisions``) and the ``human_intervention_rate``: the share of them
    a person decided after the gate asked (None when none was decided).
    """
    decided = [i for i in items if i["status"] in DECIDED_STATUSES]
    counts = Counter(i["status"] for i in items)
    response = [i["response_seconds"] for i in decided if i["status"] in ("approved", "rejected")]
    answered = counts["approved"] + counts["rejected"]
    computed = {
        "pending": counts["pending"],
        "total": len(items),
        "approved": counts["approved"],
        "rejected": counts["rejected"],
        "cancelled": counts["cancelled"],
        "expired": counts["expired"],
        "approval_rate": counts["approved"] / answered if answered else None,
        "median_response_seconds": statistics.median(response) if response else None,
        "timeout_rate": counts["expired"] / len(decided) if decided else None,
    }
    # Model decisions by how they were made: a decision policy, or a person the gate asked.
    sources = model_decision_counts(items)
    computed.update(
        {
            "auto_approved": sources["auto_approved"],
            "auto_rejected": sources["auto_rejected"],
            "human_decided": sources["human"],
            "model_decisions": sum(sources.values()),
            "human_intervention_rate": _human_share(sources),
        }
    )
    if metrics:
        for key in ("approval_rate", "median_response_seconds", "timeout_rate", "p95_response_seconds"):
            if key in metrics:
                computed[key] = metrics[key]
    return computed


def recent_activity(
    items: list[dict[str, Any]], runs: list[dict[str, Any]], *, limit: int = 15
) -> list[dict[str, Any]]:
    """Newest approvals events and DAG-run ends, merged."""
    events: list[dict[str, Any]] = []
    for item in items:
        if item["requested_at"]:
            events.append(
                {
                    "at": item["requested_at"],
                    "kind": "approval_requested",
                    "text": f"Approval requested: {item['subject']}",
                    "url": item["ti_url"],
                    "status": "requested",
                }
            )
        # Answers that did not decide the request (a partial approval toward its rules): the
        # deciding one of an approved or rejected request is the last, and shows as the decision.
        answers = item.get("answers") or []
        undeciding = answers[:-1] if item["status"] in ("approved", "rejected") else answers
        for answer in undeciding:
            if answer.get("at"):
                verb = "Approval" if answer["approved"] else "Rejection"
                toward = f" ({answer['rule']})" if answer.get("rule") else ""
                events.append(
                    {
                        "at": answer["at"],
                        "kind": "approval_answered",
                        "text": f"{verb} recorded by {answer['label']}{toward}: {item['subject']}",
                        "url": item["ti_url"],
                        "status": "answered",
                    }
                )
        if item["responded_at"]:
            who = f" by {item['responded_by']}" if item["responded_by"] else ""
            reason = f" ({item['reject_option_title']})" if item.get("reject_option_title") else ""
            events.append(
                {
                    "at": item["responded_at"],
                    "kind": f"approval_{item['status']}",
                    "text": f"{item['status'].capitalize()}{who}{reason}: {item['subject']}",
                    "url": item["ti_url"],
                    "status": item["status"],
                }
            )
    for run in runs:
        at = run["end_date"] or run["start_date"] or run["run_after"]
        if at:
            events.append(
                {
                    "at": at,
                    "kind": "dag_run",
                    "text": f"DAG run {run['dag_id']} / {run['run_id']}: {run['state']}",
                    "url": run["url"],
                    "status": run["state"],
                }
            )
    events.sort(key=lambda e: parse_time(e["at"]) or dt.datetime.min.replace(tzinfo=dt.timezone.utc))
    return list(reversed(events))[:limit]


def production_models(models: list[dict[str, Any]]) -> int:
    """Registered models with a serving alias (``champion`` or ``production``)."""
    return sum(1 for m in models if {"champion", "production"} & set(m.get("aliases", {})))


def _day_window(days: int, today: dt.date | None) -> tuple[list[str], dict[str, int]]:
    """The ISO dates of the ``days`` UTC days ending ``today`` (default: now), oldest first, and
    each date's position."""
    today = today or dt.datetime.now(dt.timezone.utc).date()
    labels = [(today - dt.timedelta(days=days - 1 - i)).isoformat() for i in range(days)]
    return labels, {label: i for i, label in enumerate(labels)}


def _response_day(item: Mapping[str, Any], index: Mapping[str, int]) -> int | None:
    """The position of the UTC day ``item`` was decided on in a window, None outside it."""
    when = parse_time(item.get("responded_at"))
    return index.get(when.date().isoformat()) if when else None


def daily_decision_counts(
    items: list[dict[str, Any]], *, days: int = 14, today: dt.date | None = None
) -> tuple[list[str], dict[str, list[float]]]:
    """Decisions per status and UTC day of response over the ``days`` days ending ``today``."""
    labels, index = _day_window(days, today)
    stacks: dict[str, list[float]] = {s: [0.0] * days for s in DECIDED_STATUSES}
    for item in items:
        day = _response_day(item, index)
        if item["status"] in stacks and day is not None:
            stacks[item["status"]][day] += 1
    return [label[5:] for label in labels], stacks


def _human_share(counts: Mapping[str, float]) -> float | None:
    """Human-decided / all decided model decisions; None when none was decided."""
    decided = sum(counts.get(source, 0) for source in DECISION_SOURCES)
    return counts.get("human", 0) / decided if decided else None


def model_decision_counts(items: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Decided model decisions by how they were made (:func:`decision_source`)."""
    counts = Counter(decision_source(item) for item in items)
    return {source: counts[source] for source in DECISION_SOURCES}


def daily_model_decisions(
    items: list[dict[str, Any]], *, days: int = 14, today: dt.date | None = None
) -> dict[str, Any]:
    """Model decisions per UTC day of response over the ``days`` days ending ``today`` (the window
    of :func:`daily_decision_counts`), by how they were made, and the human-intervention rate
    (human-decided / all decided) per day and over the window.

    :return: ``{"labels", "series": {"auto_approved", "auto_rejected", "human"} (counts per day),
        "human_rate" (per day, None on a day without decisions), "totals" (over the window),
        "human_intervention_rate" (over the window), "days"}``.
    """
    labels, index = _day_window(days, today)
    series: dict[str, list[float]] = {source: [0.0] * days for source in DECISION_SOURCES}
    for item in items:
        source = decision_source(item)
        day = _response_day(item, index) if source else None
        if source and day is not None:
            series[source][day] += 1
    totals = {source: int(sum(counts)) for source, counts in series.items()}
    return {
        "labels": [label[5:] for label in labels],
        "series": series,
        "human_rate": [_human_share({s: series[s][i] for s in DECISION_SOURCES}) for i in range(days)],
        "totals": totals,
        "human_intervention_rate": _human_share(totals),
        "days": days,
    }


def response_time_series(
    items: list[dict[str, Any]], *, limit: int = 30
) -> tuple[list[str], list[float | None]]:
    answered = [
        i for i in items if i["response_seconds"] is not None and i["status"] in ("approved", "rejected")
    ]
    answered.sort(key=lambda i: i["responded_at"] or "")
    answered = answered[-limit:]
    return (
        [(i["responded_at"] or "")[5:16].replace("T", " ") for i in answered],
        [round(i["response_seconds"] / 60.0, 2) for i in answered],
    )


def pipeline_duration_series(
    runs: list[dict[str, Any]], *, limit: int = 30
) -> tuple[list[str], dict[str, list[float | None]]]:
    finished = [r for r in runs if r["duration_seconds"] is not None][:limit]
    finished.reverse()
    labels = [(r["start_date"] or "")[5:16].replace("T", " ") for r in finished]
    series: dict[str, list[float | None]] = {}
    for idx, run in enumerate(finished):
        series.setdefault(run["dag_id"], [None] * len(finished))[idx] = round(
            run["duration_seconds"] / 60.0, 2
        )
    return labels, series


def model_metric_series(
    model: dict[str, Any], *, max_metrics: int = 4
) -> tuple[list[str], dict[str, list[float | None]]]:
    versions = sorted(model.get("versions", []), key=lambda v: int(v["version"]))
    names: list[str] = []
    for v in versions:
        for key in v.get("metrics", {}):
            if key not in names:
                names.append(key)
    names = names[:max_metrics]
    return (
        [f"v{v['version']}" for v in versions],
        {n: [v.get("metrics", {}).get(n) for v in versions] for n in names},
    )


#: What the dashboard shows for a protected alias (the guard's verdicts, and ``unchecked`` when
#: neither the attestation could be verified here nor the guard has seen the current holder).
GUARD_STATUSES = ("verified", "unverified", "reverted", "unchecked")


def guarded_aliases(
    models: list[dict[str, Any]], protected: Mapping[str, Sequence[str]], keys: Any | None = None
) -> list[dict[str, Any]]:
    """One row per protected alias that is set: who holds it, whether it is verified, unverified
    or reverted, and the evidence (approvers, call id, key id, reason).

    With ``keys`` (the approvals service's :class:`~airflow_provider_hlml.gate.attestation.KeySet`)
    the holder's attestation is verified here; the guard's last finding (the ``hlml.guard.<alias>``
    tag) adds whether it was a revert, and stands in when there are no keys to verify with.
    """
    from airflow_provider_hlml import audit, settings
    from airflow_provider_hlml.gate.attestation import AttestationError, check_names_model, verify_envelope

    table = {k: tuple(v) for k, v in protected.items()}
    rows = []
    for model in models:
        name = str(model.get("name"))
        aliases = model.get("aliases") or {}
        for alias in settings.protected_aliases_of(name, table):
            holder = aliases.get(alias)
            if holder is None:
                continue
            holder = str(holder)
            version = next((v for v in model.get("versions", []) if str(v.get("version")) == holder), None)
            tags = (version or {}).get("tags") or {}
            raw_state = (model.get("tags") or {}).get(audit.guard_state_tag(alias))
            try:
                state = json.loads(raw_state) if raw_state else None
            except ValueError:
                state = None
            state = state if isinstance(state, dict) else None
            row: dict[str, Any] = {
                "model": name,
                "alias": alias,
                "version": holder,
                "url": (version or {}).get("url") or model.get("url"),
                "status": "unchecked",
                "reason": "the guard has not checked this version yet",
                "approvers": [],
                "call_id": None,
                "key_id": None,
                "reverted_from": None,
                "checked_at": None,
                "source": None,
            }
            live: tuple[bool, str, Any] | None = None
            if keys is not None and version is not None:
                envelope = tags.get(audit.ATTESTATION)
                if not envelope:
                    live = (False, f"{name} v{holder} carries no approval attestation", None)
                else:
                    try:
                        statement = verify_envelope(envelope, keys)
                        check_names_model(
                            statement,
                            name=name,
                            version=holder,
                            run_id=version.get("run_id"),
                            source=version.get("source"),
                        )
                    except AttestationError as exc:
                        live = (False, f"{name} v{holder}: {exc}", None)
                    else:
                        live = (
                            True,
                            f"approved by {', '.join(statement.approvers) or 'nobody named'}",
                            statement,
                        )
            if state is not None:
                about = (
                    state.get("reverted_to") if state.get("verdict") == "reverted" else state.get("version")
                )
                if str(about) == holder:
                    row.update(
                        status=state.get("verdict")
                        if state.get("verdict") in GUARD_STATUSES
                        else "unchecked",
                        reason=state.get("reason"),
                        approvers=list(state.get("approvers") or []),
                        call_id=state.get("call_id"),
                        key_id=state.get("key_id"),
                        reverted_from=state.get("reverted_from"),
                        checked_at=state.get("at"),
                        source=state.get("source"),
                    )
            if live is not None:
                ok, reason, statement = live
                if not ok:
                    row.update(status="unverified", reason=reason, approvers=[], call_id=None, key_id=None)
                else:
                    if row["status"] != "reverted":
                        row.update(status="verified", reason=reason)
                    row.update(
                        approvers=statement.approvers, call_id=statement.call_id, key_id=statement.key_id
                    )
            rows.append(row)
    return rows
