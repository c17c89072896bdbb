"""The policy core's part of auto-decisions: who may decide as a decision policy, and the branch."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_hlml.gate.events import decision_branch
from airflow_provider_hlml.gate.policy import Answer, ApprovalPolicy, Responder
from airflow_provider_hlml.gate.routing import PolicyFile, PolicyFileError
from airflow_provider_hlml.gate.state import ApprovalRule, AutoDecision, GateState

PRINCIPAL = "policy:champion-margin-v1"
POLICY = Responder(name=PRINCIPAL, principal=PRINCIPAL)


def policy(outcome: str = "approve", **kwargs: Any) -> ApprovalPolicy:
    return ApprovalPolicy(
        approvers=("alice",),
        rules=(ApprovalRule(name="Leads", approvers=("alice", "bob"), required=2),),
        auto=AutoDecision(outcome=outcome, principal=PRINCIPAL, reason="clear win"),
        **kwargs,
    )


class TestWhoDecidesAsAPolicy:
    def test_the_requests_own_policy_decides_alone(self) -> None:
        p = policy()
        assert p.refusal(POLICY, (), approving=True) is None
        tally = p.tally([Answer(POLICY, True)])
        assert tally.decided is True
        assert tally.summary == f"decided by {PRINCIPAL}"
        assert (
            p.decision_refusal(None, [{"name": PRINCIPAL, "principal": PRINCIPAL, "approved": True}]) is None
        )

    def test_a_rejecting_policy_rejects(self) -> None:
        p = policy("reject")
        assert p.tally([Answer(POLICY, False)]).decided is False
        assert (
            p.decision_refusal(
                None, [{"name": PRINCIPAL, "principal": PRINCIPAL, "approved": False}], approved=False
            )
            is None
        )

    def test_the_policy_cannot_decide_the_other_way(self) -> None:
        p = policy("reject")
        assert p.refusal(POLICY, (), approving=True) is not None
        assert p.tally([Answer(POLICY, True)]).decided is None
        assert p.decision_refusal(None, [{"name": PRINCIPAL, "principal": PRINCIPAL, "approved": True}])

    def test_another_policy_name_is_refused(self) -> None:
        other = Responder(name="policy:lenient-v9", principal="policy:lenient-v9")
        reason = policy().explain(other, (), True)
        assert reason is not None
        assert "recorded only by the approvals service" in reason
        assert policy().tally([Answer(other, True)]).decided is None

    def test_no_auto_decision_means_no_policy_may_answer(self) -> None:
        plain = ApprovalPolicy(approvers=())  # anyone may answer...
        assert plain.refusal(Responder(name="carol"), ()) is None
        assert plain.refusal(POLICY, (), approving=True) is not None  # ...but not a policy name

    def test_a_person_using_a_policy_name_with_other_identities_is_refused(self) -> None:
        impostor = Responder(name=PRINCIPAL, email="mallory@example.com", principal="mallory")
        assert policy().refusal(impostor, (), approving=True) is not None

    def test_after_a_persons_answer_the_policy_has_no_say(self) -> None:
        p = policy()
        alice = Answer(Responder(name="alice", principal="alice"), True)
        reason = p.explain(POLICY, [alice], True)
        assert reason is not None
        assert "override window" in reason
        assert p.tally([alice, Answer(POLICY, True)]).decided is None  # one of two leads only

    def test_a_persons_rejection_in_the_window_decides(self) -> None:
        bob = Answer(Responder(name="bob", principal="bob"), False)
        assert policy().tally([bob]).decided is False

    def test_the_auto_decision_travels_with_the_policy(self) -> None:
        p = policy()
        again = ApprovalPolicy.from_json(p.to_json())
        assert again.auto == p.auto
        state = GateState(auto=p.auto).to_state()
        assert ApprovalPolicy.from_state(state).auto == p.auto


class TestAutoDecisionIsChecked:
    @pytest.mark.parametrize(
        "raw",
        [
            {"outcome": "ship", "principal": PRINCIPAL},
            {"outcome": "approve", "principal": "alice"},
            {"outcome": "approve", "principal": "policy:a b"},
            {"outcome": "approve", "principal": PRINCIPAL, "override_seconds": -1},
            {"outcome": "approve", "principal": PRINCIPAL, "override_seconds": True},
            {"outcome": "approve", "principal": PRINCIPAL, "override_seconds": 1e12},
            "approve",
        ],
    )
    def test_malformed_reads_as_none(self, raw: Any) -> None:
        assert AutoDecision.from_json(raw) is None
        assert GateState.from_state({"hlml": {"auto": raw}}).auto is None


class TestBranch:
    def event(self, who: str, approved: bool = True, comment: str = "clear win") -> dict[str, Any]:
        return {"approved": approved, "comment": comment, "responded_by_user": {"id": who, "name": who}}

    def test_policy_branches(self) -> None:
        assert decision_branch(self.event(PRINCIPAL), None) == ("auto_approve", "clear win")
        assert decision_branch(self.event(PRINCIPAL, False, "clear regression"), None) == (
            "auto_reject",
            "clear regression",
        )

    def test_a_person_and_a_timeout_are_human(self) -> None:
        branch, why = decision_branch(self.event("alice"), None)
        assert (branch, why) == ("human", "a person decided (no decision policy decided this request)")
        assert decision_branch(self.event(PRINCIPAL), None, timed_out=True)[0] == "human"


class TestPolicyFileForbids:
    def test_model_type_and_urgency_sections_forbid(self) -> None:
        parsed = PolicyFile.parse(
            {
                "types": {"model_promotion": {"auto_reject": False}},
                "urgency": {"critical": {"auto_approve": False}},
                "models": {"fraud": {"auto_approve": False}},
            }
        )
        assert parsed.requirement("model_promotion", "medium", "churn").allows("approve")
        assert not parsed.requirement("model_promotion", "medium", "churn").allows("reject")
        assert not parsed.requirement("model_promotion", "medium", "fraud").allows("approve")
        assert not parsed.requirement("custom", "critical").allows("approve")
        assert parsed.requirement("custom", "low").allows("reject")

    @pytest.mark.parametrize("value", ["no", 0, None, [False]])
    def test_a_flag_must_be_a_boolean(self, value: Any) -> None:
        with pytest.raises(PolicyFileError, match="auto_approve: true or false"):
            PolicyFile.parse({"models": {"fraud": {"auto_approve": value}}})
