"""Helpers of the ``replicas`` section of benchmarks/approvals_service.py (not a benchmark): fresh
PostgreSQL databases and ``hlml-approvals serve`` replicas sharing one of them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
PREFIX = "/humanlayer/v1"
POSTGRES_URL_VAR = "HLML_TEST_POSTGRES_URL"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
#: The trigger of migration 0005 that sends ``NOTIFY hlml_approvals`` when a request changes.
NOTIFY_TRIGGER = "approval_requests_notify_change"
#: ``hlml-approvals serve`` without its LISTEN connection (``app.ChangeListener`` replaced in this
#: process only, no product code changed): the change watcher then re-reads recent rows every
#: ``HLML_APPROVALS_RECHECK_INTERVAL`` seconds, as every replica did before migration 0005. With
#: the listener connected (even with the trigger dropped) it would re-read only every 5 s.
SERVE_WITHOUT_LISTENER = (
    "import airflow_provider_hlml.approvals.app as app\n"
    "app.ChangeListener = lambda *args, **kwargs: None\n"
    "from airflow_provider_hlml.approvals.cli import main\n"
    "main(prog_name='hlml-approvals')\n"
)


def admin_url_default() -> str:
    return os.environ.get(POSTGRES_URL_VAR) or DEFAULT_ADMIN_URL


def redact(url: str) -> str:
    """``url`` without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def unreachable(admin_url: str) -> str | None:
    """Why PostgreSQL at ``admin_url`` cannot be used (None when it can)."""
    try:
        import psycopg2
    except ImportError:
        return "psycopg2 is not installed"
    try:
        psycopg2.connect(admin_url, connect_timeout=3).close()
    except psycopg2.Error as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


def server_version(admin_url: str) -> str:
    import psycopg2

    conn = psycopg2.connect(admin_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            return str(cur.fetchone()[0]).split()[0]
    finally:
        conn.close()


class FreshDatabase:
    """A new, uniquely named PostgreSQL database (``create``), dropped by ``drop``."""

    def __init__(self, admin_url: str, prefix: str = "hlml_bench") -> None:
        from sqlalchemy.engine import make_url

        self.admin_url = admin_url
        self.name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self.url = make_url(admin_url).set(database=self.name).render_as_string(hide_password=False)
        self.created = False

    def _admin(self, sql: str) -> None:
        import psycopg2

        conn = psycopg2.connect(self.admin_url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    def create(self) -> str:
        self._admin(f'CREATE DATABASE "{self.name}"')
        self.created = True
        return self.url

    def drop(self) -> None:
        if self.created:
            self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            self.created = False

    def execute(self, sql: str) -> list[tuple[object, ...]]:
        """Run ``sql`` in this database (autocommit); its rows, if any."""
        import psycopg2

        conn = psycopg2.connect(self.url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def drop_notify_trigger(self) -> None:
        """Drop migration 0005's trigger: no change sends ``NOTIFY`` any more."""
        self.execute(f"DROP TRIGGER {NOTIFY_TRIGGER} ON approval_requests")
        left = self.execute(f"SELECT count(*) FROM pg_trigger WHERE tgname = '{NOTIFY_TRIGGER}'")
        assert left[0][0] == 0, left

    def listening_connections(self) -> int:
        """Connections to this database whose last statement was ``LISTEN`` (the replicas' listeners)."""
        rows = self.execute(
            f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{self.name}' AND query ILIKE 'LISTEN %'"
        )
        return int(rows[0][0])  # type: ignore[call-overload]


def prepare(database_url: str) -> tuple[str, str]:
    """Migrate ``database_url`` and make an agent and a reviewer key; (agent key, reviewer key)."""
    from airflow_provider_hlml.approvals import db, store

    db.migrate(database_url)
    engine = db.make_engine(database_url, pool_size=1)
    try:
        with db.make_sessionmaker(engine)() as session:
            agent = store.create_key(session, name="bench-agent", role="agent")[1]
            reviewer = store.create_key(session, name="bench-reviewer", role="reviewer")[1]
    finally:
        engine.dispose()
    return agent, reviewer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Replica:
    """One ``hlml-approvals serve`` process (one uvicorn worker) on a shared database.

    Settings are the defaults: ``HLML_APPROVALS_*`` variables of the benchmark's environment are
    not passed on, only ``env``. ``listen=False`` runs it without its LISTEN connection
    (:data:`SERVE_WITHOUT_LISTENER`).
    """

    def __init__(
        self,
        name: str,
        database_url: str,
        root: Path,
        *,
        env: dict[str, str] | None = None,
        listen: bool = True,
    ) -> None:
        self.name = name
        self.database_url = database_url
        self.root = root
        self.env = env or {}
        self.listen = listen
        self.port = free_port()
        self.root_url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.root_url + PREFIX
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        command = [str(VENV_BIN / "hlml-approvals")]
        if not self.listen:
            command = [sys.executable, "-c", SERVE_WITHOUT_LISTENER]
        env = {k: v for k, v in os.environ.items() if not k.startswith("HLML_APPROVALS_")}
        env.update(self.env)
        log = open(self.root / "service.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                *command,
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--database-url",
                self.database_url,
                "--log-level",
                "warning",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.root_url}/healthz", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"replica {self.name} did not start: " + (self.root / "service.log").read_text())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def start_all(replicas: list[Replica]) -> None:
    """Start ``replicas`` side by side and wait until each answers ``/healthz``."""
    for replica in replicas:
        replica.start()
    for replica in replicas:
        replica.wait_ready()


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU time of the whole machine so far, in clock ticks (``/proc/stat``)."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return total - fields[3] - fields[4], total
