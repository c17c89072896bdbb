"""Long-polling ``GET /function_calls/{id}?wait=``: answers as soon as the call changes."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from click.testing import CliRunner

from airflow_provider_hlml.approvals.cli import main as cli
from tests.approvals.conftest import Api, call_body
from tests.fixtures.approvals import ApprovalsService


def create(api: Api) -> str:
    resp = api.post("/function_calls", json=call_body())
    assert resp.status_code == 201
    return str(resp.json()["call_id"])


class TestLongPoll:
    async def test_returns_when_decided(self, approvals_service: ApprovalsService, as_agent: Api) -> None:
        call_id = create(as_agent)
        headers = {"Authorization": f"Bearer {approvals_service.agent_key}"}
        async with httpx.AsyncClient(
            base_url=approvals_service.base_url, timeout=30, headers=headers
        ) as client:
            started = time.monotonic()
            waiter = asyncio.create_task(client.get(f"/function_calls/{call_id}", params={"wait": 10}))
            await asyncio.sleep(0.5)
            assert not waiter.done()
            decided = await client.post(
                f"/agent/function_calls/{call_id}/respond",
                json={"approved": True},
                headers={"Authorization": f"Bearer {approvals_service.reviewer_key}"},
            )
            assert decided.status_code == 200
            resp = await waiter
            elapsed = time.monotonic() - started
        assert resp.json()["status"]["approved"] is True
        assert elapsed < 3, elapsed

    async def test_many_waiters_all_wake(self, approvals_service: ApprovalsService, as_agent: Api) -> None:
        call_id = create(as_agent)
        headers = {"Authorization": f"Bearer {approvals_service.agent_key}"}
        limits = httpx.Limits(max_connections=60)
        async with httpx.AsyncClient(
            base_url=approvals_service.base_url, timeout=30, headers=headers, limits=limits
        ) as client:
            waiters = [
                asyncio.create_task(client.get(f"/function_calls/{call_id}", params={"wait": 10}))
                for _ in range(50)
            ]
            await asyncio.sleep(0.5)
            health = await client.get(approvals_service.root_url + "/healthz")
            assert health.json()["long_poll_waiters"] >= 50
            await client.post(f"/agent/function_calls/{call_id}/cancel", json={"reason": "killed"})
            answers = await asyncio.gather(*waiters)
        assert {a.json()["status"]["cancel_reason"] for a in answers} == {"killed"}

    def test_decided_call_returns_at_once(self, as_agent: Api, as_alice: Api) -> None:
        call_id = create(as_agent)
        as_alice.post(f"/agent/function_calls/{call_id}/respond", json={"approved": False, "comment": "no"})
        started = time.monotonic()
        resp = as_agent.get(f"/function_calls/{call_id}", params={"wait": 20})
        assert time.monotonic() - started < 2
        assert resp.json()["status"]["approved"] is False

    def test_times_out_when_nothing_changes(self, as_agent: Api) -> None:
        call_id = create(as_agent)
        started = time.monotonic()
        resp = as_agent.get(f"/function_calls/{call_id}", params={"wait": 1})
        elapsed = time.monotonic() - started
        assert resp.status_code == 200
        assert resp.json()["status"]["approved"] is None
        assert 0.9 <= elapsed < 5, elapsed

    async def test_sees_a_decision_made_by_another_process(
        self, approvals_service: ApprovalsService, as_agent: Api
    ) -> None:
        """The CLI writes to the database directly; the waiting reader still learns it quickly."""
        call_id = create(as_agent)
        headers = {"Authorization": f"Bearer {approvals_service.agent_key}"}
        async with httpx.AsyncClient(
            base_url=approvals_service.base_url, timeout=30, headers=headers
        ) as client:
            waiter = asyncio.create_task(client.get(f"/function_calls/{call_id}", params={"wait": 15}))
            await asyncio.sleep(0.3)
            result = await asyncio.to_thread(
                CliRunner().invoke,
                cli,
                ["approve", call_id, "--as", "bob", "--database-url", approvals_service.database_url],
            )
            assert result.exit_code == 0, result.output
            decided_at = time.monotonic()
            resp = await waiter
            lag = time.monotonic() - decided_at
        assert resp.json()["status"]["user_info"]["name"] == "bob"
        assert lag < 2, lag


@pytest.mark.postgres
async def test_replicas_on_postgres_wake_each_other_through_notify(empty_postgres_url: str) -> None:
    """Two ``serve`` processes on one PostgreSQL database, re-reading changes only every 10 s: a
    decision made on one reaches a long-poll on the other at once (LISTEN/NOTIFY), and so does one
    the CLI writes to the database."""
    import tempfile
    from pathlib import Path

    from tests.fixtures.approvals import make_keys
    from tests.fixtures.processes import free_port

    url = empty_postgres_url
    root = Path(tempfile.mkdtemp(prefix="hlml-notify-"))
    slow = {"HLML_APPROVALS_RECHECK_INTERVAL": "10"}
    first = ApprovalsService(database_url=url, root=root / "a", port=free_port(), extra_env=slow)
    first.root.mkdir(parents=True)
    make_keys(first)
    second = ApprovalsService(database_url=url, root=root / "b", port=free_port(), extra_env=slow)
    second.root.mkdir(parents=True)
    # ApprovalsService.start sets its own recheck interval; the slow one wins (extra_env last).
    first.start()
    second.start()
    try:
        agent = Api(first, first.agent_key)
        reviewer_on_second = Api(second, first.reviewer_key)
        headers = {"Authorization": f"Bearer {first.agent_key}"}
        for decide in ("other replica", "cli"):
            call_id = create(agent)
            async with httpx.AsyncClient(base_url=first.base_url, timeout=30, headers=headers) as client:
                # Let the first replica's listener connect (it starts with its first request).
                await asyncio.sleep(1.0)
                waiter = asyncio.create_task(client.get(f"/function_calls/{call_id}", params={"wait": 20}))
                await asyncio.sleep(0.5)
                if decide == "other replica":
                    resp = await asyncio.to_thread(
                        reviewer_on_second.post,
                        f"/agent/function_calls/{call_id}/respond",
                        json={"approved": True},
                    )
                    assert resp.status_code == 200, resp.text
                else:
                    result = await asyncio.to_thread(
                        CliRunner().invoke, cli, ["approve", call_id, "--as", "bob", "--database-url", url]
                    )
                    assert result.exit_code == 0, result.output
                decided_at = time.monotonic()
                resp = await waiter
                lag = time.monotonic() - decided_at
            assert resp.json()["status"]["approved"] is True, decide
            assert lag < 2, (decide, lag)  # the 10 s re-check could not have found it this soon
    finally:
        second.stop()
        first.stop()
