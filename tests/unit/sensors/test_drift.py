"""The drift gate's defaults and what it refuses when the DAG is parsed."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_hlml.sensors.drift import DriftResponseSensor


class TestDriftResponseSensor:
    def test_offers_rollback_as_the_approval_and_retrain_or_accept_as_reasons(self) -> None:
        gate = DriftResponseSensor(task_id="review", subject="Drift?")
        assert gate.approval_type == "workflow_decision"
        assert [o["name"] for o in gate.options] == ["rollback"]
        assert gate.options[0]["title"] == "Roll back to the previous attested champion"
        assert [(o["name"], o["title"]) for o in gate.reject_options] == [
            ("retrain", "Retrain"),
            ("accept", "Accept"),
        ]
        assert gate.on_reject == "skip"
        assert gate.act_on_reject == ("retrain",)
        assert gate.auto_decisions is False
        assert gate.forbid == ["requester"]

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"on_timeout": "approve", "response_timeout": 60}, "without a person"),
            ({"auto_decisions": True}, "always a person's decision"),
            ({"act_on_reject": "retrain"}, "act_on_reject"),
            ({"act_on_reject": ["rollback"]}, "act_on_reject"),
        ],
    )
    def test_refuses_anything_that_acts_without_a_person(self, kwargs: dict[str, Any], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            DriftResponseSensor(task_id="review", subject="Drift?", **kwargs)

    def test_settles_outcomes_itself_so_never_finishes_in_place(self) -> None:
        assert DriftResponseSensor.result is not DriftResponseSensor.__mro__[1].result
