"""Approval rules over real HTTP: counts, groups, separation of duties, escalation to a group.

Every test runs on SQLite and on PostgreSQL (the ``service`` fixture). The service lives for the
whole session, so each test makes its own groups and extra reviewers under a unique tag.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from tests.approvals.conftest import Api, call_body, new_call_id, policy_state
from tests.fixtures.approvals import ApprovalsService


def assert_error(resp: httpx.Response, status: int, code: str, *needles: str) -> str:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code, error
    for needle in needles:
        assert needle in error["message"], error["message"]
    return str(error["message"])


class World:
    """One test's people, groups and requests on the shared service.

    ``alice`` and ``bob`` are the service's own reviewers; :meth:`person` adds reviewers named
    ``<name>-<tag>``; :meth:`group` makes ``group:<name>-<tag>``.
    """

    def __init__(self, service: ApprovalsService) -> None:
        self.service = service
        self.tag = uuid.uuid4().hex[:8]
        self.agent = Api(service, service.agent_key)
        self.apis: dict[str, Api] = {
            "alice": Api(service, service.reviewer_key),
            "bob": Api(service, service.reviewer2_key),
            "delegate": Api(service, service.delegate_key),
        }
        self.names = {"alice": "alice", "bob": "bob"}

    @contextmanager
    def session(self) -> Iterator[Any]:
        from airflow_provider_hlml.approvals import db

        engine = db.make_engine(self.service.database_url, pool_size=1)
        try:
            with db.make_sessionmaker(engine)() as session:
                yield session
        finally:
            engine.dispose()

    def person(self, name: str) -> str:
        """A new reviewer ``<name>-<tag>`` (e-mail ``<name>-<tag>@example.com``); its principal name."""
        from airflow_provider_hlml.approvals import store

        principal = f"{name}-{self.tag}"
        with self.session() as session:
            key = store.create_key(
                session, name=principal, role="reviewer", email=f"{principal}@example.com"
            )[1]
        self.apis[name] = Api(self.service, key)
        self.names[name] = principal
        return principal

    def group(self, name: str, *members: str) -> str:
        """A new group ``<name>-<tag>`` of ``members`` (short names); its ``group:`` entry."""
        from airflow_provider_hlml.approvals import store

        with self.session() as session:
            group = store.create_group(session, name=f"{name}-{self.tag}")
            store.add_to_group(session, name=group.name, principals=[self.names[m] for m in members])
        return f"group:{name}-{self.tag}"

    def add(self, group: str, *members: str) -> None:
        from airflow_provider_hlml.approvals import store

        with self.session() as session:
            store.add_to_group(session, name=group, principals=[self.names[m] for m in members])

    def remove(self, group: str, *members: str) -> None:
        from airflow_provider_hlml.approvals import store

        with self.session() as session:
            removed = store.remove_from_group(
                session, name=group, principals=[self.names[m] for m in members]
            )
        assert removed == [self.names[m] for m in members]

    def post(self, rules: Any = None, **hlml: Any) -> httpx.Response:
        state = policy_state()
        if rules is not None:
            state["hlml"]["rules"] = rules
        state["hlml"].update(hlml)
        return self.agent.post("/function_calls", json=call_body(state=state))

    def create(self, rules: Any = None, **hlml: Any) -> str:
        resp = self.post(rules, **hlml)
        assert resp.status_code == 201, resp.text
        return str(resp.json()["call_id"])

    def respond(self, who: str, call_id: str, approved: bool = True, **body: Any) -> httpx.Response:
        return self.apis[who].post(
            f"/agent/function_calls/{call_id}/respond", json={"approved": approved, **body}
        )

    def ok(self, who: str, call_id: str, approved: bool = True, **body: Any) -> dict[str, Any]:
        resp = self.respond(who, call_id, approved, **body)
        assert resp.status_code == 200, resp.text
        return dict(resp.json()["status"])

    def status(self, call_id: str) -> dict[str, Any]:
        resp = self.agent.get(f"/function_calls/{call_id}")
        assert resp.status_code == 200, resp.text
        return dict(resp.json()["status"])

    def audit(self, call_id: str) -> list[dict[str, Any]]:
        resp = self.agent.get(f"/function_calls/{call_id}/audit")
        assert resp.status_code == 200, resp.text
        return list(resp.json())

    def close(self) -> None:
        for api in (self.agent, *self.apis.values()):
            api.client.close()


@pytest.fixture
def world(service: ApprovalsService) -> Iterator[World]:
    w = World(service)
    try:
        yield w
    finally:
        w.close()


def progress(status: dict[str, Any]) -> list[tuple[str, list[str], bool]]:
    return [(r["name"], r["approved_by"], r["met"]) for r in status["rules"]]


def answered(status: dict[str, Any]) -> list[tuple[str, bool, str | None]]:
    return [(a["name"], a["approved"], a["rule"]) for a in status["answers"]]


class TestQuorum:
    def test_two_of_three_leads_and_compliance(self, world: World) -> None:
        carol, dave = world.person("carol"), world.person("dave")
        leads = world.group("ml-leads", "alice", "bob", "carol")
        compliance = world.group("compliance", "dave")
        rules = [
            {"name": "ML lead", "approvers": [leads], "required": 2},
            {"name": "Compliance", "approvers": [compliance], "required": 1},
        ]
        call_id = world.create(rules)

        after_alice = world.ok("alice", call_id, comment="metrics look fine")
        assert after_alice["approved"] is None
        assert after_alice["responded_at"] is None
        assert after_alice["user_info"] is None
        assert progress(after_alice) == [("ML lead", ["alice"], False), ("Compliance", [], False)]

        after_dave = world.ok("dave", call_id)
        assert after_dave["approved"] is None
        assert progress(after_dave) == [("ML lead", ["alice"], False), ("Compliance", [dave], True)]
        assert world.status(call_id) == after_dave  # what a poller reads

        done = world.ok("carol", call_id)
        assert done["approved"] is True
        assert done["responded_at"] is not None
        assert done["user_info"]["name"] == carol
        assert progress(done) == [("ML lead", ["alice", carol], True), ("Compliance", [dave], True)]
        assert answered(done) == [
            ("alice", True, "ML lead"),
            (dave, True, "Compliance"),
            (carol, True, "ML lead"),
        ]
        assert done["answers"][0]["comment"] == "metrics look fine"
        assert done["members"] == {
            leads.casefold(): [
                "alice",
                "alice@example.com",
                "bob",
                "bob@example.com",
                carol,
                f"{carol}@example.com",
            ],
            compliance.casefold(): [dave, f"{dave}@example.com"],
        }
        assert_error(world.respond("bob", call_id), 409, "conflict", "already approved")

        events = world.audit(call_id)
        assert [e["event"] for e in events] == ["created", "answered", "answered", "responded"]
        created, first, second, responded = events
        assert created["metadata"]["rules"] == [
            {"name": "ML lead", "approvers": [leads], "required": 2, "veto": True, "source": "gate"},
            {"name": "Compliance", "approvers": [compliance], "required": 1, "veto": True, "source": "gate"},
        ]
        assert created["metadata"]["members"] == done["members"]
        assert (first["actor"], first["metadata"]["rule"], first["metadata"]["progress"]) == (
            "alice",
            "ML lead",
            "ML lead 1 of 2: alice; Compliance 0 of 1",
        )
        assert first["comment"] == "metrics look fine"
        assert (second["actor"], second["metadata"]["rule"], second["metadata"]["progress"]) == (
            dave,
            "Compliance",
            f"ML lead 1 of 2: alice; Compliance 1 of 1: {dave}",
        )
        assert responded["actor"] == carol
        assert (
            responded["metadata"]["progress"] == f"ML lead 2 of 2: alice, {carol}; Compliance 1 of 1: {dave}"
        )
        assert responded["metadata"]["approvers"] == [
            {"name": "alice", "email": "alice@example.com", "rule": "ML lead"},
            {"name": dave, "email": f"{dave}@example.com", "rule": "Compliance"},
            {"name": carol, "email": f"{carol}@example.com", "rule": "ML lead"},
        ]

    def test_the_same_person_counts_once(self, world: World) -> None:
        rules = [{"name": "Review", "approvers": ["alice@example.com", "bob@example.com"], "required": 2}]
        call_id = world.create(rules)
        world.ok("alice", call_id)
        assert_error(world.respond("alice", call_id), 403, "forbidden", "alice has already answered")
        # Through the delegate, by e-mail address only: still alice, still refused.
        on_behalf = world.respond(
            "delegate", call_id, user_info={"name": "Alice Example", "email": "ALICE@example.com"}
        )
        assert_error(on_behalf, 403, "forbidden", "already answered", "each person counts once")
        status = world.status(call_id)
        assert status["approved"] is None
        assert progress(status) == [("Review", ["alice"], False)]
        assert answered(status) == [("alice", True, "Review")]
        events = world.audit(call_id)
        assert [e["event"] for e in events] == ["created", "answered", "refused", "refused"]
        assert events[2]["actor"] == "alice"
        assert "already answered" in events[2]["comment"]
        assert (events[3]["actor"], events[3]["on_behalf_of"]) == ("airflow-ui", "Alice Example")
        assert world.ok("bob", call_id)["approved"] is True

    def test_a_member_of_two_groups_counts_once_and_is_moved(self, world: World) -> None:
        security = world.group("security", "alice", "bob")
        leads = world.group("leads", "alice")
        rules = [
            {"name": "Security", "approvers": [security], "required": 1},
            {"name": "ML lead", "approvers": [leads], "required": 1},
        ]
        call_id = world.create(rules)
        first = world.ok("alice", call_id)
        # alice fills the first rule she may approve toward, and only one rule.
        assert first["approved"] is None
        assert progress(first) == [("Security", ["alice"], True), ("ML lead", [], False)]
        assert answered(first) == [("alice", True, "Security")]
        # bob may only count toward Security: the matching moves alice to ML lead.
        done = world.ok("bob", call_id)
        assert done["approved"] is True
        assert progress(done) == [("Security", ["bob"], True), ("ML lead", ["alice"], True)]
        assert answered(done) == [("alice", True, "ML lead"), ("bob", True, "Security")]
        events = world.audit(call_id)
        assert [e["event"] for e in events] == ["created", "answered", "responded"]
        assert events[1]["metadata"]["rule"] == "Security"
        assert events[2]["metadata"]["rule"] == "Security"
        assert events[2]["metadata"]["approvers"] == [
            {"name": "alice", "email": "alice@example.com", "rule": "ML lead"},
            {"name": "bob", "email": "bob@example.com", "rule": "Security"},
        ]
        # The same answers on a second request give the same rules (the matching is deterministic).
        again = world.create(rules)
        world.ok("alice", again)
        assert answered(world.ok("bob", again)) == answered(done)

    def test_a_member_of_two_groups_cannot_meet_both(self, world: World) -> None:
        security = world.group("security", "alice", "bob")
        leads = world.group("leads", "alice", "bob")
        call_id = world.create(
            [
                {"name": "Security", "approvers": [security], "required": 1},
                {"name": "ML lead", "approvers": [leads], "required": 1},
            ]
        )
        assert world.ok("alice", call_id)["approved"] is None
        assert world.ok("bob", call_id)["approved"] is True


class TestVeto:
    def test_a_rejection_vetoes_partial_approvals(self, world: World) -> None:
        world.person("carol")
        leads = world.group("ml-leads", "alice", "bob", "carol")
        call_id = world.create([{"name": "ML lead", "approvers": [leads], "required": 2}])
        world.ok("alice", call_id)
        rejected = world.ok("bob", call_id, approved=False, comment="AUC dropped")
        assert rejected["approved"] is False
        assert rejected["comment"] == "AUC dropped"
        assert rejected["user_info"]["name"] == "bob"
        assert answered(rejected) == [("alice", True, "ML lead"), ("bob", False, None)]
        assert_error(world.respond("carol", call_id), 409, "conflict", "already rejected")
        events = world.audit(call_id)
        assert [e["event"] for e in events] == ["created", "answered", "responded"]
        assert events[2]["metadata"]["approved"] is False
        assert "approvers" not in events[2]["metadata"]

    def test_a_rule_without_veto_records_the_rejection_and_waits(self, world: World) -> None:
        carol = world.person("carol")
        rules = [{"name": "Review", "approvers": ["alice", "bob", carol], "required": 2, "veto": False}]
        call_id = world.create(rules)
        status = world.ok("alice", call_id, approved=False, comment="not convinced")
        assert status["approved"] is None
        assert answered(status) == [("alice", False, None)]
        assert progress(status) == [("Review", [], False)]
        assert_error(world.respond("alice", call_id), 403, "forbidden", "already answered")
        assert world.ok("bob", call_id)["approved"] is None
        done = world.ok("carol", call_id)
        assert done["approved"] is True
        assert progress(done) == [("Review", ["bob", carol], True)]
        events = world.audit(call_id)
        assert [e["event"] for e in events] == ["created", "answered", "refused", "answered", "responded"]
        assert (events[1]["metadata"]["approved"], events[1]["metadata"]["rule"]) == (False, None)
        assert events[1]["comment"] == "not convinced"

    def test_a_veto_rule_wins_over_a_non_veto_rule(self, world: World) -> None:
        rules = [
            {"name": "Advisory", "approvers": ["alice", "bob"], "required": 1, "veto": False},
            {"name": "Owner", "approvers": ["alice"], "required": 1},
        ]
        vetoed = world.create(rules)
        assert world.ok("alice", vetoed, approved=False)["approved"] is False
        waits = world.create(rules)
        assert world.ok("bob", waits, approved=False)["approved"] is None


class TestSeparationOfDuties:
    def test_the_requester_is_refused(self, world: World) -> None:
        leads = world.group("ml-leads", "alice", "bob")
        call_id = world.create(
            [{"name": "ML lead", "approvers": [leads], "required": 1}], requester="bob@example.com"
        )
        assert_error(
            world.respond("bob", call_id), 403, "forbidden", "bob requested this approval", "self-approval"
        )
        assert_error(world.respond("bob", call_id, approved=False), 403, "forbidden", "self-approval")
        assert world.status(call_id)["answers"] == []
        assert world.ok("alice", call_id)["approved"] is True
        assert [e["event"] for e in world.audit(call_id)] == ["created", "refused", "refused", "responded"]

    def test_a_forbidden_model_author_is_refused(self, world: World) -> None:
        leads = world.group("ml-leads", "alice", "bob")
        call_id = world.create(
            [{"name": "ML lead", "approvers": [leads], "required": 1}],
            forbidden=[{"who": "alice", "duty": "model_author", "why": "trained this model"}],
        )
        message = assert_error(world.respond("alice", call_id), 403, "forbidden", "trained this model")
        assert "separation of duties" in message
        # Through the delegate, by the same name: still alice, still refused.
        on_behalf = world.respond("delegate", call_id, user_info={"name": "Alice", "email": None})
        assert_error(on_behalf, 403, "forbidden", "Alice trained this model")
        # By another name but her e-mail address: the service resolved every identity of the
        # principal alice when the request opened, so she is still barred.
        other_name = world.respond(
            "delegate", call_id, user_info={"name": "A.", "email": "alice@example.com"}
        )
        assert_error(other_name, 403, "forbidden", "A. trained this model")
        assert world.status(call_id)["members"]["person:alice"] == ["alice", "alice@example.com"]
        refused = world.audit(call_id)[1]
        assert (refused["event"], refused["actor"]) == ("refused", "alice")
        assert [e["event"] for e in world.audit(call_id)].count("refused") == 3
        assert "trained this model" in refused["comment"]
        assert world.ok("bob", call_id)["approved"] is True

    def test_an_approval_that_counts_toward_no_rule_is_refused(self, world: World) -> None:
        carol = world.person("carol")
        rules = [
            {"name": "Review", "approvers": ["alice", "bob"], "required": 1},
            {"name": "Compliance", "approvers": [carol], "required": 1},
        ]
        call_id = world.create(rules)
        world.ok("alice", call_id)
        assert_error(
            world.respond("bob", call_id),
            403,
            "forbidden",
            "bob's approval would not count",
            "already met (Review)",
        )
        status = world.status(call_id)
        assert answered(status) == [("alice", True, "Review")]
        assert world.ok("carol", call_id)["approved"] is True
        # A rejection still counts: bob could have vetoed instead.
        other = world.create(rules)
        world.ok("alice", other)
        assert world.ok("bob", other, approved=False)["approved"] is False


class TestCreateValidation:
    def test_an_unknown_group_is_refused(self, world: World) -> None:
        missing = f"group:missing-{world.tag}"
        for resp in (
            world.post([{"name": "ML lead", "approvers": [missing], "required": 1}]),
            world.post(approvers=[missing]),
        ):
            message = assert_error(resp, 422, "unknown_group", missing, "hlml-approvals groups create")
            assert "no such group" in message

    def test_a_group_name_ignores_case(self, world: World) -> None:
        """As every approver entry: ``group:ML-Équipe`` is ``group:ml-équipe`` (not only in ASCII)."""
        team = world.group("ML-Équipe", "alice")
        for entry in (team, team.casefold(), "GROUP:" + team.removeprefix("group:").upper()):
            call_id = world.create([{"name": "Team", "approvers": [entry]}])
            assert world.status(call_id)["members"] == {team.casefold(): ["alice", "alice@example.com"]}
            assert world.ok("alice", call_id)["approved"] is True

    def test_more_approvals_than_people_is_refused(self, world: World) -> None:
        pair = world.group("pair", "alice", "bob")
        message = assert_error(
            world.post([{"name": "ML lead", "approvers": [pair], "required": 3}]),
            422,
            "validation_error",
            "'ML lead' requires 3 approvals but its approvers are 2 people now",
        )
        assert message.startswith("rule ")
        literal = world.post([{"name": "Review", "approvers": ["alice", "bob"], "required": 3}])
        assert_error(literal, 422, "validation_error", "requires 3 approvals but names only 2 approvers")
        twice = world.post([{"name": "Review", "approvers": ["alice", "Alice ", "bob"], "required": 3}])
        assert_error(twice, 422, "validation_error", "are 2 people now")
        # alice counts once, whether by group, by name or by e-mail address.
        for approvers, required, people in (
            ([pair, "alice"], 3, 2),
            ([pair, "ALICE@example.com"], 3, 2),
            (["alice", "alice@example.com"], 2, 1),
        ):
            mixed = world.post([{"name": "Review", "approvers": approvers, "required": required}])
            assert_error(mixed, 422, "validation_error", f"are {people} people now")
        assert world.post([{"name": "Review", "approvers": [pair], "required": 2}]).status_code == 201

    @pytest.mark.parametrize(
        ("rules", "needle"),
        [
            ([{"name": "Review", "required": 0}], "required: an integer from 1 to 50"),
            ([{"name": "Review", "required": 51}], "required: an integer from 1 to 50"),
            ([{"name": "Review", "required": "2"}], "required: an integer"),
            ([{"name": "Review", "required": True}], "required: an integer"),
            ([{"name": "Review", "quorum": 2}], "unknown keys ['quorum']"),
            ({"name": "Review"}, "a list of rules"),
            ("Review", "a list of rules"),
            ([["Review"]], "a rule is a mapping"),
            ([{"name": ""}], "name: a non-empty string"),
            ([{"required": 1}], "name: a non-empty string"),
            ([{"name": "Review", "approvers": [""]}], "approvers: a list of names"),
            ([{"name": "Review", "approvers": [7]}], "approvers: a list of names"),
            ([{"name": "Review", "veto": "no"}], "veto: true or false"),
            ([{"name": "Review", "source": "dag"}], "source: 'gate' or 'policy'"),
            ([{"name": f"R{i}"} for i in range(21)], "at most 20 rules"),
            ([{"name": "Review\ud800"}], "surrogate"),
            ([{"name": "Review\x00"}], "NUL"),
        ],
        ids=lambda v: repr(v)[:40] if not isinstance(v, str) else None,
    )
    def test_malformed_rules_are_422(self, world: World, rules: Any, needle: str) -> None:
        body = call_body(state=policy_state())
        body["spec"]["state"]["hlml"]["rules"] = rules
        # Sent as ASCII JSON so that a lone surrogate travels as its \\ud800 escape.
        resp = world.agent.post(
            "/function_calls",
            content=json.dumps(body, ensure_ascii=True),
            headers={"Content-Type": "application/json"},
        )
        assert resp.status_code == 422, resp.text
        error = resp.json()["error"]
        assert error["code"] == "validation_error"
        assert needle in error["message"], error["message"]
        assert world.agent.get(f"/function_calls/{body['call_id']}").status_code == 404


class TestMembershipIsFixedAtCreate:
    def test_a_pending_request_keeps_its_members(self, world: World) -> None:
        carol = world.person("carol")
        leads = world.group("ml-leads", "alice", "bob")
        rules = [{"name": "ML lead", "approvers": [leads], "required": 2}]
        call_id = world.create(rules)
        world.remove(leads, "bob")
        world.add(leads, "carol")
        assert world.status(call_id)["members"] == {
            leads.casefold(): ["alice", "alice@example.com", "bob", "bob@example.com"]
        }
        assert_error(
            world.respond("carol", call_id), 403, "forbidden", f"{carol} is not one of the approvers"
        )
        assert world.ok("bob", call_id)["approved"] is None
        done = world.ok("alice", call_id)
        assert done["approved"] is True
        assert progress(done) == [("ML lead", ["bob", "alice"], True)]
        # A request opened after the change sees the group as it is now.
        later = world.create(rules)
        assert world.status(later)["members"] == {
            leads.casefold(): ["alice", "alice@example.com", carol, f"{carol}@example.com"]
        }
        assert_error(world.respond("bob", later), 403, "forbidden", "not one of the approvers")
        world.ok("carol", later)
        assert world.ok("alice", later)["approved"] is True


class TestEscalationToAGroup:
    def test_a_group_recipient_makes_its_members_approvers(self, world: World) -> None:
        carol = world.person("carol")
        owners = world.group("owners", "carol")
        oncall = world.group("oncall", "bob")
        call_id = world.create([{"name": "Owner", "approvers": [owners], "required": 1}])
        assert_error(world.respond("bob", call_id), 403, "forbidden", "not one of the approvers")
        escalation = {
            "escalation_msg": "no answer after 1h",
            "additional_recipients": [{"address": oncall, "field": "cc"}],
        }
        resp = world.agent.post(f"/agent/function_calls/{call_id}/escalate_email", json=escalation)
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"]["extra_approvers"] == ["bob", "bob@example.com"]
        # Membership changed after the escalation does not reach back into it.
        world.add(oncall, "alice")
        assert_error(world.respond("alice", call_id), 403, "forbidden", "not one of the approvers")
        done = world.ok("bob", call_id)
        assert done["approved"] is True
        assert progress(done) == [("Owner", ["bob"], True)]
        escalated = next(e for e in world.audit(call_id) if e["event"] == "escalated")
        assert escalated["comment"] == "no answer after 1h"
        assert escalated["metadata"] == {
            "recipients": [oncall],
            "members": {oncall.casefold(): ["bob", "bob@example.com"]},
        }
        assert carol not in done["extra_approvers"]

    def test_an_unknown_group_recipient_is_refused(self, world: World) -> None:
        call_id = world.create([{"name": "Review", "approvers": ["alice"], "required": 1}])
        escalation = {
            "escalation_msg": "help",
            "additional_recipients": [{"address": f"group:missing-{world.tag}"}],
        }
        resp = world.agent.post(f"/agent/function_calls/{call_id}/escalate_email", json=escalation)
        assert_error(resp, 422, "unknown_group", f"group:missing-{world.tag}")
        assert world.status(call_id)["extra_approvers"] == []
        assert [e["event"] for e in world.audit(call_id)] == ["created"]


class TestUnmodifiedSdk:
    def test_the_sdk_waits_for_the_second_approval(self, world: World, service: ApprovalsService) -> None:
        from humanlayer import HumanLayer
        from humanlayer.core.models import FunctionCallSpec, FunctionCallStatus

        run_id = new_call_id("sdk-rules")
        reviewers = {
            who: HumanLayer(api_key=key, api_base_url=service.base_url, run_id=run_id)
            for who, key in (("alice", service.reviewer_key), ("bob", service.reviewer2_key))
        }
        seen: list[bool | None] = []

        def sleep(_seconds: float) -> None:
            """The SDK's wait between polls: each one lets the next reviewer answer."""
            (call,) = world.agent.get("/function_calls", params={"run_id": run_id}).json()
            seen.append(call["status"]["approved"])
            assert len(seen) <= 2, "the SDK kept polling after the rule was met"
            who = ("alice", "bob")[len(seen) - 1]
            answer = reviewers[who].respond_to_function_call(
                call["call_id"], FunctionCallStatus(approved=True, comment=f"ok from {who}")
            )
            assert answer.status is not None
            assert answer.status.approved is (None if who == "alice" else True)

        agent = HumanLayer(
            api_key=service.agent_key, api_base_url=service.base_url, run_id=run_id, sleep=sleep
        )
        state = policy_state()
        state["hlml"]["rules"] = [{"name": "Two reviewers", "approvers": ["alice", "bob"], "required": 2}]
        completed = agent.fetch_approval(FunctionCallSpec(fn="model_promotion", kwargs={"v": 3}, state=state))
        # The SDK polled again after alice's approval (it read pending) and stopped after bob's.
        assert seen == [None, None]
        result = completed.as_completed()
        assert result.approved is True
        assert result.comment == "ok from bob"
        fetched = agent.get_function_call(completed.call.call_id)
        assert fetched.status is not None
        assert fetched.status.approved is True
        assert fetched.status.responded_at is not None
