from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.routing import APIRoute

from airflow_provider_hlml.plugins.auth import require_user
from airflow_provider_hlml.plugins.plugin import HlmlPlugin, build_embedded_approvals
from airflow_provider_hlml.plugins.settings import DashboardSettings


def _settings(**overrides: object) -> DashboardSettings:
    values: dict[str, object] = {
        "approvals_enabled": False,
        "approvals_database_url": "sqlite://",
        "delegate_key": "",
        "humanlayer_conn_id": "humanlayer_default",
        "mlflow_conn_id": "mlflow_default",
        "refresh_seconds": 30,
    }
    values.update(overrides)
    return DashboardSettings(**values)  # type: ignore[arg-type]


class TestHlmlPlugin:
    def test_import_is_cheap(self) -> None:
        code = (
            "import sys\n"
            "from airflow_provider_hlml.plugins.plugin import HlmlPlugin\n"
            "heavy = [m for m in ('fastapi', 'mlflow', 'airflow_provider_hlml.plugins.app', 'airflow_provider_hlml.approvals.app')"
            " if m in sys.modules]\n"
            "print(heavy)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "[]"

    def test_loaded_from_the_entry_point_with_a_nav_entry(self) -> None:
        from airflow._shared.plugins_manager import _load_entrypoint_plugins

        plugins, errors = _load_entrypoint_plugins()
        ours = [p for p in plugins if p.name == "hlml"]
        assert len(ours) == 1
        assert not errors
        (view,) = ours[0].external_views
        assert view["href"] == "/hlml/"
        assert view["url_route"] == "hlml"
        assert view["destination"] == "nav"
        assert HlmlPlugin.name == "hlml"

    def test_every_dashboard_route_requires_the_airflow_user(self) -> None:
        from airflow_provider_hlml.plugins.app import create_dashboard_app

        app = create_dashboard_app(_settings())
        routes = [r for r in app.routes if isinstance(r, APIRoute)]
        assert len(routes) >= 10
        for route in routes:
            calls = {d.call for d in route.dependant.dependencies}
            assert require_user in calls, route.path
        # FastAPI's own unauthenticated documentation routes are switched off.
        assert app.openapi_url is None
        assert app.docs_url is None

    def test_embedded_approvals_failure_does_not_raise(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory")
        assert build_embedded_approvals(f"sqlite:///{blocker}/approvals.db") is None
        assert "could not start" in caplog.text

    def test_embedded_approvals_app_serves_at_the_mount_root(self, tmp_path: Path) -> None:
        from fastapi.testclient import TestClient

        app = build_embedded_approvals(f"sqlite:///{tmp_path / 'approvals.db'}")
        assert app is not None
        with TestClient(app) as client:
            assert client.get("/healthz").json()["status"] == "ok"
            assert client.get("/function_calls").status_code == 401


class TestDashboardSettings:
    def test_negative_refresh_names_the_option(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW__HLML__DASHBOARD_REFRESH_SECONDS", "-1")
        with pytest.raises(ValueError, match=r"\[hlml\] dashboard_refresh_seconds"):
            DashboardSettings.from_airflow_conf()

    def test_default_approvals_database_is_in_airflow_home(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW__HLML__APPROVALS_DATABASE_URL", "")
        settings = DashboardSettings.from_airflow_conf()
        assert settings.approvals_database_url.startswith("sqlite:///")
        assert settings.approvals_database_url.endswith("hlml_approvals.db")


class TestDisplayUrl:
    def test_credentials_are_dropped(self) -> None:
        from airflow_provider_hlml.plugins.settings import display_url

        assert display_url("http://u:pw@mlflow:5000/x?y=1") == "http://mlflow:5000/x?y=1"
        assert display_url("http://mlflow:5000") == "http://mlflow:5000"
