"""``hlml-approvals``: keys, lists and decisions straight against the database."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

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

    def test_console_script(self, database_url: str) -> None:
        proc = subprocess.run(
            [str(VENV_BIN / "hlml-approvals"), "list", "--json", "--database-url", database_url],
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(proc.stdout) == []
