"""The dashboard's HTTP API on a real ``airflow api-server`` with SimpleAuthManager users.

Every route must refuse anonymous callers; deciding needs DAG edit access and being an approver
of the gate; a decision lands on the embedded approvals service with the user's identity.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.dashboard_stack import (
    DashboardServer,
    dashboard_routes,
    gate_dag_source,
    start_dashboard_server,
)
from tests.fixtures.airflow_stack import MetadataDatabases
from tests.fixtures.processes import free_port
from tests.fixtures.smtp import SmtpServer

pytestmark = pytest.mark.integration

DAG_ID = "hlml_dashboard_gate"
VALIDATION_CONTEXT = {
    "model_name": "churn-model",
    "model_version": "3",
    "mlflow_run_id": "0123456789abcdef",
    "passed": True,
    "metrics": {
        "accuracy": {"candidate": 0.912, "champion": 0.887, "threshold": 0.8, "passed": True, "reason": None},
        "f1_score": {
            "candidate": 0.71,
            "champion": 0.74,
            "threshold": 0.7,
            "passed": False,
            "reason": "below",
        },
    },
}


@pytest.fixture(scope="module")
def server(metadata_databases: MetadataDatabases, smtp_server: SmtpServer) -> Iterator[DashboardServer]:
    workdir = Path(tempfile.mkdtemp(prefix="hlml-dashboard-api-"))
    (workdir / "dags").mkdir()
    (workdir / "dags" / "gate_dag.py").write_text(gate_dag_source(DAG_ID))
    sqlite_db = metadata_databases.sqlite(workdir / "airflow.db")
    # MLflow is pointed at a closed port: the pages must still work and say so.
    dead_mlflow = f'{{"conn_type": "mlflow", "host": "http://127.0.0.1:{free_port()}"}}'
    # The embedded approvals service e-mails requests to approvers named by address (the test
    # users have none, so only requests naming an address have deliveries); a notice the mail
    # server refuses is tried twice, then failed.
    delivery = {
        "HLML_APPROVALS_SMTP_URL": smtp_server.url,
        "HLML_APPROVALS_SMTP_FROM": "approvals@example.com",
        "HLML_APPROVALS_DELIVERY_INTERVAL": "0.2",
        "HLML_APPROVALS_DELIVERY_ATTEMPTS": "2",
    }
    srv = start_dashboard_server(
        workdir, sqlite_db, extra_env={"AIRFLOW_CONN_MLFLOW_DEFAULT": dead_mlflow, **delivery}
    )
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _pending(server: DashboardServer, **kwargs: object) -> str:
    call_id = f"test-{uuid.uuid4().hex[:10]}"
    server.create_gate_request(call_id=call_id, dag_id=DAG_ID, **kwargs)  # type: ignore[arg-type]
    return call_id


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "dashboard.css", path)


class TestAuthentication:
    def test_every_route_refuses_anonymous_and_forged_callers(self, server: DashboardServer) -> None:
        routes = dashboard_routes()
        paths = {r.path for r in routes}
        # The test must see the whole app: pages, JSON API, static files and the OpenAPI document.
        assert {
            "/",
            "/approvals",
            "/api/overview",
            "/api/approvals/{call_id}/decision",
            "/openapi.json",
        } <= paths
        checked = 0
        for route in routes:
            for method in sorted(route.methods or ()):
                url = f"{server.url}/hlml{_concrete(route.path)}"
                body = {"approved": True, "comment": "x"} if method == "POST" else None
                anonymous = httpx.request(method, url, json=body, timeout=30)
                assert anonymous.status_code in (401, 403), (method, route.path, anonymous.status_code)
                forged = httpx.request(
                    method, url, json=body, timeout=30, headers={"Authorization": "Bearer not-a-jwt"}
                )
                assert forged.status_code in (401, 403), (method, route.path, forged.status_code)
                checked += 1
        assert checked >= 11

    def test_openapi_lists_only_routes_the_test_enumerates(self, server: DashboardServer) -> None:
        with server.client("viewer") as client:
            spec = client.get("/hlml/openapi.json").json()
        enumerated = {r.path for r in dashboard_routes()}
        assert set(spec["paths"]) <= enumerated
        assert "/api/approvals/{call_id}/decision" in spec["paths"]

    def test_ui_session_cookie_authenticates_pages(self, server: DashboardServer) -> None:
        with server.client("viewer", cookie=True) as client:
            page = client.get("/hlml/")
        assert page.status_code == 200
        assert "Pending approvals" in page.text
        assert 'data-tab="approvals"' in page.text

    def test_approvals_agent_api_keeps_its_own_key_auth(self, server: DashboardServer) -> None:
        no_key = httpx.get(f"{server.approvals_url}/function_calls", timeout=30)
        assert no_key.status_code == 401
        airflow_jwt = httpx.get(
            f"{server.approvals_url}/function_calls",
            headers={"Authorization": f"Bearer {server.token('admin')}"},
            timeout=30,
        )
        assert airflow_jwt.status_code == 401
        agent = httpx.get(
            f"{server.approvals_url}/function_calls",
            headers={"Authorization": f"Bearer {server.keys.agent}"},
            timeout=30,
        )
        assert agent.status_code == 200


class TestDecisions:
    def test_viewer_sees_but_cannot_decide(self, server: DashboardServer) -> None:
        call_id = _pending(server, approvers=["approver", "viewer"])
        with server.client("viewer") as client:
            listed = client.get("/hlml/api/approvals", params={"status": "pending"}).json()
            item = next(i for i in listed["items"] if i["call_id"] == call_id)
            assert item["can_decide"] is False
            assert "edit access" in item["decide_blocked_reason"]
            resp = client.post(f"/hlml/api/approvals/{call_id}/decision", json={"approved": True})
        assert resp.status_code == 403
        assert server.get_call(call_id)["status"]["approved"] is None

    def test_dag_editor_who_is_no_approver_cannot_decide(self, server: DashboardServer) -> None:
        call_id = _pending(server, approvers=["approver"])
        with server.client("outsider") as client:
            resp = client.post(f"/hlml/api/approvals/{call_id}/decision", json={"approved": True})
        assert resp.status_code == 403
        assert "approver" in resp.json()["detail"]
        assert server.get_call(call_id)["status"]["approved"] is None

    def test_requester_cannot_approve_own_run(self, server: DashboardServer) -> None:
        call_id = _pending(server, approvers=[], requester="approver")
        with server.client("approver") as client:
            resp = client.post(f"/hlml/api/approvals/{call_id}/decision", json={"approved": True})
        assert resp.status_code == 403
        assert "self-approval" in resp.json()["detail"]

    def test_approver_approves_and_service_records_the_user(self, server: DashboardServer) -> None:
        call_id = _pending(server, approvers=["approver"], context=VALIDATION_CONTEXT)
        with server.client("approver") as client:
            page = client.get("/hlml/approvals", params={"status": "pending"})
            assert f'data-call-id="{call_id}"' in page.text
            assert "Validation report" in page.text
            assert "f1_score" in page.text
            resp = client.post(
                f"/hlml/api/approvals/{call_id}/decision", json={"approved": True, "comment": "ship it"}
            )
            assert resp.status_code == 200, resp.text
            assert resp.json() == {
                "call_id": call_id,
                "status": "approved",
                "responded_by": "approver",
                "comment": "ship it",
                "progress": "Approvers 1 of 1: approver",
                "message": "Approved as approver.",
            }
            again = client.post(
                f"/hlml/api/approvals/{call_id}/decision", json={"approved": False, "comment": "no"}
            )
            assert again.status_code == 409
            detail = client.get(f"/hlml/api/approvals/{call_id}").json()
        status = server.get_call(call_id)["status"]
        assert status["approved"] is True
        assert status["comment"] == "ship it"
        assert status["user_info"]["name"] == "approver"
        assert status["user_info"]["via_delegate"] is True
        responded = [e for e in detail["audit"] if e["event"] == "responded"]
        assert responded
        assert responded[0]["on_behalf_of"] == "approver"

    def test_rejection_needs_a_comment_and_keeps_the_option(self, server: DashboardServer) -> None:
        call_id = _pending(server, approvers=["approver"])
        with server.client("approver") as client:
            missing = client.post(f"/hlml/api/approvals/{call_id}/decision", json={"approved": False})
            assert missing.status_code == 422
            assert "comment" in missing.json()["detail"]
            bad_option = client.post(
                f"/hlml/api/approvals/{call_id}/decision",
                json={"approved": False, "comment": "x", "reject_option": "nope"},
            )
            assert bad_option.status_code == 422
            ok = client.post(
                f"/hlml/api/approvals/{call_id}/decision",
                json={"approved": False, "comment": "needs more data", "reject_option": "retrain"},
            )
            detail = client.get(f"/hlml/api/approvals/{call_id}").json()
            page = client.get("/hlml/approvals", params={"status": "rejected"})
        assert ok.status_code == 200
        # The reason is shown by its title.
        assert (detail["reject_option_name"], detail["reject_option_title"]) == ("retrain", "Retrain")
        assert '<strong class="reject-reason" data-option="retrain">Retrain</strong>' in page.text
        status = server.get_call(call_id)["status"]
        assert status["approved"] is False
        assert status["reject_option_name"] == "retrain"
        assert status["user_info"]["name"] == "approver"

    def test_cross_site_post_with_the_cookie_is_refused(self, server: DashboardServer) -> None:
        call_id = _pending(server, approvers=["approver"])
        with server.client("approver", cookie=True) as client:
            resp = client.post(
                f"/hlml/api/approvals/{call_id}/decision",
                json={"approved": True},
                headers={"Origin": "https://evil.example"},
            )
        assert resp.status_code == 403
        assert server.get_call(call_id)["status"]["approved"] is None

    def test_unknown_request_is_404(self, server: DashboardServer) -> None:
        with server.client("approver") as client:
            resp = client.post("/hlml/api/approvals/does-not-exist/decision", json={"approved": True})
        assert resp.status_code == 404


class TestApprovalRules:
    """A request with a rule needing two approvers: progress in the JSON, one answer per person."""

    RULES = [{"name": "Reviewers", "approvers": ["approver", "outsider"], "required": 2}]
    FORBIDDEN = [{"who": "admin", "duty": "model_author", "why": "trained this model"}]

    def _item(self, client: httpx.Client, call_id: str) -> dict[str, object]:
        listed = client.get("/hlml/api/approvals", params={"status": "pending"}).json()
        return next(i for i in listed["items"] if i["call_id"] == call_id)

    def test_two_approvers_approve_one_after_the_other(self, server: DashboardServer) -> None:
        call_id = _pending(server, approvers=[], rules=self.RULES, forbidden=self.FORBIDDEN)
        with server.client("approver") as client:
            item = self._item(client, call_id)
            assert item["has_rules"] is True
            assert item["progress"] == "Reviewers 0 of 2"
            assert item["rules"] == [
                {
                    "name": "Reviewers",
                    "approvers": ["approver", "outsider"],
                    "eligible": ["approver", "outsider"],
                    "required": 2,
                    "veto": True,
                    "source": "gate",
                    "approved_by": [],
                    "count": 0,
                    "met": False,
                    "summary": "Reviewers 0 of 2",
                }
            ]
            assert item["answers"] == []
            assert item["can_decide"] is True

            first = client.post(
                f"/hlml/api/approvals/{call_id}/decision", json={"approved": True, "comment": "first"}
            )
            assert first.status_code == 200, first.text
            assert first.json() == {
                "call_id": call_id,
                "status": "pending",
                "responded_by": "approver",
                "comment": "first",
                "progress": "Reviewers 1 of 2: approver",
                "message": "Your approval was recorded: Reviewers 1 of 2",
            }
            detail = client.get(f"/hlml/api/approvals/{call_id}").json()
            assert detail["status"] == "pending"
            assert detail["progress"] == "Reviewers 1 of 2: approver"
            assert detail["rules"][0]["approved_by"] == ["approver"]
            assert detail["approved_by"] == ["approver"]
            assert [(a["label"], a["approved"], a["rule"], a["comment"]) for a in detail["answers"]] == [
                ("approver", True, "Reviewers", "first")
            ]
            assert detail["can_decide"] is False
            assert detail["decide_blocked_reason"] == "You have already answered; each person counts once"
            assert any(e["event"] == "answered" for e in detail["audit"])
            again = client.post(f"/hlml/api/approvals/{call_id}/decision", json={"approved": True})
            assert again.status_code == 403
            assert "already answered" in again.json()["detail"]
        assert server.get_call(call_id)["status"]["approved"] is None

        # The model's author may edit the DAG but is barred by separation of duties.
        with server.client("admin") as client:
            item = self._item(client, call_id)
            assert item["can_decide"] is False
            assert item["decide_blocked_reason"] == "You trained this model (separation of duties)"
            barred = client.post(f"/hlml/api/approvals/{call_id}/decision", json={"approved": True})
            assert barred.status_code == 403
        assert server.get_call(call_id)["status"]["approved"] is None

        with server.client("outsider") as client:
            page = client.get("/hlml/approvals", params={"status": "pending"})
            card = page.text.split(f'data-call-id="{call_id}"', 1)[1].split("</article>", 1)[0]
            assert '<span class="progress">Reviewers 1 of 2: approver</span>' in card
            assert "<strong>approver</strong> approved (toward Reviewers)" in card
            assert 'class="approve"' in card
            assert self._item(client, call_id)["can_decide"] is True
            second = client.post(f"/hlml/api/approvals/{call_id}/decision", json={"approved": True})
            assert second.status_code == 200, second.text
            assert second.json()["status"] == "approved"
            assert second.json()["progress"] == "Reviewers 2 of 2: approver, outsider"
            assert second.json()["message"] == "Approved as outsider."
            decided = client.get(f"/hlml/api/approvals/{call_id}").json()
        assert decided["approved_by"] == ["approver", "outsider"]
        assert decided["rules"][0]["met"] is True
        status = server.get_call(call_id)["status"]
        assert status["approved"] is True
        assert [a["name"] for a in status["answers"]] == ["approver", "outsider"]


class TestPages:
    def test_overview_counts_follow_decisions(self, server: DashboardServer) -> None:
        with server.client("admin") as client:
            before = client.get("/hlml/api/overview").json()["figures"]
            call_id = _pending(server, approvers=[])
            during = client.get("/hlml/api/overview").json()["figures"]
            assert during["pending"] == before["pending"] + 1
            client.post(f"/hlml/api/approvals/{call_id}/decision", json={"approved": True})
            after = client.get("/hlml/api/overview").json()
        assert after["figures"]["pending"] == before["pending"]
        assert after["figures"]["approval_rate"] is not None
        assert any(e["kind"] == "approval_approved" for e in after["recent_activity"])

    def test_analytics_tell_the_policys_decisions_from_a_persons(self, server: DashboardServer) -> None:
        principal = "policy:champion-margin-v1"
        with server.client("admin") as client:
            before = client.get("/hlml/api/analytics").json()["model_decisions"]["totals"]
            figures_before = client.get("/hlml/api/overview").json()["figures"]
            auto = [
                _pending(
                    server,
                    approvers=[],
                    context=VALIDATION_CONTEXT,
                    auto={
                        "outcome": outcome,
                        "principal": principal,
                        "reason": "clear",
                        "override_seconds": 0,
                    },
                )
                for outcome in ("approve", "approve", "reject")
            ]
            by_person = _pending(server, approvers=[])
            client.post(
                f"/hlml/api/approvals/{by_person}/decision", json={"approved": False, "comment": "no"}
            )
            analytics = client.get("/hlml/api/analytics").json()["model_decisions"]
            figures = client.get("/hlml/api/overview").json()["figures"]
            page = client.get("/hlml/analytics")
            overview = client.get("/hlml/")
            listed = client.get("/hlml/api/approvals", params={"status": "decided"}).json()["items"]
        by_call = {i["call_id"]: (i["status"], i["responded_by"], i["decided_by_policy"]) for i in listed}
        assert [by_call[c] for c in auto] == [
            ("approved", principal, True),
            ("approved", principal, True),
            ("rejected", principal, True),
        ]
        assert by_call[by_person][2] is False
        totals = analytics["totals"]
        assert {k: totals[k] - before[k] for k in totals} == {
            "auto_approved": 2,
            "auto_rejected": 1,
            "human": 1,
        }
        decided = sum(totals.values())
        assert analytics["human_intervention_rate"] == pytest.approx(totals["human"] / decided)
        assert analytics["series"]["auto_approved"][-1] >= 2  # today, the window's last day
        assert analytics["human_rate"][-1] is not None
        assert figures["auto_approved"] - figures_before["auto_approved"] == 2
        assert figures["human_decided"] - figures_before["human_decided"] == 1
        assert figures["human_intervention_rate"] == pytest.approx(
            figures["human_decided"] / figures["model_decisions"]
        )
        assert page.status_code == 200
        assert 'data-panel="model_decisions"' in page.text
        assert f"{totals['auto_approved']} auto-approved" in page.text
        assert 'data-figure="human_intervention_rate"' in overview.text

    def test_every_page_renders_with_mlflow_down_and_says_so(self, server: DashboardServer) -> None:
        with server.client("viewer") as client:
            for path in ("/hlml/", "/hlml/experiments", "/hlml/analytics"):
                page = client.get(path)
                assert page.status_code == 200, path
                assert 'data-banner="mlflow"' in page.text, path
            experiments = client.get("/hlml/api/experiments").json()
        assert experiments["backends"]["mlflow_ok"] is False
        assert "unreachable" in experiments["backends"]["mlflow_message"]

    def test_the_reviewers_card_in_the_json_and_on_the_page_with_mlflow_down(
        self, server: DashboardServer
    ) -> None:
        call_id = _pending(server, approvers=["approver"], context=VALIDATION_CONTEXT)
        with server.client("approver") as client:
            listed = client.get("/hlml/api/approvals", params={"status": "pending"}).json()
            detail = client.get(f"/hlml/api/approvals/{call_id}").json()
            page = client.get("/hlml/approvals", params={"status": "pending"})
        item = next(i for i in listed["items"] if i["call_id"] == call_id)
        assert item["body_html"] == "<p>Candidate beats the champion on accuracy.</p>\n"
        assert [(m["name"], m["delta_text"], m["better"], m["passed"]) for m in item["metrics"]] == [
            ("accuracy", "+0.025 (+2.8%)", True, True),
            ("f1_score", "-0.03 (-4.1%)", False, False),
        ]
        assert item["model"] == {
            "model_name": "churn-model",
            "model_version": "3",
            "mlflow_run_id": "0123456789abcdef",
        }
        # MLflow is down: its links are labels without a URL, the Airflow ones are there.
        links = {lk["kind"]: lk["url"] for lk in item["links"]}
        assert links == {
            "mlflow_run": None,
            "model_version": None,
            "airflow_task": f"/dags/{DAG_ID}/runs/manual__1/tasks/approve",
            "airflow_dag_run": f"/dags/{DAG_ID}/runs/manual__1",
        }
        assert {k: detail[k] for k in ("body_html", "metrics", "links", "no_champion")} == {
            k: item[k] for k in ("body_html", "metrics", "links", "no_champion")
        }
        assert page.status_code == 200
        assert '<td class="num delta better" title="higher is better">+0.025 (+2.8%)</td>' in page.text
        assert '<li data-kind="mlflow_run"><span class="card-link">MLflow run</span></li>' in page.text

    def test_approvals_filters(self, server: DashboardServer) -> None:
        call_id = _pending(server, approvers=["approver"], subject="Unique subject for filter")
        with server.client("approver") as client:
            hit = client.get(
                "/hlml/api/approvals", params={"q": "unique SUBJECT", "status": "pending"}
            ).json()
            miss = client.get(
                "/hlml/api/approvals", params={"q": "unique subject", "status": "approved"}
            ).json()
            bad = client.get("/hlml/api/approvals", params={"status": "bogus"})
        assert [i["call_id"] for i in hit["items"]] == [call_id]
        assert miss["items"] == []
        assert bad.status_code == 422


def _wait(predicate: Callable[[], Any], what: str, timeout: float = 40.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


class TestDeliveries:
    """Where the embedded service delivered a request, on the card and in the JSON API."""

    def _deliveries(self, client: httpx.Client, call_id: str) -> dict[str, Any] | None:
        listed = client.get("/hlml/api/approvals", params={"status": "pending"}).json()
        item = next(i for i in listed["items"] if i["call_id"] == call_id)
        return item["deliveries"]  # type: ignore[no-any-return]

    def _card(self, client: httpx.Client, call_id: str) -> str:
        page = client.get("/hlml/approvals", params={"status": "pending"})
        assert page.status_code == 200
        return page.text.split(f'data-call-id="{call_id}"', 1)[1].split("</article>", 1)[0]

    def test_a_mailed_request_shows_where_it_went(self, server: DashboardServer, smtp: SmtpServer) -> None:
        subject = f"Promote churn {uuid.uuid4().hex[:8]}"
        call_id = _pending(
            server, approvers=["approver", "carol@example.com", "dave@example.com"], subject=subject
        )
        quiet = _pending(server, approvers=["approver"])
        _wait(
            lambda: len([m for m in smtp.messages() if subject in str(m["Subject"])]) >= 2,
            "the request's two e-mails",
        )
        with server.client("approver") as client:
            summary = _wait(
                lambda: (d := self._deliveries(client, call_id)) and d["text"] == "E-mail: 2 sent" and d,
                "the dashboard to show two sent e-mails",
            )
            assert summary["warning"] is False
            assert {(n["recipient"], n["notice"], n["state"]) for n in summary["notices"]} == {
                ("carol@example.com", "request", "sent"),
                ("dave@example.com", "request", "sent"),
            }
            assert all(n["sent_at"] for n in summary["notices"])
            detail = client.get(f"/hlml/api/approvals/{call_id}").json()
            assert detail["deliveries"]["text"] == "E-mail: 2 sent"
            card = self._card(client, call_id)
            assert '<details class="deliveries" data-warning="false">' in card
            assert ">E-mail: 2 sent</span>" in card
            assert "<td>carol@example.com</td>" in card
            # A request the service had no one to e-mail: nothing about delivery.
            assert self._deliveries(client, quiet) == {
                "text": "",
                "warning": False,
                "total": 0,
                "failed": 0,
                "retrying": 0,
                "channels": [],
                "notices": [],
                "omitted": 0,
            }
            assert "deliveries" not in self._card(client, quiet)

    def test_a_refused_e_mail_is_flagged_while_retried_and_once_failed(
        self, server: DashboardServer, smtp: SmtpServer
    ) -> None:
        smtp.refuse(True)
        try:
            call_id = _pending(server, approvers=["approver", "erin@example.com"])
            with server.client("viewer") as client:
                retrying = _wait(
                    lambda: (d := self._deliveries(client, call_id)) and d["retrying"] == 1 and d,
                    "the refused e-mail to be retried",
                )
                assert retrying["text"] == "E-mail: retrying"
                assert retrying["warning"] is True
                notice = retrying["notices"][0]
                assert (notice["recipient"], notice["state"], notice["attempts"]) == (
                    "erin@example.com",
                    "pending",
                    1,
                )
                assert "451" in notice["error"]
                assert notice["next_attempt_at"]
                failed = _wait(
                    lambda: (d := self._deliveries(client, call_id)) and d["failed"] == 1 and d,
                    "the e-mail to be given up",
                )
                assert failed["text"] == "E-mail: failed"
                assert failed["warning"] is True
                assert failed["notices"][0]["attempts"] == 2
                card = self._card(client, call_id)
            assert '<details class="deliveries warn" data-warning="true">' in card
            assert '<span class="pill failed">1 failed</span>' in card
            assert "451" in card
        finally:
            smtp.refuse(False)
