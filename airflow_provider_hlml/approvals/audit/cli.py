"""``hlml-approvals audit``: verify the audit chain, export it, and verify an export offline.

``verify`` and ``export`` read the database directly (``--database-url`` or
``HLML_APPROVALS_DATABASE_URL``); ``verify-export`` needs none. ``verify`` exits 0 when the chain
is intact and 1 naming the first break.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from airflow_provider_hlml.approvals.cli_options import database_option, json_option
from airflow_provider_hlml.approvals.models import KINDS

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from airflow_provider_hlml.approvals.audit.chain import VerifyReport

_database_option = database_option
_json_option = json_option


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def audit() -> None:
    """Verify and export the hash-chained audit trail."""


@audit.command("verify")
@_database_option
@click.option("--call-id", help="Verify only the events of this request (and their links).")
@click.option(
    "--kind", type=click.Choice(KINDS), help="With --call-id: the request's kind (default: either)."
)
@click.option(
    "--against",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="An earlier export (JSON Lines): the database chain must still hold its head.",
)
@_json_option
def verify_command(
    database_url: str, call_id: str | None, kind: str | None, against: Path | None, as_json: bool
) -> None:
    """Recompute every event's hash and link; exit 1 naming the first break."""
    from airflow_provider_hlml.approvals.audit import chain
    from airflow_provider_hlml.approvals.audit.export import ExportError, exported_head

    if kind is not None and call_id is None:
        raise click.UsageError("--kind needs --call-id")
    if against is not None and call_id is not None:
        raise click.UsageError("--against checks the whole chain: leave out --call-id")
    head = None
    if against is not None:
        try:
            with against.open(encoding="utf-8") as lines:
                head = exported_head(lines)
        except ExportError as exc:
            raise click.ClickException(f"{against}: {exc}") from None
    with _engine(database_url) as engine:
        try:
            report = chain.verify(engine, call_id=call_id, kind=kind, against=head)
        except LookupError as exc:
            raise click.ClickException(str(exc.args[0])) from None
    _finish(report, as_json, against=against)


@audit.command("export")
@_database_option
@click.option(
    "--output",
    "-o",
    default="-",
    show_default=True,
    help="File to write the JSON Lines to ('-': standard output).",
)
def export_command(database_url: str, output: str) -> None:
    """Write every event (all columns, hashes included) and the chain head as JSON Lines."""
    from airflow_provider_hlml.approvals.audit.export import export

    with _engine(database_url) as engine:
        if output == "-":
            summary = export(engine, sys.stdout)
        else:
            with open(output, "w", encoding="utf-8") as file:
                summary = export(engine, file)
    click.echo(
        f"exported {summary.events} events, head seq {summary.head.seq} hash {summary.head.hash}", err=True
    )


@audit.command("verify-export")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@_json_option
def verify_export_command(file: str, as_json: bool) -> None:
    """Verify an export offline (no database): every hash, every link, and its head line."""
    from airflow_provider_hlml.approvals.audit.export import ExportError, verify_export

    try:
        with click.open_file(file, encoding="utf-8") as lines:
            report = verify_export(lines)
    except ExportError as exc:
        raise click.ClickException(f"{file}: {exc}") from None
    _finish(report, as_json)


def _finish(report: VerifyReport, as_json: bool, *, against: Path | None = None) -> None:
    data: dict[str, Any] = report.to_json()
    text = report.describe()
    if against is not None and report.ok:
        data["against"] = str(against)
        text += f"; holds the head of {against}"
    click.echo(json.dumps(data, indent=2) if as_json else text)
    if not report.ok:
        sys.exit(1)


@contextmanager
def _engine(database_url: str) -> Iterator[Engine]:
    from airflow_provider_hlml.approvals import db
    from airflow_provider_hlml.approvals.cli import _require_migrated

    _require_migrated(database_url)
    engine = db.make_engine(database_url, pool_size=1)
    try:
        yield engine
    finally:
        engine.dispose()
