"""The approval policy shared by the service and the trigger."""

from __future__ import annotations

from airflow_provider_hlml.gate.policy import ApprovalPolicy


class TestApprovalPolicy:
    def test_missing_policy_allows_anyone(self) -> None:
        for state in (None, {}, {"hlml": None}, {"hlml": "garbage"}, {"other": 1}):
            policy = ApprovalPolicy.from_state(state)
            assert policy.refusal_reason(name="alice", email="alice@example.com") is None

    def test_approvers_by_email_or_name_case_insensitive(self) -> None:
        policy = ApprovalPolicy.from_state({"hlml": {"approvers": ["Alice@Example.com", "bob"]}})
        assert policy.refusal_reason(name="x", email="alice@example.com") is None
        assert policy.refusal_reason(name="BOB", email=None) is None
        reason = policy.refusal_reason(name="carol", email="carol@example.com")
        assert reason is not None
        assert "carol" in reason
        assert "not one of the approvers" in reason

    def test_single_string_approver(self) -> None:
        policy = ApprovalPolicy.from_state({"hlml": {"approvers": "alice"}})
        assert policy.approvers == ("alice",)

    def test_extra_approvers_extend_a_restricted_list(self) -> None:
        policy = ApprovalPolicy.from_state({"hlml": {"approvers": ["alice"]}}, ["bob@example.com"])
        assert policy.refusal_reason(name="bob", email="bob@example.com") is None

    def test_requester_and_self_approval(self) -> None:
        state = {"hlml": {"requester": "alice", "allow_self_approval": False}}
        reason = ApprovalPolicy.from_state(state).refusal_reason(name="alice", email="alice@example.com")
        assert reason is not None
        assert "self-approval" in reason
        state["hlml"]["allow_self_approval"] = True
        assert ApprovalPolicy.from_state(state).refusal_reason(name="alice", email=None) is None

    def test_requester_refused_even_when_listed(self) -> None:
        state = {"hlml": {"approvers": ["alice"], "requester": "alice@example.com"}}
        reason = ApprovalPolicy.from_state(state).refusal_reason(name="alice", email="alice@example.com")
        assert reason is not None

    def test_anonymous_responder_is_refused(self) -> None:
        assert ApprovalPolicy().refusal_reason(name=None, email="  ") is not None


class TestIdentities:
    """Every identity rule in one place: name, e-mail, principal, user id and escalation approvers."""

    def test_principal_and_user_id_are_identities(self) -> None:
        policy = ApprovalPolicy(approvers=("ci-bot", "42"))
        assert policy.refusal_reason(name="x", email=None, principal="CI-bot") is None
        assert policy.refusal_reason(name="x", email=None, user_id="42") is None
        assert policy.refusal_reason(name="x", email=None, user_id="43") is not None

    def test_a_delegates_principal_is_not_the_persons(self) -> None:
        from airflow_provider_hlml.gate.wire import UserInfo

        policy = ApprovalPolicy(approvers=("airflow-ui",))
        on_behalf = UserInfo(
            name="carol", email="carol@example.com", principal="airflow-ui", via_delegate=True
        )
        assert "not one of the approvers" in str(policy.decision_refusal(on_behalf))
        own_key = UserInfo(name="airflow-ui", principal="airflow-ui", via_delegate=False)
        assert policy.decision_refusal(own_key) is None

    def test_unreported_responder_is_trusted_to_the_server(self) -> None:
        assert ApprovalPolicy(approvers=("alice",)).decision_refusal(None) is None

    def test_escalation_approvers_extend_only_a_restricted_list(self) -> None:
        policy = ApprovalPolicy(approvers=("alice",)).escalated_to(["boss@example.com", "alice"])
        assert policy.allowed == ("alice", "boss@example.com")
        assert ApprovalPolicy().escalated_to(["boss@example.com"]).allowed == ()
        assert ApprovalPolicy().refusal_reason(name="anyone", email=None) is None
