"""Property test: generated and deliberately malformed requests never get a 5xx answer.

Schemathesis builds the cases from the service's own OpenAPI document, valid ones (positive) and
ones that break the schema (negative); hypothesis drives them against the running service.
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.fixtures.approvals import ApprovalsService

EXAMPLES_PER_OPERATION = 8
#: Hypothesis settings of one operation's cases: reproducible, no deadline, no example database.
PER_OPERATION = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="session")
def api_schema(approvals_service: ApprovalsService) -> Any:
    raw = httpx.get(approvals_service.base_url + "/openapi.json").json()
    schema = schemathesis.openapi.from_dict(raw)
    schema.config.update(base_url=approvals_service.root_url)
    return schema


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_server_errors(api_schema: Any, approvals_service: ApprovalsService, mode: GenerationMode) -> None:
    headers = {"Authorization": f"Bearer {approvals_service.admin_key}"}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 15
    seen: dict[int, int] = {}
    skipped = 0

    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @PER_OPERATION
        def check(case: schemathesis.Case) -> None:
            if isinstance(case.query, dict) and "wait" in case.query:
                case.query["wait"] = 0  # no long-polls: keeps the run short
            response = case.call(headers=headers, timeout=30)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert response.status_code < 500, f"{case.method} {case.formatted_path} -> {response.text}"
            if response.status_code >= 400 and "/hlml/act/" in case.path:
                # One-click links answer with pages for a browser, errors included.
                content_type = response.headers.get("content-type") or [""]
                content_type = content_type[0] if isinstance(content_type, list) else content_type
                assert content_type.startswith("text/html")
            elif response.status_code >= 400:
                error = response.json()["error"]
                assert error["message"]
                assert error["code"]

        try:
            check()
        except Unsatisfiable:
            # e.g. /healthz has no parameters or body that a negative case could break
            assert mode is GenerationMode.NEGATIVE
            skipped += 1
    assert skipped < len(operations) // 2
    assert sum(seen.values()) >= len(operations)
    if mode is GenerationMode.NEGATIVE:
        assert any(400 <= code < 500 for code in seen), seen


_CLIENTS: dict[str, httpx.Client] = {}


def _client(service: ApprovalsService) -> httpx.Client:
    """One keep-alive client per service (hypothesis calls the test body many times)."""
    if service.base_url not in _CLIENTS:
        _CLIENTS[service.base_url] = httpx.Client(base_url=service.base_url, timeout=30)
    return _CLIENTS[service.base_url]


JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=40,
)


@given(
    kwargs=st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=6),
    call_id=st.text(max_size=80),
    state=st.one_of(st.none(), st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3)),
)
@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_arbitrary_function_calls_round_trip(
    approvals_service: ApprovalsService, kwargs: dict[str, Any], call_id: str, state: dict[str, Any] | None
) -> None:
    """Any JSON the SDK could send is stored and read back unchanged, or refused with a 4xx."""
    headers = {"Authorization": f"Bearer {approvals_service.agent_key}"}
    body = {"run_id": "fuzz", "call_id": call_id, "spec": {"fn": "fuzz", "kwargs": kwargs, "state": state}}
    created = httpx.post(
        f"{approvals_service.base_url}/function_calls", json=body, headers=headers, timeout=30
    )
    assert created.status_code < 500, created.text
    if created.status_code >= 400:
        assert created.json()["error"]["message"]
        return
    path = urllib.parse.quote(call_id, safe="")
    fetched = _client(approvals_service).get(f"/function_calls/{path}", headers=headers)
    assert fetched.status_code == 200, fetched.text
    if created.status_code == 201:
        assert fetched.json()["spec"]["kwargs"] == kwargs
        assert fetched.json()["spec"]["state"] == state


@given(
    moment=st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30)),
    offset_minutes=st.integers(min_value=-23 * 60, max_value=23 * 60),
    field=st.sampled_from(["since", "until"]),
)
@settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_any_date_filter_is_answered(
    approvals_service: ApprovalsService, moment: dt.datetime, offset_minutes: int, field: str
) -> None:
    value = moment.replace(tzinfo=dt.timezone(dt.timedelta(minutes=offset_minutes))).isoformat()
    resp = _client(approvals_service).get(
        "/function_calls",
        params={field: value, "limit": 1},
        headers={"Authorization": f"Bearer {approvals_service.agent_key}"},
    )
    assert resp.status_code in (200, 422), resp.text
