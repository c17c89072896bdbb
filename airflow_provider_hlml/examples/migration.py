"""The database-migration example: a SQL script that runs only after a reviewer approved it.

:func:`prepare_database` creates a small SQLite application database, and :func:`apply_migration`
runs the approved script in one transaction, after checking that the approval it is given was
for exactly this script (same SHA-256) and recording it in ``schema_migrations`` so that a rerun
does not apply it twice. Only the standard library is used.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

from airflow_provider_hlml.analysis.code import code_digest as sql_digest

log = logging.getLogger(__name__)

MIGRATION_ID = "0002_users_email_verified"
MIGRATION_SQL = """\
ALTER TABLE users ADD COLUMN email_verified BOOLEAN NOT NULL DEFAULT 0;
UPDATE users SET email_verified = 1 WHERE email LIKE '%@example.com';
CREATE INDEX IF NOT EXISTS ix_users_email_verified ON users (email_verified);
"""

_SEED_USERS = (
    ("ada", "ada@example.com"),
    ("grace", "grace@example.com"),
    ("linus", "linus@example.org"),
)


def database_path(database: str | None = None) -> Path:
    """The example database: ``database``, else ``$HLML_EXAMPLE_DATA_DIR/app.db``, else a temp file."""
    if database:
        return Path(database)
    base = os.environ.get("HLML_EXAMPLE_DATA_DIR") or str(Path(tempfile.gettempdir()) / "hlml-data")
    return Path(base) / "app.db"


def prepare_database(database: str | None = None) -> dict[str, Any]:
    """Create the application database (a ``users`` table with a few rows) if it does not exist.

    :param database: path of the SQLite file (see :func:`database_path`).
    :return: ``{"database", "users", "columns"}``.
    """
    path = database_path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL UNIQUE)"
        )
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "id TEXT PRIMARY KEY, sha256 TEXT NOT NULL, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP, "
            "approved_by TEXT, approval_call_id TEXT)"
        )
        conn.executemany("INSERT OR IGNORE INTO users (name, email) VALUES (?, ?)", _SEED_USERS)
        users = conn.execute("SELECT COUNT(*) FROM users").fetchone()[0]
        columns = [row[1] for row in conn.execute("PRAGMA table_info(users)")]
    return {"database": str(path), "users": users, "columns": columns}


def _statements(sql: str) -> list[str]:
    statements, buffer = [], ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        raise ValueError(f"incomplete SQL statement at the end of the script: {buffer.strip()[:80]!r}")
    return statements


def apply_migration(
    approval: Mapping[str, Any] | None,
    database: str | None = None,
    migration_id: str = MIGRATION_ID,
    sql: str = MIGRATION_SQL,
) -> dict[str, Any]:
    """Run ``sql`` against the database in one transaction, if ``approval`` approved exactly it.

    :param approval: the approval gate's XCom result (``approved``, ``context``, ...).
    :param database: path of the SQLite file.
    :param migration_id: id recorded in ``schema_migrations``.
    :param sql: the script.
    :return: ``{"migration_id", "applied", "statements", "columns", "approved_by"}``.
    :raises PermissionError: when the approval is missing, negative or for another script.
    """
    if not approval or approval.get("approved") is not True:
        raise PermissionError(f"migration {migration_id} was not approved; refusing to run it")
    digest = sql_digest(sql)
    context = approval.get("context") or {}
    approved_code = context.get("code") if isinstance(context, Mapping) else None
    if not isinstance(approved_code, str):
        raise PermissionError(
            f"the approval {approval.get('call_id')} shows no code to the reviewer; refusing to run "
            f"migration {migration_id}"
        )
    # What the reviewer approved is the code the request showed: its digest is computed here, and
    # a digest sent next to it must agree with it (a request carrying one script's digest beside
    # another script's text is refused, whichever of the two matches).
    approved_digest = sql_digest(approved_code)
    sent_digest = context.get("sha256")
    if sent_digest is not None and sent_digest != approved_digest:
        raise PermissionError(
            f"the approval {approval.get('call_id')} is inconsistent: it showed code with sha256 "
            f"{approved_digest} but names sha256 {sent_digest}; refusing to run migration {migration_id}"
        )
    if approved_digest != digest:
        raise PermissionError(
            f"the approval {approval.get('call_id')} was for a different script "
            f"(sha256 {approved_digest}), not migration {migration_id} (sha256 {digest}); refusing to run it"
        )
    approved_by = approval.get("responded_by_user")
    reviewer = approved_by.get("name") if isinstance(approved_by, Mapping) else approved_by
    path = database_path(database)
    if not path.exists():
        raise FileNotFoundError(f"database {path} does not exist; run prepare_database first")
    statements = _statements(sql)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            done = conn.execute(
                "SELECT sha256 FROM schema_migrations WHERE id = ?", (migration_id,)
            ).fetchone()
            if done is not None:
                conn.execute("ROLLBACK")
                log.info("Migration %s is already applied; nothing to do", migration_id)
                applied = False
            else:
                for statement in statements:
                    log.info("Executing: %s", statement)
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (id, sha256, approved_by, approval_call_id) VALUES (?, ?, ?, ?)",
                    (migration_id, digest, str(reviewer) if reviewer else None, approval.get("call_id")),
                )
                conn.execute("COMMIT")
                applied = True
        except Exception:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        columns = [row[1] for row in conn.execute("PRAGMA table_info(users)")]
    return {
        "migration_id": migration_id,
        "applied": applied,
        "statements": len(statements),
        "columns": columns,
        "approved_by": reviewer,
    }
