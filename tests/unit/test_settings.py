"""The ``[hlml]`` settings module: one reader per declared option, and the gate's conn-id default."""

from __future__ import annotations

import pytest

from airflow_provider_hlml import settings
from airflow_provider_hlml.get_provider_info import get_provider_info

DECLARED = get_provider_info()["config"]["hlml"]["options"]


class TestSettings:
    @pytest.mark.parametrize("option", sorted(DECLARED))
    def test_every_declared_option_has_a_reader_with_the_declared_default(
        self, option: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv(f"AIRFLOW__HLML__{option.upper()}", raising=False)
        declared = DECLARED[option]
        convert = {"boolean": lambda v: v == "True", "integer": int, "float": float}.get(
            declared["type"], str
        )
        assert getattr(settings, option)() == convert(declared["default"])

    def test_environment_wins_at_call_time(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW__HLML__MLFLOW_CONN_ID", "mlflow_prod")
        monkeypatch.setenv("AIRFLOW__HLML__LONG_POLL_SECONDS", "7")
        monkeypatch.setenv("AIRFLOW__HLML__DEPLOYMENT_ID", "  prod-eu ")
        assert settings.mlflow_conn_id() == "mlflow_prod"
        assert settings.long_poll_seconds() == 7
        assert settings.deployment_id() == "prod-eu"

    def test_blank_conn_id_falls_back_to_the_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW__HLML__HUMANLAYER_CONN_ID", " ")
        assert settings.humanlayer_conn_id() == "humanlayer_default"

    def test_wait_mode_and_reconcile_interval_refuse_nonsense(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW__HLML__WAIT_MODE", " Park ")
        assert settings.wait_mode() == "park"
        monkeypatch.setenv("AIRFLOW__HLML__WAIT_MODE", "sleep")
        with pytest.raises(ValueError, match=r"\[hlml\] wait_mode must be one of auto, park, defer"):
            settings.wait_mode()
        monkeypatch.setenv("AIRFLOW__HLML__RECONCILE_INTERVAL", "-5")
        with pytest.raises(ValueError, match=r"\[hlml\] reconcile_interval"):
            settings.reconcile_interval()

    def test_negative_refresh_names_the_option(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW__HLML__DASHBOARD_REFRESH_SECONDS", "-1")
        with pytest.raises(ValueError, match=r"\[hlml\] dashboard_refresh_seconds"):
            settings.dashboard_refresh_seconds()


class TestGateConnectionDefault:
    def test_sensor_and_trigger_default_to_the_configured_connection(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from airflow_provider_hlml.sensors.approval import HumanApprovalSensor
        from airflow_provider_hlml.triggers.approval import HumanApprovalTrigger

        monkeypatch.setenv("AIRFLOW__HLML__HUMANLAYER_CONN_ID", "hl_from_config")
        assert HumanApprovalSensor(task_id="gate", subject="Go?").humanlayer_conn_id == "hl_from_config"
        classpath, kwargs = HumanApprovalTrigger(call_id="c").serialize()
        assert kwargs["humanlayer_conn_id"] == "hl_from_config"
        # The resolved id travels with the trigger: the triggerer's own config does not matter.
        monkeypatch.setenv("AIRFLOW__HLML__HUMANLAYER_CONN_ID", "other")
        assert HumanApprovalTrigger(**kwargs).serialize() == (classpath, kwargs)

    def test_an_explicit_connection_wins(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from airflow_provider_hlml.sensors.approval import HumanApprovalSensor

        monkeypatch.setenv("AIRFLOW__HLML__HUMANLAYER_CONN_ID", "hl_from_config")
        sensor = HumanApprovalSensor(task_id="gate", subject="Go?", humanlayer_conn_id="mine")
        assert sensor.humanlayer_conn_id == "mine"


class TestProtectedAliases:
    @pytest.mark.parametrize(
        ("value", "table"),
        [
            ("", {"*": ("champion",)}),
            (" champion, prod ,,champion", {"*": ("champion", "prod")}),
            ('{"*": ["champion"], "fraud": ["champion", "prod"], "toy": []}', None),
        ],
    )
    def test_comma_list_or_json_object(
        self, value: str, table: dict[str, tuple[str, ...]] | None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AIRFLOW__HLML__PROTECTED_ALIASES", value)
        if table is not None:
            assert settings.protected_alias_table() == table
            return
        assert settings.protected_aliases_of("churn") == ("champion",)
        assert settings.protected_aliases_of("fraud") == ("champion", "prod")
        assert settings.protected_aliases_of("toy") == ()

    @pytest.mark.parametrize("value", ["{not json", '{"*": "champion"}', '{"*": [1]}'])
    def test_malformed_json_names_the_option(self, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW__HLML__PROTECTED_ALIASES", value)
        with pytest.raises(ValueError, match=r"\[hlml\] protected_aliases"):
            settings.protected_alias_table()
