"""Fixtures of the approvals-service tests: the service on SQLite and (when configured) PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.approvals import ApprovalsService, start_approvals_service
from tests.fixtures.processes import skip_or_fail

POSTGRES_URL_VAR = "HLML_TEST_POSTGRES_URL"


def _postgres_admin_url() -> str | None:
    return os.environ.get(POSTGRES_URL_VAR) or None


@contextlib.contextmanager
def fresh_postgres_database(prefix: str) -> Iterator[str]:
    """A new, uniquely named PostgreSQL database (its URL), dropped afterwards."""
    admin_url = _postgres_admin_url()
    if not admin_url:
        skip_or_fail(f"{POSTGRES_URL_VAR} is not set: the PostgreSQL variant of the approvals tests needs it")
    import psycopg2
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg2.connect(str(admin_url))
    except psycopg2.OperationalError as exc:
        skip_or_fail(f"cannot connect to PostgreSQL at {POSTGRES_URL_VAR}: {exc}")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def postgres_database_url() -> Iterator[str]:
    """A fresh, uniquely named PostgreSQL database for this session, dropped afterwards."""
    with fresh_postgres_database("hlml_approvals_test") as url:
        yield url


@pytest.fixture
def empty_postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database of this test's own, dropped afterwards."""
    with fresh_postgres_database("hlml_approvals_one") as url:
        yield url


@pytest.fixture(scope="session")
def postgres_approvals_service(postgres_database_url: str) -> Iterator[ApprovalsService]:
    service = start_approvals_service(
        postgres_database_url, Path(tempfile.mkdtemp(prefix="hlml-approvals-pg-"))
    )
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(
    scope="session",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def service(request: pytest.FixtureRequest) -> ApprovalsService:
    """The approvals service on each supported database."""
    if request.param == "sqlite":
        return request.getfixturevalue("approvals_service")  # type: ignore[no-any-return]
    return request.getfixturevalue("postgres_approvals_service")  # type: ignore[no-any-return]


class Api:
    """A small HTTP client for one key: ``api.get("/function_calls/x")`` under the API prefix."""

    def __init__(self, service: ApprovalsService, key: str | None) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(base_url=service.base_url, headers=headers, timeout=60)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


@pytest.fixture(scope="session")
def as_agent(approvals_service: ApprovalsService) -> Api:
    return Api(approvals_service, approvals_service.agent_key)


@pytest.fixture(scope="session")
def as_alice(approvals_service: ApprovalsService) -> Api:
    return Api(approvals_service, approvals_service.reviewer_key)


@pytest.fixture(scope="session")
def as_bob(approvals_service: ApprovalsService) -> Api:
    return Api(approvals_service, approvals_service.reviewer2_key)


@pytest.fixture(scope="session")
def as_admin(approvals_service: ApprovalsService) -> Api:
    return Api(approvals_service, approvals_service.admin_key)


@pytest.fixture(scope="session")
def as_delegate(approvals_service: ApprovalsService) -> Api:
    return Api(approvals_service, approvals_service.delegate_key)


def new_call_id(prefix: str = "call") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def call_body(
    call_id: str | None = None,
    *,
    fn: str = "model_promotion",
    state: dict[str, Any] | None = None,
    run_id: str = "run-1",
    reject_options: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "call_id": call_id or new_call_id(),
        "spec": {
            "fn": fn,
            "kwargs": {"subject": "Promote churn v3", "body": "", "context": {"model_version": "3"}},
            "state": state,
            "reject_options": reject_options,
        },
    }


def policy_state(
    approvers: list[str] | None = None, requester: str | None = None, allow_self_approval: bool = False
) -> dict[str, Any]:
    return {
        "hlml": {
            "approvers": approvers or [],
            "requester": requester,
            "allow_self_approval": allow_self_approval,
            "airflow": {"dag_id": "d", "run_id": "r", "task_id": "t", "map_index": -1, "try_number": 1},
        }
    }


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """``predicate()``'s first truthy value, polled every 0.1 s; fails naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
