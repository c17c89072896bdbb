"""MLflowHook against a real ``mlflow server``; auth faults against a local HTTP server."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from airflow_provider_hlml.hooks.mlflow import MLflowConnectionError, MLflowHook
from tests.fixtures.processes import free_port

PASSWORD = "s3cr3t-pw-" + uuid.uuid4().hex[:8]
TOKEN = "tok-" + uuid.uuid4().hex


class _AuthServer(ThreadingHTTPServer):
    """Answers the MLflow REST API only when the expected Authorization header arrives."""

    expected: str | None = None
    seen: list[str | None]


class _AuthHandler(BaseHTTPRequestHandler):
    server: _AuthServer

    def _answer(self) -> None:
        auth = self.headers.get("Authorization")
        self.server.seen.append(auth)
        if self.server.expected is not None and auth != self.server.expected:
            body = b"<html>401 Unauthorized</html>"
            self.send_response(401)
            self.send_header("Content-Type", "text/html")
        else:
            body = json.dumps({"experiments": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _answer
    do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def auth_server() -> Iterator[_AuthServer]:
    server = _AuthServer(("127.0.0.1", free_port()), _AuthHandler)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _set_conn(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: object) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "mlflow", **fields}))


class TestMLflowHook:
    def test_declares_connection_type(self) -> None:
        assert MLflowHook.conn_type == "mlflow"
        assert MLflowHook.default_conn_name == "mlflow_default"
        assert MLflowHook.conn_name_attr == "mlflow_conn_id"
        assert MLflowHook.hook_name == "MLflow"

    def test_client_is_built_lazily(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("AIRFLOW_CONN_MLFLOW_DEFAULT", raising=False)
        hook = MLflowHook()  # no connection exists: constructing must not look it up
        assert "client" not in hook.__dict__
        with pytest.raises(MLflowConnectionError, match="'mlflow_default' is not defined"):
            _ = hook.client

    def test_get_or_create_experiment_creates_once(self, mlflow_conn: str) -> None:
        hook = MLflowHook(mlflow_conn)
        name = f"hook-exp-{uuid.uuid4().hex[:6]}"
        exp_id = hook.get_or_create_experiment(name, description="churn models", tags={"team": "ml"})
        assert hook.get_or_create_experiment(name) == exp_id
        experiment = hook.client.get_experiment(exp_id)
        assert experiment.name == name
        assert experiment.tags["team"] == "ml"
        assert experiment.tags["mlflow.note.content"] == "churn models"

    def test_empty_experiment_name_is_refused(self, mlflow_conn: str) -> None:
        with pytest.raises(ValueError, match="experiment_name"):
            MLflowHook(mlflow_conn).get_or_create_experiment("  ")

    def test_test_connection_ok(self, mlflow_conn: str, mlflow_server) -> None:
        ok, message = MLflowHook(mlflow_conn).test_connection()
        assert ok, message
        assert mlflow_server.url in message

    def test_falls_back_to_mlflow_tracking_uri(self, mlflow_server, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("AIRFLOW_CONN_MLFLOW_DEFAULT", raising=False)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
        hook = MLflowHook()
        assert hook.tracking_uri == mlflow_server.url
        assert hook.settings.from_env
        assert hook.test_connection()[0]

    def test_missing_connection_without_env_names_the_conn_id(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        with pytest.raises(
            MLflowConnectionError, match=r"'mlflow_nowhere' is not defined.*MLFLOW_TRACKING_URI"
        ):
            MLflowHook("mlflow_nowhere").get_or_create_experiment("x")

    def test_connection_without_host_is_refused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        _set_conn(monkeypatch, "mlflow_nohost")
        with pytest.raises(MLflowConnectionError, match="'mlflow_nohost' has no host"):
            _ = MLflowHook("mlflow_nohost").tracking_uri

    def test_host_and_port_fields_build_the_uri(self, monkeypatch: pytest.MonkeyPatch) -> None:
        _set_conn(monkeypatch, "mlflow_parts", host="mlflow.internal", port=5001, schema="https")
        assert MLflowHook("mlflow_parts").tracking_uri == "https://mlflow.internal:5001"

    def test_unreachable_host_names_connection_and_uri(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        url = f"http://127.0.0.1:{free_port()}"
        _set_conn(monkeypatch, "mlflow_down", host=url, login="u", password=PASSWORD)
        hook = MLflowHook("mlflow_down")
        with pytest.raises(MLflowConnectionError) as info:
            hook.get_or_create_experiment("anything")
        message = str(info.value)
        assert "'mlflow_down'" in message
        assert url in message
        assert "unreachable" in message
        assert PASSWORD not in message
        # No extras: the message names MLflow's own setting and its value.
        assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES=0" in message
        ok, text = hook.test_connection()
        assert not ok
        assert "'mlflow_down'" in text

    def test_connection_test_answers_within_10s_whatever_mlflows_retries(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # MLflow's defaults: 7 retries with backoff 2 took about four minutes against a closed port.
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "2")
        port = free_port()  # nobody listens there
        _set_conn(
            monkeypatch, "mlflow_closed", host=f"http://u:{PASSWORD}@127.0.0.1:{port}", extra={"timeout": 60}
        )
        started = time.monotonic()
        ok, message = MLflowHook("mlflow_closed").test_connection()
        elapsed = time.monotonic() - started
        assert not ok
        assert elapsed < 10, elapsed
        assert f"MLflow connection 'mlflow_closed' (http://127.0.0.1:{port}) is unreachable" in message
        assert "ConnectionError after 2 attempts of up to 4 s each" in message
        assert "Check the host and port" in message
        assert PASSWORD not in message
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"
        assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ

    def test_unreachable_mlflow_fails_a_task_call_within_15s_with_the_connections_limits(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "2")
        port = free_port()
        _set_conn(
            monkeypatch,
            "mlflow_bounded",
            host=f"http://127.0.0.1:{port}",
            login="u",
            password=PASSWORD,
            extra={"timeout": 2.5, "max_retries": "1"},
        )
        hook = MLflowHook("mlflow_bounded")
        started = time.monotonic()
        with pytest.raises(MLflowConnectionError) as info:
            hook.get_or_create_experiment("anything")
        assert time.monotonic() - started < 15
        message = str(info.value)
        assert f"'mlflow_bounded' (http://127.0.0.1:{port}) is unreachable" in message
        assert "2 attempts of up to 3 s each" in message
        assert "extra 'max_retries'" in message
        assert PASSWORD not in message
        # The limits applied to that call only.
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"
        assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ

    def test_timeout_and_retry_extras_are_scoped_to_the_connections_calls(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
        _set_conn(
            monkeypatch, "mlflow_limits", host="http://mlflow:5000", extra={"timeout": 10, "max_retries": 2}
        )
        _set_conn(monkeypatch, "mlflow_plain", host="http://mlflow:5000")
        with MLflowHook("mlflow_limits").authenticated():
            assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "10"
            assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
        assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"
        with MLflowHook("mlflow_plain").authenticated():  # no extras: MLflow's settings
            assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ
            assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"

    @pytest.mark.parametrize(
        ("extra", "error"),
        [
            ({"timeout": "soon"}, "extra 'timeout' must be a positive number of seconds, got 'soon'"),
            ({"timeout": 0}, "extra 'timeout' must be a positive number"),
            ({"max_retries": 11}, "extra 'max_retries' must be a whole number from 0 to 10, got 11"),
            ({"max_retries": "1.5"}, "extra 'max_retries' must be a whole number"),
        ],
    )
    def test_bad_timeout_or_retry_extras_name_the_field(
        self, monkeypatch: pytest.MonkeyPatch, extra: dict[str, object], error: str
    ) -> None:
        _set_conn(monkeypatch, "mlflow_badextra", host="http://mlflow:5000", extra=extra)
        with pytest.raises(MLflowConnectionError, match=f"'mlflow_badextra': {error}"):
            _ = MLflowHook("mlflow_badextra").settings
        ok, message = MLflowHook("mlflow_badextra").test_connection()
        assert not ok
        assert "'mlflow_badextra'" in message

    def test_basic_auth_is_sent_without_touching_the_environment(
        self, auth_server: _AuthServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import base64

        auth_server.expected = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
        url = f"http://127.0.0.1:{auth_server.server_address[1]}"
        _set_conn(monkeypatch, "mlflow_basic", host=url, login="alice", password=PASSWORD)
        hook = MLflowHook("mlflow_basic")
        before = dict(os.environ)
        assert hook.test_connection()[0]
        assert auth_server.seen[-1] == auth_server.expected
        assert dict(os.environ) == before
        assert not any(k.startswith("MLFLOW_TRACKING_") for k in os.environ)

    def test_bearer_token_from_extra(self, auth_server: _AuthServer, monkeypatch: pytest.MonkeyPatch) -> None:
        auth_server.expected = f"Bearer {TOKEN}"
        url = f"http://127.0.0.1:{auth_server.server_address[1]}"
        _set_conn(monkeypatch, "mlflow_token", host=url, extra={"token": TOKEN})
        assert MLflowHook("mlflow_token").test_connection()[0]
        assert auth_server.seen[-1] == f"Bearer {TOKEN}"

    def test_credentials_stay_inside_their_scope(
        self, auth_server: _AuthServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Another thread, and code after the call, talk to MLflow without this hook's secret."""
        from mlflow.tracking import MlflowClient

        url = f"http://127.0.0.1:{auth_server.server_address[1]}"
        _set_conn(monkeypatch, "mlflow_scoped", host=url, extra={"token": TOKEN})
        hook = MLflowHook("mlflow_scoped")
        plain = MlflowClient(tracking_uri=url)
        other_thread_saw: list[str | None] = []

        def other() -> None:
            plain.search_experiments(max_results=1)
            other_thread_saw.append(auth_server.seen[-1])

        with hook.authenticated():
            thread = threading.Thread(target=other)
            thread.start()
            thread.join()
        plain.search_experiments(max_results=1)
        assert other_thread_saw == [None]
        assert auth_server.seen[-1] is None

    def test_401_is_actionable_and_never_leaks_the_secret(
        self, auth_server: _AuthServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        from airflow.sdk._shared.secrets_masker import redact

        auth_server.expected = "Basic something-else"
        url = f"http://127.0.0.1:{auth_server.server_address[1]}"
        _set_conn(monkeypatch, "mlflow_401", host=url, login="alice", password=PASSWORD)
        hook = MLflowHook("mlflow_401")
        caplog.set_level(logging.DEBUG)
        with pytest.raises(MLflowConnectionError) as info:
            hook.get_or_create_experiment("x")
        message = str(info.value)
        assert "'mlflow_401'" in message
        assert "401" in message
        assert "login/password or token" in message
        assert PASSWORD not in message
        assert PASSWORD not in caplog.text
        # The hook registered the password with Airflow's secrets masker.
        assert PASSWORD not in str(redact(f"pw={PASSWORD}"))

    def test_fluent_scope_restores_tracking_uri_and_env(
        self, mlflow_conn: str, mlflow_server, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import mlflow
        from mlflow.tracking import fluent

        hook = MLflowHook(mlflow_conn)
        elsewhere_experiment = hook.get_or_create_experiment("hook-elsewhere")
        run = hook.client.create_run(hook.get_or_create_experiment("hook-fluent"))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///tmp/hlml-elsewhere")
        mlflow.set_tracking_uri("file:///tmp/hlml-elsewhere")
        # Other code in this process chose an experiment (mlflow.set_experiment does this).
        fluent._active_experiment_id = elsewhere_experiment
        monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", elsewhere_experiment)
        try:
            with hook.fluent():
                assert mlflow.get_tracking_uri() == mlflow_server.url
                # Resuming a run of another experiment works inside the scope.
                with mlflow.start_run(run_id=run.info.run_id):
                    mlflow.log_metric("m", 1.0)
            assert mlflow.get_tracking_uri() == "file:///tmp/hlml-elsewhere"
            assert os.environ["MLFLOW_TRACKING_URI"] == "file:///tmp/hlml-elsewhere"
            assert os.environ["MLFLOW_EXPERIMENT_ID"] == elsewhere_experiment
            assert fluent._active_experiment_id == elsewhere_experiment
            assert hook.client.get_run(run.info.run_id).data.metrics == {"m": 1.0}
        finally:
            from mlflow.tracking._tracking_service import utils

            utils._tracking_uri = None
            fluent._active_experiment_id = None

    def test_ui_url_for_run_uses_ui_url_and_hides_credentials(self, monkeypatch: pytest.MonkeyPatch) -> None:
        _set_conn(
            monkeypatch, "mlflow_ui", host="http://u:p@mlflow:5000", extra={"ui_url": "https://ml.example/"}
        )
        assert (
            MLflowHook("mlflow_ui").ui_url_for_run("3", "abc")
            == "https://ml.example/#/experiments/3/runs/abc"
        )
        _set_conn(monkeypatch, "mlflow_ui2", host="http://u:p@mlflow:5000")
        assert (
            MLflowHook("mlflow_ui2").ui_url_for_run("3", "abc")
            == "http://mlflow:5000/#/experiments/3/runs/abc"
        )

    def test_compare_model_versions(self, mlflow_conn: str) -> None:
        hook = MLflowHook(mlflow_conn)
        client = hook.client
        exp_id = hook.get_or_create_experiment("hook-compare")
        name = f"cmp-{uuid.uuid4().hex[:6]}"
        client.create_registered_model(name)
        versions = []
        for depth, acc in ((3, 0.8), (5, 0.9)):
            run = client.create_run(exp_id)
            client.log_param(run.info.run_id, "max_depth", depth)
            client.log_param(run.info.run_id, "criterion", "gini")
            client.log_metric(run.info.run_id, "accuracy", acc)
            client.set_terminated(run.info.run_id)
            mv = client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
            versions.append(mv.version)
        report = hook.compare_model_versions(name, versions[0], versions[1])
        v1, v2 = str(versions[0]), str(versions[1])
        assert report["metrics"]["accuracy"][v1] == pytest.approx(0.8)
        assert report["metrics"]["accuracy"][v2] == pytest.approx(0.9)
        assert report["metrics"]["accuracy"]["delta"] == pytest.approx(0.1)
        assert report["params"]["max_depth"] == {v1: "3", v2: "5"}
        assert report["changed_params"] == ["max_depth"]


class TestMLflowHookRegistry:
    """Alias moves with their audit tags, and the rollback they allow, on a real registry."""

    def versions(self, hook: MLflowHook, name: str, count: int) -> list[str]:
        client = hook.client
        experiment_id = hook.get_or_create_experiment("hlml-hook-registry")
        client.create_registered_model(name)
        out = []
        for _ in range(count):
            run = client.create_run(experiment_id)
            client.set_terminated(run.info.run_id)
            mv = client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
            out.append(str(mv.version))
        return out

    def test_alias_moves_record_the_previous_holder_and_roll_back(self, mlflow_conn: str) -> None:
        from airflow_provider_hlml import audit
        from airflow_provider_hlml.hooks.mlflow import RegistryStateError

        hook = MLflowHook(mlflow_conn)
        name = f"hook_registry_{uuid.uuid4().hex[:8]}"
        v1, v2 = self.versions(hook, name, 2)
        assert hook.alias_holder(name, "champion") is None
        with pytest.raises(RegistryStateError, match="is not set: nothing to roll back"):
            hook.alias_rollback_target(name, "champion")

        with hook.promotion_lock(name):
            assert hook.set_alias_with_tags(name, v1, "champion", {audit.APPROVED_BY: "alice"}) == ""
            assert hook.set_alias_with_tags(name, v2, "champion", {}) == v1
            # A retry keeps the recorded predecessor instead of naming the version itself.
            assert hook.set_alias_with_tags(name, v2, "champion", {}) == v1
        holder = hook.alias_holder(name, "champion")
        assert holder is not None
        assert str(holder.version) == v2
        assert holder.tags[audit.previous_holder_tag("champion")] == v1
        assert holder.tags[audit.PROMOTED_ALIAS] == "champion"
        assert hook.find_model_version(name, holder.run_id).version == v2

        assert hook.alias_rollback_target(name, "champion") == (v2, v1)
        hook.restore_alias(name, "champion", v1)
        hook.tag_rollback(name, v2, v1, by_run_id="manual__1", at="2024-01-01T00:00:00+00:00")
        assert str(hook.alias_holder(name, "champion").version) == v1
        tags = hook.client.get_model_version(name, v2).tags
        assert tags[audit.ROLLED_BACK_TO] == v1
        assert tags[audit.ROLLED_BACK_BY_RUN_ID] == "manual__1"
