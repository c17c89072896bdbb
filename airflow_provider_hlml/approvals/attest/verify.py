"""Verify the model an alias points to: ``hlml-approvals verify-model NAME@ALIAS``.

For whoever serves a model: no Airflow, no database, only MLflow's client and the service's
public keys (fetched from its keys route, or one pinned key). The version the alias points to
must carry an attestation (the ``hlml.attestation`` tag :class:`ModelPromoteOperator` writes)
that a trusted key signed over an *approved* decision naming exactly that version: its name,
version, run id and source. Anything else is a failure with a reason.

In a serving container's start-up, without Airflow::

    python -m airflow_provider_hlml.verify churn@champion \\
        --tracking-uri http://mlflow:5000 --keys-url http://approvals:8000/humanlayer/v1/attestation/keys \\
        && exec serve-the-model

or from Python: ``verify_model("churn@champion", tracking_uri=..., keys_url=...).ok``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_hlml import audit
from airflow_provider_hlml.gate.attestation import (
    AttestationError,
    KeySet,
    Statement,
    check_names_model,
    public_key_from_text,
    verify_envelope,
)

__all__ = ["Verdict", "fetch_keys", "keys_from", "main", "verify_model", "verify_version"]

#: Environment variables the one-liner reads when no option is given.
KEYS_URL_ENV = "HLML_ATTESTATION_KEYS_URL"
PUBLIC_KEY_ENV = "HLML_ATTESTATION_PUBLIC_KEY"
MAX_KEYS_DOCUMENT = 256 * 1024


@dataclass(frozen=True)
class Verdict:
    """The outcome of one verification: ``ok`` and, if not, ``reason``."""

    ok: bool
    name: str
    version: str | None
    reason: str
    alias: str | None = None
    statement: Statement | None = field(default=None, repr=False)

    @property
    def call_id(self) -> str | None:
        return self.statement.call_id if self.statement else None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "model": self.name,
            "alias": self.alias,
            "version": self.version,
            "reason": self.reason,
            "call_id": self.call_id,
            "key_id": self.statement.key_id if self.statement else None,
            "approvers": self.statement.approvers if self.statement else [],
            "decided_at": self.statement.data.get("decided_at") if self.statement else None,
        }


def fetch_keys(url: str, *, timeout: float = 10.0) -> KeySet:
    """The keys document at ``url`` (an http(s) URL of the service's keys route)."""
    if not url.startswith(("http://", "https://")):
        raise AttestationError(f"the keys URL must be http(s), not {url[:40]!r}")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(MAX_KEYS_DOCUMENT + 1)
    except OSError as exc:
        raise AttestationError(f"cannot read the keys document at {url}: {type(exc).__name__}") from None
    if len(body) > MAX_KEYS_DOCUMENT:
        raise AttestationError(f"the keys document at {url} is larger than {MAX_KEYS_DOCUMENT} bytes")
    try:
        return KeySet.from_document(json.loads(body))
    except ValueError as exc:
        raise AttestationError(f"the keys document at {url} is not valid: {exc}") from None


def keys_from(*, keys_url: str | None = None, public_key: str | None = None) -> KeySet:
    """A pinned key (base64 or PEM text, or ``@path`` of a file holding it) wins over a keys URL."""
    if public_key:
        if public_key.startswith("@"):
            with open(public_key[1:], encoding="utf-8") as f:
                public_key = f.read()
        return KeySet.pinned(public_key_from_text(public_key))
    if keys_url:
        return fetch_keys(keys_url)
    raise AttestationError(
        f"no keys to verify with: give a keys URL ({KEYS_URL_ENV}) or a pinned public key ({PUBLIC_KEY_ENV})"
    )


def verify_version(
    client: Any, name: str, version: str | int, keys: KeySet, *, alias: str | None = None
) -> Verdict:
    """Whether model version ``name`` v``version`` carries a valid attestation of its approval.

    :param client: an ``mlflow.MlflowClient``.
    """
    mv = client.get_model_version(name, str(version))
    envelope = (mv.tags or {}).get(audit.ATTESTATION)
    where = f"{name} v{mv.version}" + (f" (@{alias})" if alias else "")
    if not envelope:
        return Verdict(False, name, str(mv.version), f"{where} carries no approval attestation", alias)
    try:
        statement = verify_envelope(envelope, keys)
        check_names_model(statement, name=name, version=mv.version, run_id=mv.run_id, source=mv.source)
    except AttestationError as exc:
        return Verdict(False, name, str(mv.version), f"{where}: {exc}", alias)
    approvers = ", ".join(statement.approvers) or "nobody named"
    return Verdict(
        True,
        name,
        str(mv.version),
        f"{where} was approved by {approvers} (request {statement.call_id}, key {statement.key_id})",
        alias,
        statement,
    )


def verify_model(
    ref: str,
    *,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
    keys_url: str | None = None,
    public_key: str | None = None,
    keys: KeySet | None = None,
) -> Verdict:
    """Verify ``NAME@ALIAS`` (or ``NAME/VERSION``): see the module's docstring."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, sep, alias = ref.rpartition("@")
    version: str | None = None
    if not sep:
        name, _, version = ref.rpartition("/")
        if not name or not version:
            raise ValueError(f"{ref!r}: give NAME@ALIAS or NAME/VERSION")
    try:
        keys = keys or keys_from(keys_url=keys_url, public_key=public_key)
    except AttestationError as exc:
        return Verdict(False, name, version, str(exc), alias or None)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
    try:
        if alias:
            version = str(client.get_model_version_by_alias(name, alias).version)
        return verify_version(client, name, str(version), keys, alias=alias or None)
    except MlflowException as exc:
        return Verdict(False, name, version, f"{ref}: {exc.message}", alias or None)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m airflow_provider_hlml.verify NAME@ALIAS``: exit 0 when verified, 1 when not."""
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_hlml.verify",
        description="Verify that the model version an alias points to was approved (signed attestation).",
    )
    parser.add_argument("model", help="NAME@ALIAS (or NAME/VERSION)")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
    parser.add_argument("--keys-url", default=os.environ.get(KEYS_URL_ENV), help="the service's keys route")
    parser.add_argument(
        "--public-key",
        default=os.environ.get(PUBLIC_KEY_ENV),
        help="trust only this key (base64, PEM, or @FILE); wins over --keys-url",
    )
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    args = parser.parse_args(argv)
    try:
        verdict = verify_model(
            args.model, tracking_uri=args.tracking_uri, keys_url=args.keys_url, public_key=args.public_key
        )
    except ValueError as exc:
        parser.error(str(exc))
    if args.json:
        print(json.dumps(verdict.to_json()))
    else:
        print(
            ("verified: " if verdict.ok else "NOT verified: ") + verdict.reason,
            file=sys.stdout if verdict.ok else sys.stderr,
        )
    return 0 if verdict.ok else 1
