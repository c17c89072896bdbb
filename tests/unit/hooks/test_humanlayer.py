"""HumanLayerHook against the real approvals service (happy paths) and a fault-injecting server (errors)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest

from airflow_provider_hlml.hooks.humanlayer import (
    SESSION_POOL,
    HumanLayerAuthError,
    HumanLayerBadResponseError,
    HumanLayerConnectionError,
    HumanLayerHook,
    HumanLayerNotFoundError,
    HumanLayerUnavailableError,
)
from tests.fixtures.processes import free_port


def _function_call(call_id: str, **state: Any) -> Any:
    from humanlayer import FunctionCall, FunctionCallSpec

    return FunctionCall(
        run_id="hook-tests",
        call_id=call_id,
        spec=FunctionCallSpec(
            fn="custom", kwargs={"subject": "hook test"}, state={"hlml": state} if state else None
        ),
    )


def _set_conn(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: Any) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "humanlayer", **fields}))


class TestHumanLayerHook:
    def test_declares_the_connection_type(self) -> None:
        assert HumanLayerHook.conn_name_attr == "humanlayer_conn_id"
        assert HumanLayerHook.default_conn_name == "humanlayer_default"
        assert HumanLayerHook.conn_type == "humanlayer"
        assert HumanLayerHook.hook_name == "HumanLayer"

    def test_builds_nothing_until_used(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("AIRFLOW_CONN_HUMANLAYER_DEFAULT", raising=False)
        hook = HumanLayerHook()  # no connection, no env: constructing must not fail
        assert "settings" not in hook.__dict__
        assert "client" not in hook.__dict__

    def test_client_uses_the_explicit_key_and_base_url(
        self, approvals_service: Any, humanlayer_conn: str
    ) -> None:
        from humanlayer.core.approval import ApprovalMethod

        client = HumanLayerHook(humanlayer_conn).client
        assert client.approval_method == ApprovalMethod.BACKEND
        connection = client.backend.connection  # type: ignore[union-attr]
        assert connection.api_base_url == approvals_service.base_url
        assert connection.api_key == approvals_service.agent_key

    def test_create_get_respond_round_trip(self, approvals_service: Any, humanlayer_conn: str) -> None:
        from humanlayer import FunctionCallStatus

        hook = HumanLayerHook(humanlayer_conn)
        call, created = hook.get_or_create_function_call(_function_call("hook-roundtrip-1"))
        assert created is True
        assert call.status is not None
        assert call.status.approved is None
        again, created_again = hook.get_or_create_function_call(_function_call("hook-roundtrip-1"))
        assert created_again is False
        assert again.call_id == call.call_id

        reviewer = HumanLayerHook("hl_reviewer")
        import os

        os.environ["AIRFLOW_CONN_HL_REVIEWER"] = json.dumps(
            {
                "conn_type": "humanlayer",
                "host": approvals_service.base_url,
                "password": approvals_service.reviewer_key,
            }
        )
        try:
            decided = reviewer.respond("hook-roundtrip-1", FunctionCallStatus(approved=True, comment="fine"))
        finally:
            del os.environ["AIRFLOW_CONN_HL_REVIEWER"]
        assert decided.status is not None
        assert decided.status.approved is True
        read = hook.get_function_call("hook-roundtrip-1")
        assert read.status is not None
        assert read.status.user_info is not None
        assert read.status.user_info.name == "alice"
        assert read.status.user_info.email == "alice@example.com"

    def test_cancel_and_audit(self, approvals_service: Any, humanlayer_conn: str) -> None:
        hook = HumanLayerHook(humanlayer_conn)
        hook.create_function_call(_function_call("hook-cancel-1"))
        cancelled = hook.cancel("hook-cancel-1", reason="timeout", comment="deadline")
        assert cancelled.status is not None
        assert cancelled.status.is_cancelled
        assert cancelled.status.cancel_reason == "timeout"
        events = [e["event"] for e in hook.get_audit("hook-cancel-1")]
        assert events[0] == "created"
        assert "expired" in events

    def test_health_and_test_connection(self, approvals_service: Any, humanlayer_conn: str) -> None:
        hook = HumanLayerHook(humanlayer_conn)
        assert hook.health()["status"] == "ok"
        ok, message = hook.test_connection()
        assert ok is True
        assert approvals_service.base_url in message
        assert approvals_service.agent_key not in message

    async def test_async_long_poll_returns_when_decided(
        self, approvals_service: Any, humanlayer_conn: str
    ) -> None:
        from humanlayer import FunctionCallStatus, HumanLayer

        hook = HumanLayerHook(humanlayer_conn)
        await asyncio.to_thread(hook.create_function_call, _function_call("hook-async-1"))
        reviewer = HumanLayer.cloud(
            api_key=approvals_service.reviewer_key, api_base_url=approvals_service.base_url
        )

        async def decide_soon() -> None:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(
                reviewer.backend.functions().respond,  # type: ignore[union-attr]
                "hook-async-1",
                FunctionCallStatus(approved=False, comment="no"),
            )

        loop = asyncio.get_running_loop()
        started = loop.time()
        decider = asyncio.ensure_future(decide_soon())
        async with hook.asession_scope():
            call = await hook.aget_function_call("hook-async-1", wait=10)
        await decider
        assert call.status is not None
        assert call.status.approved is False
        assert loop.time() - started < 5  # answered on the decision, not after the 10 s wait
        assert SESSION_POOL.users() == 0

    def test_env_fallback_without_connection(
        self, approvals_service: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("AIRFLOW_CONN_HUMANLAYER_DEFAULT", raising=False)
        monkeypatch.setenv("HUMANLAYER_API_BASE", approvals_service.base_url)
        monkeypatch.setenv("HUMANLAYER_API_KEY", approvals_service.agent_key)
        hook = HumanLayerHook()
        assert hook.settings.source == "environment"
        assert hook.settings.base_url == approvals_service.base_url
        assert hook.test_connection()[0] is True

    def test_missing_connection_and_key_names_what_to_set(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("AIRFLOW_CONN_HL_NOWHERE", raising=False)
        with pytest.raises(HumanLayerConnectionError) as err:
            HumanLayerHook("hl_nowhere").get_function_call("x")
        message = str(err.value)
        assert "'hl_nowhere' is not defined" in message
        assert "HUMANLAYER_API_KEY" in message

    def test_connection_without_password(self, monkeypatch: pytest.MonkeyPatch) -> None:
        _set_conn(monkeypatch, "hl_nokey", host="http://127.0.0.1:9/humanlayer/v1")
        with pytest.raises(HumanLayerConnectionError, match="'hl_nokey' has no API key"):
            HumanLayerHook("hl_nokey").get_function_call("x")

    def test_bad_timeout_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        _set_conn(
            monkeypatch, "hl_badtimeout", host="http://h/v1", password="k" * 12, extra={"timeout": "soon"}
        )
        with pytest.raises(HumanLayerConnectionError, match="'timeout' must be a number"):
            HumanLayerHook("hl_badtimeout").get_function_call("x")

    def test_wrong_key_is_401_with_a_hint(
        self, approvals_service: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        wrong = "hl-wrong-key-that-is-long-enough"
        _set_conn(monkeypatch, "hl_wrongkey", host=approvals_service.base_url, password=wrong)
        hook = HumanLayerHook("hl_wrongkey")
        with pytest.raises(HumanLayerAuthError) as err:
            hook.get_function_call("anything")
        assert err.value.http_status == 401
        assert "'hl_wrongkey'" in str(err.value)
        assert "Check the API key" in str(err.value)
        assert wrong not in str(err.value)
        ok, message = hook.test_connection()
        assert ok is False
        assert "401" in message
        assert wrong not in message

    def test_unreachable_host(self, monkeypatch: pytest.MonkeyPatch) -> None:
        _set_conn(
            monkeypatch, "hl_down", host=f"http://127.0.0.1:{free_port()}/humanlayer/v1", password="k" * 12
        )
        with pytest.raises(HumanLayerUnavailableError) as err:
            HumanLayerHook("hl_down").get_function_call("x")
        assert "'hl_down'" in str(err.value)
        assert "cannot reach the server" in str(err.value)
        assert err.value.retryable is True

    def test_connection_test_answers_within_10s_from_a_hanging_server(
        self, faulty_server: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        faulty_server.hang_seconds = 12.0
        faulty_server.inject("timeout")
        _set_conn(
            monkeypatch,
            "hl_slow",
            host=faulty_server.base_url,
            password=faulty_server.api_key,
            extra={"timeout": 60},  # what tasks wait; the Test button must not
        )
        hook = HumanLayerHook("hl_slow")
        started = time.monotonic()
        ok, message = hook.test_connection()
        assert time.monotonic() - started < 10
        assert ok is False
        assert f"HumanLayer connection 'hl_slow' ({faulty_server.base_url})" in message
        assert "timed out after 5s" in message
        assert "Check that the server is up" in message
        assert faulty_server.api_key not in message
        assert hook.settings.timeout == 60  # the hook's own settings are untouched

    def test_connection_test_of_a_closed_port_names_host_and_what_to_check(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        url = f"http://127.0.0.1:{free_port()}/humanlayer/v1"
        _set_conn(monkeypatch, "hl_closed", host=url, password="k" * 12)
        started = time.monotonic()
        ok, message = HumanLayerHook("hl_closed").test_connection()
        assert time.monotonic() - started < 10
        assert ok is False
        assert f"HumanLayer connection 'hl_closed' ({url}): cannot reach the server" in message
        assert "Check the base URL (host) of the connection" in message

    def test_non_json_answer(self, faulty_server: Any, faulty_conn: str) -> None:
        faulty_server.inject("nonjson")
        with pytest.raises(HumanLayerBadResponseError) as err:
            HumanLayerHook(faulty_conn).get_function_call("x")
        assert "not JSON" in str(err.value)
        assert "'hl_faulty'" in str(err.value)
        assert "/humanlayer/v1" in str(err.value)

    def test_wrong_path_is_404_with_a_hint(self, faulty_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        _set_conn(
            monkeypatch, "hl_wrongpath", host=faulty_server.root_url + "/api", password=faulty_server.api_key
        )
        with pytest.raises(HumanLayerNotFoundError, match="Check the base URL"):
            HumanLayerHook("hl_wrongpath").get_function_call("x")

    async def test_async_errors_match_sync_ones(self, faulty_server: Any, faulty_conn: str) -> None:
        faulty_server.add_call("c1")
        hook = HumanLayerHook(faulty_conn)
        faulty_server.inject(401)
        with pytest.raises(HumanLayerAuthError):
            await hook.aget_function_call("c1")
        faulty_server.inject(503)
        with pytest.raises(HumanLayerUnavailableError):
            await hook.aget_function_call("c1")
        faulty_server.inject("nonjson")
        with pytest.raises(HumanLayerBadResponseError):
            await hook.aget_function_call("c1")
        assert (await hook.aget_function_call("c1")).call_id == "c1"

    def test_secret_never_in_logs_or_errors(
        self,
        faulty_server: Any,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        caplog: Any,
    ) -> None:
        caplog.set_level(logging.DEBUG)
        secret = faulty_server.api_key
        _set_conn(monkeypatch, "hl_secret", host=faulty_server.base_url, password=secret)
        hook = HumanLayerHook("hl_secret")
        assert secret not in repr(hook.settings)
        # A server that echoes the key back in its error body: the masker must remove it.
        faulty_server.inject("echo")
        with pytest.raises(HumanLayerUnavailableError) as err:
            hook.get_function_call("x")
        messages = [str(err.value)]
        assert "Bearer ***" in messages[0]
        faulty_server.inject("echo")
        from humanlayer import FunctionCallStatus

        with pytest.raises(HumanLayerUnavailableError) as err2:
            hook.respond("x", FunctionCallStatus(approved=True))
        messages.append(str(err2.value))
        from airflow.sdk.log import redact

        assert redact(f"token {secret}") == "token ***"
        out = capsys.readouterr()
        for text in (*messages, out.out, out.err, caplog.text):
            assert secret not in text
