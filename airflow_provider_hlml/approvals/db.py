"""Engine, sessions and schema migrations."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
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
        kwargs.update(pool_pre_ping=True, pool_size=pool_size, max_overflow=pool_size)
    engine = create_engine(url, **kwargs)
    if url.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


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
