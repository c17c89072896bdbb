from __future__ import annotations

import datetime as dt
import re
from html.parser import HTMLParser
from typing import Any

import pytest

from airflow_provider_hlml.plugins import views
from airflow_provider_hlml.plugins.auth import Identity

NOW = dt.datetime.now(dt.timezone.utc)


def _call(status: dict[str, Any] | None = None, **policy: Any) -> dict[str, Any]:
    return {
        "run_id": "r",
        "call_id": "c1",
        "spec": {
            "fn": "model_promotion",
            "kwargs": {
                "subject": "Promote v3",
                "body": "b",
                "context": {"model_version": "3"},
                "urgency": "high",
            },
            "reject_options": [{"name": "retrain", "title": "Retrain"}, {"title": "no name"}],
            "state": {
                "hlml": {
                    "approvers": policy.get("approvers", []),
                    "requester": policy.get("requester"),
                    "allow_self_approval": policy.get("allow_self_approval", False),
                    "airflow": {"dag_id": "churn", "run_id": "manual__1", "task_id": "approve"},
                }
            },
        },
        "status": status,
    }


class TestNormalizeCall:
    @pytest.mark.parametrize(
        ("status", "expected"),
        [
            (None, "pending"),
            ({"requested_at": NOW.isoformat(), "approved": None}, "pending"),
            ({"approved": True}, "approved"),
            ({"approved": False, "comment": "no"}, "rejected"),
            ({"approved": None, "cancelled_at": NOW.isoformat(), "cancel_reason": "timeout"}, "expired"),
            ({"approved": None, "cancelled_at": NOW.isoformat(), "cancel_reason": "killed"}, "cancelled"),
        ],
    )
    def test_status(self, status: dict[str, Any] | None, expected: str) -> None:
        assert views.normalize_call(_call(status), airflow_base_path="")["status"] == expected

    def test_policy_task_link_and_response_time(self) -> None:
        requested = NOW - dt.timedelta(minutes=5)
        item = views.normalize_call(
            _call(
                {
                    "requested_at": requested.isoformat(),
                    "responded_at": NOW.isoformat(),
                    "approved": True,
                    "user_info": {"name": "ann", "email": "ann@example.com", "principal": "ui"},
                },
                approvers=["ann@example.com"],
                requester="bob",
            ),
            airflow_base_path="/airflow",
        )
        assert item["approvers"] == ["ann@example.com"]
        assert item["requester"] == "bob"
        assert item["ti_url"] == "/airflow/dags/churn/runs/manual__1/tasks/approve"
        assert item["response_seconds"] == pytest.approx(300, abs=0.01)
        assert item["responded_by"] == "ann"
        assert item["reject_options"] == [{"name": "retrain", "title": "Retrain", "description": None}]
        assert item["context"] == {"model_version": "3"}

    def test_malformed_state_is_tolerated(self) -> None:
        call = {"call_id": "x", "spec": {"fn": "f", "kwargs": {}, "state": {"hlml": "junk"}}, "status": None}
        item = views.normalize_call(call, airflow_base_path="")
        assert item["approvers"] == []
        assert item["dag_id"] is None
        assert item["subject"] == "f"


class TestDecisionBlockReason:
    def _item(self, **policy: Any) -> dict[str, Any]:
        return views.normalize_call(_call(None, **policy), airflow_base_path="")

    def test_allowed(self) -> None:
        ann = Identity(name="ann", email="ANN@example.com", user_id="ann")
        assert (
            views.decision_block_reason(self._item(approvers=["ann@example.com"]), ann, may_edit_dag=True)
            is None
        )
        assert views.decision_block_reason(self._item(), ann, may_edit_dag=True) is None

    def test_refusals(self) -> None:
        bob = Identity(name="bob", email=None, user_id="bob")
        assert "edit access to DAG churn" in str(
            views.decision_block_reason(self._item(), bob, may_edit_dag=False)
        )
        assert "ann" in str(
            views.decision_block_reason(self._item(approvers=["ann"]), bob, may_edit_dag=True)
        )
        own = self._item(requester="bob")
        assert "self-approval" in str(views.decision_block_reason(own, bob, may_edit_dag=True))
        own_allowed = self._item(requester="bob", allow_self_approval=True)
        assert views.decision_block_reason(own_allowed, bob, may_edit_dag=True) is None
        decided = views.normalize_call(_call({"approved": True}), airflow_base_path="")
        assert views.decision_block_reason(decided, bob, may_edit_dag=True) == "Already approved"


def _item(status: str, seconds: float | None = None, day: int = 0) -> dict[str, Any]:
    responded = (NOW - dt.timedelta(days=day)).isoformat() if status != "pending" else None
    return {
        "status": status,
        "response_seconds": seconds,
        "responded_at": responded,
        "requested_at": (NOW - dt.timedelta(days=day, hours=1)).isoformat(),
        "subject": f"s-{status}",
        "ti_url": None,
        "responded_by": "ann" if responded else None,
    }


class TestFigures:
    def test_computed_without_service_metrics(self) -> None:
        items = [
            _item("approved", 60),
            _item("approved", 180),
            _item("rejected", 120),
            _item("expired"),
            _item("pending"),
        ]
        figures = views.approval_figures(items, None)
        assert figures["pending"] == 1
        assert figures["approval_rate"] == pytest.approx(2 / 3)
        assert figures["median_response_seconds"] == 120
        assert figures["timeout_rate"] == pytest.approx(1 / 4)

    def test_service_metrics_win(self) -> None:
        figures = views.approval_figures([_item("approved", 10)], {"approval_rate": 0.5, "timeout_rate": 0.1})
        assert figures["approval_rate"] == 0.5
        assert figures["timeout_rate"] == 0.1
        assert figures["median_response_seconds"] == 10

    def test_empty(self) -> None:
        figures = views.approval_figures([], None)
        assert figures["approval_rate"] is None
        assert figures["median_response_seconds"] is None

    def test_production_models(self) -> None:
        models = [{"aliases": {"champion": "3"}}, {"aliases": {"challenger": "4"}}, {"aliases": {}}]
        assert views.production_models(models) == 1


class TestSeries:
    def test_daily_counts_bucket_by_response_day(self) -> None:
        items = [
            _item("approved", 1, day=0),
            _item("approved", 1, day=0),
            _item("rejected", 1, day=2),
            _item("expired", None, day=30),
        ]
        # The days are counted back from the items' own "now" (a run across midnight UTC moves
        # the clock's day, not theirs).
        labels, stacks = views.daily_decision_counts(items, days=7, today=NOW.date())
        assert len(labels) == 7
        assert stacks["approved"][-1] == 2
        assert stacks["rejected"][-3] == 1
        assert sum(stacks["expired"]) == 0

    def test_response_time_in_minutes_oldest_first(self) -> None:
        labels, minutes = views.response_time_series(
            [_item("approved", 120, day=0), _item("rejected", 60, day=1)]
        )
        assert minutes == [1.0, 2.0]
        assert len(labels) == 2

    def test_pipeline_durations_per_dag(self) -> None:
        runs = [
            {"dag_id": "a", "duration_seconds": 120.0, "start_date": "2026-01-02T10:00:00"},
            {"dag_id": "b", "duration_seconds": 60.0, "start_date": "2026-01-01T10:00:00"},
            {"dag_id": "a", "duration_seconds": None, "start_date": None},
        ]
        labels, series = views.pipeline_duration_series(runs)
        assert labels == ["01-01 10:00", "01-02 10:00"]
        assert series == {"b": [1.0, None], "a": [None, 2.0]}

    def test_model_metrics_across_versions(self) -> None:
        model = {
            "versions": [
                {"version": "2", "metrics": {"acc": 0.9}},
                {"version": "1", "metrics": {"acc": 0.8, "f1": 0.5}},
            ]
        }
        labels, series = views.model_metric_series(model)
        assert labels == ["v1", "v2"]
        assert series == {"acc": [0.8, 0.9], "f1": [0.5, None]}

    def test_recent_activity_newest_first(self) -> None:
        items = [_item("approved", 5, day=1)]
        runs = [
            {
                "dag_id": "d",
                "run_id": "r",
                "state": "success",
                "end_date": NOW.isoformat(),
                "start_date": None,
                "run_after": None,
                "url": "/dags/d",
            }
        ]
        events = views.recent_activity(items, runs)
        assert [e["kind"] for e in events] == ["dag_run", "approval_approved", "approval_requested"]


class TestEscalationApprovers:
    """An escalation approver decides from the dashboard as the service and the gate allow."""

    async def test_escalation_approver_may_decide_on_the_dashboard(self, approvals_service: Any) -> None:
        import uuid

        import httpx

        from airflow_provider_hlml.gate.events import settled_event
        from airflow_provider_hlml.gate.policy import ApprovalPolicy
        from airflow_provider_hlml.gate.state import GateState
        from airflow_provider_hlml.gate.wire import GateFunctionCall
        from airflow_provider_hlml.plugins.approvals_client import ApprovalsClient

        base = approvals_service.base_url
        agent = {"Authorization": f"Bearer {approvals_service.agent_key}"}
        call_id = f"escalated-{uuid.uuid4().hex}"
        gate = GateState(approvers=("alice@example.com",), requester="dave")
        spec = {"fn": "model_promotion", "kwargs": {"subject": "Promote v3"}, "state": gate.to_state()}
        created = httpx.post(
            f"{base}/function_calls", json={"run_id": "r", "call_id": call_id, "spec": spec}, headers=agent
        )
        created.raise_for_status()
        httpx.post(
            f"{base}/agent/function_calls/{call_id}/escalate_email",
            json={
                "escalation_msg": "Please decide",
                "additional_recipients": [{"address": "boss@example.com"}],
            },
            headers=agent,
        ).raise_for_status()

        client = ApprovalsClient(base, approvals_service.delegate_key)
        item = views.normalize_call(await client.get_call(call_id), airflow_base_path="")
        assert item["extra_approvers"] == ["boss@example.com"]
        boss = Identity(name="Boss", email="boss@example.com", user_id="7")
        carol = Identity(name="carol", email="carol@example.com", user_id="8")
        assert views.decision_block_reason(item, boss, may_edit_dag=True) is None
        assert "boss@example.com" in str(views.decision_block_reason(item, carol, may_edit_dag=True))

        # What the dashboard offers, the service accepts ...
        decided = await client.respond(
            call_id,
            approved=True,
            comment="ok",
            reject_option_name=None,
            requested_at=None,
            user_info=boss.user_info(),
        )
        assert decided["status"]["user_info"]["email"] == "boss@example.com"
        # ... and the gate, still holding its pre-escalation policy, accepts it from the wire.
        call = GateFunctionCall.model_validate(decided)
        event, refused = settled_event(call, ApprovalPolicy.of_gate(gate))
        assert refused is None
        assert event is not None
        assert event["status"] == "approved"
        assert call.status is not None
        call.status.extra_approvers = None
        assert settled_event(call, ApprovalPolicy.of_gate(gate))[1] is not None


def _rules_call(
    answers: list[dict[str, Any]] | None = None, approved: bool | None = None, **extra_status: Any
) -> dict[str, Any]:
    """A request with two rules, a group and a model author, as the approvals service reports it."""
    call = _call({"requested_at": NOW.isoformat(), "approved": approved, **extra_status})
    call["spec"]["state"]["hlml"].update(
        {
            "requester": "dave",
            "rules": [
                {"name": "ML lead", "approvers": ["group:ml-leads"], "required": 2},
                {
                    "name": "Compliance",
                    "approvers": ["carol@example.com"],
                    "required": 1,
                    "source": "policy",
                },
            ],
            "forbid": ["model_author"],
            "forbidden": [{"who": "mallory", "duty": "model_author", "why": "trained this model"}],
        }
    )
    call["status"]["answers"] = answers or []
    call["status"]["members"] = {
        "group:ml-leads": ["alice", "alice@example.com", "bob", "bob@example.com", "mallory"]
    }
    return call


def _answer(name: str, approved: bool = True, rule: str | None = "ML lead", **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "email": f"{name}@example.com",
        "principal": "airflow-ui",
        "via_delegate": True,
        "approved": approved,
        "comment": more.get("comment"),
        "at": more.get("at", NOW.isoformat()),
        "rule": rule,
    }


class TestRuleProgress:
    def test_partial_approval_shows_each_rule_and_who_approved(self) -> None:
        item = views.normalize_call(_rules_call([_answer("alice", comment="lgtm")]), airflow_base_path="")
        assert item["status"] == "pending"
        assert item["has_rules"] is True
        assert [r["summary"] for r in item["rules"]] == ["ML lead 1 of 2: alice", "Compliance 0 of 1"]
        assert item["progress"] == "ML lead 1 of 2: alice; Compliance 0 of 1"
        assert item["approved_by"] == ["alice"]
        lead, compliance = item["rules"]
        assert (lead["count"], lead["required"], lead["met"], lead["source"]) == (1, 2, False, "gate")
        assert lead["eligible"] == [
            "group:ml-leads (alice, alice@example.com, bob, bob@example.com, mallory)"
        ]
        assert (compliance["count"], compliance["source"], compliance["eligible"]) == (
            0,
            "policy",
            ["carol@example.com"],
        )
        assert item["answers"] == [
            {
                "name": "alice",
                "email": "alice@example.com",
                "principal": "airflow-ui",
                "via_delegate": True,
                "approved": True,
                "comment": "lgtm",
                "at": NOW.isoformat(),
                "rule": "ML lead",
                "label": "alice",
            }
        ]
        assert views.recorded_message(item, approved=True) == (
            "Your approval was recorded: ML lead 1 of 2; Compliance 0 of 1"
        )

    def test_block_reasons_follow_the_answers_members_and_duties(self) -> None:
        item = views.normalize_call(_rules_call([_answer("alice")]), airflow_base_path="")

        def reason(name: str, email: str | None = None) -> str | None:
            who = Identity(name=name, email=email, user_id=name)
            return views.decision_block_reason(item, who, may_edit_dag=True)

        assert reason("alice") == "You have already answered; each person counts once"
        # The same person by their e-mail address counts once too.
        assert (
            reason("Alice Smith", "ALICE@example.com") == "You have already answered; each person counts once"
        )
        assert reason("bob") is None  # a member of the group, not yet counted
        assert reason("carol", "carol@example.com") is None
        assert reason("mallory") == "You trained this model (separation of duties)"
        assert reason("dave") == "You triggered this run and self-approval is off for this gate"
        assert reason("eve") == "Only these approvers may decide: group:ml-leads, carol@example.com"

    def test_an_unresolved_group_lists_nobody(self) -> None:
        call = _rules_call()
        call["status"]["members"] = {}
        item = views.normalize_call(call, airflow_base_path="")
        bob = Identity(name="bob", email="bob@example.com", user_id="bob")
        assert "Only these approvers may decide" in str(
            views.decision_block_reason(item, bob, may_edit_dag=True)
        )
        assert item["rules"][0]["eligible"] == ["group:ml-leads"]

    def test_approved_request_lists_everyone_who_approved(self) -> None:
        answers = [_answer("alice"), _answer("bob"), _answer("carol", rule="Compliance")]
        item = views.normalize_call(
            _rules_call(answers, approved=True, user_info={"name": "carol"}), airflow_base_path=""
        )
        assert item["status"] == "approved"
        assert item["approved_by"] == ["alice", "bob", "carol"]
        assert all(r["met"] for r in item["rules"])
        assert item["progress"] == "ML lead 2 of 2: alice, bob; Compliance 1 of 1: carol"
        carol = Identity(name="carol", email="carol@example.com", user_id="carol")
        assert views.decision_block_reason(item, carol, may_edit_dag=True) == "Already approved"

    def test_rejection_without_veto_is_recorded(self) -> None:
        call = _rules_call([_answer("alice", approved=False, rule=None, comment="not yet")])
        call["spec"]["state"]["hlml"]["rules"][0]["veto"] = False
        item = views.normalize_call(call, airflow_base_path="")
        assert item["approved_by"] == []
        assert item["answers"][0]["approved"] is False
        assert item["rules"][0]["veto"] is False
        assert views.recorded_message(item, approved=False) == (
            "Your rejection (it does not veto this request) was recorded: ML lead 0 of 2; Compliance 0 of 1"
        )

    def test_plain_approver_list_is_one_rule_and_a_reported_decision_its_answer(self) -> None:
        item = views.normalize_call(
            _call(
                {"approved": True, "user_info": {"name": "ann", "email": "ann@example.com"}},
                approvers=["ann"],
            ),
            airflow_base_path="",
        )
        assert item["has_rules"] is False
        # A backend without status.answers (the cloud): the reported decider is the one answer.
        assert item["approved_by"] == ["ann"]
        assert [r["summary"] for r in item["rules"]] == ["Approvers 1 of 1: ann"]
        pending = views.normalize_call(_call(None, approvers=["ann"]), airflow_base_path="")
        assert pending["answers"] == []
        assert pending["progress"] == "Approvers 0 of 1"

    def test_malformed_answers_and_members_are_ignored(self) -> None:
        call = _rules_call([_answer("alice"), "junk", {"name": "x", "approved": "yes"}])  # type: ignore[list-item]
        call["status"]["members"] = {"group:ml-leads": "alice", 3: ["x"]}
        item = views.normalize_call(call, airflow_base_path="")
        assert [a["label"] for a in item["answers"]] == ["alice"]
        assert item["members"] == {"3": ["x"]}
        # alice is no member any more (the members were unreadable): her approval counts nowhere.
        assert item["rules"][0]["count"] == 0

    def test_recent_activity_shows_partial_approvals(self) -> None:
        earlier = (NOW - dt.timedelta(minutes=3)).isoformat()
        item = views.normalize_call(_rules_call([_answer("alice", at=earlier)]), airflow_base_path="/af")
        events = views.recent_activity([item], [])
        answered = [e for e in events if e["kind"] == "approval_answered"]
        assert [e["text"] for e in answered] == ["Approval recorded by alice (ML lead): Promote v3"]
        assert answered[0]["at"] == earlier
        assert answered[0]["url"] == "/af/dags/churn/runs/manual__1/tasks/approve"
        decided = views.normalize_call(
            _rules_call(
                [_answer("alice"), _answer("bob"), _answer("carol", rule="Compliance")],
                approved=True,
                responded_at=NOW.isoformat(),
                user_info={"name": "carol"},
            ),
            airflow_base_path="",
        )
        kinds = [e["kind"] for e in views.recent_activity([decided], [])]
        # alice's and bob's approvals were recorded; carol's decided the request.
        assert kinds.count("approval_answered") == 2
        assert kinds.count("approval_approved") == 1


def render_approvals(items: list[dict[str, Any]]) -> str:
    """The Approvals tab with ``items``, rendered as the page route renders it."""
    from airflow_provider_hlml.plugins.routes.deps import templates
    from airflow_provider_hlml.plugins.routes.schemas import BackendStatus

    return (
        templates()
        .get_template("approvals.html")
        .render(
            root="/hlml",
            tab="approvals",
            user=Identity(name="bob", email=None, user_id="bob"),
            refresh_seconds=0,
            airflow_base="",
            items=items,
            filters={"status": "pending", "fn": "", "dag_id": "", "q": ""},
            fns=[],
            dag_ids=[],
            pending_count=len(items),
            backends=BackendStatus.of(None, None),
        )
    )


class TestApprovalsPage:
    """The Approvals tab renders rule progress, answers and the reason to the user, escaped."""

    def _render(self, items: list[dict[str, Any]]) -> str:
        return render_approvals(items)

    def test_rule_lines_answers_and_block_reason(self) -> None:
        item = views.normalize_call(_rules_call([_answer("alice", comment="lgtm")]), airflow_base_path="")
        item["can_decide"] = False
        item["decide_blocked_reason"] = "You have already answered; each person counts once"
        html = self._render([item])
        assert '<span class="progress">ML lead 1 of 2: alice</span>' in html
        assert '<span class="progress">Compliance 0 of 1</span>' in html
        assert "from the approval policy" in html
        assert html.count("from the approval policy") == 1
        assert 'data-progress="ML lead 1 of 2: alice; Compliance 0 of 1"' in html
        assert "<strong>alice</strong> approved (toward ML lead)" in html
        assert ": lgtm" in html
        assert "You have already answered; each person counts once" in html
        assert 'class="decide"' not in html

    def test_second_approver_is_offered_the_buttons(self) -> None:
        item = views.normalize_call(_rules_call([_answer("alice")]), airflow_base_path="")
        item["can_decide"] = True
        item["decide_blocked_reason"] = None
        html = self._render([item])
        assert 'button type="button" class="approve"' in html
        assert "ML lead 1 of 2: alice" in html

    def test_rule_names_and_answers_are_escaped(self) -> None:
        call = _rules_call([_answer("<img src=x onerror=alert(1)>", comment="<script>x</script>")])
        call["spec"]["state"]["hlml"]["rules"][0]["name"] = "<b>lead</b>"
        call["status"]["members"]["group:ml-leads"].append("<img src=x onerror=alert(1)>")
        item = views.normalize_call(call, airflow_base_path="")
        item["can_decide"] = False
        item["decide_blocked_reason"] = "<i>no</i>"
        html = self._render([item])
        assert "<script>x</script>" not in html
        assert "<img src=x" not in html
        assert "<b>lead</b>" not in html
        assert "<i>no</i>" not in html
        assert "&lt;b&gt;lead&lt;/b&gt; 1 of 2: &lt;img src=x onerror=alert(1)&gt;" in html
        assert "&lt;script&gt;x&lt;/script&gt;" in html

    def test_decided_quorum_names_every_approver(self) -> None:
        answers = [_answer("alice"), _answer("bob"), _answer("carol", rule="Compliance")]
        item = views.normalize_call(
            _rules_call(answers, approved=True, user_info={"name": "carol"}), airflow_base_path=""
        )
        html = self._render([item])
        assert "Approved by <strong>alice, bob, carol</strong>" in html
        assert "ML lead 2 of 2: alice, bob" in html

    def test_plain_request_shows_no_rule_section(self) -> None:
        item = views.normalize_call(_call(None, approvers=["ann"]), airflow_base_path="")
        item["can_decide"] = True
        html = self._render([item])
        assert "approvers: ann" in html
        assert 'class="rules"' not in html


class TestQuorumAgainstTheService:
    """What the dashboard shows and offers for a request with rules is what the service enforces."""

    async def test_two_group_members_approve_one_after_the_other(self, approvals_service: Any) -> None:
        import uuid

        import httpx

        from airflow_provider_hlml.approvals import db, store
        from airflow_provider_hlml.gate.state import GateState
        from airflow_provider_hlml.plugins.approvals_client import ApprovalsClient, ApprovalsRequestError

        group = f"leads-{uuid.uuid4().hex[:8]}"
        engine = db.make_engine(approvals_service.database_url, pool_size=1)
        try:
            with db.make_sessionmaker(engine)() as session:
                store.create_group(session, name=group)
                store.add_to_group(session, name=group, principals=["alice", "bob"])
        finally:
            engine.dispose()
        call_id = f"quorum-{uuid.uuid4().hex}"
        state = GateState(requester="dave").to_state()
        state["hlml"]["rules"] = [{"name": "Leads", "approvers": [f"group:{group}"], "required": 2}]
        spec = {"fn": "model_promotion", "kwargs": {"subject": "Promote v4"}, "state": state}
        httpx.post(
            f"{approvals_service.base_url}/function_calls",
            json={"run_id": "r", "call_id": call_id, "spec": spec},
            headers={"Authorization": f"Bearer {approvals_service.agent_key}"},
        ).raise_for_status()

        client = ApprovalsClient(approvals_service.base_url, approvals_service.delegate_key)
        alice = Identity(name="alice", email="alice@example.com", user_id="1")
        bob = Identity(name="bob", email="bob@example.com", user_id="2")
        item = views.normalize_call(await client.get_call(call_id), airflow_base_path="")
        assert item["progress"] == "Leads 0 of 2"
        assert views.decision_block_reason(item, alice, may_edit_dag=True) is None

        partial = await client.respond(
            call_id,
            approved=True,
            comment="first",
            reject_option_name=None,
            requested_at=None,
            user_info=alice.user_info(),
        )
        item = views.normalize_call(partial, airflow_base_path="")
        assert item["status"] == "pending"
        assert item["progress"] == "Leads 1 of 2: alice"
        # The service's own account of the rules agrees with the dashboard's.
        assert [(r["name"], r["approved_by"], r["met"]) for r in partial["status"]["rules"]] == [
            (r["name"], r["approved_by"], r["met"]) for r in item["rules"]
        ]
        assert views.recorded_message(item, approved=True) == "Your approval was recorded: Leads 1 of 2"
        # The dashboard refuses alice a second time, and so does the service.
        assert views.decision_block_reason(item, alice, may_edit_dag=True) == (
            "You have already answered; each person counts once"
        )
        with pytest.raises(ApprovalsRequestError) as refused:
            await client.respond(
                call_id,
                approved=True,
                comment=None,
                reject_option_name=None,
                requested_at=None,
                user_info=alice.user_info(),
            )
        assert refused.value.status_code == 403
        assert views.decision_block_reason(item, bob, may_edit_dag=True) is None

        done = await client.respond(
            call_id,
            approved=True,
            comment="second",
            reject_option_name=None,
            requested_at=None,
            user_info=bob.user_info(),
        )
        item = views.normalize_call(done, airflow_base_path="")
        assert item["status"] == "approved"
        assert item["approved_by"] == ["alice", "bob"]
        assert item["progress"] == "Leads 2 of 2: alice, bob"


# ----------------------------------------------------------------------------- the reviewer's card

REPORT_CONTEXT: dict[str, Any] = {
    "model_name": "churn_predictor",
    "model_version": "4",
    "mlflow_run_id": "run4",
    "validation_run_id": "runval",
    "champion_version": "3",
    "passed": False,
    "metrics": {
        "accuracy": {
            "candidate": 0.912,
            "champion": 0.9,
            "threshold": {"threshold": 0.85, "greater_is_better": True},
            "passed": True,
            "reason": "passed",
        },
        "log_loss": {
            "candidate": 0.33,
            "champion": 0.3,
            "threshold": {"threshold": 0.5, "greater_is_better": False},
            "passed": True,
            "reason": "passed",
        },
        "latency_ms": {
            "candidate": 40.0,
            "champion": 50.0,
            "threshold": {"threshold": 45, "greater_is_better": False},
            "passed": True,
            "reason": "passed",
        },
        "recall": {
            "candidate": 0.7,
            "champion": 0.7,
            "threshold": {"threshold": 0.75},
            "passed": False,
            "reason": "0.7 < 0.75",
        },
    },
    "dataset_rows": 4000,
}
MODEL_REJECT_OPTIONS = [
    {"name": "needs_retraining", "title": "Needs retraining"},
    {"name": "data_issue", "title": "Data issue"},
    {"name": "not_now", "title": "Not now"},
]


def _card_item(
    context: dict[str, Any],
    *,
    body: str = "A body.",
    status: dict[str, Any] | None = None,
    links: Any = None,
) -> dict[str, Any]:
    """A normalized request with its reviewer's card, as the Approvals tab gets it (by default
    with the links of a dashboard whose MLflow confirmed nothing: Airflow links only)."""
    from airflow_provider_hlml.plugins.card_links import DashboardLinks, card_for

    links = links if links is not None else DashboardLinks("/af")

    call = _call(status)
    call["spec"]["kwargs"].update(body=body, context=context)
    call["spec"]["reject_options"] = MODEL_REJECT_OPTIONS
    item = views.normalize_call(call, airflow_base_path="/af")
    views.attach_card(item, card_for(call, links))
    item["can_decide"] = item["status"] == "pending"
    item["decide_blocked_reason"] = None
    return item


def _article(html: str, call_id: str = "c1") -> str:
    start = html.index(f'data-call-id="{call_id}"')
    return html[start : html.index("</article>", start)]


class _Tags(HTMLParser):
    """Every start tag of a page with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(html)
    return parser.tags


class TestReviewerCardPage:
    """The Approvals tab lays out the reviewer's card: Markdown body, model, links, metrics."""

    def test_markdown_body_is_rendered(self) -> None:
        item = _card_item(
            REPORT_CONTEXT, body="Promote `churn_predictor` v4: **better** on accuracy.\n\n- one\n- two"
        )
        card = _article(render_approvals([item]))
        assert (
            '<div class="body markdown"><p>Promote <code>churn_predictor</code> v4: '
            "<strong>better</strong> on accuracy.</p>" in card
        )
        assert "<li>one</li>" in card
        assert item["body_html"].startswith("<p>Promote <code>churn_predictor</code>")

    def test_hostile_markdown_and_html_in_the_body_are_inert(self) -> None:
        body = (
            "<script>alert('x')</script>\n\n"
            "[click me](javascript:alert(document.cookie)) [data](data:text/html,<b>x</b>)\n\n"
            "<img src=x onerror=alert(1)> ![pic](https://example.com/p.png)\n\n"
            '<a href="javascript:alert(2)" onclick="alert(3)">raw</a>\n\n'
            "[fine](https://example.com/docs)"
        )
        html = render_approvals([_card_item(REPORT_CONTEXT, body=body)])
        card = _article(html)
        tags = _tags(card)
        assert not [t for t, _ in tags if t in ("script", "img", "iframe", "object", "svg")]
        assert not [(t, a) for t, a in tags if any(name.startswith("on") for name in a)]
        hrefs = [a.get("href") for t, a in tags if t == "a"]
        assert all(h and h.startswith(("https://", "/", "http://")) for h in hrefs), hrefs
        assert "https://example.com/docs" in hrefs
        assert '<a href="https://example.com/docs" rel="noopener noreferrer nofollow">fine</a>' in card
        # The hostile markup is shown as text.
        assert "&lt;script&gt;" in card
        assert "&lt;img src=x onerror=alert(1)&gt;" in card
        # The page's only script is the dashboard's own.
        assert [a.get("src") for t, a in _tags(html) if t == "script"] == ["/hlml/static/dashboard.js"]

    def test_hostile_values_outside_the_body_are_escaped(self) -> None:
        context = {
            **REPORT_CONTEXT,
            "model_name": "<img src=x onerror=alert(1)>",
            "metrics": {"<b>acc</b>": {"candidate": 0.9, "champion": 0.8, "passed": True}},
        }
        card = _article(render_approvals([_card_item(context, body="**ok**")]))
        assert "<img" not in card
        assert "<b>acc</b>" not in card
        assert "&lt;b&gt;acc&lt;/b&gt;" in card
        assert "&lt;img src=x onerror=alert(1)&gt;" in card

    def test_only_the_card_body_is_marked_safe_in_the_templates(self) -> None:
        from airflow_provider_hlml.plugins.routes.deps import TEMPLATES_DIR

        marked = {
            path.name: re.findall(r"\{\{[^}]*\|\s*safe\b[^}]*\}\}", path.read_text())
            for path in TEMPLATES_DIR.glob("*.html")
        }
        assert {name: found for name, found in marked.items() if found} == {
            "approvals.html": ["{{ c.body_html|safe }}"]
        }

    def test_metrics_against_the_champion_with_the_difference(self) -> None:
        item = _card_item(REPORT_CONTEXT)
        card = _article(render_approvals([item]))
        delta_cells = r'data-metric="([^"]+)">.*?<td class="num (delta [a-z]+)"[^>]*>([^<]*)</td>'
        rows = {name: (cls, text) for name, cls, text in re.findall(delta_cells, card, re.S)}
        assert rows == {
            "accuracy": ("delta better", "+0.012 (+1.3%)"),
            # Lower is better: a higher candidate is worse, a lower one better.
            "log_loss": ("delta worse", "+0.03 (+10.0%)"),
            "latency_ms": ("delta better", "-10 (-20.0%)"),
            "recall": ("delta same", "+0 (+0.0%)"),
        }
        assert '<td class="rule">&lt;= 0.5</td>' in card
        assert '<td class="rule">&gt;= 0.85</td>' in card
        assert '<div class="muted reason">0.7 &lt; 0.75</div>' in card
        assert '<tr class="fail" data-metric="recall">' in card
        assert "<th>Candidate</th><th>Champion</th><th>Difference</th><th>Rule</th><th>Result</th>" in card
        assert 'Validation report <span class="pill rejected">failed</span>' in card
        # The rest of the context stays in the generic table; the report is not shown twice.
        assert "<tr><th>dataset_rows</th><td>4000</td></tr>" in card
        assert card.count("data-metric=") == 4
        assert "No champion yet" not in card
        assert [(m["name"], m["delta_text"], m["better"]) for m in item["metrics"]] == [
            ("accuracy", "+0.012 (+1.3%)", True),
            ("log_loss", "+0.03 (+10.0%)", False),
            ("latency_ms", "-10 (-20.0%)", True),
            ("recall", "+0 (+0.0%)", None),
        ]

    def test_first_version_says_there_is_no_champion_yet(self) -> None:
        context = {
            **REPORT_CONTEXT,
            "champion_version": None,
            "passed": True,
            "metrics": {
                "accuracy": {
                    "candidate": 0.91,
                    "champion": None,
                    "threshold": {"threshold": 0.85},
                    "passed": True,
                    "reason": "no champion",
                }
            },
        }
        item = _card_item(context)
        card = _article(render_approvals([item]))
        assert (
            '<p class="no-champion">No champion yet: this would be the first version under '
            "<code>@champion</code>.</p>" in card
        )
        assert '<td class="num delta none" title="higher is better">-</td>' in card
        assert '<td class="num champion">-</td>' in card
        assert item["no_champion"] is True
        assert 'data-kind="champion_version"' not in card

    def test_model_summary_and_links(self) -> None:
        from airflow_provider_hlml.plugins.card_links import DashboardLinks, Lookups
        from airflow_provider_hlml.plugins.mlflow_client import MLflowTarget

        links = DashboardLinks(
            "/af",
            MLflowTarget(tracking_uri="http://t", ui_url="http://mlflow.example"),
            Lookups(
                experiments={"run4": "2", "run3": "2", "runval": "5"},
                versions={("churn_predictor", "4"): "run4", ("churn_predictor", "3"): "run3"},
            ),
        )
        card = _article(render_approvals([_card_item(REPORT_CONTEXT, links=links)]))
        anchor = r'<li data-kind="([a-z_]+)"><a href="([^"]+)" target="([^"]+)"'
        anchors = {
            kind: (href.replace("&amp;", "&"), target) for kind, href, target in re.findall(anchor, card)
        }
        assert {kind: href for kind, (href, _target) in anchors.items()} == {
            "mlflow_run": "http://mlflow.example/#/experiments/2/runs/run4",
            "model_version": "http://mlflow.example/#/models/churn_predictor/versions/4",
            "champion_version": "http://mlflow.example/#/models/churn_predictor/versions/3",
            "compare": "http://mlflow.example/#/compare-runs?runs=%5B%22run4%22%2C%20%22run3%22%5D"
            "&experiments=%5B%222%22%5D",
            "validation_run": "http://mlflow.example/#/experiments/5/runs/runval",
            "airflow_task": "/af/dags/churn/runs/manual__1/tasks/approve",
            "airflow_dag_run": "/af/dags/churn/runs/manual__1",
        }
        # MLflow opens in a new tab; Airflow pages in the Airflow window around the dashboard.
        assert {kind for kind, (_href, target) in anchors.items() if target == "_top"} == {
            "airflow_task",
            "airflow_dag_run",
        }
        assert {target for _href, target in anchors.values()} == {"_top", "_blank"}
        assert "<dt>Model</dt><dd>churn_predictor <strong>v4</strong></dd>" in card
        assert "<dt>Champion</dt><dd>v3</dd>" in card

    def test_links_mlflow_cannot_confirm_are_text(self) -> None:
        card = _article(render_approvals([_card_item(REPORT_CONTEXT)]))
        assert '<li data-kind="mlflow_run"><span class="card-link">MLflow run</span></li>' in card
        assert "http://" not in card

    def test_decided_card_names_the_reject_reason_by_its_title(self) -> None:
        status = {
            "requested_at": (NOW - dt.timedelta(minutes=5)).isoformat(),
            "responded_at": NOW.isoformat(),
            "approved": False,
            "comment": "accuracy is not enough",
            "reject_option_name": "needs_retraining",
            "user_info": {"name": "ann"},
        }
        item = _card_item(REPORT_CONTEXT, status=status)
        card = _article(render_approvals([item]))
        assert (
            '· reason: <strong class="reject-reason" data-option="needs_retraining">Needs retraining</strong>'
            in card
        )
        assert "<blockquote>accuracy is not enough</blockquote>" in card
        assert 'class="decide"' not in card
        assert item["reject_option_title"] == "Needs retraining"
        events = views.recent_activity([item], [])
        assert [e["text"] for e in events if e["kind"] == "approval_rejected"] == [
            "Rejected by ann (Needs retraining): Promote v3"
        ]

    def test_pending_card_offers_the_reject_reasons(self) -> None:
        card = _article(render_approvals([_card_item(REPORT_CONTEXT)]))
        assert re.findall(r'<option value="([a-z_]+)" title="">([^<]+)</option>', card) == [
            ("needs_retraining", "Needs retraining"),
            ("data_issue", "Data issue"),
            ("not_now", "Not now"),
        ]

    def test_a_request_without_a_report_keeps_its_plain_layout(self) -> None:
        item = _card_item({"metrics": {"accuracy": 0.91}, "note": "retrained on March data"}, body="Plain")
        card = _article(render_approvals([item]))
        assert '<tr data-metric="accuracy"><th>accuracy</th><td>0.91</td></tr>' in card
        assert "Difference" not in card
        assert "<tr><th>note</th><td>retrained on March data</td></tr>" in card
        assert item["has_report"] is False
        assert item["no_champion"] is False

    def test_metric_checks_without_a_champion_version_key_are_still_a_report(self) -> None:
        context = {key: value for key, value in REPORT_CONTEXT.items() if key != "champion_version"}
        item = _card_item(context)
        card = _article(render_approvals([item]))
        assert item["has_report"] is False
        assert "<h4>Validation report" in card
        assert '<td class="num delta better" title="higher is better">+0.012 (+1.3%)</td>' in card
        assert "No champion yet" not in card

    def test_json_item_carries_the_card(self) -> None:
        from airflow_provider_hlml.plugins.routes.schemas import ApprovalItem

        item = _card_item(REPORT_CONTEXT, body="Use `v4`")
        body = ApprovalItem(**item).model_dump()
        assert body["body_html"] == "<p>Use <code>v4</code></p>\n"
        assert body["has_report"] is True
        assert body["no_champion"] is False
        assert body["model"]["champion_version"] == "3"
        assert body["metrics"][0] == {
            "name": "accuracy",
            "candidate": 0.912,
            "champion": 0.9,
            "delta": pytest.approx(0.012),
            "delta_relative": pytest.approx(0.012 / 0.9),
            "delta_text": "+0.012 (+1.3%)",
            "better": True,
            "greater_is_better": True,
            "direction": "higher is better",
            "rule": ">= 0.85",
            "passed": True,
            "reason": "passed",
        }
        assert [(lk["kind"], lk["url"]) for lk in body["links"]][-2:] == [
            ("airflow_task", "/af/dags/churn/runs/manual__1/tasks/approve"),
            ("airflow_dag_run", "/af/dags/churn/runs/manual__1"),
        ]
        assert "card" not in body
        assert "call" not in body


class TestGuardedAliases:
    """The dashboard's protected-alias rows: verified here with the service's keys, the guard's tag
    adding reverts and standing in without keys."""

    @pytest.fixture
    def signer(self) -> tuple[Any, Any]:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from airflow_provider_hlml.gate.attestation import KeySet, PublicKey, key_id_of, sign_statement

        private = Ed25519PrivateKey.generate()
        private_raw = private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        public_raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        key_id = key_id_of(public_raw)

        def sign(version: str) -> str:
            statement = {
                "type": "hlml.approval/v1",
                "call_id": f"call-{version}",
                "decision": "approved",
                "decided_at": "2025-01-01T00:00:00+00:00",
                "approvers": [{"name": "alice", "email": "alice@example.com", "rule": None}],
                "model": {
                    "name": "churn",
                    "version": version,
                    "run_id": f"run{version}",
                    "source": f"src{version}",
                },
            }
            return sign_statement(statement, private_raw=private_raw, key_id=key_id)

        return sign, KeySet.pinned(PublicKey(key_id=key_id, public_raw=public_raw))

    @staticmethod
    def _model(
        holder: str, tags: dict[str, dict[str, str]], model_tags: dict[str, str] | None = None
    ) -> dict[str, Any]:
        return {
            "name": "churn",
            "url": "http://mlflow/#/models/churn",
            "aliases": {"champion": holder, "staging": "1"},
            "tags": model_tags or {},
            "versions": [
                {
                    "version": v,
                    "run_id": f"run{v}",
                    "source": f"src{v}",
                    "tags": tags.get(v, {}),
                    "url": f"u{v}",
                }
                for v in ("3", "2", "1")
            ],
        }

    def test_verified_unverified_and_copied(self, signer: tuple[Any, Any]) -> None:
        from airflow_provider_hlml import audit

        sign, keys = signer
        protected = {"*": ("champion",)}
        (row,) = views.guarded_aliases(
            [self._model("2", {"2": {audit.ATTESTATION: sign("2")}})], protected, keys
        )
        assert row["status"] == "verified"
        assert row["approvers"] == ["alice"]
        assert row["call_id"] == "call-2"
        assert row["key_id"] in keys.keys
        (row,) = views.guarded_aliases([self._model("3", {})], protected, keys)
        assert row["status"] == "unverified"
        assert "carries no approval attestation" in row["reason"]
        (row,) = views.guarded_aliases(
            [self._model("3", {"3": {audit.ATTESTATION: sign("2")}})], protected, keys
        )
        assert row["status"] == "unverified"
        assert "names version '2', not '3'" in row["reason"]

    def test_the_guard_tag_adds_a_revert_and_stands_in_without_keys(self, signer: tuple[Any, Any]) -> None:
        import json

        from airflow_provider_hlml import audit

        sign, keys = signer
        state = {
            "verdict": "reverted",
            "version": "3",
            "reverted_from": "3",
            "reverted_to": "1",
            "reason": "churn v3 (@champion) carries no approval attestation",
            "approvers": ["alice"],
            "call_id": "call-1",
            "key_id": "k",
            "at": "2025-01-01T00:00:00+00:00",
            "source": "webhook",
        }
        model = self._model(
            "1", {"1": {audit.ATTESTATION: sign("1")}}, {audit.guard_state_tag("champion"): json.dumps(state)}
        )
        (row,) = views.guarded_aliases([model], {"*": ("champion",)}, keys)
        assert row["status"] == "reverted"
        assert row["reverted_from"] == "3"
        assert row["call_id"] == "call-1"
        (row,) = views.guarded_aliases([model], {"*": ("champion",)}, None)
        assert row["status"] == "reverted"
        assert row["source"] == "webhook"
        # The holder moved since the guard last looked, and nothing can verify it here.
        model["aliases"]["champion"] = "2"
        (row,) = views.guarded_aliases([model], {"*": ("champion",)}, None)
        assert row["status"] == "unchecked"
        # Unprotected or unset aliases have no row.
        assert views.guarded_aliases([model], {"*": ("prod",)}, keys) == []
        assert views.guarded_aliases([model], {"churn": ()}, keys) == []

    def test_rendered_escaped_on_the_experiments_page(self) -> None:
        from airflow_provider_hlml.plugins.routes.deps import templates
        from airflow_provider_hlml.plugins.routes.schemas import BackendStatus

        html = (
            templates()
            .get_template("experiments.html")
            .render(
                root="/hlml",
                tab="experiments",
                user=Identity(name="bob", email=None, user_id="bob"),
                refresh_seconds=0,
                airflow_base="",
                backends=BackendStatus.of(None, None),
                mlflow_ui_url=None,
                guarded_aliases=[
                    {
                        "model": "<script>x</script>",
                        "alias": "champion",
                        "version": "3",
                        "url": "javascript:alert(1)",
                        "status": "unverified",
                        "reason": "<b>bad</b>",
                        "approvers": [],
                        "call_id": None,
                        "key_id": None,
                        "reverted_from": None,
                        "checked_at": None,
                        "source": None,
                    }
                ],
                models=[],
                experiments=[],
                pipeline_runs=[],
            )
        )
        assert "<script>x</script>" not in html
        assert "&lt;script&gt;" in html
        assert "javascript:" not in html
        assert "&lt;b&gt;bad" in html


POLICY = "policy:champion-margin-v1"


def _decided_call(
    approved: bool | None,
    user_info: dict[str, Any] | None,
    *,
    day: int = 0,
    approval_type: str = "model_promotion",
    call_id: str = "c",
) -> dict[str, Any]:
    """A decided function call as the approvals service returns it
    (``approvals/api/serialize.py``: ``function_call_body``)."""
    requested = NOW - dt.timedelta(days=day, minutes=10)
    responded = NOW - dt.timedelta(days=day)
    answers = (
        [{**user_info, "approved": approved, "comment": "why", "at": responded.isoformat(), "rule": None}]
        if user_info is not None and approved is not None
        else []
    )
    return {
        "run_id": "airflow-season",
        "call_id": call_id,
        "spec": {
            "fn": approval_type,
            "kwargs": {
                "subject": "Promote season v4",
                "body": "b",
                "context": {"model_version": "4", "decision": {"outcome": "auto_approve"}},
                "approval_type": approval_type,
                "urgency": "high",
            },
            "state": {
                "hlml": {"approvers": [], "airflow": {"dag_id": "season", "run_id": "r", "task_id": "g"}}
            },
        },
        "status": {
            "requested_at": requested.isoformat(),
            "responded_at": responded.isoformat() if approved is not None else None,
            "approved": approved,
            "comment": "why" if approved is not None else None,
            "reject_option_name": None,
            "slack_message_ts": None,
            "answers": answers,
            "rules": [],
            "members": {},
            "user_info": user_info,
            "extra_approvers": [],
            "cancelled_at": None,
            "cancel_reason": None,
        },
    }


def _policy_user(principal: str = POLICY) -> dict[str, Any]:
    """``user_info`` of a decision the service recorded for a decision policy."""
    return {"name": principal, "email": None, "principal": principal, "via_delegate": False}


#: A person deciding on the dashboard (through its delegate key) and with their own reviewer key.
DASHBOARD_USER = {
    "name": "alice",
    "email": "alice@example.com",
    "principal": "dashboard",
    "via_delegate": True,
}
REVIEWER_KEY_USER = {"name": "bob", "email": "bob@example.com", "principal": "bob", "via_delegate": False}


def _normalized(*calls: dict[str, Any]) -> list[dict[str, Any]]:
    return [views.normalize_call(call, airflow_base_path="") for call in calls]


class TestDecisionSource:
    def test_a_policy_principal_decided_it(self) -> None:
        approved, rejected = _normalized(
            _decided_call(True, _policy_user()), _decided_call(False, _policy_user("policy:strict-v3"))
        )
        assert approved["decided_by_policy"] is True
        assert approved["responded_by"] == POLICY
        assert views.decision_source(approved) == "auto_approved"
        assert rejected["decided_by_policy"] is True
        assert views.decision_source(rejected) == "auto_rejected"

    def test_a_person_decided_it(self) -> None:
        for user in (DASHBOARD_USER, REVIEWER_KEY_USER, {"name": "Policy Team", "principal": "policy-bot"}):
            (item,) = _normalized(_decided_call(False, user))
            assert item["decided_by_policy"] is False, user
            assert views.decision_source(item) == "human", user

    def test_the_principal_or_the_name_names_the_policy(self) -> None:
        # A backend that reports only the name (or only the principal) of who decided.
        assert views.decided_by_policy({"name": POLICY})
        assert views.decided_by_policy({"principal": " Policy:Champion-Margin-v1"})
        assert not views.decided_by_policy({"name": "alice", "principal": "dashboard"})
        assert not views.decided_by_policy(None)

    def test_only_decided_model_decisions_count(self) -> None:
        pending, code, expired = _normalized(
            _decided_call(None, None),
            _decided_call(True, REVIEWER_KEY_USER, approval_type="code_execution"),
            {
                **_decided_call(None, None),
                "status": {"approved": None, "cancelled_at": NOW.isoformat(), "cancel_reason": "timeout"},
            },
        )
        assert [views.decision_source(i) for i in (pending, code, expired)] == [None, None, None]
        # A policy's decision is a model decision whatever the gate's approval type.
        (custom,) = _normalized(_decided_call(True, _policy_user(), approval_type="custom"))
        assert views.decision_source(custom) == "auto_approved"

    def test_a_pending_request_is_not_decided_by_policy(self) -> None:
        # No decision yet, whatever user_info a backend reports.
        (item,) = _normalized(_decided_call(None, _policy_user()))
        assert item["status"] == "pending"
        assert item["decided_by_policy"] is False


class TestModelDecisionSeries:
    def _items(self) -> list[dict[str, Any]]:
        return _normalized(
            _decided_call(True, _policy_user(), day=0, call_id="a"),
            _decided_call(True, _policy_user(), day=0, call_id="b"),
            _decided_call(False, _policy_user(), day=0, call_id="c"),
            _decided_call(True, DASHBOARD_USER, day=0, call_id="d"),
            _decided_call(False, REVIEWER_KEY_USER, day=2, call_id="e"),
            _decided_call(True, REVIEWER_KEY_USER, day=30, call_id="old"),  # outside the window
            _decided_call(True, REVIEWER_KEY_USER, day=0, approval_type="code_execution", call_id="x"),
            _decided_call(None, None, call_id="pending"),
        )

    def test_counts_and_rates_per_day_and_over_the_window(self) -> None:
        series = views.daily_model_decisions(self._items(), days=7, today=NOW.date())
        assert series["days"] == 7
        assert series["labels"] == views.daily_decision_counts([], days=7, today=NOW.date())[0]
        assert series["series"]["auto_approved"] == [0, 0, 0, 0, 0, 0, 2]
        assert series["series"]["auto_rejected"] == [0, 0, 0, 0, 0, 0, 1]
        assert series["series"]["human"] == [0, 0, 0, 0, 1, 0, 1]
        assert series["human_rate"] == [None, None, None, None, 1.0, None, pytest.approx(1 / 4)]
        assert series["totals"] == {"auto_approved": 2, "auto_rejected": 1, "human": 2}
        assert series["human_intervention_rate"] == pytest.approx(2 / 5)

    def test_same_window_as_the_daily_decisions(self) -> None:
        items = self._items()
        _, stacks = views.daily_decision_counts(items, days=7, today=NOW.date())
        series = views.daily_model_decisions(items, days=7, today=NOW.date())
        # Every model decision counted is in the window's approved / rejected stacks.
        model = [sum(day) for day in zip(*series["series"].values(), strict=True)]
        decided = [a + r for a, r in zip(stacks["approved"], stacks["rejected"], strict=True)]
        assert all(m <= d for m, d in zip(model, decided, strict=True))
        assert sum(decided) - sum(model) == 1  # the code-execution approval

    def test_nothing_decided(self) -> None:
        series = views.daily_model_decisions([], days=3, today=NOW.date())
        assert series["human_rate"] == [None, None, None]
        assert series["human_intervention_rate"] is None
        assert series["totals"] == {"auto_approved": 0, "auto_rejected": 0, "human": 0}

    def test_the_overview_figures(self) -> None:
        figures = views.approval_figures(self._items(), None)
        assert {k: figures[k] for k in ("auto_approved", "auto_rejected", "human_decided")} == {
            "auto_approved": 2,
            "auto_rejected": 1,
            "human_decided": 3,  # the old decision counts: the figure is over every listed request
        }
        assert figures["model_decisions"] == 6
        assert figures["human_intervention_rate"] == pytest.approx(3 / 6)
        assert views.approval_figures([], None)["human_intervention_rate"] is None

    def test_the_json_schema_takes_it(self) -> None:
        from airflow_provider_hlml.plugins.routes.schemas import ModelDecisions

        series = views.daily_model_decisions(self._items(), days=7, today=NOW.date())
        parsed = ModelDecisions.model_validate(series)
        assert parsed.totals.human == 2
        assert parsed.human_rate[-1] == pytest.approx(0.25)


class TestDecisionPages:
    """The Analytics and Overview templates show the model decisions and the human-intervention rate."""

    def _render(self, template: str, **context: Any) -> str:
        from airflow_provider_hlml.plugins.routes.deps import templates

        return templates().get_template(template).render(root="", tab="x", user=None, **context)

    def test_analytics(self) -> None:
        series = views.daily_model_decisions(TestModelDecisionSeries()._items(), days=7, today=NOW.date())
        html = self._render(
            "analytics.html",
            response_minutes={"labels": [], "series": {}},
            daily_decisions={"labels": [], "series": {}},
            model_decisions=series,
            pipeline_duration_minutes={"labels": [], "series": {}},
            model_metrics=[],
        )
        panel = html.split('data-panel="model_decisions"')[1].split("</section>")[0]
        assert "2 auto-approved · 1 auto-rejected by a decision policy · 2 decided by a person" in panel
        assert "<title>auto-approved: 2</title>" in panel
        assert "<title>by a person: 1</title>" in panel
        rate = html.split('data-panel="human_intervention"')[1].split("</section>")[0]
        assert '<strong data-figure="human_intervention_rate">40%</strong>' in rate
        assert "<title>decided by a person: 25%</title>" in rate
        assert ">100%</text>" in rate  # a share's axis

    def test_overview(self) -> None:
        from airflow_provider_hlml.plugins.airflow_data import pipeline_figures

        def run(gate: str | None, promote: str | None) -> dict[str, Any]:
            return {
                "state": "success",
                "duration_seconds": 60.0,
                "gates": [{"state": gate}] if gate else [],
                "promotions": [{"state": promote}] if promote else [],
            }

        runs = [run("success", "success"), run("success", "success"), run("failed", None), run(None, None)]
        figures = {
            **views.approval_figures(TestModelDecisionSeries()._items(), None),
            **pipeline_figures(runs),
            "production_models": 1,
            "registered_models": 2,
        }
        assert "human_intervention_rate" not in pipeline_figures(runs)  # who decided is not in a run
        html = self._render("overview.html", figures=figures, recent_activity=[])
        card = html.split('data-figure="human_intervention_rate"')[1].split("</a>")[0]
        assert '<div class="num">50%</div>' in card
        assert "3 of 6 model decisions by a person · 2 auto-approved · 1 auto-rejected" in card
        assert "of 4 finished pipeline runs · 75% reached a gate" in html  # the runs' figures
