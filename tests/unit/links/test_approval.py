"""ApprovalRequestLink: the reviewer's page follows from the task-instance key alone."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from airflow_provider_hlml.links.approval import ApprovalRequestLink, approval_url
from airflow_provider_hlml.sensors.approval import HumanApprovalSensor
from airflow_provider_hlml.utils.ids import approval_call_id


class TestApprovalRequestLink:
    def test_link_points_at_the_dashboard_filtered_on_the_request(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from airflow.models.taskinstancekey import TaskInstanceKey

        monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com")
        monkeypatch.delenv("AIRFLOW__HLML__APPROVAL_URL_TEMPLATE", raising=False)
        sensor = HumanApprovalSensor(task_id="gate", subject="x")
        key = TaskInstanceKey(dag_id="d", task_id="gate", run_id="r", try_number=2, map_index=-1)
        url = ApprovalRequestLink().get_link(sensor, ti_key=key)
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://airflow.example.com/hlml/approvals"
        assert parse_qs(parts.query) == {"status": ["all"], "q": [approval_call_id("d", "r", "gate", -1, 2)]}

    def test_link_follows_the_deployment_id(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from airflow.models.taskinstancekey import TaskInstanceKey

        monkeypatch.setenv("AIRFLOW__HLML__APPROVAL_URL_TEMPLATE", "https://app.example.com/calls/{call_id}")
        monkeypatch.setenv("AIRFLOW__HLML__DEPLOYMENT_ID", "prod-eu")
        key = TaskInstanceKey(dag_id="d", task_id="gate", run_id="r", try_number=1, map_index=-1)
        url = ApprovalRequestLink().get_link(HumanApprovalSensor(task_id="gate", subject="x"), ti_key=key)
        assert url == "https://app.example.com/calls/" + approval_call_id("d", "r", "gate", -1, 1, "prod-eu")

    def test_template_from_config(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW__HLML__APPROVAL_URL_TEMPLATE", "https://app.example.com/calls/{call_id}")
        assert approval_url("hlml-a b") == "https://app.example.com/calls/hlml-a%20b"

    def test_registered_on_the_sensor_with_its_name(self) -> None:
        (link,) = HumanApprovalSensor.operator_extra_links
        assert link.name == "Approval request"
