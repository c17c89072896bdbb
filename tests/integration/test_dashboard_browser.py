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
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

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
#: Stands in DAG_FILE for the MLflow run of the candidate (model_promotion gates look its authors up).
CANDIDATE_RUN = "__CANDIDATE_MLFLOW_RUN_ID__"
#: Stands in DAG_FILE for the MLflow run the validation logged to.
VALIDATION_RUN = "__VALIDATION_MLFLOW_RUN_ID__"
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
            body="The candidate `churn-model` v3 beats the **champion** on accuracy and passes every threshold.",
            context={{
                "model_name": "churn-model",
                "model_version": "3",
                "mlflow_run_id": "{CANDIDATE_RUN}",
                "model_uri": "models:/churn-model/3",
                "validation_run_id": "{VALIDATION_RUN}",
                "champion_version": "2",
                "passed": True,
                "metrics": {{
                    "accuracy": {{"candidate": 0.912, "champion": 0.887, "threshold": {{"threshold": 0.8}}, "passed": True, "reason": "passed"}},
                    "f1_score": {{"candidate": 0.744, "champion": 0.731, "threshold": {{"threshold": 0.7}}, "passed": True, "reason": "passed"}},
                    "log_loss": {{"candidate": 0.41, "champion": 0.39, "threshold": {{"threshold": 0.5, "greater_is_better": False}}, "passed": True, "reason": "passed"}},
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

# A gate whose reviewer is reached by e-mail (and in Slack): the one-click test answers from the mail.
ONECLICK_DAG_ID = "hlml_oneclick"
ONECLICK_SUBJECT = "Promote churn-model v5 to @champion"
ONECLICK_REVIEWER = "reviewer@example.com"
ONECLICK_DAG_FILE = textwrap.dedent(
    f'''
    import pendulum
    from airflow.sdk import DAG
    from airflow.providers.standard.operators.empty import EmptyOperator

    from airflow_provider_hlml.sensors.approval import HumanApprovalSensor

    with DAG("{ONECLICK_DAG_ID}", schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False):
        gate = HumanApprovalSensor(
            task_id="{GATE_TASK}",
            subject="{ONECLICK_SUBJECT}",
            body="`churn-model` v5 beats the champion on **accuracy** (+0.021) and passes every threshold.",
            context={{
                "model_name": "churn-model",
                "model_version": "5",
                "champion_version": "4",
                "passed": True,
                "metrics": {{
                    "accuracy": {{"candidate": 0.921, "champion": 0.900, "threshold": {{"threshold": 0.8}}, "passed": True, "reason": "passed"}},
                    "f1_score": {{"candidate": 0.752, "champion": 0.744, "threshold": {{"threshold": 0.7}}, "passed": True, "reason": "passed"}},
                }},
                "dataset": "churn-2026-11",
            }},
            approval_type="model_promotion",
            urgency="high",
            approvers=["{ONECLICK_REVIEWER}"],
            forbid=["requester"],
            reject_options=[{{"name": "retrain", "title": "Retrain with more data"}}],
            response_timeout=900,
            deferrable=True,
            poll_interval=1,
        )
        gate >> EmptyOperator(task_id="promote")
    '''
)

# A gate whose one rule needs two people of an approvals-service group: two dashboard users
# approve it one after the other.
QUORUM_DAG_ID = "hlml_dashboard_quorum"
QUORUM_GROUP = "quorum-reviewers"
QUORUM_USERS = ("lead-ann", "lead-bob")
QUORUM_SUBJECT = "Quorum: promote churn-model v4"
QUORUM_DAG_FILE = textwrap.dedent(
    f'''
    import pendulum
    from airflow.sdk import DAG
    from airflow.providers.standard.operators.empty import EmptyOperator

    from airflow_provider_hlml.sensors.approval import HumanApprovalSensor

    with DAG("{QUORUM_DAG_ID}", schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False):
        gate = HumanApprovalSensor(
            task_id="{GATE_TASK}",
            subject="{QUORUM_SUBJECT}",
            body="Two reviewers must approve this promotion.",
            approval_type="model_promotion",
            urgency="high",
            approval_rules=[{{"name": "Reviewers", "approvers": ["group:{QUORUM_GROUP}"], "required": 2}}],
            response_timeout=900,
            deferrable=True,
            poll_interval=1,
        )
        gate >> EmptyOperator(task_id="promote")
    '''
)


# A first version of a model (nothing holds @champion yet) that a reviewer rejects with one of the
# reject reasons the example DAGs offer (MODEL_REJECT_OPTIONS of the sensor module: the demo's
# churn_pipeline gate has the same three). The gate skips on a rejection (on_reject="skip"), so
# its XCom result, with the reason, is there to read; the demo's gate fails instead.
FIRST_DAG_ID = "hlml_dashboard_first_model"
FIRST_MODEL = "fraud-model"
FIRST_SUBJECT = "Promote fraud-model v1 to @champion"
FIRST_RUN = "__FIRST_MLFLOW_RUN_ID__"
REJECT_OPTIONS = [
    {"name": "needs_retraining", "title": "Needs retraining"},
    {"name": "data_issue", "title": "Data issue"},
    {"name": "not_now", "title": "Not now"},
]
FIRST_DAG_FILE = textwrap.dedent(
    f'''
    import pendulum
    from airflow.sdk import DAG
    from airflow.providers.standard.operators.empty import EmptyOperator

    from airflow_provider_hlml.sensors.approval import HumanApprovalSensor

    with DAG("{FIRST_DAG_ID}", schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False):
        gate = HumanApprovalSensor(
            task_id="{GATE_TASK}",
            subject="{FIRST_SUBJECT}",
            body="The first `{FIRST_MODEL}`: there is no champion to compare with.",
            context={{
                "model_name": "{FIRST_MODEL}",
                "model_version": "1",
                "mlflow_run_id": "{FIRST_RUN}",
                "champion_version": None,
                "passed": True,
                "metrics": {{
                    "accuracy": {{"candidate": 0.83, "champion": None, "threshold": {{"threshold": 0.8}}, "passed": True, "reason": "passed"}},
                }},
            }},
            approval_type="model_promotion",
            urgency="high",
            approvers=["approver"],
            reject_options={REJECT_OPTIONS!r},
            on_reject="skip",
            response_timeout=900,
            deferrable=True,
            poll_interval=1,
        )
        gate >> EmptyOperator(task_id="promote")
    '''
)


def _seed_quorum_group(approvals_db: str) -> None:
    """The approvals-service group the quorum gate names, with the two dashboard users as members."""
    from airflow_provider_hlml.approvals import db, store

    engine = db.make_engine(approvals_db, pool_size=1)
    try:
        with db.make_sessionmaker(engine)() as session:
            for user in QUORUM_USERS:
                store.create_key(session, name=user, role="reviewer", email=f"{user}@example.com")
            store.create_group(session, name=QUORUM_GROUP)
            store.add_to_group(session, name=QUORUM_GROUP, principals=list(QUORUM_USERS))
    finally:
        engine.dispose()


@dataclass
class BrowserStack:
    stack: AirflowStack
    keys: ApprovalKeys
    passwords: dict[str, str]
    mlflow_url: str
    mlflow: SeededMLflow

    @property
    def approvals_url(self) -> str:
        return self.stack.api_url + APPROVALS_PATH


@dataclass
class SeededMLflow:
    """What _seed_mlflow created: MLflow run ids by name, and the experiments."""

    runs: dict[str, str]
    experiment_id: str
    validation_experiment_id: str


def _seed_mlflow(url: str) -> SeededMLflow:
    """Three versions of churn-model (runs train-1..3, v2 the champion, v3 the candidate) with
    the validation run of v3, and a first fraud-model version (run fraud-train-1, no champion)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url)
    suffix = uuid.uuid4().hex[:6]
    exp_id = client.create_experiment(f"churn-prediction-{suffix}")
    model = "churn-model"
    client.create_registered_model(model)
    runs: dict[str, str] = {}
    for i, (acc, f1) in enumerate([(0.861, 0.69), (0.887, 0.731), (0.912, 0.744)], start=1):
        run = client.create_run(exp_id, run_name=f"train-{i}")
        client.log_metric(run.info.run_id, "accuracy", acc)
        client.log_metric(run.info.run_id, "f1_score", f1)
        client.log_param(run.info.run_id, "n_estimators", str(50 * i))
        client.set_terminated(run.info.run_id)
        client.create_model_version(model, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
        runs[f"train-{i}"] = run.info.run_id
    client.set_registered_model_alias(model, "champion", "2")
    client.set_model_version_tag(model, "2", "hlml.approval.approved_by", "approver")
    client.set_model_version_tag(model, "2", "hlml.approval.call_id", "seed-approval")
    validation_exp = client.create_experiment(f"churn-validation-{suffix}")
    validation = client.create_run(validation_exp, run_name="validate-3")
    client.set_terminated(validation.info.run_id)
    runs["validate-3"] = validation.info.run_id
    client.create_registered_model(FIRST_MODEL)
    fraud = client.create_run(exp_id, run_name="fraud-train-1")
    client.set_terminated(fraud.info.run_id)
    client.create_model_version(FIRST_MODEL, f"runs:/{fraud.info.run_id}/model", run_id=fraud.info.run_id)
    runs["fraud-train-1"] = fraud.info.run_id
    return SeededMLflow(runs=runs, experiment_id=exp_id, validation_experiment_id=validation_exp)


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
def browser_stack(
    metadata_databases: MetadataDatabases, mlflow_server: Any, smtp_server: Any, slack_standin: Any
) -> Iterator[BrowserStack]:
    require_browser()
    workdir = Path(tempfile.mkdtemp(prefix="hlml-dashboard-browser-"))
    approvals_db = f"sqlite:///{workdir / 'hlml_approvals.db'}"
    keys = make_approval_keys(approvals_db)
    _seed_quorum_group(approvals_db)
    seeded = _seed_mlflow(mlflow_server.url)
    users = {**USERS, REVIEWER_USER: "op", **dict.fromkeys(QUORUM_USERS, "user")}
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
            # The mounted approvals service delivers by e-mail and to Slack (a local stand-in).
            "HLML_APPROVALS_SMTP_URL": smtp_server.url,
            "HLML_APPROVALS_SMTP_FROM": "approvals@example.com",
            "HLML_APPROVALS_MLFLOW_URL": mlflow_server.url,
            "HLML_APPROVALS_SLACK_BOT_TOKEN": slack_standin.token,
            "HLML_APPROVALS_SLACK_SIGNING_SECRET": slack_standin.signing_secret,
            "HLML_APPROVALS_SLACK_API_URL": slack_standin.api_url,
            "HLML_APPROVALS_SLACK_CHANNEL": "C0HLMLREVIEW",
            "HLML_APPROVALS_DELIVERY_INTERVAL": "0.5",
        },
        include_examples=False,
    )
    try:
        (stack.dags_folder / "dashboard_gate.py").write_text(
            DAG_FILE.replace(CANDIDATE_RUN, seeded.runs["train-3"]).replace(
                VALIDATION_RUN, seeded.runs["validate-3"]
            )
        )
        (stack.dags_folder / "dashboard_quorum.py").write_text(QUORUM_DAG_FILE)
        (stack.dags_folder / "dashboard_oneclick.py").write_text(ONECLICK_DAG_FILE)
        (stack.dags_folder / "dashboard_first_model.py").write_text(
            FIRST_DAG_FILE.replace(FIRST_RUN, seeded.runs["fraud-train-1"])
        )
        # SimpleAuthManager adds the users the stack did not know, with generated passwords.
        passwords = json.loads((stack.home / PASSWORDS_FILE).read_text())
        env = BrowserStack(
            stack=stack, keys=keys, passwords=passwords, mlflow_url=mlflow_server.url, mlflow=seeded
        )
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
    stack.api.wait_for_task_state(DAG_ID, run_id, GATE_TASK, "awaiting_input", timeout=240)

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
            _assert_the_reviewers_card(card, browser_stack, run_id)
            shots["approvals"] = tmp_path / "dashboard-approvals.png"
            page.screenshot(path=str(shots["approvals"]))
            _assert_mlflow_pages_show_the_runs(browser, card, browser_stack)

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


def _href(card: Any, kind: str) -> str:
    href = card.locator(f"li[data-kind='{kind}'] a").get_attribute("href")
    assert href, kind
    return str(href)


def _mlflow_get(env: BrowserStack, path: str, **params: str) -> dict[str, Any]:
    resp = httpx.get(f"{env.mlflow_url}/api/2.0/mlflow/{path}", params=params, timeout=30)
    assert resp.status_code == 200, (path, params, resp.text[:300])
    return dict(resp.json())


def _assert_the_reviewers_card(card: Any, env: BrowserStack, dag_run_id: str) -> None:
    """The card of the candidate: Markdown body, the difference to the champion, and links into
    MLflow (the test server) and Airflow whose targets exist."""
    from playwright.sync_api import expect

    # The Markdown body, rendered.
    expect(card.locator(".body.markdown code")).to_have_text("churn-model")
    expect(card.locator(".body.markdown strong")).to_have_text("champion")
    # The difference to the champion, in each metric's direction.
    for metric, text, verdict in [
        ("accuracy", "+0.025 (+2.8%)", "better"),
        ("f1_score", "+0.013 (+1.8%)", "better"),
        ("log_loss", "+0.02 (+5.1%)", "worse"),  # lower is better
    ]:
        cell = card.locator(f"tr[data-metric='{metric}'] td.delta")
        expect(cell).to_have_text(text)
        expect(cell).to_have_class(f"num delta {verdict}")
    expect(card.locator("tr[data-metric='log_loss'] td.rule")).to_have_text("<= 0.5")
    expect(card.locator(".no-champion")).to_have_count(0)

    # Every MLflow link points at the test server, at things that exist there.
    mlflow = f"{env.mlflow_url}/#/"
    runs = env.mlflow.runs
    run_link = _href(card, "mlflow_run")
    assert run_link == f"{mlflow}experiments/{env.mlflow.experiment_id}/runs/{runs['train-3']}"
    run = _mlflow_get(env, "runs/get", run_id=run_link.rsplit("/runs/", 1)[1])["run"]
    assert run["info"]["run_name"] == "train-3"
    assert run["info"]["experiment_id"] == env.mlflow.experiment_id
    validation_link = _href(card, "validation_run")
    assert validation_link == (
        f"{mlflow}experiments/{env.mlflow.validation_experiment_id}/runs/{runs['validate-3']}"
    )
    validation = _mlflow_get(env, "runs/get", run_id=validation_link.rsplit("/runs/", 1)[1])["run"]
    assert validation["info"]["experiment_id"] == env.mlflow.validation_experiment_id
    for kind, version, run_name in [("model_version", "3", "train-3"), ("champion_version", "2", "train-2")]:
        link = _href(card, kind)
        assert link == f"{mlflow}models/churn-model/versions/{version}", kind
        name, number = link.split("#/models/", 1)[1].split("/versions/")
        found = _mlflow_get(env, "model-versions/get", name=name, version=number)["model_version"]
        assert found["run_id"] == runs[run_name], kind
    champion = _mlflow_get(env, "registered-models/alias", name="churn-model", alias="champion")
    assert champion["model_version"]["version"] == "2"
    compare = _href(card, "compare")
    query = parse_qs(urlsplit(compare.split("#", 1)[1]).query)
    assert json.loads(query["runs"][0]) == [runs["train-3"], runs["train-2"]]
    assert json.loads(query["experiments"][0]) == [env.mlflow.experiment_id]
    # Airflow links: the task instance and the DAG run, built from the gate's ids.
    assert _href(card, "airflow_task").endswith(
        f"/dags/{DAG_ID}/runs/{quote(dag_run_id, safe='')}/tasks/{GATE_TASK}"
    )
    assert _href(card, "airflow_dag_run").endswith(f"/dags/{DAG_ID}/runs/{quote(dag_run_id, safe='')}")


def _assert_mlflow_pages_show_the_runs(browser: Any, card: Any, env: BrowserStack) -> None:
    """The MLflow UI opens the card's run and comparison links on the right runs."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1360, "height": 860})
    try:
        page.set_default_timeout(90_000)
        page.goto(_href(card, "mlflow_run"))
        expect(page.get_by_text("train-3").first).to_be_visible()
        page.goto(_href(card, "compare"))
        expect(page.get_by_text("train-2").first).to_be_visible()
        expect(page.get_by_text("train-3").first).to_be_visible()
        page.goto(_href(card, "champion_version"))
        expect(page.get_by_text("Version 2").first).to_be_visible()
    finally:
        page.close()


def _sign_in(page: Any, base_url: str, user: str, password: str) -> None:
    """Log in on Airflow's login page and wait for the session cookie the dashboard reads."""
    page.goto(f"{base_url}/")
    page.fill("input[name='username']", user)
    page.fill("input[name='password']", password)
    page.get_by_role("button", name="Sign in").click()
    deadline = time.monotonic() + 60
    while not any(c["name"] == "_token" for c in page.context.cookies()):
        assert time.monotonic() < deadline, f"{user} got no session cookie after signing in"
        page.wait_for_timeout(200)
    # The login page then navigates to the app: let that navigation land, or the caller's next
    # page.goto() can be aborted by it (net::ERR_ABORTED).
    page.wait_for_url(lambda url: "/auth/" not in url, timeout=60_000)
    page.wait_for_load_state("load")


def _pending_quorum_calls(env: BrowserStack) -> list[dict[str, Any]]:
    """The pending requests of the quorum gate, as the approvals service holds them."""
    resp = httpx.get(
        f"{env.approvals_url}/function_calls",
        params={"status": "pending"},
        headers={"Authorization": f"Bearer {env.keys.agent}"},
        timeout=30,
    )
    resp.raise_for_status()
    return [c for c in resp.json() if c["spec"]["kwargs"].get("subject") == QUORUM_SUBJECT]


def test_two_reviewers_meet_a_quorum_rule_one_after_the_other(browser_stack: BrowserStack) -> None:
    """A rule needing two approvals: the first leaves the gate waiting, the second releases it."""
    from playwright.sync_api import expect, sync_playwright

    stack = browser_stack.stack
    stack.api.wait_for_dag(QUORUM_DAG_ID, timeout=180)
    stack.api.unpause(QUORUM_DAG_ID)
    run_id = stack.api.trigger(QUORUM_DAG_ID)
    stack.api.wait_for_task_state(QUORUM_DAG_ID, run_id, GATE_TASK, "awaiting_input", timeout=240)
    approvals = f"{stack.api_url}/hlml/approvals?status=pending"
    first, second = QUORUM_USERS

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            # The first reviewer approves: the request stays pending at 1 of 2.
            ann = browser.new_context(viewport={"width": 1360, "height": 860})
            page = ann.new_page()
            page.set_default_timeout(60_000)
            _sign_in(page, stack.api_url, first, browser_stack.passwords[first])
            page.goto(approvals)
            listed = page.locator("article[data-status='pending']").filter(has_text=QUORUM_SUBJECT)
            expect(listed).to_have_count(1, timeout=60_000)
            call_id = listed.get_attribute("data-call-id")
            card = page.locator(f"article[data-call-id='{call_id}']")
            expect(card.locator("li.rule .progress")).to_have_text("Reviewers 0 of 2")
            expect(card.locator("li.rule")).to_contain_text(f"group:{QUORUM_GROUP}")
            card.locator("textarea[name='comment']").fill("Looks right to me.")
            # The page reloads itself 1.2 s after the answer.
            with page.expect_navigation(timeout=30_000):
                card.locator("button.approve").click()
                expect(card.locator(".result")).to_have_text(
                    "Your approval was recorded: Reviewers 1 of 2", timeout=30_000
                )
            expect(card).to_have_attribute("data-status", "pending")
            expect(card.locator("li.rule .progress")).to_have_text(f"Reviewers 1 of 2: {first}")
            expect(card.locator("ul.answers")).to_contain_text(f"{first} approved (toward Reviewers)")
            expect(card.locator(".blocked")).to_have_text(
                "You have already answered; each person counts once"
            )
            expect(card.locator("button.approve")).to_have_count(0)
            ann.close()

            # The gate keeps waiting: its trigger reads the request every second and finds the
            # rule unmet.
            time.sleep(8)
            assert stack.api.task_states(QUORUM_DAG_ID, run_id)[GATE_TASK] == "awaiting_input"
            assert stack.api.dag_run(QUORUM_DAG_ID, run_id)["state"] == "running"
            waiting = _pending_quorum_calls(browser_stack)
            assert len(waiting) == 1
            assert waiting[0]["status"]["approved"] is None
            assert [a["name"] for a in waiting[0]["status"]["answers"]] == [first]

            # The second reviewer sees 1 of 2, is offered the buttons, and approves.
            bob = browser.new_context(viewport={"width": 1360, "height": 860})
            page = bob.new_page()
            page.set_default_timeout(60_000)
            _sign_in(page, stack.api_url, second, browser_stack.passwords[second])
            page.goto(approvals)
            card = page.locator(f"article[data-call-id='{call_id}']")
            expect(card).to_have_attribute("data-status", "pending")
            expect(card.locator("li.rule .progress")).to_have_text(f"Reviewers 1 of 2: {first}")
            expect(card.locator(".blocked")).to_have_count(0)
            expect(card.locator("button.approve")).to_have_count(1)
            with page.expect_navigation(timeout=30_000):
                card.locator("button.approve").click()
                expect(card.locator(".result")).to_have_text(f"Approved as {second}.", timeout=30_000)
                expect(card).to_have_attribute("data-status", "approved")
            bob.close()
        finally:
            browser.close()

    finished = stack.api.wait_for_run(QUORUM_DAG_ID, run_id, timeout=240)
    assert finished["state"] == "success"
    assert stack.api.task_states(QUORUM_DAG_ID, run_id) == {GATE_TASK: "success", "promote": "success"}
    result = stack.api.xcom(QUORUM_DAG_ID, run_id, GATE_TASK)
    assert result["approved"] is True
    assert [(a["name"], a["rule"]) for a in result["approvals"]] == [
        (first, "Reviewers"),
        (second, "Reviewers"),
    ]
    assert _pending_quorum_calls(browser_stack) == []


def test_first_version_rejected_with_a_reject_reason(browser_stack: BrowserStack) -> None:
    """A first model version has no champion; the reviewer rejects it with a reason, which the gate
    returns as its result's ``reject_option`` and the dashboard shows by its title."""
    from playwright.sync_api import expect, sync_playwright

    stack = browser_stack.stack
    stack.api.wait_for_dag(FIRST_DAG_ID, timeout=180)
    stack.api.unpause(FIRST_DAG_ID)
    run_id = stack.api.trigger(FIRST_DAG_ID)
    stack.api.wait_for_task_state(FIRST_DAG_ID, run_id, GATE_TASK, "awaiting_input", timeout=240)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 860})
            page.set_default_timeout(60_000)
            _sign_in(page, stack.api_url, "approver", browser_stack.passwords["approver"])
            page.goto(f"{stack.api_url}/hlml/approvals?status=pending")
            listed = page.locator("article[data-status='pending']").filter(has_text=FIRST_SUBJECT)
            expect(listed).to_have_count(1, timeout=60_000)
            call_id = listed.get_attribute("data-call-id")
            card = page.locator(f"article[data-call-id='{call_id}']")
            expect(card.locator(".no-champion")).to_have_text(
                "No champion yet: this would be the first version under @champion."
            )
            expect(card.locator(".body.markdown code")).to_have_text(FIRST_MODEL)
            expect(card.locator("tr[data-metric='accuracy'] td.champion")).to_have_text("-")
            expect(card.locator("tr[data-metric='accuracy'] td.delta")).to_have_text("-")
            expect(card.locator("li[data-kind='champion_version']")).to_have_count(0)
            expect(card.locator("li[data-kind='compare']")).to_have_count(0)
            # The candidate's version and run exist in MLflow: linked.
            version_link = _href(card, "model_version")
            assert version_link == f"{browser_stack.mlflow_url}/#/models/{FIRST_MODEL}/versions/1"
            run_link = _href(card, "mlflow_run")
            assert run_link.endswith(f"/runs/{browser_stack.mlflow.runs['fraud-train-1']}")
            assert run_link.startswith(f"{browser_stack.mlflow_url}/#/experiments/")

            # The reasons offered are the example DAGs' reject options, by title.
            options = card.locator("select[name='reject_option'] option")
            expect(options).to_have_text(["reject reason…", *(o["title"] for o in REJECT_OPTIONS)])
            card.locator("select[name='reject_option']").select_option(label="Needs retraining")
            card.locator("textarea[name='comment']").fill("Accuracy is too close to the threshold.")
            with page.expect_navigation(timeout=30_000):
                card.locator("button.reject").click()
                expect(card.locator(".result")).to_have_text("Rejected as approver.", timeout=30_000)

            finished = stack.api.wait_for_run(FIRST_DAG_ID, run_id, timeout=240)
            assert finished["state"] == "success"
            assert stack.api.task_states(FIRST_DAG_ID, run_id) == {GATE_TASK: "success", "promote": "skipped"}
            result = stack.api.xcom(FIRST_DAG_ID, run_id, GATE_TASK)
            assert result["approved"] is False
            assert result["reject_option"] == "needs_retraining"
            assert result["comment"] == "Accuracy is too close to the threshold."
            assert result["responded_by_user"]["name"] == "approver"

            # The decided card and the recent activity name the reason by its title.
            page.goto(f"{stack.api_url}/hlml/approvals?status=rejected")
            decided = page.locator(f"article[data-call-id='{call_id}']")
            expect(decided).to_have_attribute("data-status", "rejected")
            expect(decided.locator(".reject-reason")).to_have_text("Needs retraining")
            expect(decided.locator(".reject-reason")).to_have_attribute("data-option", "needs_retraining")
            page.goto(f"{stack.api_url}/hlml/")
            expect(page.locator(".activity")).to_contain_text(
                f"Rejected by approver (Needs retraining): {FIRST_SUBJECT}"
            )
        finally:
            browser.close()


def _save_shot(path: Path) -> None:
    _shrink_png(path)
    assert path.stat().st_size > 5_000, path.name
    if os.environ.get("HLML_UPDATE_SCREENSHOTS") == "1":
        REPO_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, REPO_IMAGES / path.name)


def test_approve_from_the_email_with_one_click(
    browser_stack: BrowserStack, smtp_server: Any, slack_standin: Any, tmp_path: Path
) -> None:
    """The reviewer reads the e-mail, opens its approve link, confirms, and the gate's run finishes."""
    import re

    from playwright.sync_api import expect, sync_playwright

    stack = browser_stack.stack
    stack.api.wait_for_dag(ONECLICK_DAG_ID, timeout=180)
    stack.api.unpause(ONECLICK_DAG_ID)
    run_id = stack.api.trigger(ONECLICK_DAG_ID)
    stack.api.wait_for_task_state(ONECLICK_DAG_ID, run_id, GATE_TASK, "awaiting_input", timeout=240)

    deadline = time.monotonic() + 120
    mail = None
    while mail is None and time.monotonic() < deadline:
        mail = next(
            (
                m
                for m in smtp_server.messages()
                if ONECLICK_SUBJECT in str(m["Subject"]) and ONECLICK_REVIEWER in str(m["To"])
            ),
            None,
        )
        time.sleep(0.5)
    assert mail is not None, "the request's e-mail did not arrive"
    text = mail.get_body(preferencelist=("plain",)).get_content()
    html = mail.get_body(preferencelist=("html",)).get_content()
    links = list(dict.fromkeys(re.findall(r"https?://[^\s\"'<>]+/hlml/act/[A-Za-z0-9_\-]+", text)))
    assert len(links) == 2, text
    approve = links[0]
    assert approve.startswith(stack.api_url + APPROVALS_PATH)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 1100})
            page.set_default_timeout(60_000)
            # The e-mail as a mail client shows it (its HTML part; it loads nothing from outside).
            page.set_content(html)
            expect(page.locator("body")).to_contain_text("Approve")
            page.screenshot(path=str(tmp_path / "email-request.png"), full_page=True)
            # The Slack message as the stand-in renders its Block Kit.
            posted = [
                c.params
                for c in slack_standin.calls("chat.postMessage")
                if ONECLICK_SUBJECT in json.dumps(c.params)
            ]
            assert posted, "the request was not posted to Slack"
            ref = next(
                (ch, ts)
                for (ch, ts), message in slack_standin.messages.items()
                if ONECLICK_SUBJECT in json.dumps(message.blocks)
            )
            page.goto(slack_standin.render_url(*ref))
            expect(page.locator("body")).to_contain_text(ONECLICK_SUBJECT)
            page.screenshot(path=str(tmp_path / "slack-request.png"), full_page=True)

            # Opening the link shows what is decided, as whom; it decides nothing.
            page.goto(approve)
            expect(page.locator(".who")).to_contain_text(ONECLICK_REVIEWER)
            expect(page.locator(".who")).to_contain_text("forwarded")
            assert stack.api.task_states(ONECLICK_DAG_ID, run_id)[GATE_TASK] == "awaiting_input"
            page.screenshot(path=str(tmp_path / "email-confirm.png"), full_page=True)
            page.fill("textarea[name='comment']", "Approved from the e-mail.")
            page.get_by_role("button", name="Confirm approval").click()
            expect(page.locator(".done")).to_contain_text("Your approval was recorded")

            finished = stack.api.wait_for_run(ONECLICK_DAG_ID, run_id, timeout=240)
            assert finished["state"] == "success"
            assert stack.api.task_states(ONECLICK_DAG_ID, run_id) == {
                GATE_TASK: "success",
                "promote": "success",
            }
            result = stack.api.xcom(ONECLICK_DAG_ID, run_id, GATE_TASK)
            assert result["approved"] is True
            assert result["comment"] == "Approved from the e-mail."
            assert result["responded_by_user"]["email"] == ONECLICK_REVIEWER

            # The link worked once; the Slack message now shows the outcome.
            again = httpx.post(approve, data={}, timeout=30)
            assert again.status_code == 410
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                blocks = slack_standin.messages[ref].blocks
                if not any(b.get("type") == "actions" for b in blocks):
                    break
                time.sleep(0.5)
            assert not any(b.get("type") == "actions" for b in slack_standin.messages[ref].blocks)
        finally:
            browser.close()
    for name in ("email-request.png", "slack-request.png", "email-confirm.png"):
        _save_shot(tmp_path / name)
