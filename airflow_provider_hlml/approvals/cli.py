"""``hlml-approvals``: run the service and manage it straight from its database.

Every command but ``serve`` works on the database directly (``--database-url`` or
``HLML_APPROVALS_DATABASE_URL``), so an operator can answer requests without an API key.
``approve`` and ``reject`` record the principal named by ``--as NAME`` (it must exist, see
``keys create``) or, without ``--as``, the built-in principal ``cli-admin``; the request's
approval policy (approvers, rules, self-approval) applies to either. ``groups`` manages the groups
a request's approvers name as ``group:<name>``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from airflow_provider_hlml.approvals.cli_options import database_option, json_option
from airflow_provider_hlml.approvals.models import ROLES

F = TypeVar("F", bound=Callable[..., Any])

_database_option = database_option
_json_option = json_option


@contextmanager
def _session(database_url: str, *, check_schema: bool = True) -> Iterator[Any]:
    from airflow_provider_hlml.approvals import db
    from airflow_provider_hlml.approvals.store import ServiceError

    if check_schema:
        _require_migrated(database_url)
    engine = db.make_engine(database_url, pool_size=1)
    try:
        with db.make_sessionmaker(engine)() as session:
            yield session
    except ServiceError as exc:
        raise click.ClickException(exc.message) from None
    finally:
        engine.dispose()


def _require_migrated(database_url: str) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    from airflow_provider_hlml.approvals import db

    try:
        current, head = db.schema_status(database_url)
    except SQLAlchemyError as exc:
        raise click.ClickException(
            f"cannot open the database: {exc.__class__.__name__}: {exc.args[0]}"
        ) from None
    if current != head:
        raise click.ClickException(
            f"the database is at schema revision {current or 'none'}, not {head}: "
            "run 'hlml-approvals migrate' first"
        )


def _emit(data: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    click.echo(json.dumps(data, indent=2, default=str) if as_json else text(data))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """HumanLayer-compatible approvals service."""


@main.command()
@click.option("--host", envvar="HLML_APPROVALS_HOST", default="127.0.0.1", show_default=True)
@click.option("--port", envvar="HLML_APPROVALS_PORT", default=8000, show_default=True, type=int)
@_database_option
@click.option(
    "--migrate/--no-migrate",
    default=True,
    show_default=True,
    help="Upgrade the schema before serving; with --no-migrate an outdated schema is refused.",
)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--log-level", default="info", show_default=True)
@click.option(
    "--deliver/--no-deliver",
    default=True,
    show_default=True,
    help="Deliver requests (e-mail, Slack, reminders, alerts) and decisions (webhooks) from the "
    "server processes; with --no-deliver, run 'hlml-approvals deliver' as processes of their own.",
)
@click.option(
    "--webhook-url",
    "webhook_urls",
    multiple=True,
    help="URL notified when a request is decided or cancelled, until it answers 2xx (repeatable; "
    "the secret comes from HLML_APPROVALS_WEBHOOK_SECRET). Default: HLML_APPROVALS_WEBHOOK_URLS.",
)
def serve(
    host: str,
    port: int,
    database_url: str,
    migrate: bool,
    workers: int,
    log_level: str,
    deliver: bool,
    webhook_urls: tuple[str, ...],
) -> None:
    """Serve the API with uvicorn."""
    import os

    import uvicorn

    from airflow_provider_hlml.approvals import db

    if migrate:
        db.migrate(database_url)
    else:
        _require_migrated(database_url)
    os.environ["HLML_APPROVALS_DATABASE_URL"] = database_url
    if webhook_urls:
        os.environ["HLML_APPROVALS_WEBHOOK_URLS"] = ",".join(webhook_urls)
    if not deliver:
        os.environ["HLML_APPROVALS_DELIVERY_IN_SERVER"] = "false"
    uvicorn.run(
        "airflow_provider_hlml.approvals.cli:_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=False,
    )


def _app_from_env() -> Any:
    from airflow_provider_hlml.approvals.app import create_app
    from airflow_provider_hlml.approvals.settings import ApprovalsSettings

    return create_app(ApprovalsSettings())


@main.command()
@_database_option
@click.option("--log-level", default="info", show_default=True)
def deliver(database_url: str, log_level: str) -> None:
    """Deliver requests (e-mail, Slack, reminders, escalations, alerts) and decisions (webhooks)
    until stopped.

    The same work ``serve`` does in its processes, in a process of its own: run it next to
    ``serve --no-deliver`` to give delivery its own CPU; any number of ``deliver`` and ``serve``
    processes share the work through the database (each notice and step is claimed once).
    """
    import logging
    import signal
    import threading

    from airflow_provider_hlml.approvals import db
    from airflow_provider_hlml.approvals.api.serialize import body_for
    from airflow_provider_hlml.approvals.delivery import DeliveryWorker
    from airflow_provider_hlml.approvals.settings import ApprovalsSettings

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _require_migrated(database_url)
    settings = ApprovalsSettings(database_url=database_url)
    if not settings.delivers:
        raise click.UsageError(
            "no channel is configured: set HLML_APPROVALS_SMTP_URL, HLML_APPROVALS_SLACK_BOT_TOKEN "
            "or HLML_APPROVALS_WEBHOOK_URLS"
        )
    engine = db.make_engine(database_url, pool_size=settings.delivery_concurrency + 2)
    worker = DeliveryWorker(settings, db.make_sessionmaker(engine), body_of=body_for)
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    worker.start()
    click.echo(f"delivering through {', '.join(sorted(worker.channels))}", err=True)
    stopped.wait()
    worker.stop()
    engine.dispose()


@main.command()
@_database_option
def migrate(database_url: str) -> None:
    """Create or upgrade the database schema."""
    from airflow_provider_hlml.approvals import db

    db.migrate(database_url)
    current, _ = db.schema_status(database_url)
    click.echo(f"database at revision {current}")


@main.group("db")
def db_commands() -> None:
    """Database administration, run as the owner of the tables."""


@db_commands.command("grant")
@click.argument("role")
@_database_option
def db_grant(role: str, database_url: str) -> None:
    """Let the existing PostgreSQL role ROLE run the service, and nothing more.

    Run it as the owner of the tables, after 'migrate'; then serve with a database URL that logs in
    as ROLE. ROLE gets SELECT and INSERT, UPDATE on the columns the service changes, USAGE on the
    id sequences, and no DELETE, no TRUNCATE, no UPDATE of the audit trail. Not owning the tables,
    it cannot disable the audit triggers either. A role that owns the tables is refused.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from airflow_provider_hlml.approvals import db

    if make_url(db.normalize_url(database_url)).get_backend_name() != "postgresql":
        raise click.ClickException(
            "'db grant' is for PostgreSQL: SQLite has no database roles, so the permissions of the "
            "database file (and its -wal and -shm files) are the boundary; make them writable only by "
            "the service's user"
        )
    _require_migrated(database_url)
    try:
        statements = db.grant_service_role(database_url, role)
    except db.GrantError as exc:
        raise click.ClickException(str(exc)) from None
    except SQLAlchemyError as exc:
        raise click.ClickException(f"cannot grant: {exc.__class__.__name__}: {exc.args[0]}") from None
    for statement in statements:
        click.echo(f"{statement};")
    click.echo(f"role {role!r} can now run the service")


@main.group()
def keys() -> None:
    """Create, list and revoke API keys."""


@keys.command("create")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--name", required=True, help="Principal name (created if new).")
@click.option("--email", default=None)
@_database_option
@_json_option
def keys_create(role: str, name: str, email: str | None, database_url: str, as_json: bool) -> None:
    """Create an API key and print it (it is shown only once)."""
    from airflow_provider_hlml.approvals import store

    with _session(database_url) as session:
        principal, key = store.create_key(session, name=name, role=role, email=email)
        data = {"key": key, "principal": principal.name, "email": principal.email, "role": principal.role}
    _emit(data, as_json, lambda d: d["key"])


@keys.command("list")
@_database_option
@_json_option
def keys_list(database_url: str, as_json: bool) -> None:
    """List API keys (prefixes only; keys are stored hashed)."""
    from airflow_provider_hlml.approvals import store

    with _session(database_url) as session:
        data = store.list_keys(session)
    _emit(
        data,
        as_json,
        lambda rows: "\n".join(
            f"{r['id']}\t{r['prefix']}...\t{r['role']}\t{r['principal']}\t{r['email'] or '-'}"
            f"\t{'revoked' if r['revoked_at'] else 'active'}"
            for r in rows
        ),
    )


@keys.command("revoke")
@click.argument("key_id", type=int)
@_database_option
def keys_revoke(key_id: int, database_url: str) -> None:
    """Revoke the key with id KEY_ID (see 'keys list')."""
    from airflow_provider_hlml.approvals import store

    with _session(database_url) as session:
        store.revoke_key(session, key_id=key_id)
    click.echo(f"revoked key {key_id}")


@main.group()
def groups() -> None:
    """Create groups of principals and change their members.

    A request's approvers and rules name a group as ``group:<name>``; its members are resolved
    when the request opens, so a change here never alters a pending request. NAME may be given
    with or without the ``group:`` prefix.
    """


def _group_label(name: str) -> str:
    return f"group:{name}"


@groups.command("create")
@click.argument("name")
@_database_option
@_json_option
def groups_create(name: str, database_url: str, as_json: bool) -> None:
    """Create the empty group NAME."""
    from airflow_provider_hlml.approvals import store

    with _session(database_url) as session:
        group = store.create_group(session, name=name)
        data = {"name": group.name, "members": []}
    _emit(data, as_json, lambda d: f"created {_group_label(d['name'])}")


@groups.command("add")
@click.argument("name")
@click.argument("principals", nargs=-1, required=True)
@_database_option
@_json_option
def groups_add(name: str, principals: tuple[str, ...], database_url: str, as_json: bool) -> None:
    """Add the existing principals PRINCIPALS (see 'keys create') to group NAME."""
    from airflow_provider_hlml.approvals import store

    with _session(database_url) as session:
        added = store.add_to_group(session, name=name, principals=list(principals))
        data = _group_change(session, name, changed=added, requested=principals, key="added")

    def text(d: dict[str, Any]) -> str:
        lines = [f"added {', '.join(d['added'])} to {_group_label(d['group'])}"] if d["added"] else []
        if d["unchanged"]:
            lines.append(f"already members of {_group_label(d['group'])}: {', '.join(d['unchanged'])}")
        return "\n".join(lines)

    _emit(data, as_json, text)


@groups.command("remove")
@click.argument("name")
@click.argument("principals", nargs=-1, required=True)
@_database_option
@_json_option
def groups_remove(name: str, principals: tuple[str, ...], database_url: str, as_json: bool) -> None:
    """Remove principals from group NAME (pending requests keep the members they opened with).

    Nothing is removed, and the command fails, when one of PRINCIPALS is not a member.
    """
    from airflow_provider_hlml.approvals import store

    with _session(database_url) as session:
        current = _group_of(session, name)
        members = {m["name"] for m in current["members"]}
        strangers = [p for p in dict.fromkeys(principals) if p not in members]
        if strangers:
            raise click.ClickException(
                f"not members of {_group_label(current['name'])}: {', '.join(strangers)}; nothing removed"
            )
        removed = store.remove_from_group(session, name=name, principals=list(dict.fromkeys(principals)))
        data = _group_change(session, name, changed=removed, requested=principals, key="removed")
    _emit(data, as_json, lambda d: f"removed {', '.join(d['removed'])} from {_group_label(d['group'])}")


@groups.command("list")
@_database_option
@_json_option
def groups_list(database_url: str, as_json: bool) -> None:
    """List the groups and their members."""
    from airflow_provider_hlml.approvals import store

    with _session(database_url) as session:
        data = store.list_groups(session)
    _emit(
        data,
        as_json,
        lambda rows: "\n".join(
            f"{_group_label(g['name'])}\t"
            + (", ".join(m["name"] + (f" <{m['email']}>" if m["email"] else "") for m in g["members"]) or "-")
            for g in rows
        ),
    )


def _group_of(session: Any, name: str) -> dict[str, Any]:
    """Group ``name`` as ``list_groups`` reports it (a ServiceError when there is none)."""
    from airflow_provider_hlml.approvals import store

    # The store checks the name and answers "unknown_group" for a group that does not exist.
    bare = store._get_group(session, name).name
    return next(g for g in store.list_groups(session) if g["name"] == bare)


def _group_change(
    session: Any, name: str, *, changed: list[str], requested: tuple[str, ...], key: str
) -> dict[str, Any]:
    group = _group_of(session, name)
    return {
        "group": group["name"],
        key: changed,
        "unchanged": [p for p in dict.fromkeys(requested) if p not in changed],
        "members": group["members"],
    }


def _call_body(row: Any) -> dict[str, Any]:
    from airflow_provider_hlml.approvals.api.serialize import body_for

    return body_for(row)


def _status_word(body: dict[str, Any]) -> str:
    status = body.get("status") or {}
    if status.get("cancelled_at"):
        return "expired" if status.get("cancel_reason") == "timeout" else "cancelled"
    if status.get("approved") is True:
        return "approved"
    if status.get("approved") is False:
        return "rejected"
    if status.get("response") is not None:
        return "responded"
    return "pending"


@main.command("list")
@click.option("--pending", is_flag=True, help="Only pending calls (same as --status pending).")
@click.option("--status", type=click.Choice(["pending", "approved", "rejected", "cancelled"]), default=None)
@click.option("--run-id", default=None)
@click.option("--fn", default=None)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000))
@_database_option
@_json_option
def list_calls(
    pending: bool,
    status: str | None,
    run_id: str | None,
    fn: str | None,
    limit: int,
    database_url: str,
    as_json: bool,
) -> None:
    """List function calls, newest first."""
    from airflow_provider_hlml.approvals import store

    with _session(database_url) as session:
        rows, _ = store.list_requests(
            session,
            kind=store.FUNCTION_CALL,
            state="pending" if pending else status,
            run_id=run_id,
            fn=fn,
            limit=limit,
        )
        data = [_call_body(r) for r in rows]
    _emit(
        data,
        as_json,
        lambda items: "\n".join(
            f"{b['call_id']}\t{_status_word(b)}\t{b['spec']['fn']}\t{b['run_id']}\t{b['status']['requested_at']}"
            for b in items
        ),
    )


@main.command()
@click.argument("call_id")
@_database_option
@_json_option
def show(call_id: str, database_url: str, as_json: bool) -> None:
    """Show one function call with its audit trail."""
    from airflow_provider_hlml.approvals import store
    from airflow_provider_hlml.approvals.api.serialize import audit_body
    from airflow_provider_hlml.review.card import build_card

    with _session(database_url) as session:
        row = store.get_request(session, kind=store.FUNCTION_CALL, call_id=call_id)
        data = _call_body(row)
        data["audit"] = [
            audit_body(e).model_dump(mode="json")
            for e in store.audit_events(session, kind=store.FUNCTION_CALL, call_id=call_id)
        ]

    def text(d: dict[str, Any]) -> str:
        status = d["status"]
        lines = [
            f"call_id:      {d['call_id']}",
            f"run_id:       {d['run_id']}",
            f"fn:           {d['spec']['fn']}",
            f"status:       {_status_word(d)}",
            f"requested_at: {status['requested_at']}",
            f"responded_at: {status['responded_at'] or '-'}",
            f"comment:      {status['comment'] or '-'}",
        ]
        decision = build_card(d).decision
        if decision and decision["reject_option"]:
            lines.append(f"reason:       {decision['reject_option_title']} ({decision['reject_option']})")
        lines += [
            f"kwargs:       {json.dumps(d['spec']['kwargs'], default=str)}",
            "rules:",
        ]
        lines += [f"  {_rule_progress(r)}" for r in status.get("rules") or []]
        answers = status.get("answers") or []
        lines.append("answers:" + ("" if answers else "      -"))
        lines += [
            f"  {a.get('name') or a.get('email') or a.get('principal') or '?'}"
            + (f" <{a['email']}>" if a.get("email") else "")
            + f"  {'approve' if a.get('approved') else 'reject'}"
            + (f"  toward {a['rule']}" if a.get("rule") else "")
            + (f"  for principal {a['principal']}" if a.get("via_delegate") else "")
            + (f": {a['comment']}" if a.get("comment") else "")
            for a in answers
        ]
        members = status.get("members") or {}
        if members:
            lines.append("members (as the request opened):")
            lines += [f"  {group}: {', '.join(ids) or '-'}" for group, ids in sorted(members.items())]
        lines.append("audit:")
        lines += [
            f"  {e['at']}  {e['event']:<10} {e['actor'] or '-'}"
            + (f" for {e['on_behalf_of']}" if e["on_behalf_of"] else "")
            + (f": {e['comment']}" if e["comment"] else "")
            for e in d["audit"]
        ]
        return "\n".join(lines)

    _emit(data, as_json, text)


def _respond(
    call_id: str,
    approved: bool,
    comment: str | None,
    option: str | None,
    /,
    *,
    principal: str | None,
    database_url: str,
    as_json: bool,
) -> None:
    """Decide ``call_id`` (approve, or reject with ``option``) as ``principal``, and print it."""
    from airflow_provider_hlml.approvals import store

    with _session(database_url) as session:
        actor = store.principal_actor(session, name=principal)
        row = store.respond_function_call(
            session,
            call_id=call_id,
            approved=approved,
            comment=comment,
            reject_option_name=option,
            actor=actor,
        )
        data = _call_body(row)
    _emit(data, as_json, _answered_text)


def _rule_progress(rule: dict[str, Any]) -> str:
    """One rule's progress in words: ``ML lead 1 of 2: alice``."""
    approved_by = list(rule.get("approved_by") or [])
    who = f": {', '.join(approved_by)}" if approved_by else ""
    return f"{rule.get('name')} {len(approved_by)} of {rule.get('required')}{who}"


def _answered_text(d: dict[str, Any]) -> str:
    """What ``approve`` and ``reject`` print: the decision, or the progress of a request still pending."""
    status = d["status"]
    if status.get("user_info"):
        return f"{d['call_id']} {_status_word(d)} by {status['user_info']['name']}"
    last = (status.get("answers") or [{}])[-1]
    progress = "; ".join(_rule_progress(r) for r in status.get("rules") or [])
    verb = "approved" if last.get("approved") else "rejected"
    toward = f" toward {last['rule']}" if last.get("rule") else ""
    return f"{d['call_id']} pending: {last.get('name') or '?'} {verb}{toward} ({progress})"


_as_option = click.option(
    "--as",
    "principal",
    default=None,
    help="Record the decision as this existing principal (default: the built-in 'cli-admin').",
)


@main.command()
@click.argument("call_id")
@click.option("--comment", default=None)
@_as_option
@_database_option
@_json_option
def approve(
    call_id: str, comment: str | None, principal: str | None, database_url: str, as_json: bool
) -> None:
    """Approve a pending function call."""
    _respond(call_id, True, comment, None, principal=principal, database_url=database_url, as_json=as_json)


@main.command()
@click.argument("call_id")
@click.option("--comment", required=True)
@click.option("--option", default=None, help="Name of one of the call's reject options.")
@_as_option
@_database_option
@_json_option
def reject(
    call_id: str, comment: str, option: str | None, principal: str | None, database_url: str, as_json: bool
) -> None:
    """Reject a pending function call."""
    _respond(call_id, False, comment, option, principal=principal, database_url=database_url, as_json=as_json)


def _add_commands() -> None:
    from airflow_provider_hlml.approvals.attest.cli import signing_keys, verify_attestations, verify_model
    from airflow_provider_hlml.approvals.audit.cli import audit

    audit.add_command(verify_attestations)
    main.add_command(audit)
    main.add_command(signing_keys)
    main.add_command(verify_model)


_add_commands()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
