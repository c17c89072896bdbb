"""Nothing lives only in memory: a restarted service keeps every call, decision and audit event."""

from __future__ import annotations

import tempfile
from pathlib import Path

from humanlayer import HumanLayer
from humanlayer.core.models import FunctionCallSpec, FunctionCallStatus

from tests.approvals.conftest import new_call_id
from tests.fixtures.approvals import start_approvals_service


def test_restart_keeps_calls_decisions_and_audit() -> None:
    root = Path(tempfile.mkdtemp(prefix="hlml-approvals-restart-"))
    service = start_approvals_service(f"sqlite:///{root / 'approvals.db'}", root)
    try:
        agent = HumanLayer(api_key=service.agent_key, api_base_url=service.base_url, run_id="restart")
        alice = HumanLayer(api_key=service.reviewer_key, api_base_url=service.base_url, run_id="restart")
        approved = agent.create_function_call(FunctionCallSpec(fn="a", kwargs={}), call_id=new_call_id())
        pending = agent.create_function_call(FunctionCallSpec(fn="b", kwargs={"x": 1}), call_id=new_call_id())
        alice.respond_to_function_call(approved.call_id, FunctionCallStatus(approved=True, comment="fine"))
        before = [agent.get_function_call(c.call_id) for c in (approved, pending)]
        audit_before = _audit(service.base_url, service.agent_key, approved.call_id)

        service.stop()
        assert not service.process.alive()  # type: ignore[union-attr]
        service.start()

        after = [agent.get_function_call(c.call_id) for c in (approved, pending)]
        assert after == before
        assert after[0].status.approved is True  # type: ignore[union-attr]
        assert after[1].status.approved is None  # type: ignore[union-attr]
        assert _audit(service.base_url, service.agent_key, approved.call_id) == audit_before
        assert [e["event"] for e in audit_before] == ["created", "responded"]
        # the pending call can still be decided after the restart, and the keys still work
        alice.respond_to_function_call(pending.call_id, FunctionCallStatus(approved=False, comment="no"))
        assert agent.get_function_call(pending.call_id).status.approved is False  # type: ignore[union-attr]
    finally:
        service.stop()


def _audit(base_url: str, key: str, call_id: str) -> list[dict[str, object]]:
    import httpx

    resp = httpx.get(f"{base_url}/function_calls/{call_id}/audit", headers={"Authorization": f"Bearer {key}"})
    resp.raise_for_status()
    return list(resp.json())
