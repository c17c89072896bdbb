"""After a drift check: ask a person, then do what they chose. Drift itself never moves an alias.

:func:`drift_response_tasks` wires, downstream of a
:class:`~airflow_provider_hlml.operators.drift.DriftMonitorOperator`::

    monitor ─> drift_detected ─> drift_request ─> drift_review ─> drift_decision ─┬─> verify_rollback ─> rollback
    (report)   (short-circuit:   (subject, body,   (a person:      (branch on the   └─> retrain
               nothing more      context from the  approve = roll   answer)
               without drift)    report)           back; reject =
                                                   retrain / accept)

- no drift: ``drift_detected`` skips everything after it; no request is made.
- **rollback** (the request approved): ``verify_rollback`` checks that the alias still holds the
  version the reviewer was shown, that the version to restore is the one shown, and that it
  carries a valid signed attestation of its own approval; then
  :class:`~airflow_provider_hlml.operators.promote.ModelPromoteOperator` in ``rollback`` mode,
  bound to the approval (``approval_task_id``: it refuses a decision that is not approved or does
  not name that model and version), restores it.
- **retrain** (rejected with the reason ``retrain``): ``retrain`` runs Airflow's
  ``TriggerDagRunOperator`` for the training DAG (``retrain_dag_id``), built when the task runs
  (its module loads sqlalchemy and ``airflow.models``, which DAG parsing does without); without a
  training DAG the task only records the request (its XCom) for whatever watches for it.
- **accept** (rejected with the reason ``accept``, or without a reason): nothing runs.

The answers and why rollback is the approval: :mod:`airflow_provider_hlml.sensors.drift`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from airflow_provider_hlml.gate.state import is_policy_principal
from airflow_provider_hlml.sensors.drift import RETRAIN, ROLLBACK, DriftResponseSensor

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.definitions.xcom_arg import XComArg

    from airflow_provider_hlml.operators.drift import DriftMonitorOperator

__all__ = [
    "DriftResponse",
    "choose_response",
    "drift_request_content",
    "drift_response_tasks",
]

DETECTED_TASK = "drift_detected"
REQUEST_TASK = "drift_request"
REVIEW_TASK = "drift_review"
DECISION_TASK = "drift_decision"
VERIFY_TASK = "verify_rollback"
ROLLBACK_TASK = "rollback"
RETRAIN_TASK = "retrain"
#: Drifted features listed in a request (all of them are in the MLflow run's ``drift.json``).
MAX_LISTED = 25
#: A DAG id as Airflow allows it.
_DAG_ID = re.compile(r"[A-Za-z0-9_.-]{1,250}")


def _xcom(task_id: str, key: str) -> str:
    return "{{ ti.xcom_pull(task_ids='" + task_id + "')['" + key + "'] }}"


def _code(text: Any, limit: int = 80) -> str:
    """``text`` as a Markdown code span that cannot break out of it or out of a table cell."""
    value = str(text).replace("`", "'").replace("|", "\\|").replace("\n", " ").replace("\r", " ")
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    return f"`{value}`"


def _num(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, int | float) and not isinstance(value, bool) else "n/a"


def _checked_result(result: Any) -> Mapping[str, Any]:
    """A drift monitor's XCom result, with the keys a request is made of checked."""
    if not isinstance(result, Mapping):
        raise ValueError(f"the drift monitor's result is not a mapping: {type(result).__name__}")
    for key in ("model_name", "model_version", "alias"):
        if not isinstance(result.get(key), str) or not result[key]:
            raise ValueError(f"the drift monitor's result has no {key}")
    if not isinstance(result.get("features"), Mapping):
        raise ValueError("the drift monitor's result has no features")
    return result


def choose_response(decision: Any) -> Literal["rollback", "retrain"] | None:
    """What a person chose in the drift gate's result: ``rollback`` (approved), ``retrain``
    (rejected naming ``retrain``), or ``None`` (accept, no reason, a timeout, anything else).

    An outcome that came from the gate's ``on_timeout`` policy, or from anyone but a person (a
    decision policy's principal), is never acted on.
    """
    if not isinstance(decision, Mapping) or decision.get("timed_out") is not False:
        return None
    responder = decision.get("responded_by_user")
    who = [responder.get(k) for k in ("id", "name", "email")] if isinstance(responder, Mapping) else []
    if not any(who) or any(is_policy_principal(w) for w in who):
        return None
    if decision.get("branch", "human") != "human":
        return None
    if decision.get("approved") is True:
        return ROLLBACK
    if decision.get("approved") is False and decision.get("reject_option") == RETRAIN:
        return RETRAIN
    return None


def drift_request_content(
    result: Mapping[str, Any],
    *,
    rollback: Mapping[str, Any] | None = None,
    retrain_dag_id: str | None = None,
) -> dict[str, Any]:
    """The ``subject``, ``body`` (Markdown) and ``context`` of the request about a drift report.

    The context names the model as every contract does (``model_name``, ``model_version``,
    ``mlflow_run_id``: what the rollback's binding and the review digest check), the drifted
    features with their PSI and p-values (at most :data:`MAX_LISTED`), the predictions, the live
    metric, the policy, the MLflow run with the whole report, and the version a rollback would
    restore.

    :param result: a :class:`~airflow_provider_hlml.contracts.DriftMonitorResult`.
    :param rollback: ``{"version", "attested", "detail"}`` of the rollback target, or None.
    :param retrain_dag_id: the training DAG a ``retrain`` answer starts.
    """
    result = _checked_result(result)
    name, version, alias = result["model_name"], result["model_version"], result["alias"]
    features = result["features"]
    drifted = [row for row in features.values() if isinstance(row, Mapping) and row.get("drifted")]
    drifted.sort(key=lambda row: -(row.get("psi") or 0.0))
    listed = [
        {k: row.get(k) for k in ("name", "kind", "psi", "test", "statistic", "p_value")}
        for row in drifted[:MAX_LISTED]
    ]
    predictions = result.get("predictions") if isinstance(result.get("predictions"), Mapping) else None
    live = result.get("live_metric") if isinstance(result.get("live_metric"), Mapping) else None
    context: dict[str, Any] = {
        "model_name": name,
        "model_version": version,
        "mlflow_run_id": result.get("mlflow_run_id"),
        "alias": alias,
        "drifted": bool(result.get("drifted")),
        "reason": str(result.get("reason") or "")[:2000],
        "drifted_features": listed,
        "drifted_feature_count": len(drifted),
        "features_compared": len(features),
        "predictions": (
            {k: predictions.get(k) for k in ("psi", "test", "statistic", "p_value", "drifted")}
            if predictions
            else None
        ),
        "live_metric": dict(live) if live else None,
        "policy": dict(result.get("policy") or {}),
        "reference_rows": result.get("reference_rows"),
        "current_rows": result.get("current_rows"),
        "monitoring_run_id": result.get("monitoring_run_id"),
        "monitoring_run_url": result.get("monitoring_run_url"),
        "rollback_to": dict(rollback) if rollback else None,
        "retrain_dag_id": retrain_dag_id,
    }
    subject = f"Drift in {name[:100]} v{version} (@{alias}): roll back, retrain or accept?"
    lines = [
        f"The drift check of {_code(name)} v{_code(version)} (@{_code(alias)}) found it drifted: "
        f"{len(drifted)} of {len(features)} features drifted.",
        "",
    ]
    if listed:
        lines += ["| feature | PSI | p-value | test |", "|---|---|---|---|"]
        lines += [
            f"| {_code(row['name'])} | {_num(row['psi'])} | {_num(row['p_value'])} | {row.get('test') or 'n/a'} |"
            for row in listed
        ]
        if len(drifted) > MAX_LISTED:
            lines.append(f"\n… and {len(drifted) - MAX_LISTED} more (see the MLflow run).")
        lines.append("")
    if predictions:
        state = "**drifted**" if predictions.get("drifted") else "stable"
        lines.append(
            f"Predictions: {state} (PSI {_num(predictions.get('psi'))}, p {_num(predictions.get('p_value'))})."
        )
    if live:
        lines.append(
            f"Live {_code(live.get('metric'), 20)}: {_num(live.get('value'))} ({_code(live.get('reason'), 300)})."
        )
    if rollback and rollback.get("version"):
        attested: dict[Any, str] = {
            True: "its signed approval verified",
            False: "**its approval attestation does NOT verify**",
        }
        state = attested.get(rollback.get("attested"), "its attestation could not be checked now")
        rollback_line = f"roll @{_code(alias)} back to v{_code(rollback['version'])} ({state}; checked again before the rollback)."
    else:
        rollback_line = f"no previous champion is recorded for @{_code(alias)}: a rollback would be refused."
    retrain_line = (
        f"keep v{_code(version)} serving and start the training DAG {_code(retrain_dag_id)}."
        if retrain_dag_id
        else f"keep v{_code(version)} serving and mark the run for retraining."
    )
    lines += [
        "",
        f"- **Approve**: {rollback_line}",
        f"- **Reject, reason Retrain**: {retrain_line}",
        f"- **Reject, reason Accept**: keep v{_code(version)}; nothing changes.",
        "",
        "Nothing changes until you answer.",
    ]
    url = result.get("monitoring_run_url")
    if isinstance(url, str) and url.startswith(("http://", "https://")) and " " not in url:
        lines.append(f"\nThe whole report: [MLflow run]({url.replace(')', '%29')}) (`drift.json`).")
    return {"subject": subject, "body": "\n".join(lines), "context": context}


def _attestation_keys(humanlayer_conn_id: str | None) -> Any:
    from airflow_provider_hlml.hooks.humanlayer import HumanLayerHook
    from airflow_provider_hlml.settings import humanlayer_conn_id as default_humanlayer_conn_id

    return HumanLayerHook(humanlayer_conn_id or default_humanlayer_conn_id()).attestation_keys()


def _describe_rollback_target(
    result: Mapping[str, Any], *, mlflow_conn_id: str, humanlayer_conn_id: str | None
) -> dict[str, Any] | None:
    """The version a rollback would restore and whether its attestation verifies now (for the
    reviewer; ``verify_rollback`` checks again, strictly, before acting)."""
    from airflow_provider_hlml.approvals.attest.verify import verify_version
    from airflow_provider_hlml.hooks.mlflow import MLflowHook

    target = result.get("rollback_version")
    if not isinstance(target, str) or not target.isdigit():
        return None
    try:
        verdict = verify_version(
            MLflowHook(mlflow_conn_id).client,
            str(result["model_name"]),
            target,
            _attestation_keys(humanlayer_conn_id),
        )
    except Exception as exc:
        return {"version": target, "attested": None, "detail": f"not checked: {type(exc).__name__}"}
    return {"version": target, "attested": verdict.ok, "detail": verdict.reason[:500]}


def verify_rollback_target(
    decision: Any,
    result: Mapping[str, Any],
    *,
    mlflow_conn_id: str,
    humanlayer_conn_id: str | None,
    require_attested: bool,
) -> dict[str, Any]:
    """Before a rollback: a person approved it, the alias still holds the version they were
    shown, the version to restore is the one they were shown, and (``require_attested``) it
    carries a valid signed attestation of its approval.

    :raises airflow.sdk.exceptions.AirflowFailException: any of these does not hold.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_provider_hlml.approvals.attest.verify import verify_version
    from airflow_provider_hlml.hooks.mlflow import MLflowHook, RegistryStateError

    if choose_response(decision) != ROLLBACK:
        raise AirflowFailException("no person approved a rollback in this run: refusing")
    result = _checked_result(result)
    name, alias = result["model_name"], result["alias"]
    shown = decision["context"] if isinstance(decision.get("context"), Mapping) else {}
    rollback_to = shown["rollback_to"] if isinstance(shown.get("rollback_to"), Mapping) else {}
    shown_target = rollback_to.get("version")
    hook = MLflowHook(mlflow_conn_id)
    try:
        current, previous = hook.alias_rollback_target(name, alias)
    except RegistryStateError as exc:
        raise AirflowFailException(str(exc)) from None
    if current != str(shown.get("model_version")):
        raise AirflowFailException(
            f"@{alias} of {name!r} is on v{current}, not v{shown.get('model_version')} the reviewers were "
            "shown: refusing to roll back"
        )
    if not previous:
        raise AirflowFailException(
            f"v{current} of {name!r} has no previous holder of @{alias}: nothing to roll back to"
        )
    if previous != shown_target:
        raise AirflowFailException(
            f"a rollback of @{alias} would restore v{previous}, but the reviewers were shown "
            f"{'v' + str(shown_target) if shown_target else 'no version'}: refusing"
        )
    attestation = None
    if require_attested:
        try:
            verdict = verify_version(hook.client, name, previous, _attestation_keys(humanlayer_conn_id))
        except Exception as exc:
            raise AirflowFailException(f"cannot check the attestation of v{previous}: {exc}") from None
        if not verdict.ok:
            raise AirflowFailException(f"v{previous} is not an attested champion: {verdict.reason}")
        attestation = verdict.to_json()
    return {
        "model_name": name,
        "alias": alias,
        "from_version": current,
        "rollback_to": previous,
        "attestation": attestation,
    }


@dataclass(frozen=True)
class DriftResponse:
    """The tasks :func:`drift_response_tasks` created, in order."""

    detected: BaseOperator
    request: BaseOperator
    review: DriftResponseSensor
    decision: BaseOperator
    verify_rollback: BaseOperator
    rollback: BaseOperator
    retrain: BaseOperator


def drift_response_tasks(
    monitor: DriftMonitorOperator,
    *,
    retrain_dag_id: str | None = None,
    approvers: str | Sequence[str] | None = None,
    approval_rules: Sequence[Mapping[str, Any]] | None = None,
    response_timeout: timedelta | float | None = None,
    urgency: str = "high",
    require_attested_rollback: bool = True,
    humanlayer_conn_id: str | None = None,
    gate_kwargs: Mapping[str, Any] | None = None,
) -> DriftResponse:
    """Wire the human response to ``monitor``'s drift report (in the DAG ``monitor`` is in).

    Task ids: ``drift_detected``, ``drift_request``, ``drift_review``, ``drift_decision``,
    ``verify_rollback``, ``rollback``, ``retrain`` (one drift response per DAG).

    :param monitor: the :class:`~airflow_provider_hlml.operators.drift.DriftMonitorOperator`.
    :param retrain_dag_id: the training DAG a ``retrain`` answer triggers (with the conf
        ``{"reason": "drift", "model_name", "model_version", "monitoring_run_id",
        "approval_call_id"}``, also the task's XCom); None: ``retrain`` only records that conf.
    :param approvers: who may answer (see :class:`HumanApprovalSensor`).
    :param approval_rules: rules a rollback must meet (one rejection vetoes, so one person may
        choose retrain or accept; a rollback needs every rule).
    :param response_timeout: how long to wait; on timeout the gate fails (``on_timeout`` in
        ``gate_kwargs`` may say ``skip`` or ``reject``, never ``approve``).
    :param urgency: the request's urgency.
    :param require_attested_rollback: refuse to restore a version without a valid signed
        attestation of its approval (the alias guard would flag it).
    :param humanlayer_conn_id: the approvals service (requests and attestation keys).
    :param gate_kwargs: more :class:`~airflow_provider_hlml.sensors.drift.DriftResponseSensor` arguments.
    """
    from airflow.sdk import task

    from airflow_provider_hlml.operators.promote import ModelPromoteOperator

    if retrain_dag_id is not None and (
        not isinstance(retrain_dag_id, str) or not _DAG_ID.fullmatch(retrain_dag_id)
    ):
        raise ValueError(
            f"retrain_dag_id must be a DAG id (letters, digits, '_', '.', '-'), got {str(retrain_dag_id)[:80]!r}"
        )
    mlflow_conn_id = monitor.mlflow_conn_id
    monitor_id = monitor.task_id

    @task.short_circuit(task_id=DETECTED_TASK)
    def drift_detected(result: Any) -> bool:
        """Go on only when the drift policy found drift."""
        return isinstance(result, Mapping) and result.get("drifted") is True

    @task(task_id=REQUEST_TASK, multiple_outputs=True)
    def drift_request(result: Any) -> dict[str, Any]:
        """The request's subject, body and context, from the report."""
        rollback = _describe_rollback_target(
            _checked_result(result), mlflow_conn_id=mlflow_conn_id, humanlayer_conn_id=humanlayer_conn_id
        )
        return drift_request_content(result, rollback=rollback, retrain_dag_id=retrain_dag_id)

    @task.branch(task_id=DECISION_TASK)
    def drift_decision(decision: Any) -> str | list[str]:
        """Follow what the person chose."""
        chosen = choose_response(decision)
        if chosen == ROLLBACK:
            return VERIFY_TASK
        if chosen == RETRAIN:
            return RETRAIN_TASK
        return []

    @task(task_id=VERIFY_TASK)
    def verify_rollback(decision: Any, result: Any) -> dict[str, Any]:
        """The version to restore is the one shown, and attested."""
        return verify_rollback_target(
            decision,
            result,
            mlflow_conn_id=mlflow_conn_id,
            humanlayer_conn_id=humanlayer_conn_id,
            require_attested=require_attested_rollback,
        )

    @task(task_id=RETRAIN_TASK)
    def retrain_model(result: Any, decision: Any) -> dict[str, Any]:
        """Start the training DAG with the drift's details (without one, only record them)."""
        from airflow.sdk import get_current_context
        from airflow.sdk.exceptions import AirflowFailException

        if choose_response(decision) != RETRAIN:
            raise AirflowFailException("no person asked for retraining in this run: refusing")
        result = _checked_result(result)
        conf = {
            "reason": "drift",
            "model_name": result["model_name"],
            "model_version": result["model_version"],
            "monitoring_run_id": result.get("monitoring_run_id"),
            "approval_call_id": decision.get("call_id"),
        }
        if retrain_dag_id is not None:
            # Built here rather than at DAG parse: its module loads sqlalchemy and airflow.models.
            from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator

            trigger = TriggerDagRunOperator(task_id=RETRAIN_TASK, trigger_dag_id=retrain_dag_id, conf=conf)
            trigger.execute(get_current_context())  # hands the new DAG run to the task runner
        return conf

    report: XComArg = monitor.output
    # The decorated tasks' XComArgs (typed loosely by the SDK's decorators).
    detected: Any = drift_detected(report)
    request: Any = drift_request(report)
    fixed = {"task_id", "subject", "body", "context"} & set(gate_kwargs or {})
    if fixed:
        raise ValueError(f"gate_kwargs: {sorted(fixed)} come from the drift report, not from gate_kwargs")
    review = DriftResponseSensor(
        task_id=REVIEW_TASK,
        subject=request["subject"],
        body=request["body"],
        context=request["context"],
        **{
            "urgency": urgency,
            "approvers": approvers,
            "approval_rules": approval_rules,
            "response_timeout": response_timeout,
            "humanlayer_conn_id": humanlayer_conn_id,
            "mlflow_conn_id": mlflow_conn_id,
            **dict(gate_kwargs or {}),
        },
    )
    decision: Any = drift_decision(review.output)
    verify: Any = verify_rollback(review.output, report)
    rollback = ModelPromoteOperator(
        task_id=ROLLBACK_TASK,
        mode="rollback",
        model_name=_xcom(monitor_id, "model_name"),
        alias=_xcom(monitor_id, "alias"),
        approval_task_id=REVIEW_TASK,
        mlflow_conn_id=mlflow_conn_id,
        humanlayer_conn_id=humanlayer_conn_id,
        retries=0,
    )
    retrain: Any = retrain_model(report, review.output)
    monitor >> detected >> request >> review >> decision
    decision >> [verify, retrain]
    verify >> rollback
    return DriftResponse(
        detected=detected.operator,
        request=request.operator,
        review=review,
        decision=decision.operator,
        verify_rollback=verify.operator,
        rollback=rollback,
        retrain=retrain.operator,
    )
