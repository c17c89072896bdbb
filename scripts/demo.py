#!/usr/bin/env python
"""Run the churn pipeline on the embedded default stack: ``make demo`` / ``make demo-stop``.

``start`` creates ``.demo/`` (an ``AIRFLOW_HOME`` on SQLite with the LocalExecutor, the MLflow
and approvals databases, logs), starts an MLflow server, the approvals service, and Airflow's
api-server, scheduler, dag-processor and triggerer, creates the approvals keys and the
connections, unpauses the churn pipeline and starts a run, then prints where to look and how to
approve. With ``--approve`` it then approves the run's gate as the demo reviewer through the
HumanLayer API, waits for the run to finish and prints the promoted model version; it exits
non-zero (printing the relevant log tails) when anything fails.

``stop`` stops every process ``start`` recorded in ``.demo/pids.json``, by pid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DAG_ID = "churn_pipeline"
MODEL_NAME = "churn_predictor"
ALIAS = "champion"
DEFAULT_PORTS = {"airflow": 8080, "mlflow": 5000, "approvals": 8000}
APPROVALS_PREFIX = "/humanlayer/v1"
ADMIN, REVIEWER = "admin", "reviewer"
REVIEWER_EMAIL = "reviewer@example.com"
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
GATE_TASK_ID = "approve_promotion"
DEFERRAL_SETTLE_SECONDS = 15


class DemoError(RuntimeError):
    """A step failed; ``logs`` names the process logs worth showing."""

    def __init__(self, message: str, logs: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.logs = logs


def say(message: str = "") -> None:
    print(message, flush=True)


# -- state ------------------------------------------------------------------------------------


@dataclass
class State:
    root: Path

    @property
    def pids_file(self) -> Path:
        return self.root / "pids.json"

    @property
    def info_file(self) -> Path:
        return self.root / "demo.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def airflow_home(self) -> Path:
        return self.root / "airflow"

    def read_pids(self) -> dict[str, int]:
        if not self.pids_file.exists():
            return {}
        return {k: int(v) for k, v in json.loads(self.pids_file.read_text()).items()}

    def record_pid(self, name: str, pid: int) -> None:
        pids = self.read_pids()
        pids[name] = pid
        self.pids_file.write_text(json.dumps(pids, indent=2))

    def read_info(self) -> dict[str, Any]:
        return json.loads(self.info_file.read_text()) if self.info_file.exists() else {}

    def write_info(self, info: Mapping[str, Any]) -> None:
        self.info_file.write_text(json.dumps(info, indent=2))
        self.info_file.chmod(0o600)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped by its parent does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/status").read_text()
        if "\nState:\tZ" in status:
            return False
    return True


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def choose_ports(use_free: bool) -> dict[str, int]:
    ports: dict[str, int] = {}
    for name, default in DEFAULT_PORTS.items():
        ports[name] = default if not use_free and port_free(default) else free_port()
    return ports


# -- configuration (every URL and setting in one place) ---------------------------------------


def approvals_base_url(info: Mapping[str, Any]) -> str:
    """The HumanLayer API base URL of the approvals service: the one place the demo builds it."""
    return f"http://127.0.0.1:{info['ports']['approvals']}{APPROVALS_PREFIX}"


def approvals_database_url(state: State) -> str:
    return f"sqlite:///{state.root / 'approvals' / 'approvals.db'}"


def airflow_url(info: Mapping[str, Any]) -> str:
    return f"http://127.0.0.1:{info['ports']['airflow']}"


def mlflow_url(info: Mapping[str, Any]) -> str:
    return f"http://127.0.0.1:{info['ports']['mlflow']}"


def airflow_env(state: State, info: Mapping[str, Any]) -> dict[str, str]:
    """The environment of every Airflow process (and of the CLI commands the demo runs)."""
    api = airflow_url(info)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(state.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__FERNET_KEY": info["fernet_key"],
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin,{REVIEWER}:user",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(state.root / "passwords.json"),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{state.airflow_home / 'airflow.db'}",
        "AIRFLOW__API__PORT": str(info["ports"]["airflow"]),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__BASE_URL": api,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API_AUTH__JWT_SECRET": info["jwt_secret"],
        "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": "True",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "0",
        "AIRFLOW__HLML__POLL_INTERVAL": "2",
        "AIRFLOW__HLML__APPROVALS_DATABASE_URL": approvals_database_url(state),
        "AIRFLOW__HLML__APPROVALS_DELEGATE_KEY": info["keys"]["delegate"],
        "AIRFLOW__HLML__WEBHOOK_SECRET": info["webhook_secret"],
        "AIRFLOW_CONN_MLFLOW_DEFAULT": json.dumps({"conn_type": "mlflow", "host": mlflow_url(info)}),
        "AIRFLOW_CONN_HUMANLAYER_DEFAULT": json.dumps(
            {"conn_type": "humanlayer", "host": approvals_base_url(info), "password": info["keys"]["agent"]}
        ),
        "HLML_EXAMPLE_DATA_DIR": str(state.root / "data"),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "GIT_PYTHON_REFRESH": "quiet",
        "PYTHONUNBUFFERED": "1",
    }
    for var in ("MLFLOW_TRACKING_URI", "HUMANLAYER_API_KEY", "HUMANLAYER_API_BASE", "AIRFLOW_CONFIG"):
        env.pop(var, None)
    return env


def approvals_env(state: State) -> dict[str, str]:
    return {
        **os.environ,
        "HLML_APPROVALS_DATABASE_URL": approvals_database_url(state),
        "PYTHONUNBUFFERED": "1",
    }


def approvals_serve_env(state: State, info: Mapping[str, Any]) -> dict[str, str]:
    """The approvals service's environment: it posts every decision to the Airflow API server
    (signed), so the gates park in ``awaiting_input`` instead of waiting in the triggerer."""
    return {
        **approvals_env(state),
        "HLML_APPROVALS_WEBHOOK_URLS": f"{airflow_url(info)}/hlml/webhooks/humanlayer",
        "HLML_APPROVALS_WEBHOOK_SECRET": info["webhook_secret"],
    }


# -- processes --------------------------------------------------------------------------------


def run(argv: list[str], env: Mapping[str, str], what: str, timeout: float = 600) -> str:
    result = subprocess.run(argv, env=dict(env), capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if result.returncode != 0:
        raise DemoError(
            f"{what} failed (exit {result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}"
        )
    return result.stdout


def spawn(state: State, name: str, argv: list[str], env: Mapping[str, str]) -> int:
    log = open(state.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(
        argv, env=dict(env), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()
    state.record_pid(name, proc.pid)
    return proc.pid


def wait_http(url: str, timeout: float, what: str, pid: int | None = None, log: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid is not None and not alive(pid):
            raise DemoError(f"{what} exited before it was ready", (log,) if log else ())
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:
                if resp.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise DemoError(f"{what} did not answer at {url} within {timeout:.0f}s", (log,) if log else ())


def wait_until(probe: Callable[[], Any], timeout: float, what: str, logs: tuple[str, ...] = ()) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(1)
    raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}", logs)


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    """Wait up to ``seconds`` for the processes to exit; returns those still alive."""
    deadline = time.monotonic() + seconds
    left = [pid for pid in pids if alive(pid)]
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [pid for pid in left if alive(pid)]
    return left


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop_processes(state: State) -> list[str]:
    """Stop the recorded processes (their process groups), newest first; returns their names.

    SIGTERM first, SIGKILL for whatever still runs 30 s later, then wait until they are gone.
    """
    pids = state.read_pids()
    running_now = {name: pid for name, pid in pids.items() if alive(pid)}
    for pid in reversed(list(running_now.values())):
        _signal_group(pid, signal.SIGTERM)
    stubborn = _wait_gone(list(running_now.values()), 30)
    for pid in stubborn:
        _signal_group(pid, signal.SIGKILL)
    left = _wait_gone(stubborn, 30)
    if left:
        say(f"warning: processes {left} did not exit")
    if state.pids_file.exists():
        state.pids_file.unlink()
    return list(reversed(list(running_now)))


def running(state: State) -> bool:
    pids = state.read_pids()
    return bool(pids) and all(alive(pid) for pid in pids.values())


# -- Airflow REST API ---------------------------------------------------------------------------


class AirflowApi:
    """Just enough of Airflow's REST API (``/api/v2``), logged in through SimpleAuthManager."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url
        self.username = username
        self.password = password
        self._token: str | None = None

    def _call(self, method: str, url: str, body: Any = None, token: str | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    def token(self) -> str:
        if self._token is None:
            answer = self._call(
                "POST", f"{self.base_url}/auth/token", {"username": self.username, "password": self.password}
            )
            self._token = str(answer["access_token"])
        return self._token

    def request(self, method: str, path: str, body: Any = None) -> Any:
        return self._call(method, f"{self.base_url}/api/v2{path}", body, self.token())

    def get_or_none(self, path: str) -> Any:
        try:
            return self.request("GET", path)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise


# -- start ------------------------------------------------------------------------------------


def create_key(state: State, role: str, name: str, email: str) -> str:
    out = run(
        [
            str(BIN / "hlml-approvals"),
            "keys",
            "create",
            "--role",
            role,
            "--name",
            name,
            "--email",
            email,
            "--json",
            "--database-url",
            approvals_database_url(state),
        ],
        approvals_env(state),
        f"hlml-approvals keys create --role {role}",
    )
    return str(json.loads(out)["key"])


def start_stack(state: State, use_free_ports: bool) -> dict[str, Any]:
    if state.root.exists():
        shutil.rmtree(state.root)
    for folder in (
        state.logs,
        state.airflow_home,
        state.root / "mlflow",
        state.root / "approvals",
        state.root / "data",
    ):
        folder.mkdir(parents=True, exist_ok=True)
    from cryptography.fernet import Fernet

    passwords = {ADMIN: secrets.token_urlsafe(9), REVIEWER: secrets.token_urlsafe(9)}
    (state.root / "passwords.json").write_text(json.dumps(passwords))
    (state.root / "passwords.json").chmod(0o600)
    info: dict[str, Any] = {
        "ports": choose_ports(use_free_ports),
        "fernet_key": Fernet.generate_key().decode(),
        "jwt_secret": secrets.token_urlsafe(64),
        "webhook_secret": secrets.token_urlsafe(32),
        "passwords": passwords,
        "keys": {},
    }

    say("- migrating the approvals database and creating API keys (agent, reviewer, delegate)")
    run(
        [str(BIN / "hlml-approvals"), "migrate", "--database-url", approvals_database_url(state)],
        approvals_env(state),
        "hlml-approvals migrate",
    )
    info["keys"] = {
        "agent": create_key(state, "agent", "airflow", "airflow@example.com"),
        "reviewer": create_key(state, "reviewer", REVIEWER, REVIEWER_EMAIL),
        "delegate": create_key(state, "delegate", "airflow-dashboard", "dashboard@example.com"),
    }
    state.write_info(info)

    ports = info["ports"]
    say(f"- starting MLflow on port {ports['mlflow']} and the approvals service on port {ports['approvals']}")
    mlflow_pid = spawn(
        state,
        "mlflow",
        [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(ports["mlflow"]),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{state.root / 'mlflow' / 'mlflow.db'}",
            "--artifacts-destination",
            str(state.root / "mlflow" / "artifacts"),
            "--serve-artifacts",
        ],
        {**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    approvals_pid = spawn(
        state,
        "approvals",
        [
            str(BIN / "hlml-approvals"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(ports["approvals"]),
            "--database-url",
            approvals_database_url(state),
        ],
        approvals_serve_env(state, info),
    )

    env = airflow_env(state, info)
    say("- migrating the Airflow metadata database (SQLite)")
    run([str(BIN / "airflow"), "db", "migrate"], env, "airflow db migrate")

    say(f"- starting Airflow: {', '.join(AIRFLOW_COMPONENTS)} (LocalExecutor)")
    pids = {name: spawn(state, name, [str(BIN / "airflow"), name], env) for name in AIRFLOW_COMPONENTS}

    wait_http(f"{mlflow_url(info)}/health", 240, "MLflow", mlflow_pid, "mlflow")
    wait_http(f"{approvals_base_url(info)}/healthz", 120, "the approvals service", approvals_pid, "approvals")
    wait_http(
        f"{airflow_url(info)}/api/v2/monitor/health",
        300,
        "the Airflow API server",
        pids["api-server"],
        "api-server",
    )
    return info


def find_or_start_run(api: AirflowApi) -> str:
    """Unpause the pipeline; use the run the scheduler starts for it, or trigger one."""

    def parsed() -> Any:
        return api.get_or_none(f"/dags/{DAG_ID}")

    wait_until(parsed, 300, f"the dag-processor to parse {DAG_ID}", ("dag-processor",))
    errors = api.request("GET", "/importErrors")
    for error in errors.get("import_errors", []):
        say(f"  note: {error['filename']} failed to import:\n{error['stack_trace'][-800:]}")
    active = api.request("GET", f"/dags/{DAG_ID}/dagRuns?state=queued&state=running&order_by=-run_after")
    if active["dag_runs"]:
        return str(active["dag_runs"][0]["dag_run_id"])
    api.request("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})

    def scheduled() -> Any:
        runs = api.request("GET", f"/dags/{DAG_ID}/dagRuns?order_by=-run_after")["dag_runs"]
        return runs[0]["dag_run_id"] if runs else None

    with contextlib.suppress(DemoError):
        return str(wait_until(scheduled, 20, "the scheduled run"))
    run_ = api.request(
        "POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": None, "note": "started by make demo"}
    )
    return str(run_["dag_run_id"])


def print_where_to_look(state: State, info: Mapping[str, Any], run_id: str) -> None:
    db = approvals_database_url(state)
    say()
    say("The churn pipeline is running. Where to look:")
    say(f"  Airflow UI   {airflow_url(info)}/dags/{DAG_ID}")
    say(
        f"               login {ADMIN} / {info['passwords'][ADMIN]}   (reviewer: {REVIEWER} / {info['passwords'][REVIEWER]})"
    )
    say(f"  MLflow UI    {mlflow_url(info)}/#/models/{MODEL_NAME}")
    say(f"  HumanLayer   {approvals_base_url(info)}   (reviewer API key in {state.info_file})")
    say(f"  Run          {run_id}")
    say()
    say("When the run reaches 'approve_promotion', approve the promotion with:")
    say(f"  .venv/bin/hlml-approvals list --pending --database-url {db}")
    say(f"  .venv/bin/hlml-approvals approve <call_id> --as {REVIEWER} --database-url {db}")
    say("or run `make demo APPROVE=1` to approve as the demo reviewer through the HumanLayer API.")
    say("Stop everything with `make demo-stop`.")


#: The states a waiting gate is in: parked (Airflow 3.3+, the embedded default) or deferred.
WAITING_STATES = ("awaiting_input", "deferred")


def wait_until_settled_in_deferral(api: AirflowApi, run_id: str, timeout: float) -> None:
    """Wait until the gate has been waiting (parked or deferred) for a while before deciding.

    A decision within seconds of the gate starting to wait can hit an Airflow scheduler race
    (apache/airflow#72716): the stale "success" of the worker that parked or deferred it is
    processed after the resumed attempt started, and the gate is failed. A person never answers
    that fast; the demo waits ``DEFERRAL_SETTLE_SECONDS`` to behave like one.
    """
    deadline = time.monotonic() + timeout
    deferred_since: float | None = None
    while time.monotonic() < deadline:
        tis = api.request("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")["task_instances"]
        states = {t["task_id"]: t["state"] for t in tis}
        if states.get(GATE_TASK_ID) in WAITING_STATES:
            deferred_since = deferred_since or time.monotonic()
            if time.monotonic() - deferred_since >= DEFERRAL_SETTLE_SECONDS:
                return
        elif states.get(GATE_TASK_ID) in ("success", "failed", "upstream_failed", "skipped"):
            return
        elif any(state in ("failed", "upstream_failed") for state in states.values()):
            failed = ", ".join(f"{k}={v}" for k, v in states.items() if v in ("failed", "upstream_failed"))
            raise DemoError(f"run {run_id} failed before its approval gate: {failed}", ("scheduler",))
        time.sleep(2)
    raise DemoError(
        f"run {run_id} did not reach {GATE_TASK_ID} within {timeout:.0f}s", ("scheduler", "triggerer")
    )


def approve_and_wait(api: AirflowApi, info: Mapping[str, Any], run_id: str, timeout: float) -> dict[str, Any]:
    from airflow_provider_hlml.examples.review import approve_when_pending

    say(f"- waiting for run {run_id} to reach its approval gate ({GATE_TASK_ID})")
    wait_until_settled_in_deferral(api, run_id, timeout)
    say(f"- approving the request as '{REVIEWER}' through the HumanLayer API")
    answered = approve_when_pending(
        approvals_base_url(info),
        info["keys"]["reviewer"],
        dag_id=DAG_ID,
        run_id=run_id,
        timeout=timeout,
        poll_interval=2,
        comment="Approved from make demo APPROVE=1",
    )
    for call in answered:
        say(f"  approved {call['call_id']} ({call['spec']['kwargs'].get('subject', call['spec']['fn'])})")

    say("- waiting for the run to finish")

    def finished() -> Any:
        dag_run = api.request("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")
        return dag_run if dag_run["state"] in ("success", "failed") else None

    dag_run = wait_until(finished, timeout, f"run {run_id} to finish", ("scheduler", "triggerer"))
    if dag_run["state"] != "success":
        states = api.request("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")["task_instances"]
        failed = ", ".join(f"{t['task_id']}={t['state']}" for t in states if t["state"] != "success")
        raise DemoError(f"run {run_id} ended {dag_run['state']}: {failed}", ("scheduler", "triggerer"))
    return dict(dag_run)


def champion_version(info: Mapping[str, Any]) -> str:
    url = f"{mlflow_url(info)}/api/2.0/mlflow/registered-models/alias?name={MODEL_NAME}&alias={ALIAS}"
    with urllib.request.urlopen(url, timeout=30) as resp:
        return str(json.loads(resp.read())["model_version"]["version"])


def verify_champion(info: Mapping[str, Any]) -> str:
    """What ``hlml-approvals verify-model`` says of ``@champion`` (a DemoError when it fails)."""
    argv = [
        str(BIN / "hlml-approvals"),
        "verify-model",
        f"{MODEL_NAME}@{ALIAS}",
        "--tracking-uri",
        mlflow_url(info),
        "--keys-url",
        approvals_base_url(info) + "/attestation/keys",
    ]
    out = run(argv, os.environ, f"hlml-approvals verify-model {MODEL_NAME}@{ALIAS}", timeout=120)
    return f"\n$ .venv/bin/hlml-approvals verify-model {' '.join(argv[2:])}\n{out.strip()}"


def print_log_tails(state: State, names: tuple[str, ...], lines: int = 40) -> None:
    for name in dict.fromkeys((*names, "api-server")):
        path = state.logs / f"{name}.log"
        if not path.exists():
            continue
        say(f"----- last {lines} lines of {path} -----")
        say("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
    task_logs = state.airflow_home / "logs"
    if task_logs.exists():
        for path in sorted(task_logs.rglob("*.log"), key=lambda p: p.stat().st_mtime)[-3:]:
            say(f"----- last {lines} lines of {path} -----")
            say("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))


def cmd_start(args: argparse.Namespace) -> int:
    state = State(Path(args.state_dir).resolve())
    started_here = False
    try:
        if running(state):
            say(f"Reusing the demo already running from {state.root}")
            info = state.read_info()
        else:
            stop_processes(state)
            say(f"Starting the demo in {state.root}")
            info = start_stack(state, args.free_ports)
            started_here = True
        api = AirflowApi(airflow_url(info), ADMIN, info["passwords"][ADMIN])
        run_id = find_or_start_run(api)
        print_where_to_look(state, info, run_id)
        if not args.approve:
            return 0
        say()
        approve_and_wait(api, info, run_id, args.timeout)
        version = champion_version(info)
        say()
        say(f"Run {run_id} succeeded: {MODEL_NAME} version {version} is now @{ALIAS}.")
        say(f"  {mlflow_url(info)}/#/models/{MODEL_NAME}/versions/{version}")
        say(verify_champion(info))
        return 0
    except (DemoError, urllib.error.URLError, subprocess.TimeoutExpired, TimeoutError, KeyError) as exc:
        say()
        say(f"demo failed: {exc}")
        print_log_tails(state, getattr(exc, "logs", ()) or ("scheduler", "triggerer", "dag-processor"))
        if started_here and args.stop_on_failure:
            stop_processes(state)
        return 1
    except KeyboardInterrupt:
        say("interrupted; stopping")
        stop_processes(state)
        return 130


def cmd_stop(args: argparse.Namespace) -> int:
    state = State(Path(args.state_dir).resolve())
    stopped = stop_processes(state)
    say(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state-dir", default=str(REPO / ".demo"), help="where the demo keeps its files")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start the stack and run the churn pipeline")
    start.add_argument(
        "--approve", action="store_true", help="approve as the demo reviewer and wait for the run"
    )
    start.add_argument("--free-ports", action="store_true", help="use free ports instead of 8080/5000/8000")
    start.add_argument(
        "--timeout", type=float, default=900, help="seconds to wait for the approval and the run"
    )
    start.add_argument("--stop-on-failure", action="store_true", help="stop the stack when a step fails")
    start.set_defaults(func=cmd_start)
    stop = sub.add_parser("stop", help="stop every process the demo started")
    stop.set_defaults(func=cmd_stop)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
