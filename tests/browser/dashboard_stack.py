"""A real Airflow API server with the HLML plugin, SimpleAuthManager users and the embedded approvals.

Shared by the dashboard API tests (``tests/integration/test_dashboard_api.py``) and the browser
test: the users, their roles and how a test logs in live here once.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.fixtures.processes import ManagedProcess, free_port, skip_or_fail, wait_for_http

AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
#: username -> SimpleAuthManager role. "approver" is named as approver by the test gates,
#: "outsider" may edit DAGs but is no approver, "viewer" may only read.
USERS: dict[str, str] = {"admin": "admin", "viewer": "viewer", "approver": "user", "outsider": "user"}
APPROVALS_PATH = "/hlml/humanlayer/v1"


@dataclass
class ApprovalKeys:
    agent: str
    delegate: str


def make_approval_keys(database_url: str) -> ApprovalKeys:
    """Migrate the embedded approvals database and create the agent and delegate keys."""
    from airflow_provider_hlml.approvals import db, store

    db.migrate(database_url)
    engine = db.make_engine(database_url, pool_size=1)
    try:
        with db.make_sessionmaker(engine)() as session:
            agent = store.create_key(session, name="airflow", role="agent", email=None)[1]
            delegate = store.create_key(session, name="airflow-ui", role="delegate", email=None)[1]
    finally:
        engine.dispose()
    return ApprovalKeys(agent=agent, delegate=delegate)


def dashboard_env(*, keys: ApprovalKeys, approvals_db: str) -> dict[str, str]:
    """The Airflow settings (besides the deployment's own) that switch the dashboard on."""
    return {
        "AIRFLOW__CORE__AUTH_MANAGER": AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in USERS.items()),
        "AIRFLOW__HLML__APPROVALS_ENABLED": "True",
        "AIRFLOW__HLML__APPROVALS_DATABASE_URL": approvals_db,
        "AIRFLOW__HLML__APPROVALS_DELEGATE_KEY": keys.delegate,
        "AIRFLOW__HLML__DASHBOARD_REFRESH_SECONDS": "30",
    }


def new_passwords() -> dict[str, str]:
    return {user: secrets.token_urlsafe(10) for user in USERS}


@dataclass
class DashboardServer:
    """A running ``airflow api-server`` with the plugin loaded."""

    url: str
    home: Path
    keys: ApprovalKeys
    passwords: dict[str, str]
    process: ManagedProcess
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def approvals_url(self) -> str:
        return self.url + APPROVALS_PATH

    def token(self, user: str) -> str:
        if user not in self.tokens:
            resp = httpx.post(
                f"{self.url}/auth/token",
                json={"username": user, "password": self.passwords[user]},
                timeout=30,
            )
            resp.raise_for_status()
            self.tokens[user] = resp.json()["access_token"]
        return self.tokens[user]

    def client(self, user: str | None = None, *, cookie: bool = False) -> httpx.Client:
        """An HTTP client logged in as ``user`` (Bearer header, or the UI's ``_token`` cookie)."""
        headers: dict[str, str] = {}
        cookies: dict[str, str] = {}
        if user is not None:
            if cookie:
                cookies["_token"] = self.token(user)
            else:
                headers["Authorization"] = f"Bearer {self.token(user)}"
        return httpx.Client(base_url=self.url, headers=headers, cookies=cookies, timeout=60)

    def create_gate_request(
        self,
        *,
        call_id: str,
        dag_id: str,
        approvers: list[str],
        subject: str = "Promote churn-model v3",
        context: dict[str, Any] | None = None,
        requester: str | None = None,
        ti_url: str | None = None,
        map_index: int = -1,
        rules: list[dict[str, Any]] | None = None,
        forbidden: list[dict[str, Any]] | None = None,
        auto: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A pending request shaped like the HumanApprovalSensor's, created with the agent key.

        ``ti_url`` is whatever the agent writes there (the dashboard must not trust it).
        ``rules`` and ``forbidden`` are the gate's approval rules and separation of duties;
        ``auto`` the decision policy's decision the gate carries (``state.hlml.auto``: the service
        records it as the policy's principal, at once without an override window).
        """
        policy: dict[str, Any] = {}
        if rules is not None:
            policy["rules"] = rules
        if forbidden is not None:
            policy["forbidden"] = forbidden
        if auto is not None:
            policy["auto"] = auto
        body = {
            "run_id": f"airflow-{dag_id}",
            "call_id": call_id,
            "spec": {
                "fn": "model_promotion",
                "kwargs": {
                    "subject": subject,
                    "body": "Candidate beats the champion on accuracy.",
                    "context": context or {},
                    "approval_type": "model_promotion",
                    "urgency": "high",
                    "options": None,
                },
                "channel": None,
                "reject_options": [
                    {"name": "retrain", "title": "Retrain", "description": "Retrain with more data"}
                ],
                "state": {
                    "hlml": {
                        "approvers": approvers,
                        "requester": requester,
                        "allow_self_approval": False,
                        **policy,
                        "airflow": {
                            "dag_id": dag_id,
                            "run_id": "manual__1",
                            "task_id": "approve",
                            "map_index": map_index,
                            "try_number": 1,
                            "ti_url": ti_url,
                        },
                    }
                },
            },
            "status": None,
        }
        resp = httpx.post(
            f"{self.approvals_url}/function_calls",
            json=body,
            headers={"Authorization": f"Bearer {self.keys.agent}"},
            timeout=30,
        )
        resp.raise_for_status()
        return dict(resp.json())

    def get_call(self, call_id: str) -> dict[str, Any]:
        resp = httpx.get(
            f"{self.approvals_url}/function_calls/{call_id}",
            headers={"Authorization": f"Bearer {self.keys.agent}"},
            timeout=30,
        )
        resp.raise_for_status()
        return dict(resp.json())

    def stop(self) -> None:
        self.process.stop()


def start_dashboard_server(
    workdir: Path, sqlite_db: str, *, extra_env: dict[str, str] | None = None
) -> DashboardServer:
    """Start ``airflow api-server`` on a migrated SQLite DB with the dashboard switched on.

    DAG files already in ``workdir / "dags"`` are serialized into the DB first, so the auth
    manager knows them (a request naming an unknown DAG is visible to nobody).
    """
    from tests.fixtures.airflow_stack import StackProcess
    from tests.fixtures.processes import VENV_BIN

    home = workdir / "airflow-home"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    approvals_db = f"sqlite:///{home / 'hlml_approvals.db'}"
    keys = make_approval_keys(approvals_db)
    passwords = new_passwords()
    passwords_file = home / "simple_auth_manager_passwords.json"
    passwords_file.write_text(json.dumps(passwords))
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sqlite_db,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(workdir / "dags"),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": url,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
        **dashboard_env(keys=keys, approvals_db=approvals_db),
        **(extra_env or {}),
    }
    if any((workdir / "dags").glob("*.py")):
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "HLML_"))}
        result = subprocess.run(
            [str(VENV_BIN / "airflow"), "dags", "reserialize"],
            env={**clean, **env},
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"airflow dags reserialize failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            )
    proc = StackProcess(
        "api-server", [str(VENV_BIN / "airflow"), "api-server"], env=env, cwd=home, log_path=home / "api.log"
    ).start()
    try:
        wait_for_http(f"{url}/api/v2/monitor/health", timeout=180, proc=proc.proc)
    except BaseException:
        print(proc.log_tail(80))
        proc.stop()
        raise
    return DashboardServer(url=url, home=home, keys=keys, passwords=passwords, process=proc)


def gate_dag_source(dag_id: str) -> str:
    """A DAGs-folder file with one DAG ``dag_id`` whose task ``approve`` stands in for a gate."""
    return textwrap.dedent(
        f"""
        import pendulum
        from airflow.sdk import DAG
        from airflow.providers.standard.operators.empty import EmptyOperator

        with DAG("{dag_id}", schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False):
            EmptyOperator(task_id="approve")
        """
    )


#: Debian's Chromium, which the browser tests drive headless (``make system-deps`` installs it).
CHROMIUM = Path("/usr/bin/chromium")


def require_browser() -> None:
    """Skip (fail on CI) unless headless Chromium and Playwright are there."""
    if not CHROMIUM.exists():
        skip_or_fail(f"{CHROMIUM} not installed (make system-deps installs it)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        skip_or_fail("playwright is not installed")


def dashboard_routes() -> list[Any]:
    """Every route of the dashboard app (``fastapi.routing.APIRoute``), from the app itself."""
    from fastapi.routing import APIRoute

    from airflow_provider_hlml.plugins.app import create_dashboard_app
    from airflow_provider_hlml.plugins.settings import DashboardSettings

    app = create_dashboard_app(
        DashboardSettings(
            approvals_enabled=False,
            approvals_database_url="sqlite://",
            delegate_key="",
            humanlayer_conn_id="humanlayer_default",
            mlflow_conn_id="mlflow_default",
            refresh_seconds=30,
        )
    )
    return [r for r in app.routes if isinstance(r, APIRoute)]
