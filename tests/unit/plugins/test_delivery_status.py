"""Delivery status on the dashboard: where each request was delivered and whether delivery fails.

The summary of a request's notices (:func:`delivery_status.summarize`), the one round of
look-ups per page (:class:`delivery_status.DeliveryLookups`) that degrades to nothing on a 404, a
failure or a slow answer, the card's delivery line (escaped), and the dashboard app against the
built-in approvals service in-process, whose real ``deliveries`` route reports notices written
into its database.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from airflow_provider_hlml.plugins import delivery_status
from airflow_provider_hlml.plugins.approvals_client import (
    ApprovalsClient,
    ApprovalsRequestError,
    ApprovalsUnavailable,
)
from airflow_provider_hlml.plugins.delivery_status import DeliveryLookups, batches, summarize
from tests.unit.plugins.test_views import _article, _card_item, render_approvals

BASE = "http://approvals.test/humanlayer/v1"
HOSTILE = "<img src=x onerror=alert(1)>\"'&"


def _notice(
    state: str = "sent",
    *,
    channel: str = "email",
    recipient: str = "alice@example.com",
    notice: str = "request",
    attempts: int = 1,
    error: str | None = None,
    step: int = 0,
) -> dict[str, Any]:
    return {
        "channel": channel,
        "recipient": recipient,
        "notice": notice,
        "step": step,
        "state": state,
        "attempts": attempts,
        "sent_at": "2025-05-01T10:00:00+00:00" if state == "sent" else None,
        "next_attempt_at": "2025-05-01T10:05:00+00:00" if state == "pending" else None,
        "error": error,
    }


class TestSummarize:
    def test_counts_per_channel_in_one_line(self) -> None:
        rows = [
            _notice(channel="slack", recipient="#ml-approvals"),
            _notice(recipient="alice@example.com"),
            _notice(recipient="bob@example.com"),
            _notice(recipient="carol@example.com", notice="reminder", step=1),
            _notice("failed", recipient="dave@example.com", attempts=8, error="550 no such user"),
        ]
        summary = summarize(rows)
        assert summary is not None
        # E-mail comes first whatever the order the notices were made in.
        assert [c["text"] for c in summary["channels"]] == ["E-mail: 3 sent · 1 failed", "Slack: sent"]
        assert summary["text"] == "E-mail: 3 sent · 1 failed; Slack: sent"
        assert summary["channels"][0]["counts"] == {"sent": 3, "failed": 1}
        assert (summary["total"], summary["failed"], summary["retrying"]) == (5, 1, 0)
        assert summary["warning"] is True
        assert [c["warning"] for c in summary["channels"]] == [True, False]
        assert summary["channels"][0]["detail"].splitlines() == [
            "alice@example.com, request: sent",
            "bob@example.com, request: sent",
            "carol@example.com, reminder: sent",
            "dave@example.com, request: failed (8 attempts): 550 no such user",
        ]
        assert summary["notices"][0]["recipient"] == "#ml-approvals"

    def test_a_notice_being_retried_is_a_warning_a_first_try_is_not(self) -> None:
        retrying = summarize([_notice("pending", attempts=2, error="451 try again later")])
        queued = summarize([_notice("pending", attempts=0)])
        assert retrying is not None
        assert queued is not None
        assert retrying["text"] == "E-mail: retrying"
        assert retrying["warning"] is True
        assert retrying["retrying"] == 1
        assert retrying["notices"][0]["status"] == "retrying"
        assert retrying["notices"][0]["state"] == "pending"
        assert retrying["notices"][0]["next_attempt_at"] == "2025-05-01T10:05:00+00:00"
        assert "(2 attempts): 451 try again later" in retrying["channels"][0]["detail"]
        assert queued["text"] == "E-mail: pending"
        assert queued["warning"] is False

    def test_skipped_notices_are_no_warning(self) -> None:
        summary = summarize([_notice(), _notice("skipped", recipient="bob@example.com", attempts=0)])
        assert summary is not None
        assert summary["text"] == "E-mail: 1 sent · 1 skipped"
        assert summary["warning"] is False

    def test_nothing_known_and_nothing_delivered_differ(self) -> None:
        assert summarize(None) is None
        assert summarize({"not": "a list"}) is None
        empty = summarize([])
        assert empty is not None
        assert (empty["channels"], empty["text"], empty["warning"], empty["total"]) == ([], "", False, 0)

    def test_malformed_notices_are_ignored_and_odd_values_tolerated(self) -> None:
        rows: list[Any] = [
            "junk",
            None,
            {"state": "sent"},
            {"channel": "", "state": "sent"},
            {"channel": "email", "state": "sent", "attempts": True, "step": -3, "recipient": 5},
            {"channel": "teams", "state": "bouncing", "attempts": "2"},
        ]
        summary = summarize(rows)
        assert summary is not None
        assert summary["text"] == "E-mail: sent; Teams: unknown"
        first, second = summary["notices"]
        assert (first["attempts"], first["step"], first["recipient"]) == (0, 0, "")
        assert (second["state"], second["status"], second["warning"]) == ("bouncing", "unknown", False)

    def test_a_long_history_lists_the_newest_notices_and_counts_them_all(self) -> None:
        rows = [_notice(recipient=f"r{i}@example.com") for i in range(delivery_status.MAX_NOTICES + 10)]
        summary = summarize(rows)
        assert summary is not None
        assert summary["total"] == delivery_status.MAX_NOTICES + 10
        assert len(summary["notices"]) == delivery_status.MAX_NOTICES
        assert summary["omitted"] == 10
        assert summary["notices"][-1]["recipient"] == f"r{delivery_status.MAX_NOTICES + 9}@example.com"
        assert summary["text"] == f"E-mail: {delivery_status.MAX_NOTICES + 10} sent"

    def test_long_errors_are_cut(self) -> None:
        summary = summarize([_notice("failed", error="x" * 5000)])
        assert summary is not None
        assert len(summary["notices"][0]["error"]) == delivery_status.MAX_TEXT


class TestBatches:
    def test_ids_once_at_most_max_ids_a_batch(self) -> None:
        ids = [f"c{i}" for i in range(450)]
        assert [len(b) for b in batches([*ids, "c0", "c1"])] == [200, 200, 50]
        assert batches([]) == []

    def test_long_ids_split_by_query_length(self) -> None:
        ids = [f"{i:04d}" + "x" * 100 for i in range(120)]
        found = batches(ids)
        assert [i for b in found for i in b] == ids
        assert len(found) > 1
        assert all(sum(len(f"call_id={i}&") for i in b) <= delivery_status.MAX_QUERY_CHARS for b in found)


# ------------------------------------------------------------------------------- the HTTP client


def _client(handler: Callable[[httpx.Request], httpx.Response]) -> ApprovalsClient:
    return ApprovalsClient(BASE, "hl_delegate", transport=httpx.MockTransport(handler))


class TestClient:
    async def test_ids_are_repeated_query_parameters(self) -> None:
        seen: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return httpx.Response(200, json={"a b": [_notice()]})

        found = await _client(handler).deliveries(["a b", "c/../d"])
        assert found == {"a b": [_notice()]}
        url = urlsplit(str(seen[0].url))
        assert url.path == "/humanlayer/v1/hlml/deliveries"
        assert parse_qs(url.query) == {"call_id": ["a b", "c/../d"]}
        assert seen[0].headers["Authorization"] == "Bearer hl_delegate"

    async def test_no_route_is_none_other_failures_raise(self) -> None:
        assert (
            await _client(lambda r: httpx.Response(404, json={"detail": "Not Found"})).deliveries(["a"])
            is None
        )
        assert await _client(lambda r: httpx.Response(405)).deliveries(["a"]) is None
        with pytest.raises(ApprovalsRequestError):
            await _client(lambda r: httpx.Response(422, json={"detail": "bad"})).deliveries(["a"])
        with pytest.raises(ApprovalsUnavailable):
            await _client(lambda r: httpx.Response(502)).deliveries(["a"])
        with pytest.raises(ApprovalsUnavailable):
            await _client(lambda r: httpx.Response(200, json=["not", "a", "map"])).deliveries(["a"])

    async def test_no_ids_no_request(self) -> None:
        def handler(request: httpx.Request) -> httpx.Response:
            raise AssertionError("asked")

        assert await _client(handler).deliveries([]) == {}


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Backend:
    """A mock approvals backend answering the deliveries route with ``status`` (counting calls)."""

    def __init__(self, status: int = 200, *, delay: float = 0.0, body: Any = None) -> None:
        self.status = status
        self.delay = delay
        self.body = body
        self.calls: list[list[str]] = []

    async def handle(self, request: httpx.Request) -> httpx.Response:
        ids = parse_qs(urlsplit(str(request.url)).query).get("call_id", [])
        self.calls.append(ids)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return httpx.Response(self.status, json={"detail": "no"})
        body = self.body if self.body is not None else {i: [_notice()] for i in ids if not i.startswith("x")}
        return httpx.Response(200, json=body)

    def client(self) -> ApprovalsClient:
        return ApprovalsClient(BASE, "hl_delegate", transport=httpx.MockTransport(self.handle))


class TestLookups:
    async def test_one_round_for_a_page_unknown_ids_absent(self) -> None:
        backend = _Backend()
        ids = [f"c{i}" for i in range(250)] + ["x-unknown"]
        found = await DeliveryLookups().fetch(backend.client(), ids)
        assert found is not None
        assert len(backend.calls) == 2  # 251 ids: two requests (at most 200 ids each), at once
        assert sorted(len(c) for c in backend.calls) == [51, 200]
        assert set(found) == {f"c{i}" for i in range(250)}

    async def test_ids_not_asked_for_are_dropped(self) -> None:
        backend = _Backend(body={"a": [_notice()], "smuggled": [_notice()]})
        assert await DeliveryLookups().fetch(backend.client(), ["a"]) == {"a": [_notice()]}

    async def test_a_backend_without_the_route_is_not_asked_again_for_a_while(self) -> None:
        clock = _Clock()
        lookups = DeliveryLookups(clock=clock)
        backend = _Backend(404)
        assert await lookups.fetch(backend.client(), ["a"]) is None
        assert await lookups.fetch(backend.client(), ["a"]) is None
        assert len(backend.calls) == 1
        clock.now += DeliveryLookups.NO_ROUTE_SECONDS + 1
        backend.status = 200
        assert await lookups.fetch(backend.client(), ["a"]) == {"a": [_notice()]}
        assert len(backend.calls) == 2

    async def test_a_failing_backend_is_rested_a_refusal_is_not(self) -> None:
        clock = _Clock()
        lookups = DeliveryLookups(clock=clock)
        down = _Backend(503)
        assert await lookups.fetch(down.client(), ["a"]) is None
        assert await lookups.fetch(down.client(), ["a"]) is None
        assert len(down.calls) == 1
        clock.now += DeliveryLookups.DOWN_SECONDS + 1
        assert await lookups.fetch(down.client(), ["a"]) is None
        assert len(down.calls) == 2

        refusing = _Backend(422)
        other = DeliveryLookups(clock=clock)
        assert await other.fetch(refusing.client(), ["a"]) is None
        assert await other.fetch(refusing.client(), ["a"]) is None
        assert len(refusing.calls) == 2

    async def test_a_slow_or_broken_backend_means_no_delivery_info(self) -> None:
        lookups = DeliveryLookups()
        lookups.TIMEOUT_SECONDS = 0.2
        assert await lookups.fetch(_Backend(delay=5).client(), ["a"]) is None

        def broken(request: httpx.Request) -> httpx.Response:
            raise RuntimeError("the in-process service crashed")

        assert await DeliveryLookups().fetch(_client(broken), ["a"]) is None

        def unreachable(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("refused", request=request)

        assert await DeliveryLookups().fetch(_client(unreachable), ["a"]) is None


class TestDashboardData:
    async def test_items_get_a_summary_or_none(self) -> None:
        from airflow_provider_hlml.plugins.routes.data import DashboardData
        from tests.unit.plugins.test_app import _settings

        data = DashboardData(_settings())
        items: list[dict[str, Any]] = [{"call_id": "a"}, {"call_id": "x-unknown"}, {"call_id": None}]
        await data.with_deliveries(items, _Backend().client())
        assert items[0]["deliveries"]["text"] == "E-mail: sent"
        assert items[1]["deliveries"] is None
        assert items[2]["deliveries"] is None

        items = [{"call_id": "a"}]
        await DashboardData(_settings()).with_deliveries(items, _Backend(404).client())
        assert items == [{"call_id": "a", "deliveries": None}]

    async def test_no_backend_means_no_delivery_info(self) -> None:
        from airflow_provider_hlml.plugins.routes.data import DashboardData
        from tests.unit.plugins.test_app import _settings

        items: list[dict[str, Any]] = [{"call_id": "a"}]
        await DashboardData(_settings(approvals_enabled=False)).with_deliveries(items)
        assert items == [{"call_id": "a", "deliveries": None}]


# ------------------------------------------------------------------------------------- the card


class TestCard:
    def _html(self, deliveries: Any) -> str:
        item = _card_item({"model_name": "churn", "model_version": "3"})
        item["deliveries"] = deliveries
        return _article(render_approvals([item]))

    def test_the_line_and_each_notice(self) -> None:
        card = self._html(
            summarize(
                [
                    _notice(),
                    _notice(recipient="bob@example.com"),
                    _notice(channel="slack", recipient="#ml"),
                ]
            )
        )
        assert '<details class="deliveries" data-warning="false">' in card
        assert '<span class="delivery-channel" data-channel="email" title="' in card
        assert ">E-mail: 2 sent</span>" in card
        assert ">Slack: sent</span>" in card
        assert "<td>bob@example.com</td>" in card
        assert "sent 2025-05-01 10:00:00" in card
        assert 'class="pill failed"' not in card

    def test_failures_and_retries_are_flagged(self) -> None:
        card = self._html(
            summarize(
                [
                    _notice("failed", attempts=8, error="550 mailbox unavailable"),
                    _notice("pending", recipient="bob@example.com", attempts=1, error="451 later"),
                ]
            )
        )
        assert '<details class="deliveries warn" data-warning="true">' in card
        assert '<span class="delivery-channel warn" data-channel="email"' in card
        assert ">E-mail: 1 retrying · 1 failed</span>" in card
        assert '<span class="pill failed">1 failed</span>' in card
        assert '<span class="pill retrying">1 retrying</span>' in card
        assert '<td class="error">550 mailbox unavailable</td>' in card
        assert "next try 2025-05-01 10:05:00" in card

    def test_the_services_text_is_escaped(self) -> None:
        card = self._html(
            summarize(
                [_notice("failed", recipient=HOSTILE, error=HOSTILE, channel=HOSTILE, notice="<b>x</b>")]
            )
        )
        assert "<img" not in card
        assert "<b>x</b>" not in card
        assert "&lt;img src=x onerror=alert(1)&gt;&#34;&#39;&amp;" in card
        # The title attribute cannot be left either.
        assert (
            'title="&lt;img src=x onerror=alert(1)&gt;&#34;&#39;&amp;, &lt;b&gt;x&lt;/b&gt;: failed' in card
        )

    @pytest.mark.parametrize("deliveries", [None, summarize([])])
    def test_nothing_known_or_nothing_delivered_shows_nothing(self, deliveries: Any) -> None:
        assert "deliveries" not in self._html(deliveries)
        item = _card_item({})
        assert "deliveries" not in _article(render_approvals([item]))

    def test_the_json_item_carries_the_summary(self) -> None:
        from airflow_provider_hlml.plugins.routes.schemas import ApprovalItem

        item = _card_item({})
        item["deliveries"] = summarize([_notice("pending", attempts=3, error="451")])
        body = ApprovalItem(**item).model_dump()
        assert body["deliveries"]["text"] == "E-mail: retrying"
        assert body["deliveries"]["channels"][0]["counts"] == {"retrying": 1}
        assert body["deliveries"]["notices"][0] == {
            "channel": "email",
            "channel_label": "E-mail",
            "recipient": "alice@example.com",
            "notice": "request",
            "step": 0,
            "state": "pending",
            "status": "retrying",
            "attempts": 3,
            "sent_at": None,
            "next_attempt_at": "2025-05-01T10:05:00+00:00",
            "error": "451",
            "warning": True,
        }
        item["deliveries"] = None
        assert ApprovalItem(**item).model_dump()["deliveries"] is None


# ------------------------------------------------------- the dashboard app with the built-in service


class _User:
    email = "ann@example.com"

    def get_name(self) -> str:
        return "ann"

    def get_id(self) -> str:
        return "1"


class _Routed:
    """The embedded approvals app, with the deliveries route answered by ``override`` when set
    (a status code, or ``"raise"``), counting the look-ups."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.override: int | str | None = None
        self.lookups = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/hlml/deliveries"):
            self.lookups += 1
            if self.override == "raise":
                raise RuntimeError("boom")
            if self.override is not None:
                await send({"type": "http.response.start", "status": self.override, "headers": []})
                await send({"type": "http.response.body", "body": b'{"detail": "Not Found"}'})
                return
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Any, str, str]:
    """The built-in approvals app on SQLite: (database URL, app, agent key, delegate key)."""
    from airflow_provider_hlml.approvals import db, store
    from airflow_provider_hlml.plugins.plugin import build_embedded_approvals

    url = f"sqlite:///{Path(tmp_path_factory.mktemp('deliveries')) / 'approvals.db'}"
    app = build_embedded_approvals(url)
    assert app is not None
    engine = db.make_engine(url, pool_size=1)
    try:
        with db.make_sessionmaker(engine)() as session:
            agent = store.create_key(session, name="airflow", role="agent", email=None)[1]
            delegate = store.create_key(session, name="airflow-ui", role="delegate", email=None)[1]
    finally:
        engine.dispose()
    return url, app, agent, delegate


def _add_deliveries(url: str, call_id: str, rows: list[dict[str, Any]]) -> None:
    """Notices of ``call_id`` straight into the service's outbox, as its worker records them."""
    from airflow_provider_hlml.approvals import db, store
    from airflow_provider_hlml.approvals.models import Delivery

    engine = db.make_engine(url, pool_size=1)
    now = dt.datetime.now(dt.timezone.utc)
    try:
        with db.make_sessionmaker(engine)() as session:
            request_id = store.request_ids(session, kind=store.FUNCTION_CALL, call_ids=[call_id])[call_id]
            for row in rows:
                session.add(
                    Delivery(
                        dedupe_key=uuid.uuid4().hex,
                        request_id=request_id,
                        channel=row["channel"],
                        recipient=row["recipient"],
                        notice=row["notice"],
                        step=row["step"],
                        state=row["state"],
                        attempts=row["attempts"],
                        due_at=now,
                        created_at=now,
                        sent_at=now if row["state"] == "sent" else None,
                        last_error=row["error"],
                    )
                )
            session.commit()
    finally:
        engine.dispose()


class TestAgainstTheBuiltInService:
    """The dashboard app reads the real ``deliveries`` route of the built-in service in-process."""

    @pytest.fixture
    def dashboard(
        self, embedded: tuple[str, Any, str, str], monkeypatch: pytest.MonkeyPatch
    ) -> Iterator[tuple[Any, _Routed, Callable[..., str]]]:
        from fastapi.testclient import TestClient

        from airflow_provider_hlml.plugins.app import create_dashboard_app
        from airflow_provider_hlml.plugins.auth import require_user
        from airflow_provider_hlml.plugins.routes import data as data_module
        from tests.unit.plugins.test_app import _settings

        url, app, agent, delegate = embedded
        monkeypatch.setattr(data_module, "readable_dag_ids", lambda user: {"churn"})
        monkeypatch.setattr(data_module, "can_read_dag", lambda user, dag_id: True)
        monkeypatch.setattr(data_module, "can_edit_dag", lambda user, dag_id: True)
        routed = _Routed(app)
        dashboard = create_dashboard_app(_settings(delegate_key=delegate), embedded_approvals=routed)
        dashboard.dependency_overrides[require_user] = _User

        def create(*rows: dict[str, Any]) -> str:
            call_id = f"deliv-{uuid.uuid4().hex[:10]}"
            state = {
                "hlml": {"approvers": ["ann"], "airflow": {"dag_id": "churn", "run_id": "r1", "task_id": "t"}}
            }
            with TestClient(app) as service:
                resp = service.post(
                    "/function_calls",
                    json={
                        "run_id": "r",
                        "call_id": call_id,
                        "spec": {
                            "fn": "model_promotion",
                            "kwargs": {"subject": f"Promote {call_id}"},
                            "state": state,
                        },
                    },
                    headers={"Authorization": f"Bearer {agent}"},
                )
            assert resp.status_code == 201, resp.text
            if rows:
                _add_deliveries(url, call_id, list(rows))
            return call_id

        with TestClient(dashboard, base_url="http://testserver") as client:
            yield client, routed, create

    def _listed(self, client: Any, call_id: str) -> dict[str, Any]:
        listed = client.get("/api/approvals", params={"status": "pending"}).json()
        return next(i for i in listed["items"] if i["call_id"] == call_id)  # type: ignore[no-any-return]

    def test_list_detail_and_page_show_the_deliveries(
        self, dashboard: tuple[Any, _Routed, Callable[..., str]]
    ) -> None:
        client, routed, create = dashboard
        delivered = create(
            _notice(),
            _notice(recipient="bob@example.com"),
            _notice("failed", recipient="carol@example.com", attempts=8, error=f"550 {HOSTILE}"),
            _notice(channel="slack", recipient="#ml"),
        )
        quiet = create()
        before = routed.lookups
        item = self._listed(client, delivered)
        assert routed.lookups == before + 1  # one look-up for the whole page
        assert item["deliveries"]["text"] == "E-mail: 2 sent · 1 failed; Slack: sent"
        assert item["deliveries"]["warning"] is True
        assert item["deliveries"]["notices"][2]["error"] == f"550 {HOSTILE}"
        # The service knows the request but delivered nothing: an empty summary, no line.
        assert self._listed(client, quiet)["deliveries"]["channels"] == []

        detail = client.get(f"/api/approvals/{delivered}").json()
        assert detail["deliveries"] == item["deliveries"]
        assert "audit" in detail

        page = client.get("/approvals", params={"status": "pending"})
        assert page.status_code == 200
        card = _article(page.text, delivered)
        assert '<details class="deliveries warn" data-warning="true">' in card
        assert ">E-mail: 2 sent · 1 failed</span>" in card
        assert "<img" not in card
        assert "550 &lt;img src=x onerror=alert(1)&gt;" in card
        assert "deliveries" not in _article(page.text, quiet)

    @pytest.mark.parametrize("override", [404, 500, "raise"])
    def test_no_route_or_a_failing_one_means_no_delivery_info(
        self, dashboard: tuple[Any, _Routed, Callable[..., str]], override: int | str
    ) -> None:
        client, routed, create = dashboard
        routed.override = override
        call_id = create(_notice("failed", error="550"))
        item = self._listed(client, call_id)
        assert routed.lookups == 1
        assert item["deliveries"] is None
        listed = client.get("/api/approvals", params={"status": "pending"}).json()
        assert listed["backends"]["approvals_ok"] is True
        detail = client.get(f"/api/approvals/{call_id}")
        assert detail.status_code == 200
        assert detail.json()["deliveries"] is None
        page = client.get("/approvals", params={"status": "pending"})
        assert page.status_code == 200
        assert f'data-call-id="{call_id}"' in page.text
        assert "deliveries" not in _article(page.text, call_id)
        assert 'data-banner="approvals"' not in page.text


def test_summary_json_is_plain_data() -> None:
    summary = summarize([_notice(), _notice("pending", attempts=2)])
    assert json.loads(json.dumps(summary)) == summary
