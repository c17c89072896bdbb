"""The policy core of approval rules: parsing, the matching of approvals to rules, vetoes,
refusal sentences, and the re-check of a decision a server reports."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from airflow_provider_hlml.gate.policy import (
    Answer,
    ApprovalPolicy,
    Refusal,
    Responder,
)
from airflow_provider_hlml.gate.state import (
    UNREADABLE_RULE,
    ApprovalRule,
    Forbidden,
    GateLocation,
    GateState,
    is_group,
)
from airflow_provider_hlml.gate.wire import UserInfo

ALICE = Responder(name="alice", email="alice@example.com", principal="alice")
BOB = Responder(name="bob", email="bob@example.com", principal="bob")
CAROL = Responder(name="carol", email="carol@example.com", principal="carol")
DAVE = Responder(name="dave", email="dave@example.com", principal="dave")

LEADS = {"group:ml-leads": ("alice", "alice@example.com", "bob", "bob@example.com", "carol")}
QUORUM = ApprovalPolicy(
    rules=(
        ApprovalRule(name="ML lead", approvers=("group:ml-leads",), required=2),
        ApprovalRule(name="Compliance", approvers=("dave@example.com",), required=1),
    ),
    members=LEADS,
)


def yes(*people: Responder) -> list[Answer]:
    return [Answer(p, True) for p in people]


def wire(who: Responder, approved: bool = True, **extra: Any) -> dict[str, Any]:
    """An answer as the approvals service reports it in ``status.answers``."""
    return {"name": who.name, "email": who.email, "principal": who.principal, "approved": approved, **extra}


class TestParse:
    def test_a_full_rule(self) -> None:
        rule = ApprovalRule.parse(
            {"name": " ML lead ", "approvers": [" group:ml-leads ", "bob"], "required": 2, "veto": False}
        )
        assert rule == ApprovalRule(
            name="ML lead", approvers=("group:ml-leads", "bob"), required=2, veto=False, source="gate"
        )
        assert rule.groups == ("group:ml-leads",)
        assert ApprovalRule.parse(rule.to_json()) == rule
        assert ApprovalRule.parse(rule) is rule

    def test_defaults_and_a_single_approver(self) -> None:
        assert ApprovalRule.parse({"name": "Any"}) == ApprovalRule(name="Any", approvers=(), required=1)
        assert ApprovalRule.parse({"name": "One", "approvers": "alice"}).approvers == ("alice",)
        assert ApprovalRule.parse({"name": "P", "source": "policy"}).source == "policy"

    @pytest.mark.parametrize(
        ("raw", "message"),
        [
            ("ML lead", "rule: a rule is a mapping with name, approvers and required"),
            (["name"], "rule: a rule is a mapping"),
            ({"name": "R", "quorum": 2, "who": 1}, "rule: unknown keys ['quorum', 'who']"),
            ({"approvers": ["alice"]}, "rule.name: a non-empty string of at most 200 characters"),
            ({"name": "  "}, "rule.name: a non-empty string"),
            ({"name": 7}, "rule.name: a non-empty string"),
            ({"name": "x" * 201}, "rule.name: a non-empty string of at most 200 characters"),
            ({"name": "R", "approvers": {"alice": 1}}, "rule.approvers: a list of names"),
            ({"name": "R", "approvers": ["alice", ""]}, "rule.approvers: a list of names"),
            ({"name": "R", "approvers": ["alice", None]}, "rule.approvers: a list of names"),
            ({"name": "R", "approvers": ["a" * 321]}, "rule.approvers: a list of names"),
            ({"name": "R", "required": 0}, "rule.required: an integer from 1 to 50"),
            ({"name": "R", "required": -1}, "rule.required: an integer from 1 to 50"),
            ({"name": "R", "required": 51}, "rule.required: an integer from 1 to 50"),
            ({"name": "R", "required": 1.0}, "rule.required: an integer"),
            ({"name": "R", "required": "1"}, "rule.required: an integer"),
            ({"name": "R", "required": True}, "rule.required: an integer"),
            (
                {"name": "R", "approvers": ["alice", "bob"], "required": 3},
                "rule: 'R' requires 3 approvals but names only 2 approvers",
            ),
            ({"name": "R", "veto": "false"}, "rule.veto: true or false"),
            ({"name": "R", "veto": 0}, "rule.veto: true or false"),
            ({"name": "R", "source": "dag"}, "rule.source: 'gate' or 'policy'"),
        ],
    )
    def test_each_error(self, raw: Any, message: str) -> None:
        with pytest.raises(ValueError) as exc:
            ApprovalRule.parse(raw)
        assert str(exc.value).startswith(message), str(exc.value)

    def test_groups_are_not_counted_as_people(self) -> None:
        # How many people a group holds is known only to the service (it refuses too few there).
        rule = ApprovalRule.parse({"name": "R", "approvers": ["group:leads", "alice"], "required": 5})
        assert rule.required == 5
        assert is_group(" GROUP:leads ")
        assert not is_group("groupie")
        assert not is_group(None)

    def test_parse_all_names_the_rule(self) -> None:
        assert ApprovalRule.parse_all(None) == ()
        rules = ApprovalRule.parse_all([{"name": "A"}, {"name": "B", "required": 2}])
        assert [r.name for r in rules] == ["A", "B"]
        with pytest.raises(ValueError, match=r"^approval_rules\[1\]\.required: an integer"):
            ApprovalRule.parse_all([{"name": "A"}, {"name": "B", "required": 0}])
        for not_a_list in ({"name": "A"}, "A", 3):
            with pytest.raises(ValueError, match=r"^approval_rules: a list of rules$"):
                ApprovalRule.parse_all(not_a_list)
        with pytest.raises(ValueError, match="at most 20 rules"):
            ApprovalRule.parse_all([{"name": f"R{i}"} for i in range(21)])
        assert len(ApprovalRule.parse_all([{"name": f"R{i}"} for i in range(20)])) == 20


class TestTally:
    def test_partial_progress_and_summary(self) -> None:
        tally = QUORUM.tally(yes(ALICE))
        assert tally.decided is None
        assert tally.summary == "ML lead 1 of 2: alice; Compliance 0 of 1"
        assert [(p.rule.name, p.approved_by, p.met) for p in tally.rules] == [
            ("ML lead", ("alice",), False),
            ("Compliance", (), False),
        ]
        assert [(a.who, rule) for a, rule in tally.counted] == [(ALICE, "ML lead")]
        done = QUORUM.tally(yes(ALICE, DAVE, CAROL))
        assert done.decided is True
        assert done.summary == "ML lead 2 of 2: alice, carol; Compliance 1 of 1: dave"
        assert done.approvals == 3

    def test_each_person_counts_once(self) -> None:
        alice_by_mail = Responder(email="ALICE@example.com")
        tally = QUORUM.tally(yes(ALICE, alice_by_mail, DAVE))
        assert tally.decided is None
        assert tally.rules[0].approved_by == ("alice",)
        assert [rule for _, rule in tally.counted] == ["ML lead", "Compliance"]

    def test_a_member_of_two_groups_is_moved_to_the_rule_that_needs_them(self) -> None:
        policy = ApprovalPolicy(
            rules=(
                ApprovalRule(name="Security", approvers=("group:security",)),
                ApprovalRule(name="ML lead", approvers=("group:leads",)),
            ),
            members={"group:security": ("alice", "bob"), "group:leads": ("alice",)},
        )
        first = policy.tally(yes(ALICE))
        assert [(a.who.name, r) for a, r in first.counted] == [("alice", "Security")]
        assert first.decided is None  # alice counts toward one rule, not both
        both = policy.tally(yes(ALICE, BOB))
        assert [(a.who.name, r) for a, r in both.counted] == [("alice", "ML lead"), ("bob", "Security")]
        assert both.decided is True
        # The other order needs no move; the result is the same every time.
        assert [(a.who.name, r) for a, r in policy.tally(yes(BOB, ALICE)).counted] == [
            ("bob", "Security"),
            ("alice", "ML lead"),
        ]
        assert all(policy.tally(yes(ALICE, BOB)) == both for _ in range(5))

    def test_a_chain_of_moves(self) -> None:
        # alice: A or B; bob: B or C; carol: A only. carol arrives last and takes A: alice moves to
        # B, which bob holds; bob moves to C.
        policy = ApprovalPolicy(
            rules=(
                ApprovalRule(name="A", approvers=("alice", "carol")),
                ApprovalRule(name="B", approvers=("alice", "bob")),
                ApprovalRule(name="C", approvers=("bob",)),
            )
        )
        assert [r for _, r in policy.tally(yes(ALICE, BOB)).counted] == ["A", "B"]
        tally = policy.tally(yes(ALICE, BOB, CAROL))
        assert [(a.who.name, r) for a, r in tally.counted] == [("alice", "B"), ("bob", "C"), ("carol", "A")]
        assert tally.decided is True

    def test_an_approval_beyond_the_rules_counts_toward_none(self) -> None:
        policy = ApprovalPolicy(rules=(ApprovalRule(name="Review", approvers=("alice", "bob")),))
        tally = policy.tally(yes(ALICE, BOB))
        assert [r for _, r in tally.counted] == ["Review", None]
        assert tally.rules[0].approved_by == ("alice",)

    def test_a_plain_approver_list_is_one_rule(self) -> None:
        policy = ApprovalPolicy(approvers=("alice", "bob"))
        assert policy.effective_rules == (ApprovalRule(name="Approvers", approvers=("alice", "bob")),)
        assert not policy.is_quorum
        assert policy.tally(yes(BOB)).decided is True
        assert ApprovalPolicy().effective_rules[0].name == "Any reviewer"
        assert ApprovalPolicy().tally(yes(CAROL)).decided is True
        assert QUORUM.is_quorum
        assert ApprovalPolicy(rules=(ApprovalRule(name="R", required=2),)).is_quorum
        assert not ApprovalPolicy(rules=(ApprovalRule(name="R"),)).is_quorum

    def test_an_unresolved_group_lists_nobody(self) -> None:
        policy = ApprovalPolicy(rules=(ApprovalRule(name="R", approvers=("group:ml-leads",)),))
        assert policy.tally(yes(ALICE)).decided is None
        assert policy.refusal(ALICE) is Refusal.NOT_AN_APPROVER
        resolved = policy.with_members({"GROUP:ML-Leads": ["alice"]})
        assert resolved.tally(yes(ALICE)).decided is True

    def test_escalation_approvers_count_toward_every_rule(self) -> None:
        policy = QUORUM.escalated_to(["carol@example.com", "dave"])
        assert policy.refusal(DAVE) is None
        two = ApprovalPolicy(
            rules=(ApprovalRule(name="A", approvers=("alice",)), ApprovalRule(name="B", approvers=("bob",)))
        ).escalated_to(["carol"])
        assert [r for _, r in two.tally(yes(CAROL)).counted] == ["A"]
        assert two.tally(yes(CAROL, BOB)).decided is True


class TestVeto:
    def test_a_rejection_vetoes_partial_approvals(self) -> None:
        answers = [*yes(ALICE, DAVE), Answer(BOB, False)]
        tally = QUORUM.tally(answers)
        assert tally.decided is False
        assert tally.vetoed_by == answers[2]
        # ... even when the approvals would meet every rule.
        assert QUORUM.tally([Answer(BOB, False), *yes(ALICE, CAROL, DAVE)]).decided is False

    def test_a_rule_without_veto_waits_on(self) -> None:
        policy = ApprovalPolicy(
            rules=(ApprovalRule(name="Review", approvers=("alice", "bob", "carol"), required=2, veto=False),)
        )
        tally = policy.tally([Answer(ALICE, False)])
        assert (tally.decided, tally.vetoed_by) == (None, None)
        assert policy.tally([Answer(ALICE, False), *yes(BOB, CAROL)]).decided is True

    def test_one_vetoing_rule_is_enough(self) -> None:
        policy = ApprovalPolicy(
            rules=(
                ApprovalRule(name="Advisory", approvers=("alice", "bob"), veto=False),
                ApprovalRule(name="Owner", approvers=("alice",)),
            )
        )
        assert policy.tally([Answer(ALICE, False)]).decided is False
        assert policy.tally([Answer(BOB, False)]).decided is None

    def test_a_rejection_by_someone_eligible_for_no_rule_vetoes(self) -> None:
        # Fail closed: the service never records it, but a reported one is not ignored.
        policy = ApprovalPolicy(rules=(ApprovalRule(name="Review", approvers=("alice",), veto=False),))
        assert policy.tally([Answer(CAROL, False)]).decided is False

    def test_a_rejection_after_the_same_persons_approval_is_ignored(self) -> None:
        policy = ApprovalPolicy(rules=(ApprovalRule(name="Review", approvers=("alice", "bob"), required=2),))
        assert policy.tally([*yes(ALICE), Answer(ALICE, False)]).decided is None


class TestExplain:
    def test_not_an_approver(self) -> None:
        assert QUORUM.explain(Responder(name="eve", email="eve@example.com")) == (
            "eve is not one of the approvers of this request: dave@example.com, group:ml-leads"
        )

    def test_self_approval(self) -> None:
        policy = replace(QUORUM, requester="ALICE@example.com")
        assert policy.explain(ALICE) == (
            "alice requested this approval and self-approval is not allowed (allow_self_approval is false)"
        )
        assert policy.refusal(ALICE) is Refusal.SELF_APPROVAL
        allowed = ApprovalPolicy(requester="alice", allow_self_approval=True)
        assert allowed.explain(ALICE) is None

    def test_model_author(self) -> None:
        policy = ApprovalPolicy(
            rules=QUORUM.rules,
            members=LEADS,
            forbidden=(Forbidden(who="carol@example.com", why="trained this model"),),
        )
        assert policy.explain(CAROL) == (
            "carol trained this model: separation of duties bars them from deciding (forbid model_author)"
        )
        default = ApprovalPolicy(forbidden=(Forbidden(who="carol"),))
        assert default.explain(CAROL) == (
            "carol authored what is approved: separation of duties bars them from deciding (forbid model_author)"
        )
        assert default.block_reason(CAROL) == "You authored what is approved (separation of duties)"

    def test_already_answered(self) -> None:
        assert QUORUM.explain(Responder(email="alice@example.com"), yes(ALICE)) == (
            "alice@example.com has already answered this request; each person counts once"
        )
        assert QUORUM.refusal(ALICE, [Answer(ALICE, False)], approving=True) is Refusal.ALREADY_ANSWERED

    def test_an_approval_that_would_not_count(self) -> None:
        answers = yes(ALICE, CAROL)
        assert QUORUM.explain(BOB, answers, approving=True) == (
            "bob's approval would not count: every rule they may approve toward is already met (ML lead)"
        )
        assert QUORUM.explain(BOB, answers, approving=False) is None  # a rejection still counts
        assert QUORUM.explain(BOB, answers) is None
        assert QUORUM.explain(DAVE, answers, approving=True) is None

    def test_no_identity(self) -> None:
        assert ApprovalPolicy().explain(Responder(name=" ")) == (
            "the responder has neither a name nor an e-mail address"
        )

    def test_the_order_of_refusals(self) -> None:
        # Barred beats not-an-approver beats already-answered.
        policy = ApprovalPolicy(
            rules=(ApprovalRule(name="R", approvers=("bob",)),), forbidden=(Forbidden(who="alice"),)
        )
        assert policy.refusal(ALICE, yes(ALICE)) is Refusal.MODEL_AUTHOR
        assert policy.refusal(CAROL, yes(CAROL)) is Refusal.NOT_AN_APPROVER


class TestDecisionRefusal:
    def test_answers_that_meet_the_rules_are_accepted(self) -> None:
        answers = [wire(ALICE), wire(DAVE), wire(CAROL)]
        assert QUORUM.decision_refusal(UserInfo(name="carol"), answers) is None

    def test_a_claimed_approval_with_rules_unmet_is_refused(self) -> None:
        assert QUORUM.decision_refusal(UserInfo(name="dave"), [wire(ALICE), wire(DAVE)]) == (
            "the rules are not met: ML lead 1 of 2: alice; Compliance 1 of 1: dave"
        )

    def test_a_quorum_never_trusts_a_server_that_reports_no_answers(self) -> None:
        assert QUORUM.decision_refusal(None) == (
            "the server does not report the approvals, so the rules cannot be checked"
        )
        assert QUORUM.decision_refusal(UserInfo(), []) == (
            "the server does not report the approvals, so the rules cannot be checked"
        )
        # With only the one decider reported, one approval cannot meet a quorum.
        assert QUORUM.decision_refusal(UserInfo(name="dave", email="dave@example.com")) == (
            "the rules are not met: ML lead 0 of 2; Compliance 1 of 1: dave"
        )
        # Entries that are no answers are ignored, not trusted.
        assert QUORUM.decision_refusal(None, [{"name": "alice"}, "x", None]) is not None

    def test_a_plain_approver_list_without_answers(self) -> None:
        plain = ApprovalPolicy(approvers=("alice",))
        assert plain.decision_refusal(None) is None  # the HumanLayer cloud enforces its channel
        assert plain.decision_refusal(UserInfo(name="alice")) is None
        assert plain.decision_refusal(UserInfo(name="carol")) == (
            "carol is not one of the approvers of this request: alice"
        )

    def test_every_reported_answer_is_judged(self) -> None:
        barred = ApprovalPolicy(rules=QUORUM.rules, members=LEADS, forbidden=(Forbidden(who="carol"),))
        refusal = barred.decision_refusal(None, [wire(ALICE), wire(DAVE), wire(CAROL)])
        assert refusal is not None
        assert refusal.startswith("carol authored what is approved")
        twice = QUORUM.decision_refusal(None, [wire(ALICE), wire(DAVE), wire(ALICE)])
        assert twice == "alice has already answered this request; each person counts once"
        stranger = QUORUM.decision_refusal(None, [wire(ALICE), wire(DAVE), wire(Responder(name="eve"))])
        assert stranger is not None
        assert stranger.startswith("eve is not one of the approvers")

    def test_a_delegates_answer_is_judged_by_the_person(self) -> None:
        # "alice" via the delegate "carol": carol's principal is no identity of the person.
        answers = [wire(Responder(name="eve", principal="carol"), via_delegate=True), wire(DAVE)]
        refusal = QUORUM.decision_refusal(None, answers)
        assert refusal is not None
        assert "eve is not one of the approvers" in refusal

    def test_rejections(self) -> None:
        vetoed = [wire(ALICE), wire(BOB, approved=False)]
        assert QUORUM.decision_refusal(UserInfo(name="bob"), vetoed, approved=False) is None
        assert QUORUM.decision_refusal(UserInfo(name="bob"), vetoed, approved=True) == (
            "the rules are not met: ML lead 1 of 2: alice; Compliance 0 of 1"
        )
        advisory = ApprovalPolicy(rules=(ApprovalRule(name="R", approvers=("alice", "bob"), veto=False),))
        assert advisory.decision_refusal(None, [wire(ALICE, approved=False)], approved=False) == (
            "no rejection in the reported answers decides this request"
        )


class TestStoredState:
    def test_round_trip_with_rules_forbidden_and_digest(self) -> None:
        state = GateState(
            approvers=("alice",),
            requester="bob",
            rules=(
                ApprovalRule(name="ML lead", approvers=("group:ml-leads",), required=2),
                ApprovalRule(name="Compliance", approvers=("dave",), veto=False, source="policy"),
            ),
            forbid=("requester", "model_author"),
            forbidden=(Forbidden(who="carol", duty="model_author", why="trained this model"),),
            digest="ab" * 32,
            airflow=GateLocation(dag_id="d", run_id="r", task_id="t", try_number=1),
        )
        wire_state = state.to_state()
        assert wire_state["hlml"]["rules"][0] == {
            "name": "ML lead",
            "approvers": ["group:ml-leads"],
            "required": 2,
            "veto": True,
            "source": "gate",
        }
        assert wire_state["hlml"]["forbidden"] == [
            {"who": "carol", "duty": "model_author", "why": "trained this model"}
        ]
        assert wire_state["hlml"]["digest"] == "ab" * 32
        assert GateState.from_state(wire_state) == state
        policy = ApprovalPolicy.from_state(wire_state)
        assert policy.rules == state.rules
        assert policy.forbidden == state.forbidden
        assert ApprovalPolicy.from_json(policy.to_json()) == policy

    def test_optional_parts_are_left_out(self) -> None:
        assert set(GateState(approvers=("a",)).to_state()["hlml"]) == {
            "approvers",
            "requester",
            "allow_self_approval",
        }

    def test_malformed_duties_read_as_missing(self) -> None:
        state = GateState.from_state(
            {
                "hlml": {
                    "forbid": ["requester", "janitor", 3],
                    "forbidden": [{"who": "carol", "duty": "janitor"}, {"who": ""}, "x", {"why": "no who"}],
                    "digest": 7,
                }
            }
        )
        assert state.forbid == ("requester",)
        assert state.forbidden == (
            Forbidden(who="carol", duty="model_author", why="authored what is approved"),
        )
        assert state.digest is None
        assert Forbidden(who="bob", duty="requester").why == "requested this approval"

    @pytest.mark.parametrize(
        "raw",
        [
            [{"name": "ok"}, {"name": "R", "required": 0}],
            [{"name": "ok"}, {"name": "R", "approvers": ["a"], "required": 2}],
            [{"name": "ok"}, "not a rule"],
            [{"name": "ok"}, {"name": "R", "unknown": True}],
        ],
    )
    def test_an_unreadable_stored_rule_is_unmeetable(self, raw: list[Any]) -> None:
        state = {"hlml": {"rules": raw}}
        gate = GateState.from_state(state)
        assert gate.rules == (ApprovalRule(name="ok"), UNREADABLE_RULE)
        policy = ApprovalPolicy.from_state(state)
        everyone = yes(ALICE, BOB, CAROL, DAVE)
        assert policy.tally(everyone).decided is None
        assert policy.tally(everyone).summary == "ok 1 of 1: alice; (unreadable rule) 0 of 1"
        refusal = policy.decision_refusal(None, [wire(ALICE), wire(BOB)])
        assert refusal == "the rules are not met: ok 1 of 1: alice; (unreadable rule) 0 of 1"

    def test_an_unreadable_rule_stays_unmeetable_after_an_escalation(self) -> None:
        policy = ApprovalPolicy.from_state({"hlml": {"rules": [{"name": "R", "required": 0}]}}, ["carol"])
        assert policy.rules == (UNREADABLE_RULE,)
        assert policy.tally(yes(CAROL)).decided is None
        assert policy.decision_refusal(UserInfo(name="carol")) is not None
        members = policy.with_members({UNREADABLE_RULE.approvers[0]: ["alice"]})
        assert members.tally(yes(ALICE)).decided is None

    @pytest.mark.parametrize("raw", [{"name": "R"}, "R", 7])
    def test_rules_that_are_no_list(self, raw: Any) -> None:
        rules = GateState.from_state({"hlml": {"rules": raw}}).rules
        # A lone mapping is read as the one rule it is; anything else is unreadable.
        assert rules == ((ApprovalRule(name="R"),) if isinstance(raw, dict) else (UNREADABLE_RULE,))
