"""Engine, sessions and schema migrations."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def normalize_url(database_url: str) -> str:
    """Accept ``postgres://`` (as many platforms print it) and pick an installed PostgreSQL driver."""
    if database_url.startswith("postgres://"):
        database_url = "postgresql://" + database_url[len("postgres://") :]
    if database_url.startswith("postgresql://") and not _importable("psycopg") and _importable("psycopg2"):
        database_url = "postgresql+psycopg2://" + database_url[len("postgresql://") :]
    return database_url


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def make_engine(database_url: str, *, pool_size: int = 20) -> Engine:
    """Create an engine; SQLite files get WAL mode, a busy timeout and foreign keys."""
    url = make_url(normalize_url(database_url))
    kwargs: dict[str, Any] = {}
    if url.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        if url.database and url.database != ":memory:":
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            kwargs.update(pool_size=pool_size, max_overflow=pool_size)
    else:
        kwargs.update(pool_size=pool_size, max_overflow=pool_size)
    engine = create_engine(url, **kwargs)
    if url.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        event.listen(engine.pool, "checkin", _checked_in)
        event.listen(engine.pool, "checkout", _ping_if_idle)
    return engine


#: A pooled connection unused for longer than this is pinged before it is handed out.
IDLE_PING_SECONDS = 5.0


def _checked_in(_dbapi_conn: Any, record: Any) -> None:
    if record is not None:
        record.info["hlml_idle_since"] = time.monotonic()


def _ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
    """``pool_pre_ping``, for connections that sat idle: one that served a request a moment ago
    (the case under load) is handed out without a round trip; one idle longer than
    :data:`IDLE_PING_SECONDS` (the database may have restarted meanwhile) is checked first, and a
    dead one is replaced before anyone uses it (the pool retries on ``DisconnectionError``)."""
    idle_since = record.info.get("hlml_idle_since")
    if idle_since is None or time.monotonic() - idle_since < IDLE_PING_SECONDS:
        return
    try:
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
    except Exception as exc:
        raise DisconnectionError("the pooled connection is dead") from exc


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(database_url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", normalize_url(database_url).replace("%", "%%"))
    return cfg


def migrate(database_url: str, revision: str = "head") -> None:
    """Create or upgrade the schema with Alembic."""
    from alembic import command

    command.upgrade(alembic_config(database_url), revision)


def schema_status(database_url: str) -> tuple[str | None, str]:
    """Return (current revision of the database, head revision of the code)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(database_url))
    head = script.get_current_head()
    assert head is not None
    engine = make_engine(database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
    return current, head


class GrantError(Exception):
    """The role cannot be made the service's role (it does not exist, or it owns the tables)."""


#: Columns the service never changes; every other column of these tables it may UPDATE. The audit
#: trail (``audit_events``) is append-only and gets no UPDATE at all; of the audit chain's head
#: the service moves ``seq``, ``hash`` and ``updated_at``, never its id.
IMMUTABLE_COLUMNS: dict[str, frozenset[str]] = {
    "principals": frozenset({"id", "name", "created_at"}),
    "api_keys": frozenset({"id", "principal_id", "key_hash", "display_prefix", "created_at"}),
    "approval_requests": frozenset(
        {"id", "kind", "call_id", "run_id", "fn", "spec", "spec_hash", "requested_at"}
        | {"created_by_key_id", "created_by", "members"}
    ),
    # Delivery: a notice, a link's token, a timed step and an alert episode keep what they are;
    # only their progress changes.
    "deliveries": frozenset(
        {"id", "dedupe_key", "request_id", "episode_id", "channel", "recipient", "recipient_name"}
        | {"notice", "step", "created_at"}
    ),
    "action_tokens": frozenset(
        {"id", "token_hash", "request_id", "delivery_id", "recipient", "recipient_name", "action"}
        | {"created_at", "expires_at"}
    ),
    "request_steps": frozenset({"id", "request_id", "step", "action", "due_at", "params"}),
    "alert_episodes": frozenset({"id", "alert", "opened_at", "details"}),
    "audit_chain_head": frozenset({"id"}),
    # A signing key is what it is; the service only makes one active or retires it (revoking,
    # which also drops the private half, is the owner's: ``hlml-approvals signing-keys revoke``).
    "signing_keys": frozenset(
        {"id", "key_id", "public_key", "private_key", "source", "created_at", "revoked_at"}
    ),
}
APPEND_ONLY_TABLES = ("audit_events",)
#: Tables the service reads and updates but never inserts into: the audit chain's head is one row,
#: made by the migration (a second row would be a second head).
UPDATE_ONLY_TABLES = ("audit_chain_head",)
#: Tables the service only reads: groups are managed with ``hlml-approvals groups`` (as the owner).
READ_ONLY_TABLES = ("groups", "group_members")


def grant_service_role(database_url: str, role: str) -> list[str]:
    """Give ``role`` exactly what the service needs on PostgreSQL; return the statements run.

    SELECT and INSERT on the service's tables (SELECT only on the groups), UPDATE only on the columns the service changes,
    nothing but SELECT and INSERT on ``audit_events``, SELECT and UPDATE of ``seq``, ``hash`` and
    ``updated_at`` (no INSERT) on ``audit_chain_head``, USAGE on the id sequences, SELECT on
    ``alembic_version``; never DELETE or TRUNCATE. Whatever the role held on these tables before
    is revoked first, so running it again gives the same result. A role that owns the tables or
    their schema (or is a superuser, or a member of the owner) is refused: it could disable the
    triggers or drop the tables.

    :param database_url: the database, connected as the owner of the tables.
    :param role: an existing PostgreSQL role (a name, quoted before use, never interpolated raw).
    """
    from sqlalchemy import text

    from airflow_provider_hlml.approvals.models import Base

    engine = make_engine(database_url, pool_size=1)
    try:
        if engine.dialect.name != "postgresql":
            raise GrantError(f"database roles are a PostgreSQL feature, not {engine.dialect.name}'s")
        quote = engine.dialect.identifier_preparer.quote_identifier
        with engine.begin() as conn:
            schema = conn.execute(text("SELECT current_schema()")).scalar_one()
            _check_not_owner(conn, role=role, schema=schema)
            tables = {
                name: f"{quote(schema)}.{quote(name)}" for name in (*Base.metadata.tables, "alembic_version")
            }
            grantee = quote(role)
            statements = [f"REVOKE ALL ON TABLE {', '.join(tables.values())} FROM {grantee}"]
            sequences = []
            for name in Base.metadata.tables:
                seq = conn.execute(
                    text(
                        "SELECT n.nspname, c.relname FROM pg_class c "
                        "JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE c.oid = to_regclass(pg_get_serial_sequence(:table, 'id'))"
                    ),
                    {"table": f"{quote(schema)}.{quote(name)}"},
                ).first()
                if seq is not None:
                    sequences.append(f"{quote(seq[0])}.{quote(seq[1])}")
            if sequences:
                statements.append(f"REVOKE ALL ON SEQUENCE {', '.join(sequences)} FROM {grantee}")
            statements.append(f"GRANT USAGE ON SCHEMA {quote(schema)} TO {grantee}")
            statements.append(f"GRANT SELECT ON TABLE {tables['alembic_version']} TO {grantee}")
            for name, table in Base.metadata.tables.items():
                if name in READ_ONLY_TABLES:
                    statements.append(f"GRANT SELECT ON TABLE {tables[name]} TO {grantee}")
                    continue
                insert = "" if name in UPDATE_ONLY_TABLES else ", INSERT"
                statements.append(f"GRANT SELECT{insert} ON TABLE {tables[name]} TO {grantee}")
                if name in APPEND_ONLY_TABLES:
                    continue
                immutable = IMMUTABLE_COLUMNS.get(name, frozenset({"id"}))
                columns = [quote(c.name) for c in table.columns if c.name not in immutable]
                if columns:
                    statements.append(
                        f"GRANT UPDATE ({', '.join(columns)}) ON TABLE {tables[name]} TO {grantee}"
                    )
            if sequences:
                statements.append(f"GRANT USAGE ON SEQUENCE {', '.join(sequences)} TO {grantee}")
            for statement in statements:
                conn.exec_driver_sql(statement)
        return statements
    finally:
        engine.dispose()


def _check_not_owner(conn: Any, *, role: str, schema: str) -> None:
    from sqlalchemy import text

    from airflow_provider_hlml.approvals.models import Base

    found = conn.execute(text("SELECT rolsuper FROM pg_roles WHERE rolname = :role"), {"role": role}).first()
    if found is None:
        raise GrantError(
            f"role {role!r} does not exist: create it first (CREATE ROLE ... LOGIN PASSWORD ...)"
        )
    if found[0]:
        raise GrantError(f"role {role!r} is a superuser: it can disable the audit triggers")
    table_owners = dict(
        conn.execute(
            text(
                "SELECT tablename, tableowner FROM pg_tables "
                "WHERE schemaname = :schema AND tablename = ANY(:tables)"
            ),
            {"schema": schema, "tables": list(Base.metadata.tables)},
        ).all()
    )
    if missing := set(Base.metadata.tables) - set(table_owners):
        raise GrantError(
            f"tables {sorted(missing)} are missing from schema {schema!r}: run 'hlml-approvals migrate' first"
        )
    schema_owner = conn.execute(
        text("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = :schema"), {"schema": schema}
    ).scalar_one()
    # The schema's owner can drop the tables; a table's owner can also disable its triggers.
    owners = {f"table {t}": owner for t, owner in sorted(table_owners.items())}
    owners[f"schema {schema}"] = schema_owner
    for what, owner in owners.items():
        if conn.execute(
            text("SELECT pg_has_role(:role, :owner, 'MEMBER')"), {"role": role, "owner": owner}
        ).scalar():
            raise GrantError(
                f"role {role!r} owns {what} (or is a member of its owner {owner!r}), so it could disable "
                "the audit triggers or drop the tables: grant to a role that owns nothing"
            )
