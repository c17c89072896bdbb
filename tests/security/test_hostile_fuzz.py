"""Schemathesis against the service's OpenAPI, with the strings an attacker sends.

Schemathesis builds a valid case for every operation from the service's own OpenAPI document;
hypothesis then poisons it: a string value or key becomes a lone UTF-16 surrogate, a NUL, a
right-to-left override or markup; a number becomes one no float can hold or an integer of
thousands of digits; a value is buried under deep nesting; path and query parameters get the same
treatment. The body is sent as JSON text exactly as built (escapes such as ``\\ud800`` reach the
server unchanged). Then, on SQLite and PostgreSQL:

- no answer is a 5xx, and every refusal is the service's error body;
- every request the service committed is still readable afterwards, one by one, with its audit
  trail, and every list route still answers (one poisoned row used to break them all).
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.approvals.test_fuzz import PER_OPERATION
from tests.fixtures.approvals import ApprovalsService

pytestmark = pytest.mark.security

EXAMPLES_PER_OPERATION = 12

HOSTILE_STRINGS = st.one_of(
    st.sampled_from(
        [
            "x\ud800",
            "\udfff",
            "\ud800\udc00",  # a surrogate pair written as two escapes: one valid character
            "a\x00b",
            "\x00",
            "\u202egpj.exe",
            "<script>alert(1)</script>",
            "javascript:alert(1)",
            "\ufeff\ufffe\uffff",
            "x" * 5000,
        ]
    ),
    st.text(alphabet=st.characters(categories=["Cs", "Cc", "Cf", "Co"]), min_size=1, max_size=8),
)
# Numbers written into the JSON text as they are: Python's float reads the first two as
# infinities, and its int refuses more than 4,300 digits.
HUGE_NUMBERS = st.sampled_from(["1e400", "-1e400", "9" * 5000, "1" + "0" * 400, "-0.0", "1e-400"])
NESTING_DEPTHS = st.sampled_from([40, 1_000, 100_000])


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    """Every (path, value) of a JSON document, containers included."""
    found: list[tuple[tuple[Any, ...], Any]] = [(path, value)]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _leaves(v, (*path, i))
    return found


def _replace(doc: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, *rest = path
    copy: Any = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[head] = _replace(doc[head], tuple(rest), new)
    return copy


def _rename_key(doc: Any, path: tuple[Any, ...], new_key: str) -> Any:
    parent_path, key = path[:-1], path[-1]
    parent = doc
    for step in parent_path:
        parent = parent[step]
    renamed = {(new_key if k == key else k): v for k, v in parent.items()}
    return _replace(doc, parent_path, renamed)


@st.composite
def poisoned_json(draw: st.DrawFn, body: Any) -> str:
    """``body`` as JSON text with one part poisoned."""
    places = _leaves(body)
    path, _value = draw(st.sampled_from(places))
    how = draw(st.sampled_from(["string", "key", "number", "nesting"]))
    raw: dict[str, str] = {}
    if how == "key" and path and isinstance(path[-1], str):
        body = _rename_key(body, path, draw(HOSTILE_STRINGS))
    elif how == "number":
        raw['"__HUGE__"'] = draw(HUGE_NUMBERS)
        body = _replace(body, path, "__HUGE__")
    elif how == "nesting":
        depth = draw(NESTING_DEPTHS)
        raw['"__DEEP__"'] = "[" * depth + "1" + "]" * depth
        body = _replace(body, path, "__DEEP__")
    else:
        body = _replace(body, path, draw(HOSTILE_STRINGS))
    text = json.dumps(body)  # ensure_ascii: a lone surrogate goes out as its \\uXXXX escape
    for marker, replacement in raw.items():
        text = text.replace(marker, replacement)
    return text


def _quote(value: str) -> str:
    return urllib.parse.quote(value.encode("utf-8", "surrogatepass"), safe="")


@pytest.fixture(scope="module")
def operations(approvals_service: ApprovalsService) -> list[Any]:
    raw = httpx.get(approvals_service.base_url + "/openapi.json").json()
    schema = schemathesis.openapi.from_dict(raw)
    return [result.ok() for result in schema.get_all_operations()]


def test_hostile_input_gets_no_5xx_and_leaves_every_row_readable(
    service: ApprovalsService, operations: list[Any]
) -> None:
    keys = [service.agent_key, service.admin_key, service.reviewer_key, service.delegate_key]
    client = httpx.Client(base_url=service.root_url, timeout=60)
    statuses: dict[int, int] = {}
    assert len(operations) >= 15

    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE), data=st.data())
        @settings(PER_OPERATION, max_examples=EXAMPLES_PER_OPERATION)
        def check(case: schemathesis.Case, data: st.DataObject) -> None:
            path = operation.path  # noqa: B023 (check() runs inside this iteration)
            for name, value in (case.path_parameters or {}).items():
                if data.draw(st.booleans()):
                    value = data.draw(HOSTILE_STRINGS)
                path = path.replace("{" + name + "}", _quote(str(value)))
            query = dict(case.query or {})
            query.pop("wait", None)  # no long-polls
            pairs = [(k, str(v)) for k, v in query.items()]
            if data.draw(st.booleans()):
                pairs.append((data.draw(st.sampled_from(["run_id", "fn", "status", "since", "limit"])), ""))
                pairs[-1] = (pairs[-1][0], data.draw(HOSTILE_STRINGS))
            query_string = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in pairs)
            content = None
            if case.body is not None and not isinstance(case.body, schemathesis.core.NotSet):
                content = data.draw(poisoned_json(case.body)).encode("ascii")
            headers = {"Authorization": f"Bearer {data.draw(st.sampled_from(keys))}"}
            if content is not None:
                headers["Content-Type"] = "application/json"
            url = path + (f"?{query_string}" if query_string else "")
            response = client.request(case.method, url, content=content, headers=headers)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, (
                f"{case.method} {url} -> {response.status_code} {response.text}"
            )
            if response.status_code >= 400 and response.status_code != 404:
                error = response.json()["error"]
                assert error["message"]
                assert error["code"]

        check()

    print(f"answers by status: {dict(sorted(statuses.items()))}")
    assert any(400 <= code < 500 for code in statuses), statuses
    assert statuses.get(200, 0) + statuses.get(201, 0) > 0, statuses
    _every_row_is_readable(client, service.admin_key)


def _every_row_is_readable(client: httpx.Client, key: str) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    prefix = "/humanlayer/v1"
    for collection, audit in (("function_calls", "function_calls"), ("contact_requests", "contact_requests")):
        offset, seen = 0, 0
        while True:
            page = client.get(
                f"{prefix}/{collection}", params={"limit": 1000, "offset": offset}, headers=headers
            )
            assert page.status_code == 200, f"{collection}: {page.text}"
            items = page.json()
            total = int(page.headers["X-Total-Count"])
            for item in items:
                call_id = _quote(item["call_id"])
                one = client.get(f"{prefix}/{collection}/{call_id}", headers=headers)
                assert one.status_code == 200, f"{collection}/{item['call_id']!r}: {one.text}"
                trail = client.get(f"{prefix}/{audit}/{call_id}/audit", headers=headers)
                assert trail.status_code == 200, trail.text
                # What was committed is valid text all the way through.
                json.dumps(one.json(), ensure_ascii=False).encode("utf-8")
            seen += len(items)
            offset += 1000
            if offset >= total:
                break
        assert seen == total
    for path in ("/agent/function_calls/pending", "/agent/human_contacts/pending", "/metrics/approvals"):
        assert client.get(prefix + path, headers=headers).status_code == 200, path
