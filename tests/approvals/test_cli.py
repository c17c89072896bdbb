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
        call_id = add_call(database_url, reject_options=[{"name": "retrain", "title": "Needs retraining"}])
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
        text = run("show", call_id, "--database-url", database_url).output
        assert "reason:       Needs retraining (retrain)" in text.splitlines()

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
MUTABLE_REQUEST_COLUMNS += ("cancelled_at", "cancel_reason", "extra_approvers", "answers", "attestation")


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
            # The chain head is one row, made by the migration: moved, never inserted.
            "audit_chain_head": {"SELECT", "UPDATE (seq)", "UPDATE (hash)", "UPDATE (updated_at)"},
            "groups": {"SELECT"},
            "group_members": {"SELECT"},
            "deliveries": {"SELECT", "INSERT"}
            | {f"UPDATE ({c})" for c in ("state", "attempts", "due_at", "claimed_until", "claimed_by")}
            | {"UPDATE (sent_at)", "UPDATE (ref)", "UPDATE (last_error)"},
            "action_tokens": {"SELECT", "INSERT", "UPDATE (used_at)"},
            "request_steps": {
                "SELECT",
                "INSERT",
                "UPDATE (claimed_until)",
                "UPDATE (done_at)",
                "UPDATE (outcome)",
            },
            "alert_episodes": {"SELECT", "INSERT", "UPDATE (open_key)", "UPDATE (closed_at)"},
            # The first key is made by the service; it activates and retires keys, nothing else.
            "signing_keys": {"SELECT", "INSERT", "UPDATE (active)", "UPDATE (retired_at)"},
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


def rules_state(rules: list[dict[str, object]], **hlml: object) -> dict[str, object]:
    state = policy_state()
    state["hlml"] = {**state["hlml"], "rules": rules, **hlml}
    return state


class TestGroups:
    """``groups create|add|remove|list``: the groups a request's rules name as ``group:<name>``."""

    def test_create_add_remove_list(self, database_url: str) -> None:
        key(database_url, "reviewer", "alice", "alice@example.com")
        key(database_url, "reviewer", "bob")
        assert run("groups", "create", "ml-leads", "--database-url", database_url).output.strip() == (
            "created group:ml-leads"
        )
        created = json.loads(
            run("groups", "create", "group:compliance", "--database-url", database_url, "--json").output
        )
        assert created == {"name": "compliance", "members": []}
        out = run("groups", "add", "ml-leads", "alice", "bob", "--database-url", database_url).output
        assert out.strip() == "added alice, bob to group:ml-leads"
        again = run("groups", "add", "group:ml-leads", "bob", "--database-url", database_url, "--json").output
        assert json.loads(again) == {
            "group": "ml-leads",
            "added": [],
            "unchanged": ["bob"],
            "members": [{"name": "alice", "email": "alice@example.com"}, {"name": "bob", "email": None}],
        }
        listed = json.loads(run("groups", "list", "--database-url", database_url, "--json").output)
        assert listed == [
            {"name": "compliance", "members": []},
            {
                "name": "ml-leads",
                "members": [{"name": "alice", "email": "alice@example.com"}, {"name": "bob", "email": None}],
            },
        ]
        text = run("groups", "list", "--database-url", database_url).output.splitlines()
        assert text == ["group:compliance\t-", "group:ml-leads\talice <alice@example.com>, bob"]
        out = run("groups", "remove", "GROUP:ml-leads", "alice", "--database-url", database_url).output
        assert out.strip() == "removed alice from group:ml-leads"
        listed = json.loads(run("groups", "list", "--database-url", database_url, "--json").output)
        assert listed[1] == {"name": "ml-leads", "members": [{"name": "bob", "email": None}]}

    def test_unknown_group(self, database_url: str) -> None:
        key(database_url, "reviewer", "alice")
        for command in (["add", "nope", "alice"], ["remove", "group:nope", "alice"]):
            result = run("groups", *command, "--database-url", database_url, ok=False)
            assert result.exit_code == 1, result.output
            assert result.output.strip() == "Error: no group named 'nope'"

    def test_unknown_principal_adds_nobody(self, database_url: str) -> None:
        key(database_url, "reviewer", "alice")
        run("groups", "create", "oncall", "--database-url", database_url)
        result = run("groups", "add", "oncall", "alice", "zed", "--database-url", database_url, ok=False)
        assert result.exit_code == 1
        assert result.output.strip() == "Error: no principal named 'zed'"
        listed = json.loads(run("groups", "list", "--database-url", database_url, "--json").output)
        assert listed == [{"name": "oncall", "members": []}]

    def test_removing_a_non_member_removes_nobody(self, database_url: str) -> None:
        key(database_url, "reviewer", "alice")
        key(database_url, "reviewer", "bob")
        run("groups", "create", "oncall", "--database-url", database_url)
        run("groups", "add", "oncall", "alice", "--database-url", database_url)
        result = run("groups", "remove", "oncall", "alice", "bob", "--database-url", database_url, ok=False)
        assert result.exit_code == 1
        assert result.output.strip() == "Error: not members of group:oncall: bob; nothing removed"
        listed = json.loads(run("groups", "list", "--database-url", database_url, "--json").output)
        assert listed == [{"name": "oncall", "members": [{"name": "alice", "email": None}]}]

    def test_duplicate_and_invalid_names(self, database_url: str) -> None:
        run("groups", "create", "oncall", "--database-url", database_url)
        duplicate = run("groups", "create", "group:oncall", "--database-url", database_url, ok=False)
        assert duplicate.exit_code == 1
        assert duplicate.output.strip() == "Error: group 'oncall' already exists"
        for bad in ("group:", "on call", "x" * 201):
            result = run("groups", "create", bad, "--database-url", database_url, ok=False)
            assert result.exit_code == 1
            assert "a group name is 1-200 printable characters without spaces" in result.output
        assert [
            g["name"]
            for g in json.loads(run("groups", "list", "--json", "--database-url", database_url).output)
        ] == ["oncall"]

    def test_names_ignore_case_as_group_entries_do(self, database_url: str) -> None:
        key(database_url, "reviewer", "alice")
        run("groups", "create", "ML-Leads", "--database-url", database_url)
        clash = run("groups", "create", "group:ml-leads", "--database-url", database_url, ok=False)
        assert clash.exit_code == 1
        assert clash.output.strip() == "Error: group 'ML-Leads' already exists"
        out = run("groups", "add", "GROUP:ml-leads", "alice", "--database-url", database_url).output
        assert out.strip() == "added alice to group:ML-Leads"
        listed = json.loads(run("groups", "list", "--database-url", database_url, "--json").output)
        assert listed == [{"name": "ML-Leads", "members": [{"name": "alice", "email": None}]}]

    def test_add_and_remove_need_a_principal(self, database_url: str) -> None:
        run("groups", "create", "oncall", "--database-url", database_url)
        for command in ("add", "remove"):
            result = run("groups", command, "oncall", "--database-url", database_url, ok=False)
            assert result.exit_code == 2
            assert "Missing argument 'PRINCIPALS...'" in result.output


class TestShowRules:
    """``show`` and ``approve`` on a request with approval rules: progress, answers, members."""

    @pytest.fixture
    def call_id(self, database_url: str) -> str:
        for name in ("alice", "bob", "carol"):
            key(database_url, "reviewer", name, f"{name}@example.com")
        for group, members in (("ml-leads", ["alice", "bob"]), ("compliance", ["carol"])):
            run("groups", "create", group, "--database-url", database_url)
            run("groups", "add", group, *members, "--database-url", database_url)
        return add_call(
            database_url,
            state=rules_state(
                [
                    {"name": "ML lead", "approvers": ["group:ml-leads"], "required": 2},
                    {"name": "Compliance", "approvers": ["group:compliance"], "required": 1},
                ]
            ),
        )

    def test_show_reports_progress_answers_and_members(self, database_url: str, call_id: str) -> None:
        out = run("approve", call_id, "--as", "alice", "--comment", "fine", "--database-url", database_url)
        assert out.output.strip() == (
            f"{call_id} pending: alice approved toward ML lead (ML lead 1 of 2: alice; Compliance 0 of 1)"
        )
        text = run("show", call_id, "--database-url", database_url).output
        assert "status:       pending" in text
        assert "rules:\n  ML lead 1 of 2: alice\n  Compliance 0 of 1\n" in text
        assert "answers:\n  alice <alice@example.com>  approve  toward ML lead: fine\n" in text
        assert "members (as the request opened):\n" in text
        assert "  group:compliance: carol, carol@example.com\n" in text
        assert "  group:ml-leads: alice, alice@example.com, bob, bob@example.com\n" in text
        shown = json.loads(run("show", call_id, "--database-url", database_url, "--json").output)
        status = shown["status"]
        assert status["approved"] is None
        assert [(r["name"], r["approved_by"], r["met"]) for r in status["rules"]] == [
            ("ML lead", ["alice"], False),
            ("Compliance", [], False),
        ]
        assert [(a["name"], a["approved"], a["rule"]) for a in status["answers"]] == [
            ("alice", True, "ML lead")
        ]
        assert status["members"]["group:ml-leads"] == ["alice", "alice@example.com", "bob", "bob@example.com"]
        assert [e["event"] for e in shown["audit"]] == ["created", "answered"]
        assert shown["audit"][1]["metadata"]["progress"] == "ML lead 1 of 2: alice; Compliance 0 of 1"

    def test_rules_decide_through_the_cli(self, database_url: str, call_id: str) -> None:
        run("approve", call_id, "--as", "alice", "--database-url", database_url)
        twice = run("approve", call_id, "--as", "alice", "--database-url", database_url, ok=False)
        assert twice.exit_code == 1
        assert "alice has already answered this request" in twice.output
        out = run("approve", call_id, "--as", "carol", "--database-url", database_url).output
        assert out.strip() == (
            f"{call_id} pending: carol approved toward Compliance (ML lead 1 of 2: alice; Compliance 1 of 1: carol)"
        )
        assert run("approve", call_id, "--as", "bob", "--database-url", database_url).output.strip() == (
            f"{call_id} approved by bob"
        )
        text = run("show", call_id, "--database-url", database_url).output
        assert "status:       approved" in text
        assert "rules:\n  ML lead 2 of 2: alice, bob\n  Compliance 1 of 1: carol\n" in text
        assert (
            "  alice <alice@example.com>  approve  toward ML lead\n"
            "  carol <carol@example.com>  approve  toward Compliance\n"
            "  bob <bob@example.com>  approve  toward ML lead\n"
        ) in text
        events = [line.split()[1] for line in text.split("audit:\n")[1].splitlines()]
        assert events == ["created", "answered", "refused", "answered", "responded"]

    def test_non_vetoing_rejection_keeps_it_pending(self, database_url: str) -> None:
        key(database_url, "reviewer", "alice", "alice@example.com")
        key(database_url, "reviewer", "bob", "bob@example.com")
        call_id = add_call(
            database_url,
            state=rules_state(
                [{"name": "Review", "approvers": ["alice", "bob"], "required": 1, "veto": False}]
            ),
        )
        out = run(
            "reject", call_id, "--as", "alice", "--comment", "meh", "--database-url", database_url
        ).output
        assert out.strip() == f"{call_id} pending: alice rejected (Review 0 of 1)"
        text = run("show", call_id, "--database-url", database_url).output
        assert "answers:\n  alice <alice@example.com>  reject: meh\n" in text

    def test_show_without_rules_or_answers(self, database_url: str) -> None:
        call_id = add_call(database_url, state=policy_state(approvers=["alice@example.com"]))
        text = run("show", call_id, "--database-url", database_url).output
        assert "rules:\n  Approvers 0 of 1\nanswers:      -\naudit:\n" in text
        assert "members" not in text
