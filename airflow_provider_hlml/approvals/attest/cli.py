"""``hlml-approvals signing-keys ...`` and ``hlml-approvals verify-model NAME@ALIAS``."""

from __future__ import annotations

import json
import sys

import click

from airflow_provider_hlml.approvals.attest.verify import KEYS_URL_ENV, PUBLIC_KEY_ENV
from airflow_provider_hlml.approvals.cli_options import database_option

_database_option = database_option


@click.group("signing-keys")
def signing_keys() -> None:
    """The Ed25519 keys decisions are signed with: list, rotate, revoke."""


@signing_keys.command("list")
@_database_option
@click.option(
    "--json", "as_json", is_flag=True, help="Print the public keys document (as the keys route serves it)."
)
def keys_list(database_url: str, as_json: bool) -> None:
    """List every signing key with its status (active, retired, revoked)."""
    from airflow_provider_hlml.approvals.attest import keys
    from airflow_provider_hlml.approvals.cli import _session

    with _session(database_url) as session:
        rows = keys.list_keys(session)
    if as_json:
        click.echo(json.dumps({"keys": rows}, indent=2))
        return
    for r in rows:
        click.echo(f"{r['keyid']}\t{r['status']}\t{r['source']}\tcreated {r['created_at']}")


@signing_keys.command("rotate")
@_database_option
@click.option("--key-file", default="", help="Activate the key in this PEM file instead of generating one.")
def keys_rotate(database_url: str, key_file: str) -> None:
    """Retire the active key (what it signed stays valid) and start signing with a new one.

    A service that reads its key from a file rotates by pointing HLML_APPROVALS_SIGNING_KEY_FILE
    at a new file (``signing-keys new-file``) and restarting; ``--key-file`` records it at once.
    """
    from airflow_provider_hlml.approvals.attest import keys
    from airflow_provider_hlml.approvals.cli import _session

    with _session(database_url) as session:
        key_id = keys.rotate(session, key_file=key_file or None)
    click.echo(f"signing with key {key_id}")


@signing_keys.command("revoke")
@click.argument("key_id")
@_database_option
def keys_revoke(key_id: str, database_url: str) -> None:
    """Withdraw KEY_ID: nothing it signed verifies any more (for a leaked key)."""
    from airflow_provider_hlml.approvals.attest import keys
    from airflow_provider_hlml.approvals.cli import _session

    with _session(database_url) as session:
        try:
            keys.revoke(session, key_id=key_id)
        except LookupError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"revoked signing key {key_id}")


@signing_keys.command("new-file")
@click.argument("path")
def keys_new_file(path: str) -> None:
    """Write a new Ed25519 private key to PATH (PEM, mode 0600) for HLML_APPROVALS_SIGNING_KEY_FILE."""
    from airflow_provider_hlml.approvals.attest import keys

    try:
        key_id = keys.write_key_file(path)
    except FileExistsError:
        raise click.ClickException(f"{path} exists: not overwritten") from None
    click.echo(f"wrote key {key_id} to {path}")


@click.command("verify-model")
@click.argument("model")
@click.option(
    "--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None, help="MLflow (env MLFLOW_TRACKING_URI)."
)
@click.option(
    "--keys-url", envvar=KEYS_URL_ENV, default=None, help=f"The service's keys route (env {KEYS_URL_ENV})."
)
@click.option(
    "--public-key",
    envvar=PUBLIC_KEY_ENV,
    default=None,
    help=f"Trust only this key: base64, PEM or @FILE (env {PUBLIC_KEY_ENV}).",
)
@_database_option
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
def verify_model(
    model: str,
    tracking_uri: str | None,
    keys_url: str | None,
    public_key: str | None,
    database_url: str,
    as_json: bool,
) -> None:
    """Check that MODEL (NAME@ALIAS or NAME/VERSION) was approved: its version carries an
    attestation signed by a trusted key over an approved decision naming exactly that version.

    Keys: a pinned --public-key, else --keys-url, else this service's database. Exit 0 when
    verified, 1 with the reason when not.
    """
    from airflow_provider_hlml.approvals.attest import verify
    from airflow_provider_hlml.gate.attestation import KeySet

    key_set: KeySet | None = None
    if not public_key and not keys_url:
        from airflow_provider_hlml.approvals.attest import keys
        from airflow_provider_hlml.approvals.cli import _session

        with _session(database_url) as session:
            key_set = keys.key_set(session)
    try:
        verdict = verify.verify_model(
            model, tracking_uri=tracking_uri, keys_url=keys_url, public_key=public_key, keys=key_set
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="MODEL") from None
    if as_json:
        click.echo(json.dumps(verdict.to_json()))
    else:
        click.echo(("verified: " if verdict.ok else "NOT verified: ") + verdict.reason, err=not verdict.ok)
    sys.exit(0 if verdict.ok else 1)


@click.command("verify-attestations")
@_database_option
@click.option("--keys-url", envvar=KEYS_URL_ENV, default=None, help="Trust the keys published there.")
@click.option(
    "--public-key", envvar=PUBLIC_KEY_ENV, default=None, help="Trust only this key (base64, PEM, @FILE)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def verify_attestations(
    database_url: str, keys_url: str | None, public_key: str | None, as_json: bool
) -> None:
    """Check every signed decision: its signature, and that the audit event it was signed with is
    still in the chain with the same hash (catches a chain rewritten with recomputed hashes).
    Keys: --public-key, else --keys-url, else the database's own (an auditor pins their copy)."""
    from airflow_provider_hlml.approvals.attest import keys
    from airflow_provider_hlml.approvals.attest.check import check_attestations
    from airflow_provider_hlml.approvals.attest.verify import keys_from
    from airflow_provider_hlml.approvals.cli import _session
    from airflow_provider_hlml.gate.attestation import AttestationError

    with _session(database_url) as session:
        try:
            key_set = (
                keys_from(keys_url=keys_url, public_key=public_key)
                if keys_url or public_key
                else keys.key_set(session)
            )
        except AttestationError as exc:
            raise click.ClickException(str(exc)) from None
        report = check_attestations(session, key_set)
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else report.describe())
    sys.exit(0 if report.ok else 1)
