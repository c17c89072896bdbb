"""``/hlml/registry_events``: the alias guard's findings in the audit chain (agent or admin only)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from airflow_provider_hlml.gate.wire import REGISTRY_EVENTS_PATH


def _event(model: str, **overrides: Any) -> dict[str, Any]:
    return {
        "event": "alias_moved",
        "model": model,
        "alias": "champion",
        "version": "3",
        "reason": "churn v3 (@champion) carries no approval attestation",
        "source": "webhook",
        **overrides,
    }


class TestRegistryEvents:
    def test_recorded_in_the_chain_and_listed_newest_first(self, as_agent: Any, as_admin: Any) -> None:
        model = f"churn-{uuid.uuid4().hex[:8]}"
        moved = as_agent.post(REGISTRY_EVENTS_PATH, json=_event(model))
        assert moved.status_code == 201, moved.text
        reverted = as_admin.post(
            REGISTRY_EVENTS_PATH,
            json=_event(
                model, event="alias_reverted", reverted_to="1", call_id="c-1", key_id="k", approvers=["alice"]
            ),
        )
        assert reverted.status_code == 201, reverted.text
        assert reverted.json()["seq"] > moved.json()["seq"]
        assert len(moved.json()["hash"]) == 64
        listed = as_agent.get(REGISTRY_EVENTS_PATH, params={"model": model}).json()
        assert [e["event"] for e in listed] == ["alias_reverted", "alias_moved"]
        assert listed[0]["actor"] == "root"
        assert listed[0]["metadata"]["reverted_to"] == "1"
        assert listed[0]["metadata"]["approvers"] == ["alice"]
        assert listed[1]["actor"] == "airflow"
        assert listed[1]["comment"].endswith("carries no approval attestation")
        assert "reason" not in listed[1]["metadata"]

    @pytest.mark.parametrize("who", ["as_alice", "as_delegate"])
    def test_only_agents_and_admins_record(self, who: str, request: pytest.FixtureRequest) -> None:
        api = request.getfixturevalue(who)
        assert api.post(REGISTRY_EVENTS_PATH, json=_event("churn")).status_code == 403

    @pytest.mark.parametrize(
        "body",
        [
            _event("churn", event="alias_deleted_by_someone"),
            {**_event("churn"), "model": ""},
            _event("churn", version="9" * 65),
            _event("churn", extra="nope"),
            _event("churn", reason="\x00"),
            _event("churn", approvers=["x"] * 51),
        ],
        ids=["unknown-event", "empty-model", "long-version", "extra-field", "nul", "too-many-approvers"],
    )
    def test_malformed_bodies_are_refused(self, as_agent: Any, body: dict[str, Any]) -> None:
        assert as_agent.post(REGISTRY_EVENTS_PATH, json=body).status_code == 422

    def test_needs_a_key(self, approvals_service: Any) -> None:
        import httpx

        assert (
            httpx.post(approvals_service.base_url + REGISTRY_EVENTS_PATH, json=_event("churn")).status_code
            == 401
        )
        assert httpx.get(approvals_service.base_url + REGISTRY_EVENTS_PATH).status_code == 401
