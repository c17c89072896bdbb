"""MLflowReader against a real ``mlflow server`` and against dead or failing servers."""

from __future__ import annotations

import http.server
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_hlml.plugins.mlflow_client import MLflowReader, MLflowTarget, MLflowUnavailable
from tests.fixtures.processes import free_port


@pytest.fixture(scope="module")
def seeded(mlflow_server: Any) -> dict[str, str]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.url)
    suffix = uuid.uuid4().hex[:8]
    exp_id = client.create_experiment(f"dash-exp-{suffix}")
    run = client.create_run(exp_id, run_name="train-1")
    client.log_metric(run.info.run_id, "accuracy", 0.91)
    client.log_param(run.info.run_id, "n_estimators", "50")
    client.set_terminated(run.info.run_id)
    model = f"dash-model-{suffix}"
    client.create_registered_model(model)
    version = client.create_model_version(model, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(model, "champion", version.version)
    client.set_model_version_tag(model, version.version, "hlml.approval.approved_by", "ann")
    return {"experiment_id": exp_id, "run_id": run.info.run_id, "model": model, "url": mlflow_server.url}


class TestMLflowReader:
    async def test_overview_of_a_real_server(self, seeded: dict[str, str]) -> None:
        target = MLflowTarget(tracking_uri=seeded["url"], ui_url="http://mlflow.example")
        data = await MLflowReader(target, timeout=60).overview()
        exp = next(e for e in data["experiments"] if e["experiment_id"] == seeded["experiment_id"])
        run = exp["runs"][0]
        assert run["run_id"] == seeded["run_id"]
        assert run["metrics"] == {"accuracy": 0.91}
        assert run["params"] == {"n_estimators": "50"}
        assert (
            run["url"]
            == f"http://mlflow.example/#/experiments/{seeded['experiment_id']}/runs/{seeded['run_id']}"
        )
        model = next(m for m in data["models"] if m["name"] == seeded["model"])
        assert model["aliases"] == {"champion": "1"}
        version = model["versions"][0]
        assert version["aliases"] == ["champion"]
        assert version["tags"]["hlml.approval.approved_by"] == "ann"
        assert version["metrics"] == {"accuracy": 0.91}
        assert version["run_url"] is not None

    async def test_dead_server(self) -> None:
        target = MLflowTarget(tracking_uri=f"http://user:s3cret@127.0.0.1:{free_port()}", ui_url="x")
        with pytest.raises(MLflowUnavailable, match="unreachable") as err:
            await MLflowReader(target, timeout=2).overview()
        assert "s3cret" not in str(err.value)

    async def test_server_error(self, failing_server: str) -> None:
        target = MLflowTarget(tracking_uri=failing_server, ui_url="x", username="u", password="secret-pw")
        with pytest.raises(MLflowUnavailable, match="answered 503") as err:
            await MLflowReader(target, timeout=2).overview()
        assert "secret-pw" not in str(err.value)


@pytest.fixture
def failing_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(503)
            self.end_headers()

        do_GET = do_POST

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class TestMLflowTarget:
    def test_from_connection(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(
            "AIRFLOW_CONN_DASH_MLFLOW",
            '{"conn_type": "mlflow", "host": "http://mlflow:5000/", "login": "u", "password": "p",'
            ' "extra": {"ui_url": "https://ui.example/"}}',
        )
        target = MLflowTarget.from_connection("dash_mlflow")
        assert target is not None
        assert target.tracking_uri == "http://mlflow:5000"
        assert target.ui_url == "https://ui.example"
        assert (target.username, target.password) == ("u", "p")
        assert target.model_url("a b", "2") == "https://ui.example/#/models/a%20b/versions/2"

    def test_missing_connection(self) -> None:
        assert MLflowTarget.from_connection("no_such_mlflow_conn") is None

    def test_legacy_extra_keys_and_token_are_read_like_the_hook(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(
            "AIRFLOW_CONN_DASH_MLFLOW",
            '{"conn_type": "mlflow", "host": "mlflow", "port": 5000, "extra": {'
            '"extra__mlflow__ui_url": "https://legacy-ui.example/", "extra__mlflow__token": "tok-123",'
            ' "extra__mlflow__timeout": "2.5"}}',
        )
        target = MLflowTarget.from_connection("dash_mlflow")
        assert target is not None
        assert target.tracking_uri == "http://mlflow:5000"
        assert target.ui_url == "https://legacy-ui.example"
        assert target.authorization_header() == "Bearer tok-123"
        assert target.timeout == 3
        assert MLflowReader(target, timeout=10)._timeout == 3

    def test_invalid_connection_is_reported(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(
            "AIRFLOW_CONN_DASH_MLFLOW",
            '{"conn_type": "mlflow", "host": "http://mlflow:5000", "extra": {"max_retries": "many"}}',
        )
        with pytest.raises(MLflowUnavailable, match="max_retries"):
            MLflowTarget.from_connection("dash_mlflow")
