"""GateState: the gate's part of a request, read tolerantly and written exactly as on the wire."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_hlml.gate.state import GateLocation, GateState

WIRE: dict[str, Any] = {
    "hlml": {
        "approvers": ["alice@example.com"],
        "requester": "bob",
        "allow_self_approval": False,
        "airflow": {
            "dag_id": "churn",
            "run_id": "manual__1",
            "task_id": "approve",
            "map_index": -1,
            "try_number": 2,
            "ti_url": "http://airflow/log",
            "deployment_id": "prod",
        },
    }
}


class TestGateState:
    def test_round_trip_is_the_wire_format(self) -> None:
        state = GateState.from_state(WIRE)
        assert state.approvers == ("alice@example.com",)
        assert state.airflow == GateLocation(
            dag_id="churn",
            run_id="manual__1",
            task_id="approve",
            map_index=-1,
            try_number=2,
            ti_url="http://airflow/log",
            deployment_id="prod",
        )
        assert state.to_state() == WIRE

    @pytest.mark.parametrize("state", [None, {}, {"hlml": None}, {"hlml": "junk"}, {"other": 1}, "x"])
    def test_missing_or_malformed_reads_as_no_policy(self, state: Any) -> None:
        assert GateState.from_state(state) == GateState()

    def test_malformed_parts_read_as_missing(self) -> None:
        state = GateState.from_state(
            {
                "hlml": {
                    "approvers": "alice",
                    "requester": 7,
                    "airflow": {"dag_id": "", "run_id": 3, "task_id": "t", "map_index": True},
                }
            }
        )
        assert state.approvers == ("alice",)
        assert state.requester == "7"
        assert state.airflow is not None
        assert (state.airflow.dag_id, state.airflow.run_id, state.airflow.map_index) == (None, None, -1)
        assert not state.airflow.complete
