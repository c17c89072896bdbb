"""DashboardData: how the dashboard finds its approvals backend and survives it being down."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_provider_hlml.plugins.app import EMBEDDED_APPROVALS_BASE, DashboardData
from airflow_provider_hlml.plugins.settings import DashboardSettings
from tests.fixtures.processes import free_port


def _settings(**overrides: Any) -> DashboardSettings:
    values: dict[str, Any] = {
        "approvals_enabled": True,
        "approvals_database_url": "sqlite://",
        "delegate_key": "hl_delegate",
        "humanlayer_conn_id": "dash_humanlayer",
        "mlflow_conn_id": "dash_mlflow",
        "refresh_seconds": 30,
        "http_timeout": 2.0,
    }
    values.update(overrides)
    return DashboardSettings(**values)


class TestDashboardData:
    async def test_connection_names_the_backend(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(
            "AIRFLOW_CONN_DASH_HUMANLAYER",
            json.dumps(
                {"conn_type": "humanlayer", "host": "https://api.example/humanlayer/v1/", "password": "x"}
            ),
        )
        client = await DashboardData(_settings(), embedded_approvals=object()).approvals_client()
        assert client.base_url == "https://api.example/humanlayer/v1"

    async def test_connection_is_read_like_the_hook(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(
            "AIRFLOW_CONN_DASH_HUMANLAYER",
            json.dumps(
                {"conn_type": "humanlayer", "host": "hl.example", "port": 8443, "extra": {"timeout": 1}}
            ),
        )
        client = await DashboardData(_settings()).approvals_client()
        assert client.base_url == "https://hl.example:8443"
        assert client._timeout == 1

    async def test_invalid_timeout_is_reported(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(
            "AIRFLOW_CONN_DASH_HUMANLAYER",
            json.dumps(
                {"conn_type": "humanlayer", "host": "https://hl.example", "extra": {"timeout": "soon"}}
            ),
        )
        _items, _metrics, problem = await DashboardData(_settings()).visible_approvals(user=None)
        assert "timeout" in str(problem)

    async def test_legacy_mlflow_ui_url_is_honoured(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(
            "AIRFLOW_CONN_DASH_MLFLOW",
            json.dumps(
                {
                    "conn_type": "mlflow",
                    "host": f"http://127.0.0.1:{free_port()}",
                    "extra": {"extra__mlflow__ui_url": "https://mlflow-ui.example"},
                }
            ),
        )
        _data, target, _problem = await DashboardData(_settings()).mlflow()
        assert target is not None
        assert target.ui_url == "https://mlflow-ui.example"

    async def test_without_connection_the_mounted_service_is_used_in_process(self) -> None:
        client = await DashboardData(_settings(), embedded_approvals=object()).approvals_client()
        assert client.base_url == EMBEDDED_APPROVALS_BASE

    async def test_backend_down_is_reported_not_raised(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(
            "AIRFLOW_CONN_DASH_HUMANLAYER",
            json.dumps({"conn_type": "humanlayer", "host": f"http://127.0.0.1:{free_port()}/humanlayer/v1"}),
        )
        items, metrics, problem = await DashboardData(_settings()).visible_approvals(user=None)
        assert (items, metrics) == ([], None)
        assert problem is not None
        assert "unreachable" in problem

    async def test_no_backend_at_all_says_what_to_configure(self) -> None:
        items, _metrics, problem = await DashboardData(_settings(approvals_enabled=False)).visible_approvals(
            user=None
        )
        assert items == []
        assert "dash_humanlayer" in str(problem)
        assert "approvals_enabled" in str(problem)

    async def test_missing_mlflow_connection_is_reported(self) -> None:
        data, target, problem = await DashboardData(_settings()).mlflow()
        assert (data, target) == (None, None)
        assert "dash_mlflow" in str(problem)

    async def test_mlflow_down_is_reported_and_not_cached(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(
            "AIRFLOW_CONN_DASH_MLFLOW",
            json.dumps({"conn_type": "mlflow", "host": f"http://127.0.0.1:{free_port()}"}),
        )
        dashboard = DashboardData(_settings())
        for _ in range(2):
            data, target, problem = await dashboard.mlflow()
            assert data is None
            assert target is not None
            assert "unreachable" in str(problem)
