"""The unmodified ``humanlayer`` SDK, sync and async, against the real service over HTTP.

Runs once on SQLite and once on PostgreSQL (when ``HLML_TEST_POSTGRES_URL`` is set).
"""

from __future__ import annotations

import datetime as dt

import httpx
import pytest
from humanlayer import AsyncHumanLayer, HumanLayer
from humanlayer.core.models import (
    ContactChannel,
    EmailContactChannel,
    EmailRecipient,
    Escalation,
    FunctionCallSpec,
    FunctionCallStatus,
    HumanContactSpec,
    HumanContactStatus,
    ResponseOption,
)
from humanlayer.core.protocol import HumanLayerException

from tests.approvals.conftest import new_call_id
from tests.fixtures.approvals import ApprovalsService

REJECT_OPTIONS = [
    ResponseOption(name="needs_retraining", title="Retrain", description="Metrics too low"),
    ResponseOption(name="wrong_data", title="Wrong data"),
]


def sdk(service: ApprovalsService, key: str) -> HumanLayer:
    return HumanLayer(api_key=key, api_base_url=service.base_url, run_id="conformance")


def async_sdk(service: ApprovalsService, key: str) -> AsyncHumanLayer:
    return AsyncHumanLayer(api_key=key, api_base_url=service.base_url, run_id="conformance")


def spec(**state: object) -> FunctionCallSpec:
    return FunctionCallSpec(
        fn="model_promotion",
        kwargs={"subject": "Promote churn", "urgency": "high", "options": ["approve", "reject"]},
        reject_options=REJECT_OPTIONS,
        channel=ContactChannel(email=EmailContactChannel(address="alice@example.com")),
        state=state or None,
    )


class TestSyncSdk:
    def test_create_and_get_round_trip(self, service: ApprovalsService) -> None:
        agent = sdk(service, service.agent_key)
        created = agent.create_function_call(spec(), call_id=new_call_id())
        assert created.status is not None
        assert created.status.approved is None
        assert created.status.requested_at is not None
        assert created.status.requested_at.utcoffset() == dt.timedelta(0)
        assert created.spec.reject_options == REJECT_OPTIONS
        fetched = agent.get_function_call(created.call_id)
        assert fetched == created
        assert fetched.run_id == "conformance"

    def test_approve(self, service: ApprovalsService) -> None:
        agent, alice = sdk(service, service.agent_key), sdk(service, service.reviewer_key)
        call = agent.create_function_call(spec(), call_id=new_call_id())
        answered = alice.respond_to_function_call(
            call.call_id, FunctionCallStatus(approved=True, comment="ship it")
        )
        assert answered.status is not None
        assert answered.status.approved is True
        seen = agent.get_function_call(call.call_id)
        assert seen.status is not None
        completed = seen.status.as_completed()
        assert completed.approved is True
        assert completed.comment == "ship it"
        assert seen.status.responded_at is not None
        assert seen.status.responded_at >= seen.status.requested_at  # type: ignore[operator]

    def test_reject_with_option(self, service: ApprovalsService) -> None:
        agent, bob = sdk(service, service.agent_key), sdk(service, service.reviewer2_key)
        call = agent.create_function_call(spec(), call_id=new_call_id())
        bob.respond_to_function_call(
            call.call_id,
            FunctionCallStatus(approved=False, comment="AUC dropped", reject_option_name="needs_retraining"),
        )
        status = agent.get_function_call(call.call_id).status
        assert status is not None
        assert status.reject_option_name == "needs_retraining"
        assert status.as_completed().comment == "AUC dropped"

    def test_reject_without_comment_is_completable(self, service: ApprovalsService) -> None:
        agent, bob = sdk(service, service.agent_key), sdk(service, service.reviewer2_key)
        call = agent.create_function_call(spec(), call_id=new_call_id())
        bob.respond_to_function_call(call.call_id, FunctionCallStatus(approved=False))
        status = agent.get_function_call(call.call_id).status
        assert status is not None
        rejected = status.as_completed()
        assert rejected.approved is False
        assert rejected.comment

    def test_idempotent_create_and_conflict(self, service: ApprovalsService) -> None:
        agent = sdk(service, service.agent_key)
        call_id = new_call_id()
        first = agent.create_function_call(spec(), call_id=call_id)
        again = agent.create_function_call(spec(), call_id=call_id)
        assert again == first
        other = FunctionCallSpec(fn="model_promotion", kwargs={"subject": "something else"})
        with pytest.raises(HumanLayerException, match="409"):
            agent.create_function_call(other, call_id=call_id)

    def test_second_decision_conflicts(self, service: ApprovalsService) -> None:
        agent = sdk(service, service.agent_key)
        alice, bob = sdk(service, service.reviewer_key), sdk(service, service.reviewer2_key)
        call = agent.create_function_call(spec(), call_id=new_call_id())
        alice.respond_to_function_call(call.call_id, FunctionCallStatus(approved=True))
        with pytest.raises(HumanLayerException, match="409"):
            bob.respond_to_function_call(call.call_id, FunctionCallStatus(approved=False, comment="no"))
        status = agent.get_function_call(call.call_id).status
        assert status is not None
        assert status.approved is True

    def test_escalate_email(self, service: ApprovalsService) -> None:
        agent = sdk(service, service.agent_key)
        call = agent.create_function_call(
            spec(hlml={"approvers": ["carol@example.com"]}), call_id=new_call_id()
        )
        escalated = agent.escalate_email_function_call(
            call.call_id,
            Escalation(
                escalation_msg="no answer after 1h",
                additional_recipients=[EmailRecipient(address="bob@example.com", field="cc")],
            ),
        )
        assert escalated.call_id == call.call_id
        # bob was not an approver before the escalation; now he may answer
        bob = sdk(service, service.reviewer2_key)
        answered = bob.respond_to_function_call(call.call_id, FunctionCallStatus(approved=True))
        assert answered.status is not None
        assert answered.status.approved is True

    def test_human_contact_round_trip(self, service: ApprovalsService) -> None:
        agent, alice = sdk(service, service.agent_key), sdk(service, service.reviewer_key)
        contact = agent.create_human_contact(
            HumanContactSpec(
                msg="Which threshold should the churn gate use?",
                subject="threshold",
                response_options=[ResponseOption(name="strict"), ResponseOption(name="lenient")],
            ),
            call_id=new_call_id("contact"),
        )
        assert contact.status is not None
        assert contact.status.response is None
        agent.escalate_email_human_contact(contact.call_id, Escalation(escalation_msg="please answer"))
        alice.respond_to_human_contact(
            contact.call_id, HumanContactStatus(response="use 0.8", response_option_name="strict")
        )
        fetched = agent.get_human_contact(contact.call_id)
        assert fetched.status is not None
        assert fetched.status.response == "use 0.8"
        assert fetched.status.response_option_name == "strict"

    def test_errors_raise_humanlayer_exception(self, service: ApprovalsService) -> None:
        agent = sdk(service, service.agent_key)
        with pytest.raises(HumanLayerException, match="404"):
            agent.get_function_call(new_call_id("missing"))
        with pytest.raises(HumanLayerException, match="401"):
            sdk(service, "hl_not-a-key").create_function_call(spec(), call_id=new_call_id())
        with pytest.raises(HumanLayerException, match="403"):
            agent.respond_to_function_call(
                agent.create_function_call(spec(), call_id=new_call_id()).call_id,
                FunctionCallStatus(approved=True),
            )

    def test_pending_lists(self, service: ApprovalsService) -> None:
        agent = sdk(service, service.agent_key)
        call = agent.create_function_call(spec(), call_id=new_call_id())
        contact = agent.create_human_contact(HumanContactSpec(msg="hi"), call_id=new_call_id("contact"))
        headers = {"Authorization": f"Bearer {service.reviewer_key}"}
        calls = httpx.get(f"{service.base_url}/agent/function_calls/pending", headers=headers).json()
        contacts = httpx.get(f"{service.base_url}/agent/human_contacts/pending", headers=headers).json()
        assert call.call_id in {c["call_id"] for c in calls}
        assert all(c["status"]["approved"] is None for c in calls)
        assert contact.call_id in {c["call_id"] for c in contacts}
        alias = httpx.get(f"{service.base_url}/human_contacts/{contact.call_id}", headers=headers)
        assert alias.status_code == 200
        assert alias.json()["spec"]["msg"] == "hi"


class TestAsyncSdk:
    async def test_create_get_respond(self, service: ApprovalsService) -> None:
        agent, alice = async_sdk(service, service.agent_key), async_sdk(service, service.reviewer_key)
        call = await agent.create_function_call(spec(), call_id=new_call_id())
        assert call.status is not None
        assert call.status.approved is None
        assert (await agent.get_function_call(call.call_id)) == call
        await alice.respond_to_function_call(
            call.call_id,
            FunctionCallStatus(approved=False, comment="wrong data", reject_option_name="wrong_data"),
        )
        status = (await agent.get_function_call(call.call_id)).status
        assert status is not None
        assert status.as_completed().approved is False
        assert status.reject_option_name == "wrong_data"

    async def test_human_contact(self, service: ApprovalsService) -> None:
        agent, bob = async_sdk(service, service.agent_key), async_sdk(service, service.reviewer2_key)
        contact = await agent.create_human_contact(
            HumanContactSpec(msg="ok?"), call_id=new_call_id("contact")
        )
        await bob.respond_to_human_contact(contact.call_id, HumanContactStatus(response="yes"))
        fetched = await agent.get_human_contact(contact.call_id)
        assert fetched.status is not None
        assert fetched.status.response == "yes"

    async def test_errors(self, service: ApprovalsService) -> None:
        agent = async_sdk(service, service.agent_key)
        with pytest.raises(HumanLayerException):
            await agent.get_function_call(new_call_id("missing"))
        call = await agent.create_function_call(spec(), call_id=new_call_id())
        alice = async_sdk(service, service.reviewer_key)
        await alice.respond_to_function_call(call.call_id, FunctionCallStatus(approved=True))
        with pytest.raises(HumanLayerException):
            await alice.respond_to_function_call(call.call_id, FunctionCallStatus(approved=True))
