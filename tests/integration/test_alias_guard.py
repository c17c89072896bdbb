"""The protected-alias guard against real components.

A real ``mlflow server`` (a dedicated one allowing webhooks to a local receiver, and the session
one without), the real approvals service over HTTP (its keys, its audit chain), the guard's
receiver served by uvicorn the way the plugin mounts it (``/hlml/webhooks/mlflow``), and
``dag.test()`` of ``dags/hlml_alias_guard.py`` on the real Airflow metadata DB.
"""

from __future__ import annotations

import json
import runpy
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_hlml import audit
from airflow_provider_hlml.gate.wire import REGISTRY_EVENTS_PATH
from tests.fixtures.mlflow_server import MLflowServer, start_mlflow_server
from tests.fixtures.processes import free_port
from tests.fixtures.smtp import SmtpServer
from tests.unit.operators.dagrun_helpers import run_dag, task_states, xcom_value

pytestmark = pytest.mark.integration

SECRET = "alias-guard-test-secret"
DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "hlml_alias_guard.py"


# -- helpers ----------------------------------------------------------------------------------------
def wait_until(what: Callable[[], Any], timeout: float = 60.0, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def new_model(client: Any, prefix: str, versions: int) -> tuple[str, list[Any]]:
    """A registered model with ``versions`` versions, each registered from its own run."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    experiment = client.create_experiment(f"alias-guard-{name}")
    client.create_registered_model(name)
    made = []
    for _ in range(versions):
        run = client.create_run(experiment)
        client.set_terminated(run.info.run_id)
        made.append(
            client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
        )
    return name, made


def attest(service: Any, client: Any, name: str, version: str) -> str:
    """Have a reviewer approve a request naming ``name`` v``version`` in the approvals service and
    put its signed attestation on the version, as ModelPromoteOperator does; the call id."""
    from airflow_provider_hlml.examples.review import respond

    mv = client.get_model_version(name, version)
    call_id = f"alias-guard-{uuid.uuid4().hex[:12]}"
    agent = {"Authorization": f"Bearer {service.agent_key}"}
    created = httpx.post(
        service.base_url + "/function_calls",
        headers=agent,
        json={
            "run_id": "alias-guard-test",
            "call_id": call_id,
            "spec": {
                "fn": "model_promotion",
                "kwargs": {
                    "subject": f"Promote {name} v{version}?",
                    "context": {
                        "model_name": name,
                        "model_version": str(mv.version),
                        "mlflow_run_id": mv.run_id,
                        "model_uri": mv.source,
                    },
                },
            },
        },
        timeout=15,
    )
    assert created.status_code in (200, 201), created.text
    respond(service.base_url, service.reviewer_key, call_id, approved=True, comment="ship it")
    body = httpx.get(
        f"{service.base_url}/function_calls/{call_id}/attestation", headers=agent, timeout=15
    ).json()
    assert body["attestation"], body
    client.set_model_version_tag(name, str(mv.version), audit.ATTESTATION, body["attestation"])
    return call_id


def guard_state(client: Any, name: str, alias: str = "champion") -> dict[str, Any] | None:
    raw = client.get_registered_model(name).tags.get(audit.guard_state_tag(alias))
    return json.loads(raw) if raw else None


def registry_events(service: Any, name: str) -> list[dict[str, Any]]:
    answer = httpx.get(
        service.base_url + REGISTRY_EVENTS_PATH,
        params={"model": name},
        headers={"Authorization": f"Bearer {service.admin_key}"},
        timeout=15,
    )
    answer.raise_for_status()
    return list(reversed(answer.json()))  # oldest first


def holder(client: Any, name: str, alias: str = "champion") -> str:
    return str(client.get_model_version_by_alias(name, alias).version)


def assert_chain_intact(service: Any) -> None:
    from airflow_provider_hlml.approvals import db
    from airflow_provider_hlml.approvals.audit import chain

    engine = db.make_engine(service.database_url, pool_size=1)
    try:
        report = chain.verify(engine)
    finally:
        engine.dispose()
    assert report.ok, report.describe()


# -- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def webhook_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLflowServer]:
    """An MLflow server that delivers webhooks to a receiver on 127.0.0.1 over plain HTTP."""
    from cryptography.fernet import Fernet

    server = start_mlflow_server(
        tmp_path_factory.mktemp("mlflow-webhooks"),
        env={
            "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
            "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
            "MLFLOW_WEBHOOK_CACHE_TTL": "1",
            "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        },
    )
    try:
        yield server
    finally:
        server.process.stop()


@pytest.fixture(scope="module")
def receiver() -> Iterator[str]:
    """The plugin's webhook app, mounted as the API server mounts it, served by uvicorn; its URL."""
    import uvicorn
    from fastapi import FastAPI

    from airflow_provider_hlml.plugins.settings import DASHBOARD_PREFIX, WEBHOOKS_SUBPATH
    from airflow_provider_hlml.plugins.webhooks import create_webhook_app

    root = FastAPI()
    root.mount(DASHBOARD_PREFIX + WEBHOOKS_SUBPATH, create_webhook_app(None, "unused", SECRET))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(root, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=30)
    try:
        yield f"http://127.0.0.1:{port}{DASHBOARD_PREFIX}{WEBHOOKS_SUBPATH}/mlflow"
    finally:
        server.should_exit = True
        thread.join(10)


ALERT_TO = "ml-oncall@example.com"


@pytest.fixture
def guarded(
    approvals_service: Any, humanlayer_conn: str, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """Revert on, the webhook secret, and alerts e-mailed (Airflow's ``SmtpNotifier``) to a real
    SMTP server."""
    monkeypatch.setenv("AIRFLOW__HLML__ALIAS_GUARD_REVERT", "true")
    monkeypatch.setenv("AIRFLOW__HLML__MLFLOW_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("AIRFLOW__HLML__ALERT_EMAIL_TO", ALERT_TO)
    monkeypatch.setenv("AIRFLOW__HLML__ALERT_SMTP_CONN_ID", "hlml_guard_smtp")
    monkeypatch.delenv("AIRFLOW__EMAIL__FROM_EMAIL", raising=False)
    conn = {
        "conn_type": "smtp",
        "host": smtp_server.host,
        "port": smtp_server.port,
        "extra": {
            "disable_ssl": True,
            "disable_tls": True,
            "from_email": "airflow@example.com",
            "timeout": 10,
        },
    }
    monkeypatch.setenv("AIRFLOW_CONN_HLML_GUARD_SMTP", json.dumps(conn))
    return approvals_service


def alerts_about(smtp_server: SmtpServer, name: str) -> list[Any]:
    """The alert e-mails received about model ``name``."""
    return [m for m in smtp_server.messages() if name in str(m["Subject"])]


def protect_only(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Guard ``@champion`` of ``name`` only: other tests' models on the server are left alone."""
    monkeypatch.setenv("AIRFLOW__HLML__PROTECTED_ALIASES", json.dumps({name: ["champion"]}))


# -- (b) webhook, (d) refusals, (e) dashboard --------------------------------------------------------
class TestGuardThroughTheMlflowWebhook:
    @pytest.fixture
    def client(self, webhook_mlflow: MLflowServer, monkeypatch: pytest.MonkeyPatch) -> Any:
        from airflow_provider_hlml.hooks.mlflow import MLflowHook

        monkeypatch.setenv(
            "AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps({"conn_type": "mlflow", "host": webhook_mlflow.url})
        )
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        return MLflowHook("mlflow_default").client

    @pytest.fixture
    def webhook(self, client: Any, receiver: str, guarded: Any) -> Iterator[Any]:
        from airflow_provider_hlml.operators.alias_guard import MLFLOW_WEBHOOK_EVENTS, register_mlflow_webhook

        made = register_mlflow_webhook(receiver, secret=SECRET, name=f"hlml-guard-{uuid.uuid4().hex[:6]}")
        assert sorted(str(e) for e in made.events) == sorted(MLFLOW_WEBHOOK_EVENTS)
        time.sleep(1.5)  # MLFLOW_WEBHOOK_CACHE_TTL: the server's list of webhooks per event
        try:
            yield made
        finally:
            client.delete_webhook(made.webhook_id)

    def test_a_hand_moved_champion_is_reverted_to_the_last_attested_version(
        self,
        client: Any,
        webhook: Any,
        guarded: Any,
        smtp_server: SmtpServer,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        name, versions = new_model(client, "guard_webhook", 3)
        protect_only(monkeypatch, name)
        v1, v2, v3 = (str(v.version) for v in versions)
        call_id = attest(guarded, client, name, v1)
        attest(guarded, client, name, v2)

        # An attested version set by hand: the webhook's check finds it verified.
        client.set_registered_model_alias(name, "champion", v1)
        state = wait_until(lambda: guard_state(client, name))
        assert state["verdict"] == "verified"
        assert state["version"] == v1
        assert state["call_id"] == call_id
        assert state["approvers"] == ["alice"]
        assert state["source"] == "webhook"

        # Someone moves @champion to an unattested version: moved back to v1 (what it held, though
        # v2 is newer and attested too), audited in the chain, and the tag says so.
        client.set_registered_model_alias(name, "champion", v3)
        state = wait_until(lambda: (s := guard_state(client, name)) and s["verdict"] == "reverted" and s)
        assert holder(client, name) == v1
        assert state["reverted_from"] == v3
        assert state["reverted_to"] == v1
        assert state["version"] == v3
        assert "carries no approval attestation" in state["reason"]
        assert state["call_id"] == call_id

        events = wait_until(lambda: len(e := registry_events(guarded, name)) >= 2 and e)
        assert [e["event"] for e in events] == ["alias_moved", "alias_reverted"]
        moved, reverted = events
        assert moved["actor"] == "airflow"
        assert moved["metadata"]["version"] == v3
        assert moved["metadata"]["source"] == "webhook"
        assert "carries no approval attestation" in moved["comment"]
        assert reverted["metadata"]["reverted_to"] == v1
        assert reverted["metadata"]["call_id"] == call_id
        assert reverted["seq"] > moved["seq"]
        assert_chain_intact(guarded)
        # The alert, through Airflow's SmtpNotifier: once, naming the move and the revert.
        (alert,) = wait_until(lambda: alerts_about(smtp_server, name))
        assert alert["To"] == ALERT_TO
        assert f"@champion of {name} is on unattested v{v3}" in alert["Subject"]
        html = alert.get_body(("html",)).get_content()
        assert "carries no approval attestation" in html
        assert f"moved it back to version <b>{v1}</b>" in html

        # The revert's own webhook finds v1 verified: no loop, nothing more recorded.
        time.sleep(3)
        assert holder(client, name) == v1
        assert guard_state(client, name)["verdict"] == "reverted"
        assert len(registry_events(guarded, name)) == 2
        assert len(alerts_about(smtp_server, name)) == 1

        # (e) The dashboard's rows: reverted, with the evidence, verified with the service's keys.
        self._dashboard_shows(guarded, client, name, v1, call_id)

    def _dashboard_shows(self, service: Any, client: Any, name: str, v1: str, call_id: str) -> None:
        import asyncio

        from airflow_provider_hlml.gate.attestation import KEYS_PATH, KeySet
        from airflow_provider_hlml.plugins import views
        from airflow_provider_hlml.plugins.mlflow_client import MLflowReader, MLflowTarget

        target = MLflowTarget(
            tracking_uri=client._tracking_client.tracking_uri, ui_url="http://mlflow.example"
        )
        models = asyncio.run(MLflowReader(target).overview())["models"]
        keys = KeySet.from_document(httpx.get(service.base_url + KEYS_PATH, timeout=15).json())
        (row,) = views.guarded_aliases(models, {name: ("champion",)}, keys)
        assert row["status"] == "reverted"
        assert row["version"] == v1
        assert row["approvers"] == ["alice"]
        assert row["call_id"] == call_id
        assert row["key_id"] in keys.keys
        # Someone copies v1's attestation onto v3 and moves the alias there with the guard away.
        model = next(m for m in models if m["name"] == name)
        model["aliases"]["champion"] = "3"
        v3 = next(v for v in model["versions"] if v["version"] == "3")
        v1_tags = next(v for v in model["versions"] if v["version"] == v1)["tags"]
        v3["tags"][audit.ATTESTATION] = v1_tags[audit.ATTESTATION]
        (row,) = views.guarded_aliases(models, {name: ("champion",)}, keys)
        assert row["status"] == "unverified"
        assert "names version '1', not '3'" in row["reason"]
        assert row["approvers"] == []

    @pytest.mark.parametrize("case", ["missing", "bad", "stale", "no-delivery-id"])
    def test_unsigned_forged_or_stale_deliveries_change_nothing(
        self, client: Any, receiver: str, guarded: Any, monkeypatch: pytest.MonkeyPatch, case: str
    ) -> None:
        from airflow_provider_hlml.plugins.mlflow_webhook import mlflow_signature

        name, versions = new_model(client, "guard_refused", 1)
        protect_only(monkeypatch, name)
        version = str(versions[0].version)
        client.set_registered_model_alias(name, "champion", version)  # no webhook registered
        body = json.dumps(
            {
                "entity": "model_version_alias",
                "action": "created",
                "data": {"name": name, "alias": "champion", "version": version},
            }
        ).encode()
        delivery, now = str(uuid.uuid4()), str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-MLflow-Delivery-Id": delivery,
            "X-MLflow-Timestamp": now,
        }
        if case == "bad":
            headers["X-MLflow-Signature"] = mlflow_signature("not-the-secret", delivery, now, body)
        elif case == "stale":
            then = str(int(time.time()) - 3600)
            headers["X-MLflow-Timestamp"] = then
            headers["X-MLflow-Signature"] = mlflow_signature(SECRET, delivery, then, body)
        elif case == "no-delivery-id":
            headers["X-MLflow-Signature"] = mlflow_signature(SECRET, delivery, now, body)
            del headers["X-MLflow-Delivery-Id"]
        answer = httpx.post(receiver, content=body, headers=headers, timeout=15)
        assert answer.status_code == 401, answer.text
        time.sleep(1)
        assert holder(client, name) == version
        assert guard_state(client, name) is None
        assert registry_events(guarded, name) == []

        # The same body signed with the secret is acted on: the unattested holder is found (and,
        # with nothing attested to go back to, left in place).
        headers["X-MLflow-Delivery-Id"] = delivery
        headers["X-MLflow-Timestamp"] = now
        headers["X-MLflow-Signature"] = mlflow_signature(SECRET, delivery, now, body)
        answer = httpx.post(receiver, content=body, headers=headers, timeout=15)
        assert answer.status_code == 202, answer.text
        state = wait_until(lambda: guard_state(client, name))
        assert state["verdict"] == "unverified"
        assert "no attested version to revert to: left in place" in state["reason"]
        assert holder(client, name) == version
        # A replay of that delivery is acknowledged and not acted on again.
        again = httpx.post(receiver, content=body, headers=headers, timeout=15)
        assert again.json()["outcome"] == "duplicate"


# -- (a) the gate path, (c) the reconcile DAG --------------------------------------------------------
class TestGuardOfAGatePromotion:
    def test_promoted_version_verifies_and_the_reconcile_dag_reverts_a_hand_move(
        self,
        mlflow_conn: str,
        guarded: Any,
        smtp_server: SmtpServer,
        airflow_db: Any,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        from airflow_provider_hlml.hooks.mlflow import MLflowHook
        from airflow_provider_hlml.operators.alias_guard import AliasGuard
        from tests.integration.test_governance_promotion import _pipeline, _reviewers

        monkeypatch.setenv("AIRFLOW__HLML__LONG_POLL_SECONDS", "5")
        monkeypatch.delenv("AIRFLOW__HLML__APPROVAL_POLICY_FILE", raising=False)
        suffix = uuid.uuid4().hex[:8]
        dag_id, name = f"alias_guard_promotion_{suffix}", f"churn_guarded_{suffix}"
        protect_only(monkeypatch, name)
        thread, _answered = _reviewers(guarded, dag_id, [guarded.reviewer_key])
        dag_run = run_dag(_pipeline(dag_id, name))
        thread.join(30)
        assert task_states(dag_run)["promote"] == "success"
        decision = xcom_value(dag_run, "approve")
        client = MLflowHook(mlflow_conn).client
        promoted = holder(client, name)

        # (a) ModelPromoteOperator wrote the service's attestation: the guard finds it verified.
        finding = AliasGuard().check_alias(name, "champion")
        assert finding.verdict == "verified", finding.reason
        assert finding.version == promoted
        assert finding.call_id == decision["call_id"]
        assert finding.approvers == ("alice",)
        assert guard_state(client, name)["verdict"] == "verified"

        # (c) Someone registers the run again and moves @champion by hand; no webhook (this
        # server allows none): the scheduled reconcile DAG finds and reverts it.
        source = client.get_model_version(name, promoted)
        manual = client.create_model_version(name, f"runs:/{source.run_id}/model", run_id=source.run_id)
        client.set_registered_model_alias(name, "champion", manual.version)
        dag = runpy.run_path(str(DAG_FILE))["dag"]
        run = run_dag(dag)
        assert task_states(run) == {"reconcile_protected_aliases": "success"}
        (found,) = xcom_value(run, "reconcile_protected_aliases")
        assert found["verdict"] == "reverted"
        assert found["reverted_from"] == str(manual.version)
        assert found["reverted_to"] == promoted
        assert holder(client, name) == promoted
        state = guard_state(client, name)
        assert state["verdict"] == "reverted"
        assert state["source"] == "reconcile"
        events = registry_events(guarded, name)
        assert [e["event"] for e in events] == ["alias_moved", "alias_reverted"]
        assert events[1]["metadata"]["call_id"] == decision["call_id"]
        assert_chain_intact(guarded)
        (alert,) = wait_until(lambda: alerts_about(smtp_server, name))
        assert f"is on unattested v{manual.version}" in alert["Subject"]
        assert "Seen by the reconcile" in alert.get_body(("html",)).get_content()

        # The next run finds the restored version attested and records nothing new.
        run = run_dag(dag)
        (found,) = xcom_value(run, "reconcile_protected_aliases")
        assert found["verdict"] == "verified"
        assert found["recorded"] is False
        assert len(registry_events(guarded, name)) == 2
        assert len(alerts_about(smtp_server, name)) == 1

        # Someone deletes @champion: the guard knew it held an attested version, so it is caught
        # and set again on that version.
        client.delete_registered_model_alias(name, "champion")
        run = run_dag(dag)
        (found,) = xcom_value(run, "reconcile_protected_aliases")
        assert found["verdict"] == "reverted"
        assert found["version"] is None
        assert found["reverted_to"] == promoted
        assert f"@champion of {name} was deleted (it held attested version {promoted})" in found["reason"]
        assert holder(client, name) == promoted
        events = registry_events(guarded, name)
        assert [e["event"] for e in events] == ["alias_moved", "alias_reverted"] * 2
        assert_chain_intact(guarded)
        alerts = wait_until(lambda: len(a := alerts_about(smtp_server, name)) == 2 and a)
        assert f"@champion of {name} was deleted" in alerts[1]["Subject"]
