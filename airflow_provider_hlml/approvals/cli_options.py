"""Options every ``hlml-approvals`` command group shares (``cli.py``, ``audit/cli.py``, ``attest/cli.py``)."""

from __future__ import annotations

import click

from airflow_provider_hlml.approvals.settings import DEFAULT_DATABASE_URL

database_option = click.option(
    "--database-url",
    envvar="HLML_APPROVALS_DATABASE_URL",
    default=DEFAULT_DATABASE_URL,
    show_default=True,
    help="SQLAlchemy URL of the approvals database (env HLML_APPROVALS_DATABASE_URL).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
