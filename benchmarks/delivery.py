"""Delivery of approval requests: a burst through e-mail and Slack, and one-click decisions vs the dashboard.

Two parts, each on real processes:

1. ``burst``: an ``hlml-approvals serve`` process (SQLite, and PostgreSQL when HLML_TEST_POSTGRES_URL
   is set) with an SMTP server (aiosmtpd, in this process) and a local Slack Web API stand-in.
   BURST requests are created at once from 16 client threads; per request, the time from its
   creation (the 201 answer) to the SMTP server accepting its e-mail and to the stand-in receiving
   its ``chat.postMessage``. Target: p95 < 2 s.
2. ``oneclick``: a real Airflow deployment (api-server with the approvals service mounted,
   scheduler, dag-processor, triggerer; LocalExecutor) runs DAG ``e2e_delivery``
   (tests/e2e/dags/e2e_delivery.py) ROUNDS times. Each run has two gates side by side: one is
   approved by POSTing the approve link of the e-mail the service sent (the confirmation page's
   form), the other through the dashboard's decision API as a logged-in Airflow user. Latency: the
   start of the task after the gate minus the moment the decision was sent. Target: ratio
   one-click / dashboard <= 1.1 at p50 and p95.

    python benchmarks/delivery.py [--burst 500] [--rounds 20] [--parts burst,oneclick]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402
from _side_by_side import answer_both, check_run, ratios, started_at, summary  # noqa: E402

from airflow_provider_hlml.utils.ids import approval_call_id  # noqa: E402
from tests.fixtures.airflow_stack import (  # noqa: E402
    REVIEWER_USER,
    AirflowStack,
    MetadataDatabases,
    StackConfig,
    postgres_admin_url,
    postgres_available,
    start_airflow_stack,
    wait_until,
)
from tests.fixtures.approvals import ApprovalsService, make_keys  # noqa: E402
from tests.fixtures.mlflow_server import start_mlflow_server  # noqa: E402
from tests.fixtures.processes import free_port  # noqa: E402
from tests.fixtures.slack_standin import SlackStandin  # noqa: E402
from tests.fixtures.smtp import SmtpServer  # noqa: E402

DAG_ID = "e2e_delivery"
LINK = re.compile(r"https?://[^\s\"'<>]+/hlml/act/[A-Za-z0-9_\-]+")
SETTLE_SECONDS = 1.0


def _smtp() -> tuple[SmtpServer, Any]:
    from aiosmtpd.controller import Controller

    server = SmtpServer(host="127.0.0.1", port=free_port())
    controller = Controller(server, hostname=server.host, port=server.port)
    controller.start()
    return server, controller


# ---- part 1: a burst ------------------------------------------------------------------------


def _postgres_database() -> tuple[str, Any, str]:
    import psycopg2
    from sqlalchemy.engine import make_url

    admin_url = postgres_admin_url()
    assert admin_url
    name = f"hlml_bench_delivery_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), admin, name


def burst(count: int, database: str, workers: int = 1, separate: bool = False) -> dict[str, list[float]]:
    workdir = Path(tempfile.mkdtemp(prefix="hlml-bench-delivery-"))
    smtp, controller = _smtp()
    slack = SlackStandin().start()
    admin = None
    if database == "postgresql":
        url, admin, db_name = _postgres_database()
    else:
        url = f"sqlite:///{workdir / 'approvals.db'}"
    service = ApprovalsService(
        database_url=url, root=workdir, port=free_port(), workers=workers, deliver=not separate
    )
    make_keys(service)
    service.extra_env = {
        "HLML_APPROVALS_SMTP_URL": smtp.url,
        "HLML_APPROVALS_SMTP_FROM": "approvals@example.com",
        "HLML_APPROVALS_PUBLIC_URL": service.base_url,
        "HLML_APPROVALS_SLACK_BOT_TOKEN": slack.token,
        "HLML_APPROVALS_SLACK_SIGNING_SECRET": slack.signing_secret,
        "HLML_APPROVALS_SLACK_API_URL": slack.api_url,
        "HLML_APPROVALS_SLACK_CHANNEL": "C0HLMLREVIEW",
    }
    service.start()
    deliverer = service.delivery_process() if separate else None
    created: dict[str, float] = {}
    tag = uuid.uuid4().hex[:6]
    try:
        clients = [
            httpx.Client(
                base_url=service.base_url,
                headers={"Authorization": f"Bearer {service.agent_key}"},
                timeout=120,
            )
            for _ in range(16)
        ]

        def create(n: int) -> None:
            subject = f"Burst {tag} {n:04d}"
            resp = clients[n % len(clients)].post(
                "/function_calls",
                json={
                    "run_id": "burst",
                    "call_id": f"burst-{tag}-{n:04d}",
                    "spec": {
                        "fn": "model_promotion",
                        "kwargs": {
                            "subject": subject,
                            "body": "Recall **+2.1 pp** over the champion.",
                            "context": {"model_name": "churn", "model_version": str(n)},
                        },
                        "state": {"hlml": {"approvers": ["alice"], "requester": None}},
                    },
                },
            )
            resp.raise_for_status()
            created[subject] = time.time()

        started = time.time()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(create, range(count)))
        created_in = time.time() - started
        wait_until(lambda: len(smtp.received) >= count, 300, "every e-mail", interval=0.2)
        wait_until(
            lambda: len(slack.calls("chat.postMessage")) >= count, 300, "every Slack message", interval=0.2
        )
        mail: list[float] = []
        for received in smtp.received:
            subject = str(received.message["Subject"]).removeprefix("Approval needed: ")
            if subject in created:
                mail.append(received.at - created[subject])
        posted: list[float] = []
        for call in slack.calls("chat.postMessage"):
            subject = str(call.params.get("text", "")).removeprefix("Approval needed: ")
            subject = next((s for s in created if s in str(call.params.get("text", ""))), subject)
            if subject in created:
                posted.append(call.at - created[subject])
        print(
            f"burst of {count} requests on {database} (serve --workers {workers}"
            f"{' --no-deliver, one deliver process' if separate else ''}): created in {created_in:.2f}s "
            f"({count / created_in:.0f}/s); {len(mail)} e-mails, {len(posted)} Slack messages"
        )
        print(summary("created -> e-mail accepted (SMTP)", mail, width=34))
        print(summary("created -> posted to Slack", posted, width=34))
        print(flush=True)
        return {"mail": mail, "slack": posted}
    finally:
        if deliverer is not None:
            deliverer.stop()
        service.stop()
        slack.stop()
        controller.stop()
        if admin is not None:
            with admin.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
            admin.close()
        shutil.rmtree(workdir, ignore_errors=True)


# ---- part 2: one-click vs dashboard ---------------------------------------------------------


def oneclick(rounds: int) -> tuple[list[float], list[float]]:
    workdir = Path(tempfile.mkdtemp(prefix="hlml-bench-oneclick-"))
    databases = MetadataDatabases(workdir)
    database = "postgresql" if postgres_available() else "sqlite"
    mlflow = start_mlflow_server(workdir / "mlflow")
    smtp, controller = _smtp()
    keys = ApprovalsService(
        database_url=f"sqlite:///{workdir / 'approvals.db'}", root=workdir, port=free_port()
    )
    make_keys(keys)
    stack: AirflowStack | None = None
    try:
        config = StackConfig(
            mlflow_url=mlflow.url,
            agent_key=keys.agent_key,
            delegate_key=keys.delegate_key,
            mounted_approvals_db=keys.database_url,
        )
        stack = start_airflow_stack(
            workdir / "stack",
            databases,
            config,
            database=database,
            extra_env={
                "HLML_APPROVALS_SMTP_URL": smtp.url,
                "HLML_APPROVALS_SMTP_FROM": "approvals@example.com",
                "HLML_APPROVALS_DELIVERY_INTERVAL": "0.5",
            },
        )
        api = stack.api
        api.wait_for_dag(DAG_ID)
        api.unpause(DAG_ID)
        # The run is triggered as "admin", who may not approve it: "reviewer" decides in the dashboard.
        reviewer_token = stack.client(REVIEWER_USER).token()
        dashboard = httpx.Client(
            base_url=stack.api_url, headers={"Authorization": f"Bearer {reviewer_token}"}, timeout=60
        )
        mail_latency: list[float] = []
        ui_latency: list[float] = []
        for n in range(rounds):
            run_id = api.trigger(DAG_ID)
            stack.wait_until_parked(DAG_ID, run_id, "mail_gate", "awaiting_input")
            stack.wait_until_parked(DAG_ID, run_id, "ui_gate", "awaiting_input")

            def link(run_id: str = run_id) -> str | None:
                for message in smtp.messages():
                    if f"One-click probe {run_id}" in str(message["Subject"]):
                        part = message.get_body(preferencelist=("plain",))
                        found = LINK.findall(part.get_content()) if part is not None else []
                        return found[0] if found else None
                return None

            approve = str(wait_until(link, 60, "the request's e-mail", interval=0.1))
            time.sleep(SETTLE_SECONDS)

            def by_mail(run_id: str = run_id, approve: str = approve) -> float:
                assert stack is not None
                sent = time.time()
                httpx.post(approve, data={"comment": "one-click"}, timeout=60).raise_for_status()
                return started_at(stack, DAG_ID, run_id, "after_mail") - sent

            def by_dashboard(run_id: str = run_id) -> float:
                assert stack is not None
                call_id = approval_call_id(DAG_ID, run_id, "ui_gate", -1, 1)
                sent = time.time()
                dashboard.post(
                    f"/hlml/api/approvals/{call_id}/decision", json={"approved": True, "comment": "dashboard"}
                ).raise_for_status()
                return started_at(stack, DAG_ID, run_id, "after_ui") - sent

            by_link, by_ui = answer_both(n, by_mail, by_dashboard)
            mail_latency.append(by_link)
            ui_latency.append(by_ui)
            check_run(stack, DAG_ID, run_id, "mail_gate", "one-click")
            print(
                f"[oneclick] round {n + 1}/{rounds}: one-click {mail_latency[-1]:.2f}s  "
                f"dashboard {ui_latency[-1]:.2f}s",
                flush=True,
            )
        dashboard.close()
        print()
        print(f"decision -> downstream task start ({database} metadata DB, LocalExecutor, mounted service)")
        print(summary("one-click link (e-mail)", mail_latency, width=34))
        print(summary("dashboard decision", ui_latency, width=34))
        print(f"ratio one-click/dashboard: {ratios(mail_latency, ui_latency)}  (target <= 1.1)")
        print(flush=True)
        return mail_latency, ui_latency
    except BaseException:
        if stack is not None:
            for name, proc in stack.processes.items():
                print(f"--- {name} log tail ---\n{proc.log_tail(40)}", file=sys.stderr)
        raise
    finally:
        if stack is not None:
            stack.stop()
        controller.stop()
        mlflow.process.stop()
        databases.drop_all()
        shutil.rmtree(workdir, ignore_errors=True)


PARTS = ("burst", "oneclick")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=int(os.environ.get("HLML_BENCH_BURST", "500")))
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("HLML_BENCH_ROUNDS", "20")))
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {', '.join(unknown)} (choose from {', '.join(PARTS)})")
    if "burst" in parts:
        burst(args.burst, "sqlite")
        if postgres_available():
            # One server process, then two (the PostgreSQL layout scales out; each process
            # delivers, and claims keep every notice to one of them).
            burst(args.burst, "postgresql")
            burst(args.burst, "postgresql", workers=2)
            burst(args.burst, "postgresql", separate=True)
    if "oneclick" in parts:
        oneclick(args.rounds)


if __name__ == "__main__":
    main()
