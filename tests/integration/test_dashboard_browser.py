"""Headless Chromium drives the dashboard inside the Airflow UI on a real deployment.

api-server (with the plugin and the embedded approvals service), scheduler, dag-processor and
triggerer run as separate processes. A DAG's HumanApprovalSensor defers in the triggerer; the
browser logs in to Airflow, opens the dashboard from the navigation, approves the gate, and the
DAG run finishes. Screenshots of every tab are taken (copied to docs/images/ when
``HLML_UPDATE_SCREENSHOTS=1``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.dashboard_stack import (
    APPROVALS_PATH,
    CHROMIUM,
    USERS,
    ApprovalKeys,
    make_approval_keys,
    require_browser,
)
from tests.fixtures.airflow_stack import (
    PASSWORDS_FILE,
    REVIEWER_USER,
    AirflowStack,
    MetadataDatabases,
    StackConfig,
    start_airflow_stack,
)

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
DAG_ID = "hlml_dashboard_browser"
GATE_TASK = "approve_model"
DAG_FILE = textwrap.dedent(
    f'''
    import pendulum
    from airflow.sdk import DAG
    from airflow.providers.standard.operators.empty import EmptyOperator

    from airflow_provider_hlml.sensors.approval import HumanApprovalSensor

    with DAG("{DAG_ID}", schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False, tags=["hlml"]):
        gate = HumanApprovalSensor(
            task_id="{GATE_TASK}",
            subject="Promote churn-model v3 to @champion",
            body="The candidate beats the champion on accuracy and passes every threshold.",
            context={{
                "model_name": "churn-model",
                "model_version": "3",
                "mlflow_run_id": "0123456789abcdef",
                "passed": True,
                "metrics": {{
                    "accuracy": {{"candidate": 0.912, "champion": 0.887, "threshold": 0.8, "passed": True, "reason": None}},
                    "f1_score": {{"candidate": 0.744, "champion": 0.731, "threshold": 0.7, "passed": True, "reason": None}},
                }},
            }},
            approval_type="model_promotion",
            urgency="high",
            approvers=["approver"],
            reject_options=[{{"name": "retrain", "title": "Retrain", "description": "Retrain with more data"}}],
            response_timeout=900,
            deferrable=True,
            poll_interval=1,
        )
        gate >> EmptyOperator(task_id="promote")
    '''
)


@dataclass
class BrowserStack:
    stack: AirflowStack
    keys: ApprovalKeys
    passwords: dict[str, str]

    @property
    def approvals_url(self) -> str:
        return self.stack.api_url + APPROVALS_PATH


def _seed_mlflow(url: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url)
    exp_id = client.create_experiment(f"churn-prediction-{uuid.uuid4().hex[:6]}")
    model = "churn-model"
    client.create_registered_model(model)
    for i, (acc, f1) in enumerate([(0.861, 0.69), (0.887, 0.731), (0.912, 0.744)], start=1):
        run = client.create_run(exp_id, run_name=f"train-{i}")
        client.log_metric(run.info.run_id, "accuracy", acc)
        client.log_metric(run.info.run_id, "f1_score", f1)
        client.log_param(run.info.run_id, "n_estimators", str(50 * i))
        client.set_terminated(run.info.run_id)
        client.create_model_version(model, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(model, "champion", "2")
    client.set_model_version_tag(model, "2", "hlml.approval.approved_by", "approver")
    client.set_model_version_tag(model, "2", "hlml.approval.call_id", "seed-approval")


def _seed_history(env: BrowserStack) -> None:
    """Decided and expired requests so the Overview and Analytics tabs have history to show."""
    agent = {"Authorization": f"Bearer {env.keys.agent}"}
    delegate = {"Authorization": f"Bearer {env.keys.delegate}"}
    outcomes = [("approved", "looks good"), ("approved", None), ("rejected", "f1 dropped"), ("expired", None)]
    for n, (outcome, comment) in enumerate(outcomes):
        call_id = f"history-{n}-{uuid.uuid4().hex[:6]}"
        body = {
            "run_id": "history",
            "call_id": call_id,
            "spec": {
                "fn": "model_promotion",
                "kwargs": {"subject": f"Promote churn-model v{n}", "approval_type": "model_promotion"},
                "state": {
                    "hlml": {
                        "approvers": [],
                        "airflow": {"dag_id": DAG_ID, "run_id": f"seed_{n}", "task_id": GATE_TASK},
                    }
                },
            },
        }
        httpx.post(
            f"{env.approvals_url}/function_calls", json=body, headers=agent, timeout=30
        ).raise_for_status()
        if outcome == "expired":
            resp = httpx.post(
                f"{env.approvals_url}/agent/function_calls/{call_id}/cancel",
                json={"reason": "timeout", "comment": None},
                headers=agent,
                timeout=30,
            )
        else:
            resp = httpx.post(
                f"{env.approvals_url}/agent/function_calls/{call_id}/respond",
                json={
                    "approved": outcome == "approved",
                    "comment": comment or ("ok" if outcome == "approved" else "no"),
                    "user_info": {"name": "admin", "email": None},
                },
                headers=delegate,
                timeout=30,
            )
        resp.raise_for_status()


@pytest.fixture(scope="module")
def browser_stack(metadata_databases: MetadataDatabases, mlflow_server: Any) -> Iterator[BrowserStack]:
    require_browser()
    workdir = Path(tempfile.mkdtemp(prefix="hlml-dashboard-browser-"))
    approvals_db = f"sqlite:///{workdir / 'hlml_approvals.db'}"
    keys = make_approval_keys(approvals_db)
    _seed_mlflow(mlflow_server.url)
    users = {**USERS, REVIEWER_USER: "op"}
    # The gates reach the approvals service mounted in the API server, as the embedded default does.
    stack = start_airflow_stack(
        workdir,
        metadata_databases,
        StackConfig(
            mlflow_url=mlflow_server.url,
            agent_key=keys.agent,
            delegate_key=keys.delegate,
            mounted_approvals_db=approvals_db,
        ),
        extra_env={
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in users.items()),
            "AIRFLOW__HLML__DASHBOARD_REFRESH_SECONDS": "30",
        },
        include_examples=False,
    )
    try:
        (stack.dags_folder / "dashboard_gate.py").write_text(DAG_FILE)
        # SimpleAuthManager adds the users the stack did not know, with generated passwords.
        passwords = json.loads((stack.home / PASSWORDS_FILE).read_text())
        env = BrowserStack(stack=stack, keys=keys, passwords=passwords)
        _seed_history(env)
        yield env
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _shrink_png(path: Path) -> None:
    """Store screenshots as 8-bit palette PNGs: a few dozen KB instead of hundreds."""
    from PIL import Image

    with Image.open(path) as img:
        small = img.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def test_approve_a_real_gate_from_the_airflow_navigation(browser_stack: BrowserStack, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    stack = browser_stack.stack
    stack.api.wait_for_dag(DAG_ID, timeout=180)
    stack.api.unpause(DAG_ID)
    run_id = stack.api.trigger(DAG_ID)
    stack.api.wait_for_task_state(DAG_ID, run_id, GATE_TASK, "deferred", timeout=240)

    shots: dict[str, Path] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 860})
            page.set_default_timeout(60_000)
            page.goto(f"{stack.api_url}/")
            page.fill("input[name='username']", "approver")
            page.fill("input[name='password']", browser_stack.passwords["approver"])
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(f"{stack.api_url}/**")

            # The entry the plugin adds to the Airflow navigation opens the dashboard in the page.
            page.get_by_role("link", name="ML Approvals").first.click()
            page.wait_for_url("**/plugin/hlml**")
            frame = page.frame_locator("iframe[title='ML Approvals']")
            expect(frame.locator("[data-figure='pending'] .num")).to_have_text("1", timeout=90_000)

            frame.locator("a[data-tab='approvals']").click()
            pending = frame.locator("article[data-status='pending']").filter(
                has_text="Promote churn-model v3"
            )
            expect(pending).to_have_count(1)
            card = frame.locator(f"article[data-call-id='{pending.get_attribute('data-call-id')}']")
            expect(card.locator("table.validation")).to_contain_text("f1_score")
            shots["approvals"] = tmp_path / "dashboard-approvals.png"
            page.screenshot(path=str(shots["approvals"]))

            card.locator("textarea[name='comment']").fill("Metrics hold up; promote.")
            # The page reloads itself 1.2 s after a decision, and the gate may finish sooner: wait
            # for that reload, or it would undo a tab click made before it.
            with page.expect_event(
                "framenavigated", predicate=lambda f: f != page.main_frame, timeout=30_000
            ):
                card.locator("button.approve").click()
                expect(card.locator(".result")).to_contain_text("Approved as approver", timeout=30_000)

            finished = stack.api.wait_for_run(DAG_ID, run_id, timeout=240)
            assert finished["state"] == "success"
            states = stack.api.task_states(DAG_ID, run_id)
            assert states == {GATE_TASK: "success", "promote": "success"}
            result = stack.api.xcom(DAG_ID, run_id, GATE_TASK)
            assert result["approved"] is True
            assert result["responded_by_user"]["name"] == "approver"
            assert result["responded_by_user"]["via_delegate"] is True
            assert result["comment"] == "Metrics hold up; promote."

            for tab in ("overview", "experiments", "analytics"):
                frame.locator(f"a[data-tab='{tab}']").click()
                # A page load; the overview reads Airflow, the approvals service and MLflow.
                expect(frame.locator(f"a[data-tab='{tab}'].active")).to_have_count(1, timeout=30_000)
                if tab == "experiments":
                    expect(frame.locator("body")).to_contain_text("churn-model")
                    expect(frame.locator("body")).to_contain_text("@champion")
                if tab == "analytics":
                    expect(frame.locator("svg.chart rect").first).to_be_visible()
                if tab == "overview":
                    expect(frame.locator("[data-figure='pending'] .num")).to_have_text("0")
                    expect(frame.locator(".activity")).to_contain_text("Approved by approver")
                shots[tab] = tmp_path / f"dashboard-{tab}.png"
                page.screenshot(path=str(shots[tab]))
        finally:
            browser.close()

    for name, path in shots.items():
        _shrink_png(path)
        assert path.stat().st_size > 5_000, name
        if os.environ.get("HLML_UPDATE_SCREENSHOTS") == "1":
            REPO_IMAGES.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, REPO_IMAGES / path.name)
