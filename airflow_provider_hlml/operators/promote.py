"""The promotion stage: move a registered version to an alias after the approval naming it."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

from airflow.exceptions import AirflowProviderDeprecationWarning
from airflow.sdk import BaseOperator

from airflow_provider_hlml import audit
from airflow_provider_hlml.contracts import BINDING_KEYS
from airflow_provider_hlml.gate.digest import changed_facts, review_digest, review_facts
from airflow_provider_hlml.hooks.mlflow import MLflowHook, RegistryStateError
from airflow_provider_hlml.links.mlflow import MLflowRunLink
from airflow_provider_hlml.operators.mlflow_runs import MAX_TAG_VALUE, push_run_link, utcnow_iso
from airflow_provider_hlml.settings import mlflow_conn_id as default_mlflow_conn_id

if TYPE_CHECKING:
    from airflow.sdk import Context
    from mlflow.entities.model_registry import ModelVersion

    from airflow_provider_hlml.contracts import ApprovalResult, ApproverRecord, PromotionRecord

__all__ = ["ModelPromoteOperator"]

#: How a refusal because the reviewed facts changed starts (then the changes, ``; ``-separated).
CHANGED_SINCE_APPROVAL = "the model changed since it was approved (re-approval needed): "


def _responder(value: Any) -> str:
    if isinstance(value, Mapping):
        for key in ("email", "name", "id", "principal"):
            if value.get(key):
                return str(value[key])
        return ""
    return "" if value is None else str(value)


def approvers_of(decision: Mapping[str, Any]) -> list[ApproverRecord]:
    """Every approval that counted toward ``decision``, with the rule each met.

    The gate's ``approvals``; a decision from a gate that predates them names one person, its
    ``responded_by_user`` (rule ``None``).
    """
    if "approvals" in decision:
        return [
            {
                "name": a.get("name"),
                "email": a.get("email"),
                "rule": a.get("rule"),
                "at": a.get("at"),
            }
            for a in decision.get("approvals") or []
            if isinstance(a, Mapping)
        ]
    user = decision.get("responded_by_user")
    if not isinstance(user, Mapping) or not (user.get("email") or user.get("name")):
        return []
    at = decision.get("responded_at")
    return [{"name": user.get("name"), "email": user.get("email"), "rule": None, "at": at}]


def approvers_tag(approvers: Sequence[Mapping[str, Any]]) -> str:
    """The value of :data:`~airflow_provider_hlml.audit.APPROVERS`: ``alice@example.com (ML lead);
    carol (Compliance)`` (e-mail, else name; the rule in parentheses when there is one), at most
    ``MAX_TAG_VALUE`` characters."""
    parts = []
    for approver in approvers:
        who = str(approver.get("email") or approver.get("name") or "?")
        parts.append(f"{who} ({approver['rule']})" if approver.get("rule") else who)
    return "; ".join(parts)[:MAX_TAG_VALUE]


class ModelPromoteOperator(BaseOperator):
    """
    Move a registered model version to an alias (or, legacy, a stage) after the approval that
    names exactly that version.

    With ``approval_task_id`` the operator reads that gate's XCom result and refuses unless it is
    approved and its ``context`` names this ``model_name``, ``model_version`` and
    ``mlflow_run_id`` (:data:`~airflow_provider_hlml.contracts.BINDING_KEYS`: the output of the
    training or the validation stage, whichever the gate showed, names all three). The promoted version gets the audit tags of :mod:`..audit`
    (``hlml.approved_by``, ``hlml.approved_at``, ``hlml.approval_comment``,
    ``hlml.approval_call_id``, ``hlml.promoted_by_dag_id`` / ``_run_id``, and
    ``hlml.previous_version.<alias>`` naming the version that held the alias before), so
    ``mode="rollback"`` restores it in one step.

    When the decision carries the digest of what the reviewers were shown (``review_digest``,
    written by :class:`~airflow_provider_hlml.sensors.approval.HumanApprovalSensor`; see
    :mod:`..gate.digest`), the operator also refuses when

    - the context in the XCom result no longer has that digest (it was altered after the
      approval), and, before a promotion,
    - the facts shown (model, version, run, metrics, validation verdict and champion version)
      read differently from MLflow now (:meth:`~..hooks.mlflow.MLflowHook.review_facts_now`:
      e.g. a metric re-logged on the validation or training run): the message names each
      change, and a new approval is needed. Facts MLflow cannot tell (``passed`` /
      ``champion_version`` without the validation run's tag / report) are not compared.

    Decisions without a digest (older gates, the HumanLayer cloud) are bound by the keys only.
    ``hlml.approvers`` lists every approval that counted and the rule it met, and
    ``hlml.review_digest`` the digest, next to ``hlml.approved_by`` (the last approver).

    :param model_name: registered model name (templated).
    :param version: version to promote (templated). When omitted the version is the one the
        approval names, an existing version from ``run_id``, or a new registration of
        ``model_uri`` / ``runs:/<run_id>/model``.
    :param run_id: training run of the model (templated).
    :param model_uri: model URI to register when no version exists yet (templated).
    :param alias: alias to set (default ``champion``).
    :param stage: legacy registry stage (``Staging`` / ``Production``); deprecated by MLflow,
        used instead of the alias when given.
    :param archive_existing_versions: with ``stage``, archive the versions that held it.
    :param approval_task_id: task id of the HumanApprovalSensor whose decision binds this step.
    :param mode: ``promote`` or ``rollback`` (restore the version recorded as previous holder).
    :param mlflow_conn_id: MLflow connection; default ``[hlml] mlflow_conn_id`` (itself
        ``mlflow_default`` unless configured).
    :param humanlayer_conn_id: the approvals service the gate asked (for the decision's signed
        attestation); default ``[hlml] humanlayer_conn_id``.
    :param require_attestation: refuse to move the alias unless the approvals service signed an
        attestation of an *approved* decision naming exactly this version (name, version, run id,
        source), verified against the service's public keys or ``attestation_public_key``.
        Without it the attestation is still written when the service has one (the
        ``hlml.attestation`` tag, next to the audit tags), and its absence is only logged.
    :param attestation_public_key: trust only this Ed25519 public key (base64 or PEM) instead of
        the keys the service publishes (templated).

    With an approval, the version also gets ``hlml.attestation`` (the signed statement of the
    decision, see :mod:`~airflow_provider_hlml.gate.attestation`) and ``hlml.attestation_key_id``:
    ``hlml-approvals verify-model NAME@ALIAS`` checks them wherever the model is served.

    XCom return value: a :class:`~airflow_provider_hlml.contracts.PromotionRecord`.
    """

    template_fields: Sequence[str] = (
        "model_name",
        "version",
        "run_id",
        "model_uri",
        "alias",
        "stage",
        "attestation_public_key",
    )
    operator_extra_links = (MLflowRunLink(),)
    ui_color = "#f7e6d5"

    def __init__(
        self,
        *,
        model_name: str,
        version: str | int | None = None,
        run_id: str | None = None,
        model_uri: str | None = None,
        alias: str = "champion",
        stage: str | None = None,
        archive_existing_versions: bool = True,
        approval_task_id: str | None = None,
        mode: Literal["promote", "rollback"] = "promote",
        mlflow_conn_id: str | None = None,
        humanlayer_conn_id: str | None = None,
        require_attestation: bool = False,
        attestation_public_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if mode not in ("promote", "rollback"):
            raise ValueError(f"mode must be 'promote' or 'rollback', got {mode!r}")
        if stage is not None and str(stage).lower() not in ("staging", "production"):
            raise ValueError(f"stage must be 'Staging' or 'Production', got {stage!r}")
        if not alias and stage is None:
            raise ValueError("alias must be a non-empty string (or give a legacy stage)")
        self.model_name = model_name
        self.version = version
        self.run_id = run_id
        self.model_uri = model_uri
        self.alias = alias
        self.stage = stage
        self.archive_existing_versions = archive_existing_versions
        self.approval_task_id = approval_task_id
        self.mode = mode
        self.mlflow_conn_id = mlflow_conn_id or default_mlflow_conn_id()
        self.humanlayer_conn_id = humanlayer_conn_id
        self.require_attestation = require_attestation
        self.attestation_public_key = attestation_public_key
        if require_attestation and approval_task_id is None:
            raise ValueError(
                "require_attestation=True needs approval_task_id (the gate whose decision is attested)"
            )

    # -- approval binding -----------------------------------------------------------------------
    def _approval(self, context: Context) -> ApprovalResult | None:
        from airflow.sdk.exceptions import AirflowFailException

        if not self.approval_task_id:
            return None
        decision = context["ti"].xcom_pull(task_ids=self.approval_task_id)
        if not isinstance(decision, Mapping):
            raise AirflowFailException(
                f"no approval result from task {self.approval_task_id!r} in this DAG run: "
                "refusing to change the registry without it"
            )
        if decision.get("approved") is not True:
            raise AirflowFailException(
                f"approval {decision.get('call_id')!r} from task {self.approval_task_id!r} was not granted"
            )
        return cast("ApprovalResult", dict(decision))

    @staticmethod
    def _approved_context(decision: Mapping[str, Any]) -> Mapping[str, Any]:
        approved = decision.get("context") or {}
        return approved if isinstance(approved, Mapping) else {}

    def _check_binding(self, decision: Mapping[str, Any] | None, mv: ModelVersion) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        if decision is None:
            return
        approved = self._approved_context(decision)
        promoting = {
            "model_name": self.model_name,
            "model_version": str(mv.version),
            "mlflow_run_id": mv.run_id,
        }
        problems = []
        for key in BINDING_KEYS:
            got, want = approved.get(key), promoting[key]
            if got is None or str(got) != str(want):
                problems.append(f"{key}: approved {got!r}, promoting {want!r}")
        if problems:
            raise AirflowFailException(
                f"approval {decision.get('call_id')!r} (task {self.approval_task_id!r}) does not name the "
                f"model being changed; refusing: {'; '.join(problems)}"
            )

    # -- what the reviewers were shown ------------------------------------------------------------
    def _check_review_digest(self, decision: Mapping[str, Any] | None) -> None:
        """Refuse a decision whose context is not the one its ``review_digest`` was computed over."""
        from airflow.sdk.exceptions import AirflowFailException

        if decision is None or not decision.get("review_digest"):
            return
        facts = review_facts(self._approved_context(decision))
        if facts is None or review_digest(facts) != decision["review_digest"]:
            raise AirflowFailException(
                f"approval {decision.get('call_id')!r} (task {self.approval_task_id!r}): the context in its "
                "result is not what the reviewers were shown (its digest differs from the request's "
                "review digest, so it was changed after the approval); refusing"
            )

    def _check_review_facts(
        self, hook: MLflowHook, decision: Mapping[str, Any] | None, mv: ModelVersion
    ) -> None:
        """Refuse when a fact the reviewers were shown reads differently from MLflow now."""
        from airflow.sdk.exceptions import AirflowFailException

        if decision is None or not decision.get("review_digest"):
            return
        shown = review_facts(self._approved_context(decision))
        if shown is None:  # pragma: no cover - _check_review_digest refused it already
            return
        now = hook.review_facts_now(mv, self._approved_context(decision))
        # Only what MLflow can tell now is compared (see MLflowHook.review_facts_now).
        changes = changed_facts({k: v for k, v in shown.items() if k in now}, now)
        if changes:
            raise AirflowFailException(CHANGED_SINCE_APPROVAL + "; ".join(changes))

    # -- signed attestation -------------------------------------------------------------------
    def _attestation(self, decision: Mapping[str, Any] | None, mv: ModelVersion) -> tuple[str, str] | None:
        """(envelope, key id) of the decision's signed attestation, verified to name ``mv``.

        None when there is no decision, or (without ``require_attestation``) when the service
        has no attestation for it or cannot be read; refused (AirflowFailException) when
        ``require_attestation`` and it is missing or does not verify, and always when the service
        has one that does not name this version.
        """
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_provider_hlml.gate.attestation import (
            AttestationError,
            KeySet,
            check_names_model,
            public_key_from_text,
            verify_envelope,
        )
        from airflow_provider_hlml.hooks.humanlayer import HumanLayerError, HumanLayerHook
        from airflow_provider_hlml.settings import humanlayer_conn_id

        if decision is None:
            return None
        call_id = str(decision.get("call_id") or "")
        hook = HumanLayerHook(self.humanlayer_conn_id or humanlayer_conn_id())
        try:
            envelope = hook.get_attestation(call_id) if call_id else None
            if envelope is None:
                if self.require_attestation:
                    raise AirflowFailException(
                        f"approval {call_id!r} has no signed attestation (require_attestation=True): "
                        "the approvals service signs decisions it records itself; refusing"
                    )
                self.log.warning(
                    "Approval %r has no signed attestation; promoting on the XCom decision", call_id
                )
                return None
            keys = (
                KeySet.pinned(public_key_from_text(self.attestation_public_key))
                if self.attestation_public_key
                else hook.attestation_keys()
            )
        except HumanLayerError as exc:
            if self.require_attestation:
                raise AirflowFailException(
                    f"cannot read the attestation of approval {call_id!r}: {exc}"
                ) from None
            self.log.warning(
                "Cannot read the attestation of approval %r (%s); promoting without it", call_id, exc
            )
            return None
        try:
            statement = verify_envelope(envelope, keys)
            check_names_model(
                statement, name=self.model_name, version=mv.version, run_id=mv.run_id, source=mv.source
            )
            if statement.call_id != call_id:
                raise AttestationError(f"it attests request {statement.call_id!r}, not {call_id!r}")
        except AttestationError as exc:
            raise AirflowFailException(
                f"the signed attestation of approval {call_id!r} does not allow promoting "
                f"{self.model_name} v{mv.version}: {exc}"
            ) from None
        self.log.info("Attestation of approval %r verified (key %s)", call_id, statement.key_id)
        return envelope, statement.key_id

    # -- version resolution ---------------------------------------------------------------------
    def _resolve_version(self, hook: MLflowHook, decision: Mapping[str, Any] | None) -> ModelVersion:
        import mlflow
        from mlflow.exceptions import MlflowException

        client = hook.client
        version = self.version
        if version in ("", None) and decision is not None:
            version = self._approved_context(decision).get("model_version")
            if version is not None and self.run_id:
                mv = client.get_model_version(self.model_name, str(version))
                if mv.run_id != self.run_id:
                    version = None  # the binding check will name the mismatch
        if version in ("", None) and self.run_id:
            found = hook.find_model_version(self.model_name, self.run_id)
            if found is not None:
                version = found.version
        if version not in ("", None):
            try:
                return client.get_model_version(self.model_name, str(version))
            except MlflowException as exc:
                raise ValueError(
                    f"model version {self.model_name!r} v{version} does not exist in the registry"
                ) from exc
        source = self.model_uri or (f"runs:/{self.run_id}/model" if self.run_id else None)
        if not source:
            raise ValueError(
                f"task {self.task_id!r}: give version, run_id or model_uri of the model to promote"
            )
        registered = mlflow.register_model(source, self.model_name)
        return client.get_model_version(self.model_name, str(registered.version))

    # -- execute ------------------------------------------------------------------------------
    def execute(self, context: Context) -> PromotionRecord:
        from airflow.sdk.exceptions import AirflowFailException

        hook = MLflowHook(self.mlflow_conn_id)
        decision = self._approval(context)
        self._check_review_digest(decision)
        try:
            with hook.fluent():
                if self.mode == "rollback":
                    result = self._rollback(hook, context, decision)
                else:
                    mv = self._resolve_version(hook, decision)
                    self._check_binding(decision, mv)
                    self._check_review_facts(hook, decision, mv)
                    attestation = self._attestation(decision, mv)
                    result = self._promote(hook, context, decision, mv, attestation)
        except RegistryStateError as exc:
            raise AirflowFailException(str(exc)) from exc
        run_id = result["mlflow_run_id"]
        if run_id:
            with contextlib.suppress(Exception):
                run = hook.client.get_run(run_id)
                push_run_link(context, hook, run.info.experiment_id, run_id)
        return result

    def _audit_tags(self, context: Context, decision: Mapping[str, Any] | None) -> dict[str, str]:
        ti = context["ti"]
        tags = {
            audit.PROMOTED_AT: utcnow_iso(),
            audit.PROMOTED_BY_DAG_ID: ti.dag_id,
            audit.PROMOTED_BY_RUN_ID: ti.run_id,
            audit.PROMOTED_BY_TASK_ID: ti.task_id,
        }
        if decision is not None:
            tags[audit.APPROVED_BY] = _responder(decision.get("responded_by_user"))
            tags[audit.APPROVED_AT] = str(decision.get("responded_at") or "")
            tags[audit.APPROVAL_COMMENT] = str(decision.get("comment") or "")[:MAX_TAG_VALUE]
            tags[audit.APPROVAL_CALL_ID] = str(decision.get("call_id") or "")
            if decision.get("approval_url"):
                tags[audit.APPROVAL_URL] = str(decision["approval_url"])
            tags[audit.APPROVERS] = approvers_tag(approvers_of(decision))
            if decision.get("branch"):
                tags[audit.APPROVAL_BRANCH] = str(decision["branch"])
            if decision.get("review_digest"):
                tags[audit.REVIEW_DIGEST] = str(decision["review_digest"])
        return tags

    def _promote(
        self,
        hook: MLflowHook,
        context: Context,
        decision: Mapping[str, Any] | None,
        mv: ModelVersion,
        attestation: tuple[str, str] | None = None,
    ) -> PromotionRecord:
        name, version = self.model_name, str(mv.version)
        tags = self._audit_tags(context, decision)
        if attestation is not None:
            tags[audit.ATTESTATION], tags[audit.ATTESTATION_KEY_ID] = attestation
        with hook.promotion_lock(name):
            if self.stage is not None:
                previous = self._promote_stage(hook, name, version, tags)
            else:
                previous = hook.set_alias_with_tags(name, version, self.alias, tags)
        target = self.alias if self.stage is None else f"stage {self.stage}"
        if self.stage is None:
            holder = hook.alias_holder(name, self.alias)
            if holder is None or str(holder.version) != version:
                self.log.warning(
                    "Another promotion moved @%s to v%s right after this one",
                    self.alias,
                    getattr(holder, "version", None),
                )
        self.log.info("Promoted %s v%s to %s (previous: %s)", name, version, target, previous or "none")
        return {
            "mode": "promote",
            "model_name": name,
            "model_version": version,
            "alias": self.alias if self.stage is None else None,
            "stage": self.stage,
            "previous_version": previous or None,
            "mlflow_run_id": mv.run_id,
            "run_id": mv.run_id,
            "model_uri": f"models:/{name}/{version}",
            "approved_by": tags.get(audit.APPROVED_BY),
            "approval_call_id": tags.get(audit.APPROVAL_CALL_ID),
            "approvers": approvers_of(decision) if decision is not None else [],
            "model_version_url": hook.ui_url_for_model_version(name, version),
        }

    def _promote_stage(self, hook: MLflowHook, name: str, version: str, tags: dict[str, str]) -> str:
        stage = str(self.stage).capitalize()
        warnings.warn(
            "MLflow registry stages are deprecated since MLflow 2.9; use ModelPromoteOperator(alias=...) "
            "instead of stage=...",
            AirflowProviderDeprecationWarning,
            stacklevel=2,
        )
        self.log.warning("Using deprecated MLflow registry stage %r for %s v%s", stage, name, version)
        return hook.set_stage_with_tags(
            name, version, stage, tags, archive_existing_versions=self.archive_existing_versions
        )

    # -- rollback -----------------------------------------------------------------------------
    def _rollback(
        self, hook: MLflowHook, context: Context, decision: Mapping[str, Any] | None
    ) -> PromotionRecord:
        name = self.model_name
        with hook.promotion_lock(name):
            if self.stage is not None:
                stage = str(self.stage).capitalize()
                current, previous = hook.stage_rollback_target(name, stage)
                self._check_rollback_target(current, None)
                hook.restore_stage(name, stage, current, previous)
            else:
                current, previous = hook.alias_rollback_target(name, self.alias)
                self._check_rollback_target(current, decision)
                hook.restore_alias(name, self.alias, previous)
            hook.tag_rollback(name, current, previous, by_run_id=context["ti"].run_id, at=utcnow_iso())
        self.log.info("Rolled back %s from v%s to %s", name, current, previous or "no holder")
        single = bool(previous) and "," not in previous
        run_id = hook.client.get_model_version(name, previous).run_id if single else None
        return {
            "mode": "rollback",
            "model_name": name,
            "model_version": previous or None,
            "rolled_back_version": current,
            "alias": self.alias if self.stage is None else None,
            "stage": self.stage,
            "mlflow_run_id": run_id,
            "run_id": run_id,
            "model_uri": f"models:/{name}/{previous}" if single else None,
        }

    def _check_rollback_target(self, current: str, decision: Mapping[str, Any] | None) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        if self.version not in (None, "") and str(self.version) != current:
            raise AirflowFailException(
                f"rollback asked for v{self.version} but v{current} holds the alias/stage now: refusing"
            )
        if decision is not None:
            approved = self._approved_context(decision)
            if approved.get("model_name") != self.model_name or (
                approved.get("model_version") is not None and str(approved["model_version"]) != current
            ):
                raise AirflowFailException(
                    f"approval {decision.get('call_id')!r} does not name {self.model_name!r} v{current}: "
                    "refusing to roll back"
                )
