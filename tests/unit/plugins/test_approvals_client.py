"""ApprovalsClient against the real approvals service (``hlml-approvals serve``)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from airflow_provider_hlml.plugins.approvals_client import (
    ApprovalsClient,
    ApprovalsRequestError,
    ApprovalsUnavailable,
    DelegateKeyMissing,
)
from tests.fixtures.processes import free_port


def _create(service: Any, approvers: list[str]) -> str:
    call_id = f"client-{uuid.uuid4().hex[:10]}"
    body = {
        "run_id": "dash",
        "call_id": call_id,
        "spec": {
            "fn": "model_promotion",
            "kwargs": {"subject": "s"},
            "state": {"hlml": {"approvers": approvers, "requester": None, "allow_self_approval": False}},
        },
    }
    resp = httpx.post(
        f"{service.base_url}/function_calls",
        json=body,
        headers={"Authorization": f"Bearer {service.agent_key}"},
        timeout=10,
    )
    resp.raise_for_status()
    return call_id


class TestApprovalsClient:
    async def test_lists_reads_and_responds_as_delegate(self, approvals_service: Any) -> None:
        call_id = _create(approvals_service, ["carol@example.com"])
        client = ApprovalsClient(approvals_service.base_url, approvals_service.delegate_key)
        pending = await client.list_calls(status="pending")
        assert call_id in {c["call_id"] for c in pending}
        call = await client.get_call(call_id)
        result = await client.respond(
            call_id,
            approved=True,
            comment="fine",
            reject_option_name=None,
            requested_at=call["status"]["requested_at"],
            user_info={"name": "carol", "email": "carol@example.com"},
        )
        assert result["status"]["approved"] is True
        assert result["status"]["user_info"]["email"] == "carol@example.com"
        audit = await client.audit(call_id)
        assert [e["event"] for e in audit][-1] == "responded"
        metrics = await client.metrics()
        assert metrics is not None
        assert metrics["approved"] >= 1

    async def test_refusal_by_the_service_is_a_request_error(self, approvals_service: Any) -> None:
        call_id = _create(approvals_service, ["carol@example.com"])
        client = ApprovalsClient(approvals_service.base_url, approvals_service.delegate_key)
        with pytest.raises(ApprovalsRequestError) as err:
            await client.respond(
                call_id,
                approved=True,
                comment=None,
                reject_option_name=None,
                requested_at=None,
                user_info={"name": "mallory", "email": None},
            )
        assert err.value.status_code == 403
        assert "approvers" in err.value.message

    async def test_unknown_call_is_404(self, approvals_service: Any) -> None:
        client = ApprovalsClient(approvals_service.base_url, approvals_service.delegate_key)
        with pytest.raises(ApprovalsRequestError) as err:
            await client.get_call("no-such-call")
        assert err.value.status_code == 404

    async def test_bad_key_is_401(self, approvals_service: Any) -> None:
        client = ApprovalsClient(approvals_service.base_url, "hl_wrong")
        with pytest.raises(ApprovalsRequestError) as err:
            await client.list_calls()
        assert err.value.status_code == 401

    async def test_missing_key_says_which_option(self) -> None:
        with pytest.raises(DelegateKeyMissing, match=r"\[hlml\] approvals_delegate_key"):
            await ApprovalsClient("http://127.0.0.1:1", "").list_calls()

    async def test_unreachable_backend(self) -> None:
        client = ApprovalsClient(f"http://127.0.0.1:{free_port()}/humanlayer/v1", "k", timeout=2)
        with pytest.raises(ApprovalsUnavailable, match="unreachable") as err:
            await client.list_calls()
        assert "k" not in str(err.value).split("unreachable")[-1]

    async def test_cloud_without_list_extension_falls_back_to_pending(self) -> None:
        calls = [{"call_id": "a", "spec": {"fn": "f", "kwargs": {}}, "status": None}]

        def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/agent/function_calls/pending"):
                return httpx.Response(200, json=calls)
            return httpx.Response(404, json={"error": {"message": "not found", "code": 404}})

        client = ApprovalsClient("http://cloud/humanlayer/v1", "k", transport=httpx.MockTransport(handler))
        assert await client.list_calls(status="pending") == calls
        assert await client.metrics() is None
        assert await client.audit("a") == []
