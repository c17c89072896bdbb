"""``hlml-approvals``: keys, lists and decisions straight against the database."""

from __future__ import annotations

import json
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import text
from sqlalchemy.engine import make_url

from airflow_provider_hlml.approvals import db, store
from airflow_provider_hlml.approvals.cli import main
from tests.approvals.conftest import call_body, policy_state
from tests.fixtures.processes import VENV_BIN


@pytest.fixture
def database_url() -> str:
    url = f"sqlite:///{Path(tempfile.mkdtemp(prefix='hlml-cli-')) / 'cli.db'}"
    assert run("migrate", "--database-url", url).output.startswith("database at revision")
    return url


def run(*args: str, ok: bool = True) -> Result:
    result = CliRunner().invoke(main, list(args))
    if ok:
        assert result.exit_code == 0, result.output
    return result


def key(database_url: str, role: str, name: str, email: str | None = None) -> str:
    args = ["keys", "create", "--role", role, "--name", name, "--database-url", database_url, "--json"]
    data = json.loads(run(*args, *(["--email", email] if email else [])).output)
    assert data["key"].startswith("hl_")
    return str(data["key"])


def add_call(database_url: str, **kwargs: object) -> str:
    body = call_body(**kwargs)  # type: ignore[arg-type]
    engine = db.make_engine(database_url, pool_size=1)
    with db.make_sessionmaker(engine)() as session:
        agent = store.authenticate(session, key=key(database_url, "agent", "pipeline"))
        assert agent is not None
        store.create_request(
            session, kind=store.FUNCTION_CALL, run_id=body["run_id"], call_id=body["call_id"],
            spec=body["spec"], actor=agent,
        )  # fmt: skip
    engine.dispose()
    return str(body["call_id"])


class TestCli:
    def test_refuses_an_unmigrated_database(self) -> None:
        url = f"sqlite:///{Path(tempfile.mkdtemp()) / 'new.db'}"
        result = run("list", "--database-url", url, ok=False)
        assert result.exit_code != 0
        assert "hlml-approvals migrate" in result.output

    def test_serve_without_migrate_refuses_an_unmigrated_database(self) -> None:
        url = f"sqlite:///{Path(tempfile.mkdtemp()) / 'new.db'}"
        result = run("serve", "--no-migrate", "--port", "0", "--database-url", url, ok=False)
        assert result.exit_code != 0
        assert "schema revision none" in result.output
        assert "hlml-approvals migrate" in result.output

    def test_keys_are_stored_hashed(self, database_url: str) -> None:
        secret = key(database_url, "reviewer", "alice", "alice@example.com")
        listed = json.loads(run("keys", "list", "--database-url", database_url, "--json").output)
        assert listed[0]["prefix"] == secret[:10]
        assert listed[0]["role"] == "reviewer"
        assert secret not in json.dumps(listed)
        engine = db.make_engine(database_url, pool_size=1)
        with engine.connect() as conn:
            dump = "\n".join(str(r) for r in conn.exec_driver_sql("SELECT * FROM api_keys"))
        engine.dispose()
        assert secret not in dump
        assert store.hash_key(secret) in dump

    def test_revoked_key_no_longer_authenticates(self, database_url: str) -> None:
        secret = key(database_url, "agent", "ci")
        run("keys", "revoke", "1", "--database-url", database_url)
        engine = db.make_engine(database_url, pool_size=1)
        with db.make_sessionmaker(engine)() as session:
            assert store.authenticate(session, key=secret) is None
        engine.dispose()

    def test_role_must_match_existing_principal(self, database_url: str) -> None:
        key(database_url, "reviewer", "alice")
        result = run(
            "keys", "create", "--role", "admin", "--name", "alice", "--database-url", database_url, ok=False
        )
        assert "exists with role 'reviewer'" in result.output

    def test_list_show_approve_as_principal(self, database_url: str) -> None:
        key(database_url, "reviewer", "alice", "alice@example.com")
        call_id = add_call(database_url, state=policy_state(approvers=["alice@example.com"]))
        pending = json.loads(run("list", "--pending", "--database-url", database_url, "--json").output)
        assert [c["call_id"] for c in pending] == [call_id]
        assert call_id in run("list", "--database-url", database_url).output
        refused = run("approve", call_id, "--database-url", database_url, ok=False)
        assert "cli-admin is not one of the approvers" in refused.output
        out = run(
            "approve", call_id, "--as", "alice", "--comment", "ok", "--database-url", database_url
        ).output
        assert out.strip() == f"{call_id} approved by alice"
        shown = json.loads(run("show", call_id, "--database-url", database_url, "--json").output)
        assert shown["status"]["approved"] is True
        assert [e["event"] for e in shown["audit"]] == ["created", "refused", "responded"]
        text = run("show", call_id, "--database-url", database_url).output
        assert "status:       approved" in text
        again = run("reject", call_id, "--comment", "late", "--database-url", database_url, ok=False)
        assert "already approved" in again.output

    def test_reject_with_option_as_cli_admin(self, database_url: str) -> None:
        call_id = add_call(database_url, reject_options=[{"name": "retrain"}])
        out = run(
            "reject",
            call_id,
            "--comment",
            "drift",
            "--option",
            "retrain",
            "--database-url",
            database_url,
            "--json",
        ).output
        status = json.loads(out)["status"]
        assert (status["approved"], status["reject_option_name"]) == (False, "retrain")
        assert status["user_info"]["principal"] == "cli-admin"

    def test_unknown_principal_and_call(self, database_url: str) -> None:
        call_id = add_call(database_url)
        assert (
            "no principal named 'zed'"
            in run("approve", call_id, "--as", "zed", "--database-url", database_url, ok=False).output
        )
        assert "no function call" in run("show", "nope", "--database-url", database_url, ok=False).output

    def test_a_name_that_is_not_text_is_refused(self, database_url: str) -> None:
        """An argv byte that is not UTF-8 reaches Python as a lone surrogate: never written."""
        proc = subprocess.run(
            [str(VENV_BIN / "hlml-approvals"), "keys", "create", "--role", "reviewer", "--name", b"eve\xff"],
            capture_output=True,
            env={"HLML_APPROVALS_DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"},
            check=False,
        )
        assert proc.returncode != 0
        assert b"surrogate" in proc.stderr + proc.stdout
        listed = json.loads(run("keys", "list", "--json", "--database-url", database_url).output)
        assert all(k["principal"] != "eve\udcff" for k in listed)

    def test_console_script(self, database_url: str) -> None:
        proc = subprocess.run(
            [str(VENV_BIN / "hlml-approvals"), "list", "--json", "--database-url", database_url],
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(proc.stdout) == []


# What deciding, cancelling and escalating change; a request's identity and spec stay as created.
MUTABLE_REQUEST_COLUMNS: tuple[str, ...] = (
    "state",
    "version",
    "updated_at",
    "responded_at",
    "approved",
    "comment",
)
MUTABLE_REQUEST_COLUMNS += ("reject_option_name", "response", "response_option_name", "user_info")
MUTABLE_REQUEST_COLUMNS += ("cancelled_at", "cancel_reason", "extra_approvers")


class TestDbGrant:
    """``db grant ROLE``: the owner lets a role that owns nothing run the service."""

    def test_sqlite_has_no_roles(self, database_url: str) -> None:
        result = run("db", "grant", "hlml_app", "--database-url", database_url, ok=False)
        assert result.exit_code == 1
        assert "for PostgreSQL" in result.output
        assert "permissions of the database file" in result.output

    @pytest.fixture
    def pg(self, postgres_database_url: str) -> Iterator[PgCluster]:
        cluster = PgCluster(postgres_database_url)
        try:
            yield cluster
        finally:
            cluster.drop()

    @pytest.mark.postgres
    def test_refuses_owners_superusers_and_unknown_roles(self, pg: PgCluster) -> None:
        owner = pg.role("owner")
        url = pg.database(owner=owner)
        assert (
            "run 'hlml-approvals migrate' first"
            in run("db", "grant", owner, "--database-url", url, ok=False).output
        )
        run("migrate", "--database-url", url)
        member = pg.role("member")
        pg.admin(f"GRANT {pg.quote(owner)} TO {pg.quote(member)}")
        for role, message in (
            (owner, "owns table"),
            (member, f"member of its owner '{owner}'"),
            ("postgres", "is a superuser"),
            (f"nobody-{uuid.uuid4().hex[:6]}", "does not exist"),
        ):
            result = run("db", "grant", role, "--database-url", url, ok=False)
            assert result.exit_code == 1
            assert message in result.output, result.output

    @pytest.mark.postgres
    def test_grants_exactly_what_the_service_needs(self, pg: PgCluster) -> None:
        owner = pg.role("owner")
        url = pg.database(owner=owner)
        run("migrate", "--database-url", url)
        app = pg.role('app"; DROP TABLE audit_events; --')  # quoted as an identifier, never run
        pg.admin(f"GRANT DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public TO {pg.quote(app)}", url=url)
        assert "DELETE" in pg.privileges(url, app)["audit_events"]
        for _ in range(2):  # revokes what the role had, and gives the same result when run again
            assert "can now run the service" in run("db", "grant", app, "--database-url", url).output
        privileges = pg.privileges(url, app)
        assert privileges == {
            "alembic_version": {"SELECT"},
            "principals": {"SELECT", "INSERT", "UPDATE (email)", "UPDATE (role)"},
            "api_keys": {"SELECT", "INSERT", "UPDATE (revoked_at)"},
            "approval_requests": {"SELECT", "INSERT"} | {f"UPDATE ({c})" for c in MUTABLE_REQUEST_COLUMNS},
            "audit_events": {"SELECT", "INSERT"},
            "sequences": {"USAGE"},
        }


class PgCluster:
    """Roles and databases made on the test PostgreSQL server, all dropped by ``drop()``."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.engine = db.make_engine(server_url, pool_size=1).execution_options(isolation_level="AUTOCOMMIT")
        self.roles: list[str] = []
        self.databases: list[str] = []

    def admin(self, statement: str, *, url: str | None = None) -> None:
        """Run ``statement`` on the server's database, or as the user of ``url`` in its database."""
        if url is None:
            with self.engine.connect() as conn:
                conn.exec_driver_sql(statement)
            return
        engine = db.make_engine(url, pool_size=1)
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(statement)
        finally:
            engine.dispose()

    @staticmethod
    def quote(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    def role(self, prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.admin(f"CREATE ROLE {self.quote(name)} LOGIN")
        self.roles.append(name)
        return name

    def database(self, *, owner: str) -> str:
        name = f"hlml_grant_{uuid.uuid4().hex[:10]}"
        self.admin(f"CREATE DATABASE {self.quote(name)} OWNER {self.quote(owner)}")
        self.databases.append(name)
        return (
            make_url(self.server_url).set(database=name, username=owner).render_as_string(hide_password=False)
        )

    def privileges(self, url: str, role: str) -> dict[str, set[str]]:
        engine = db.make_engine(url, pool_size=1)
        try:
            with engine.connect() as conn:
                tables = conn.execute(
                    text(
                        "SELECT table_name, privilege_type FROM information_schema.role_table_grants "
                        "WHERE grantee = :role"
                    ),
                    {"role": role},
                ).all()
                columns = conn.execute(
                    text(
                        "SELECT table_name, privilege_type, column_name FROM information_schema.column_privileges "
                        "WHERE grantee = :role AND privilege_type = 'UPDATE'"
                    ),
                    {"role": role},
                ).all()
                sequences = conn.execute(
                    text(
                        "SELECT DISTINCT p.privilege_type FROM pg_class c, "
                        "aclexplode(c.relacl) p WHERE c.relkind = 'S' AND p.grantee = to_regrole(:quoted)"
                    ),
                    {"quoted": self.quote(role)},
                ).all()
        finally:
            engine.dispose()
        found: dict[str, set[str]] = {}
        for table, privilege in tables:
            found.setdefault(table, set()).add(privilege)
        for table, privilege, column in columns:
            found.setdefault(table, set()).add(f"{privilege} ({column})")
        found["sequences"] = {privilege for (privilege,) in sequences}
        return found

    def drop(self) -> None:
        for name in self.databases:
            self.admin(f"DROP DATABASE IF EXISTS {self.quote(name)} WITH (FORCE)")
        for name in self.roles:
            self.admin(f"DROP ROLE IF EXISTS {self.quote(name)}")
        self.engine.dispose()
