"""The protected-alias guard: a serving alias may only point at a version whose approval was signed.

A *protected* alias (``[hlml] protected_aliases``, default ``champion``) must be held by a model
version carrying a valid attestation (the ``hlml.attestation`` tag
:class:`~airflow_provider_hlml.operators.promote.ModelPromoteOperator` writes, verified with the
approvals service's public keys by :func:`~airflow_provider_hlml.approvals.attest.verify.verify_version`).
:meth:`AliasGuard.check_alias` checks one alias and finds it

- ``verified``: its holder's attestation verifies (nothing is recorded unless the finding changed);
- ``unverified``: it does not (someone moved the alias by hand, or copied a tag): the guard alerts
  through Airflow notifiers, records ``alias_moved`` in the approvals service's audit chain and,
  when nothing can be restored, leaves the alias where it is;
- ``reverted``: as ``unverified``, and with ``[hlml] alias_guard_revert`` on, the guard moved the
  alias back to the last attested version (the one it last found verified there, else the newest
  version that verifies), recording ``alias_reverted`` too.

Its finding is written on the registered model as the tag ``hlml.guard.<alias>`` (JSON: verdict,
version, reason, the attestation's call id, key id and approvers, reverted_from / reverted_to,
at), which the dashboard shows. The same unverified holder is alerted and audited once, however
often it is checked. A revert moves the alias to an attested version, so the webhook MLflow sends
for it finds that version verified: no loop.

It runs where a registry change is seen: the MLflow webhook receiver of the Airflow API server
(``POST /hlml/webhooks/mlflow``, :mod:`airflow_provider_hlml.plugins.mlflow_webhook`) and
:class:`AliasGuardOperator`, the reconcile task of ``dags/hlml_alias_guard.py``.

mlflow, the hooks' clients and ``cryptography`` are imported when a check runs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseNotifier, BaseOperator

from airflow_provider_hlml import audit, settings

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_hlml.approvals.attest.verify import Verdict
    from airflow_provider_hlml.gate.attestation import KeySet
    from airflow_provider_hlml.hooks.humanlayer import HumanLayerHook
    from airflow_provider_hlml.hooks.mlflow import MLflowHook

__all__ = [
    "MLFLOW_WEBHOOK_EVENTS",
    "REVERTED",
    "UNSET",
    "UNVERIFIED",
    "VERIFIED",
    "AliasGuard",
    "AliasGuardOperator",
    "GuardFinding",
    "GuardUnavailable",
    "check_alias",
    "default_guard_notifiers",
    "read_guard_state",
    "register_mlflow_webhook",
]

log = logging.getLogger(__name__)

VERIFIED = "verified"
UNVERIFIED = "unverified"
REVERTED = "reverted"
#: The alias is not set (deleted): nothing to verify, nothing recorded.
UNSET = "unset"
#: The MLflow registry events the guard's webhook subscribes to.
MLFLOW_WEBHOOK_EVENTS = ("model_version_alias.created", "model_version_alias.deleted")
DEFAULT_WEBHOOK_NAME = "hlml-alias-guard"
#: Newest versions of a model looked at for a version to revert to.
MAX_REVERT_CANDIDATES = 50
MAX_REASON = 1000

DEFAULT_GUARD_SUBJECT = (
    "[hlml] @{{ hlml_guard.alias }} of {{ hlml_guard.model }} "
    "{% if hlml_guard.version %}is on unattested v{{ hlml_guard.version }}{% else %}was deleted{% endif %} "
    "({{ hlml_guard.verdict }})"
)
DEFAULT_GUARD_HTML = (
    "<p>The protected alias <b>@{{ hlml_guard.alias | e }}</b> of registered model "
    "<b>{{ hlml_guard.model | e }}</b> "
    "{% if hlml_guard.version %}was found on version <b>{{ hlml_guard.version | e }}</b>, "
    "which carries no valid approval attestation{% else %}was deleted outside the gate{% endif %}: "
    "{{ hlml_guard.reason | e }}</p>"
    "{% if hlml_guard.reverted_to %}<p>The guard moved it back to version "
    "<b>{{ hlml_guard.reverted_to | e }}</b> (approved by {{ hlml_guard.approvers | join(', ') | e }}, "
    "request {{ hlml_guard.call_id | e }}).</p>{% else %}<p>It was left {% if hlml_guard.version %}in "
    "place{% else %}unset{% endif %}: check who changed it and promote an approved version.</p>{% endif %}"
    "<p>Seen by the {{ hlml_guard.source | e }} at {{ hlml_guard.at | e }}.</p>"
)


class GuardUnavailable(RuntimeError):
    """The guard cannot check: the approvals service's keys cannot be read."""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class GuardFinding:
    """What the guard found on one protected alias (and did about it).

    :param recorded: whether this check wrote the tag / audit events / alerts (False when the
        finding was already on record).
    :param audited: whether the approvals service accepted the audit events of this check.
    """

    model: str
    alias: str
    verdict: str
    version: str | None
    reason: str
    at: str = field(default_factory=_now)
    source: str = "reconcile"
    call_id: str | None = None
    key_id: str | None = None
    approvers: tuple[str, ...] = ()
    reverted_from: str | None = None
    reverted_to: str | None = None
    recorded: bool = False
    audited: bool = False

    def to_state(self) -> dict[str, Any]:
        """The registered-model tag's content (:func:`~airflow_provider_hlml.audit.guard_state_tag`)."""
        return {
            "verdict": self.verdict,
            "version": self.version,
            "reason": self.reason[:MAX_REASON],
            "call_id": self.call_id,
            "key_id": self.key_id,
            "approvers": list(self.approvers),
            "reverted_from": self.reverted_from,
            "reverted_to": self.reverted_to,
            "source": self.source,
            "at": self.at,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "alias": self.alias,
            **self.to_state(),
            "recorded": self.recorded,
            "audited": self.audited,
        }


def read_guard_state(tags: Mapping[str, str] | None, alias: str) -> dict[str, Any] | None:
    """The guard's last finding on ``alias`` from a registered model's tags (None if none/garbled)."""
    raw = (tags or {}).get(audit.guard_state_tag(alias))
    if not raw:
        return None
    try:
        state = json.loads(raw)
    except ValueError:
        return None
    return state if isinstance(state, dict) else None


def default_guard_notifiers() -> list[BaseNotifier]:
    """The ``[hlml] alert_email_to`` e-mail (``SmtpNotifier`` through ``[hlml] alert_smtp_conn_id``),
    as training alerts use; none when no address is configured or the SMTP provider is missing."""
    from airflow_provider_hlml.notifications.alerts import alert_email_notifier

    notifier = alert_email_notifier(
        DEFAULT_GUARD_SUBJECT, DEFAULT_GUARD_HTML, what="moves of protected aliases are not e-mailed"
    )
    return [notifier] if notifier is not None else []


class AliasGuard:
    """
    Check protected aliases against signed attestations; alert, record and (optionally) revert.

    :param mlflow_conn_id: the MLflow connection; default ``[hlml] mlflow_conn_id``.
    :param humanlayer_conn_id: the approvals service (its public keys, its audit chain); default
        ``[hlml] humanlayer_conn_id``.
    :param revert: move an unattested protected alias back; default ``[hlml] alias_guard_revert``.
    :param notifiers: more notifiers (``BaseNotifier`` instances or callables taking a context),
        called with ``hlml_guard`` (:meth:`GuardFinding.to_json`) in the context.
    :param default_alerts: also alert through :func:`default_guard_notifiers`.
    :param protected: aliases by model, as :func:`airflow_provider_hlml.settings.protected_aliases`
        returns; default that setting.
    :param source: what triggered the checks (``webhook`` or ``reconcile``), recorded.
    :param context: the task context notifiers get (with ``hlml_guard`` added), inside a task.
    """

    def __init__(
        self,
        *,
        mlflow_conn_id: str | None = None,
        humanlayer_conn_id: str | None = None,
        revert: bool | None = None,
        notifiers: Sequence[Any] = (),
        default_alerts: bool = True,
        protected: Mapping[str, Sequence[str]] | None = None,
        source: str = "reconcile",
        context: Mapping[str, Any] | None = None,
    ) -> None:
        self.mlflow_conn_id = mlflow_conn_id or settings.mlflow_conn_id()
        self.humanlayer_conn_id = humanlayer_conn_id or settings.humanlayer_conn_id()
        self.revert = settings.alias_guard_revert() if revert is None else revert
        self.extra_notifiers = list(notifiers)
        self.default_alerts = default_alerts
        self.protected = {k: tuple(v) for k, v in protected.items()} if protected is not None else None
        self.source = source
        self.context = dict(context or {})
        self._keys: KeySet | None = None

    # -- collaborators ------------------------------------------------------------------------
    @cached_property
    def mlflow(self) -> MLflowHook:
        from airflow_provider_hlml.hooks.mlflow import MLflowHook

        return MLflowHook(self.mlflow_conn_id)

    @cached_property
    def approvals(self) -> HumanLayerHook:
        from airflow_provider_hlml.hooks.humanlayer import HumanLayerHook

        return HumanLayerHook(self.humanlayer_conn_id)

    def keys(self) -> KeySet:
        """The approvals service's public keys, read once per guard."""
        if self._keys is None:
            from airflow_provider_hlml.gate.attestation import AttestationError
            from airflow_provider_hlml.hooks.humanlayer import HumanLayerError

            try:
                self._keys = self.approvals.attestation_keys()
            except (HumanLayerError, AttestationError) as exc:
                raise GuardUnavailable(
                    f"cannot read the attestation keys of connection {self.humanlayer_conn_id!r}: {exc}"
                ) from None
        return self._keys

    def protected_table(self) -> dict[str, tuple[str, ...]]:
        return self.protected if self.protected is not None else settings.protected_alias_table()

    def is_protected(self, model: str, alias: str) -> bool:
        return alias in settings.protected_aliases_of(model, self.protected_table())

    # -- checking -----------------------------------------------------------------------------
    def check_alias(self, name: str, alias: str) -> GuardFinding:
        """Check protected alias ``alias`` of registered model ``name`` (see the module docstring).

        :raises GuardUnavailable: the service's keys cannot be read (nothing was changed).
        """
        from airflow_provider_hlml.approvals.attest.verify import verify_version

        hook = self.mlflow
        with hook.promotion_lock(name):
            holder = hook.alias_holder(name, alias)
            previous = read_guard_state(hook.client.get_registered_model(name).tags, alias)
            if holder is None:
                if previous is not None and previous.get("verdict") in (VERIFIED, REVERTED):
                    # It held an attested version when the guard last looked: deleted around the gate.
                    return self._deleted(name, alias, previous)
                return GuardFinding(
                    name, alias, UNSET, None, f"@{alias} of {name} is not set", source=self.source
                )
            verdict = verify_version(hook.client, name, str(holder.version), self.keys(), alias=alias)
            if verdict.ok:
                return self._verified(name, alias, verdict, previous)
            return self._unverified(name, alias, verdict, previous)

    def _evidence(self, verdict: Verdict) -> dict[str, Any]:
        statement = verdict.statement
        if statement is None:
            return {}
        return {
            "call_id": statement.call_id,
            "key_id": statement.key_id,
            "approvers": tuple(statement.approvers),
        }

    def _verified(
        self, name: str, alias: str, verdict: Verdict, previous: Mapping[str, Any] | None
    ) -> GuardFinding:
        finding = GuardFinding(
            name,
            alias,
            VERIFIED,
            verdict.version,
            verdict.reason,
            source=self.source,
            **self._evidence(verdict),
        )
        if previous is not None and (
            (previous.get("verdict") == VERIFIED and previous.get("version") == finding.version)
            # The version a revert restored: the "reverted" finding stays on record.
            or (previous.get("verdict") == REVERTED and previous.get("reverted_to") == finding.version)
        ):
            return finding
        self._write_state(finding)
        log.info("Protected alias @%s of %s: %s", alias, name, verdict.reason)
        return replace(finding, recorded=True)

    def _unverified(
        self, name: str, alias: str, verdict: Verdict, previous: Mapping[str, Any] | None
    ) -> GuardFinding:
        version = verdict.version
        reported = (
            previous is not None
            and previous.get("verdict") == UNVERIFIED
            and previous.get("version") == version
        )
        target = self._revert_target(name, alias, str(version), previous) if self.revert else None
        if target is None:
            reason = verdict.reason + (
                "; no attested version to revert to: left in place" if self.revert else ""
            )
            finding = GuardFinding(name, alias, UNVERIFIED, version, reason, source=self.source)
            if reported:
                return finding
            self._write_state(finding)
            audited = self._record("alias_moved", finding)
            finding = replace(finding, recorded=True, audited=audited)
            log.warning("Protected alias @%s of %s is on an unattested version: %s", alias, name, reason)
            self._alert(finding)
            return finding
        restored = target
        self.mlflow.client.set_registered_model_alias(name, alias, str(restored.version))
        finding = GuardFinding(
            name,
            alias,
            REVERTED,
            version,
            verdict.reason,
            source=self.source,
            reverted_from=version,
            reverted_to=restored.version,
            **self._evidence(restored),
        )
        self._write_state(finding)
        moved = reported or self._record(
            "alias_moved", replace(finding, call_id=None, key_id=None, approvers=())
        )
        audited = self._record("alias_reverted", finding) and moved
        finding = replace(finding, recorded=True, audited=audited)
        log.warning(
            "Protected alias @%s of %s was on unattested v%s (%s): moved back to v%s",
            alias,
            name,
            version,
            verdict.reason,
            restored.version,
        )
        self._alert(finding)
        return finding

    def _deleted(self, name: str, alias: str, previous: Mapping[str, Any]) -> GuardFinding:
        """A protected alias that held an attested version was deleted: alert, record and, with
        revert, set it again on the last attested version."""
        held = previous.get("reverted_to") or previous.get("version")
        reason = f"@{alias} of {name} was deleted (it held attested version {held})"
        target = self._revert_target(name, alias, "", previous) if self.revert else None
        if target is None:
            finding = GuardFinding(name, alias, UNSET, None, reason, source=self.source)
            self._write_state(finding)
            audited = self._record("alias_moved", finding)
            finding = replace(finding, recorded=True, audited=audited)
            log.warning("Protected alias %s", reason)
            self._alert(finding)
            return finding
        self.mlflow.client.set_registered_model_alias(name, alias, str(target.version))
        finding = GuardFinding(
            name,
            alias,
            REVERTED,
            None,
            reason,
            source=self.source,
            reverted_to=target.version,
            **self._evidence(target),
        )
        self._write_state(finding)
        moved = self._record("alias_moved", replace(finding, call_id=None, key_id=None, approvers=()))
        audited = self._record("alias_reverted", finding) and moved
        finding = replace(finding, recorded=True, audited=audited)
        log.warning("Protected alias %s: set again on v%s", reason, target.version)
        self._alert(finding)
        return finding

    def _revert_target(
        self, name: str, alias: str, offending: str, previous: Mapping[str, Any] | None
    ) -> Verdict | None:
        """The verdict of the version to move ``alias`` back to: the one the guard last found
        attested there, else the newest version that verifies; None when none does."""
        from airflow_provider_hlml.approvals.attest.verify import verify_version
        from airflow_provider_hlml.hooks.mlflow import quote_filter_value

        client = self.mlflow.client
        candidates: list[str] = []
        if previous is not None:
            last = previous.get("reverted_to") if previous.get("verdict") == REVERTED else None
            last = last or (previous.get("version") if previous.get("verdict") == VERIFIED else None)
            if last:
                candidates.append(str(last))
        found = client.search_model_versions(
            f"name = {quote_filter_value(name)}",
            max_results=MAX_REVERT_CANDIDATES,
            order_by=["version_number DESC"],
        )
        candidates += [str(mv.version) for mv in found]
        keys = self.keys()
        for version in dict.fromkeys(candidates):
            if version == offending:
                continue
            try:
                verdict = verify_version(client, name, version, keys, alias=alias)
            except Exception as exc:  # a deleted version, a transient error: try the next one
                log.info("Version %s of %s cannot be a revert target: %s", version, name, exc)
                continue
            if verdict.ok:
                return verdict
        return None

    # -- recording ----------------------------------------------------------------------------
    def _write_state(self, finding: GuardFinding) -> None:
        self.mlflow.client.set_registered_model_tag(
            finding.model,
            audit.guard_state_tag(finding.alias),
            json.dumps(finding.to_state(), sort_keys=True, separators=(",", ":")),
        )

    def _record(self, event: str, finding: GuardFinding) -> bool:
        """Append ``event`` to the approvals service's audit chain; False (logged) when refused."""
        from airflow_provider_hlml.gate.wire import REGISTRY_EVENTS_PATH
        from airflow_provider_hlml.hooks.humanlayer import HumanLayerError

        body = {
            "event": event,
            "model": finding.model,
            "alias": finding.alias,
            "version": finding.version,
            "reverted_to": finding.reverted_to if event == "alias_reverted" else None,
            "reason": finding.reason[:4000],
            "source": finding.source,
            "call_id": finding.call_id,
            "key_id": finding.key_id,
            "approvers": list(finding.approvers),
        }
        try:
            self.approvals._request("POST", REGISTRY_EVENTS_PATH, json_body=body)
        except HumanLayerError as exc:
            log.error(
                "Could not record %s of @%s of %s in the audit chain: %s",
                event,
                finding.alias,
                finding.model,
                exc,
            )
            return False
        return True

    def notifiers(self) -> list[Any]:
        return [*(default_guard_notifiers() if self.default_alerts else []), *self.extra_notifiers]

    def _alert(self, finding: GuardFinding) -> None:
        import copy

        for notifier in self.notifiers():
            context = {**self.context, "hlml_guard": finding.to_json()}
            # BaseNotifier renders its templated fields in place: each alert renders them afresh.
            target = copy.copy(notifier) if isinstance(notifier, BaseNotifier) else notifier
            try:
                target(context)
            except Exception:
                log.exception(
                    "Alias-guard notifier %r failed (@%s of %s)", notifier, finding.alias, finding.model
                )

    # -- reconciling --------------------------------------------------------------------------
    def reconcile(self, models: Iterable[str] | None = None) -> tuple[list[GuardFinding], list[str]]:
        """Check the protected aliases of ``models`` (default: every registered model).

        When listing every model, an alias that is not set is checked only if the guard has a
        finding on it (it held a version: a deletion is caught). One alias failing does not stop
        the others.

        :return: ``(findings, errors)``.
        """
        table = self.protected_table()
        wanted: list[tuple[str, str]] = []
        if models is not None:
            wanted = [(m, a) for m in models for a in settings.protected_aliases_of(m, table)]
        else:
            for rm in self._registered_models():
                aliases = getattr(rm, "aliases", None) or {}
                tags = getattr(rm, "tags", None) or {}
                wanted += [
                    (rm.name, a)
                    for a in settings.protected_aliases_of(rm.name, table)
                    if a in aliases or audit.guard_state_tag(a) in tags
                ]
        findings: list[GuardFinding] = []
        errors: list[str] = []
        for name, alias in wanted:
            try:
                findings.append(self.check_alias(name, alias))
            except GuardUnavailable:
                raise
            except Exception as exc:
                log.exception("Checking @%s of %s failed", alias, name)
                errors.append(f"@{alias} of {name}: {type(exc).__name__}: {exc}")
        return findings, errors

    def _registered_models(self) -> Iterable[Any]:
        client = self.mlflow.client
        token: str | None = None
        while True:
            page = client.search_registered_models(max_results=100, page_token=token)
            yield from page
            token = page.token
            if not token:
                return


def check_alias(name: str, alias: str, **kwargs: Any) -> GuardFinding:
    """Check one protected alias with an :class:`AliasGuard` made of ``kwargs``."""
    return AliasGuard(**kwargs).check_alias(name, alias)


def register_mlflow_webhook(
    url: str,
    *,
    secret: str | None = None,
    mlflow_conn_id: str | None = None,
    name: str = DEFAULT_WEBHOOK_NAME,
) -> Any:
    """Create (or update, by ``name``) the MLflow registry webhook that posts alias changes to the
    guard's receiver ``url`` (``https://<airflow>/hlml/webhooks/mlflow``), signed with ``secret``
    (default ``[hlml] mlflow_webhook_secret``).

    The same as ``MlflowClient().create_webhook(name, url, events=["model_version_alias.created",
    "model_version_alias.deleted"], secret=...)``. The MLflow server must allow the URL
    (``MLFLOW_WEBHOOK_ALLOWED_SCHEMES``, ``MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS``); see docs/security.md.

    :return: MLflow's ``Webhook``.
    :raises ValueError: without a secret (the receiver refuses unsigned deliveries).
    """
    from airflow_provider_hlml.hooks.mlflow import MLflowHook

    secret = secret or settings.mlflow_webhook_secret()
    if not secret:
        raise ValueError(
            "no secret: set [hlml] mlflow_webhook_secret (the receiver refuses unsigned deliveries)"
        )
    client = MLflowHook(mlflow_conn_id or settings.mlflow_conn_id()).client
    description = "hlml: protected-alias guard of the Airflow API server"
    events: list[Any] = list(MLFLOW_WEBHOOK_EVENTS)
    token: str | None = None
    while True:
        page = client.list_webhooks(max_results=100, page_token=token)
        for webhook in page:
            if webhook.name == name:
                return client.update_webhook(
                    webhook.webhook_id,
                    url=url,
                    events=events,
                    secret=secret,
                    description=description,
                    status="ACTIVE",
                )
        token = page.token
        if not token:
            break
    return client.create_webhook(name, url, events=events, secret=secret, description=description)


class AliasGuardOperator(BaseOperator):
    """
    Reconcile protected aliases: check each against its holder's signed attestation (see
    :mod:`airflow_provider_hlml.operators.alias_guard`), for MLflow servers without webhooks or
    deliveries that were missed. Returns the findings (:meth:`GuardFinding.to_json`) as XCom.

    :param models: registered models to check (default: every one with a protected alias set).
    :param protected_aliases: aliases by model (``{"*": ["champion"]}``); default
        ``[hlml] protected_aliases``.
    :param revert: move unattested aliases back; default ``[hlml] alias_guard_revert``.
    :param notifiers: notifiers called (besides the ``[hlml] alert_email_to`` e-mail) when an
        alias is found unattested, with ``hlml_guard`` in the task context.
    :param mlflow_conn_id: default ``[hlml] mlflow_conn_id``.
    :param humanlayer_conn_id: the approvals service; default ``[hlml] humanlayer_conn_id``.
    :param fail_on_unverified: fail the task when an alias was found unattested and not reverted.
    """

    template_fields: Sequence[str] = ("models",)
    ui_color = "#f6e3c8"

    def __init__(
        self,
        *,
        models: Sequence[str] | None = None,
        protected_aliases: Mapping[str, Sequence[str]] | None = None,
        revert: bool | None = None,
        notifiers: Sequence[Any] = (),
        mlflow_conn_id: str | None = None,
        humanlayer_conn_id: str | None = None,
        fail_on_unverified: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.models = models
        self.protected_aliases = protected_aliases
        self.revert = revert
        self.notifiers = list(notifiers)
        self.mlflow_conn_id = mlflow_conn_id
        self.humanlayer_conn_id = humanlayer_conn_id
        self.fail_on_unverified = fail_on_unverified

    def execute(self, context: Context) -> list[dict[str, Any]]:
        from airflow.sdk.exceptions import AirflowException, AirflowFailException

        guard = AliasGuard(
            mlflow_conn_id=self.mlflow_conn_id,
            humanlayer_conn_id=self.humanlayer_conn_id,
            revert=self.revert,
            notifiers=self.notifiers,
            protected=self.protected_aliases,
            source="reconcile",
            context=context,
        )
        try:
            findings, errors = guard.reconcile(self.models)
        except GuardUnavailable as exc:
            raise AirflowException(str(exc)) from None
        for finding in findings:
            self.log.info("@%s of %s: %s (%s)", finding.alias, finding.model, finding.verdict, finding.reason)
        if errors:
            raise AirflowException("the alias guard could not check: " + "; ".join(errors))
        left = [f for f in findings if f.verdict == UNVERIFIED]
        if left and self.fail_on_unverified:
            raise AirflowFailException(
                "protected aliases on unattested versions: "
                + "; ".join(f"@{f.alias} of {f.model} (v{f.version})" for f in left)
            )
        return [f.to_json() for f in findings]
