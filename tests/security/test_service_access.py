"""Every route of the approvals service, without credentials and with each role that may not use it.

The table below is the service's role matrix. It must name every operation in the OpenAPI
document: a new route without an entry fails here until someone decides who may call it.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fixtures.approvals import ApprovalsService
from tests.security.conftest import Api, call_body, new_call_id

pytestmark = pytest.mark.security

ANY_ROLE = frozenset({"agent", "reviewer", "admin", "delegate"})
CREATORS = frozenset({"agent", "admin"})
RESPONDERS = frozenset({"reviewer", "admin", "delegate"})
MANAGERS = frozenset({"agent", "admin", "delegate"})  # and then only the creator or an admin

ROLE_MATRIX: dict[tuple[str, str], frozenset[str]] = {
    ("POST", "/function_calls"): CREATORS,
    ("GET", "/function_calls"): ANY_ROLE,
    ("GET", "/agent/function_calls/pending"): ANY_ROLE,
    ("GET", "/function_calls/{call_id}"): ANY_ROLE,
    ("POST", "/agent/function_calls/{call_id}/respond"): RESPONDERS,
    ("POST", "/agent/function_calls/{call_id}/escalate_email"): MANAGERS,
    ("POST", "/agent/function_calls/{call_id}/cancel"): MANAGERS,
    ("GET", "/function_calls/{call_id}/audit"): ANY_ROLE,
    ("GET", "/function_calls/{call_id}/attestation"): ANY_ROLE,
    ("POST", "/contact_requests"): CREATORS,
    ("GET", "/contact_requests"): ANY_ROLE,
    ("GET", "/agent/human_contacts/pending"): ANY_ROLE,
    ("GET", "/contact_requests/{call_id}"): ANY_ROLE,
    ("POST", "/agent/human_contacts/{call_id}/respond"): RESPONDERS,
    ("POST", "/agent/human_contacts/{call_id}/escalate_email"): MANAGERS,
    ("POST", "/agent/human_contacts/{call_id}/cancel"): MANAGERS,
    ("GET", "/contact_requests/{call_id}/audit"): ANY_ROLE,
    ("GET", "/metrics/approvals"): ANY_ROLE,
    ("GET", "/hlml/features"): ANY_ROLE,
    ("GET", "/hlml/deliveries"): ANY_ROLE,
    ("POST", "/hlml/function_calls/settled"): ANY_ROLE,
    # Then only the request's creator or an admin (the decision itself is the request's own).
    ("POST", "/hlml/function_calls/{call_id}/decide_by_policy"): CREATORS,
    ("POST", "/hlml/registry_events"): CREATORS,
    ("GET", "/hlml/registry_events"): ANY_ROLE,
}
#: The public keys that verify attestations are for anyone serving a model (no key needed).
PUBLIC = {("GET", "/healthz"), ("GET", "/attestation/keys")}
#: Routes with a credential of their own instead of an API key: a one-click link's token, Slack's
#: signature (tests/approvals/test_delivery.py and test_delivery_slack.py test them in depth).
OWN_CREDENTIAL = {
    ("GET", "/hlml/act/{token}"),
    ("POST", "/hlml/act/{token}"),
    ("POST", "/hlml/slack/interactions"),
}

BODIES: dict[str, Any] = {
    "respond": {"approved": False, "comment": "no", "response": "no"},
    "escalate_email": {"escalation_msg": "hurry"},
    "cancel": {"reason": "cancelled"},
    "settled": {"call_ids": ["matrix-not-a-call"]},
    "registry_events": {"event": "alias_moved", "model": "matrix-model", "alias": "champion", "version": "1"},
}


@pytest.fixture(scope="module")
def openapi_operations(approvals_service: ApprovalsService) -> set[tuple[str, str]]:
    document = httpx.get(approvals_service.base_url + "/openapi.json").json()
    prefix = "/humanlayer/v1"
    return {
        (method.upper(), path.removeprefix(prefix))
        for path, item in document["paths"].items()
        for method in item
    }


def test_the_matrix_names_every_route(openapi_operations: set[tuple[str, str]]) -> None:
    assert openapi_operations == set(ROLE_MATRIX) | PUBLIC | OWN_CREDENTIAL


def test_routes_with_a_credential_of_their_own_refuse_without_it(approvals_service: ApprovalsService) -> None:
    base = approvals_service.base_url
    keys = _keys(approvals_service)
    for headers in ({}, {"Authorization": f"Bearer {keys['admin']}"}):
        # An API key is no substitute for a link's token: an unknown token is not found.
        assert httpx.get(f"{base}/hlml/act/{'x' * 43}", headers=headers, timeout=30).status_code == 404
        assert httpx.post(f"{base}/hlml/act/{'x' * 43}", headers=headers, timeout=30).status_code == 404
        # This service has no Slack app: the interactivity endpoint does not exist for anyone.
        slack = httpx.post(
            f"{base}/hlml/slack/interactions", headers=headers, content=b"payload=%7B%7D", timeout=30
        )
        assert slack.status_code == 404


def _keys(service: ApprovalsService) -> dict[str, str]:
    return {
        "agent": service.agent_key,
        "reviewer": service.reviewer_key,
        "admin": service.admin_key,
        "delegate": service.delegate_key,
    }


def _call(client: httpx.Client, method: str, template: str, call_ids: dict[str, str]) -> httpx.Response:
    kind = "contact" if "contact" in template or "human_contacts" in template else "call"
    path = template.replace("{call_id}", call_ids[kind])
    action = path.rsplit("/", 1)[-1]
    body: Any = BODIES.get(action)
    if method == "POST" and body is None:  # a create
        body = call_body(new_call_id("matrix"))
        if kind == "contact":
            body["spec"] = {"msg": "hello?"}
    return client.request(method, path, json=body if method == "POST" else None)


@pytest.fixture
def pending(service: ApprovalsService) -> dict[str, str]:
    """A fresh pending function call and human contact, created by the agent."""
    agent = Api(service, service.agent_key)
    call_id, contact_id = new_call_id("matrix-call"), new_call_id("matrix-contact")
    assert agent.post("/function_calls", json=call_body(call_id)).status_code == 201
    contact = {"run_id": "r", "call_id": contact_id, "spec": {"msg": "hello?"}}
    assert agent.post("/contact_requests", json=contact).status_code == 201
    return {"call": call_id, "contact": contact_id}


@pytest.mark.parametrize(("method", "template"), sorted(ROLE_MATRIX))
def test_without_credentials_every_route_answers_401(
    service: ApprovalsService, pending: dict[str, str], method: str, template: str
) -> None:
    for headers in ({}, {"Authorization": "Bearer hl_not-a-key"}, {"Authorization": "Basic YWxpY2U6eA=="}):
        client = httpx.Client(base_url=service.base_url, headers=headers, timeout=30)
        resp = _call(client, method, template, pending)
        assert resp.status_code == 401, f"{method} {template} with {headers}: {resp.status_code} {resp.text}"
        assert resp.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(("method", "template"), sorted(ROLE_MATRIX))
def test_each_role_that_may_not_use_a_route_gets_403(
    service: ApprovalsService, pending: dict[str, str], method: str, template: str
) -> None:
    refused_roles = sorted(ANY_ROLE - ROLE_MATRIX[(method, template)])
    for role in refused_roles:
        client = httpx.Client(
            base_url=service.base_url, headers={"Authorization": f"Bearer {_keys(service)[role]}"}, timeout=30
        )
        resp = _call(client, method, template, pending)
        assert resp.status_code == 403, f"{role}: {method} {template}: {resp.status_code} {resp.text}"
    # Nothing a refused role did changed the requests.
    agent = Api(service, service.agent_key)
    assert agent.get(f"/function_calls/{pending['call']}").json()["status"]["approved"] is None
    assert agent.get(f"/contact_requests/{pending['contact']}").json()["status"]["response"] is None


def test_openapi_and_docs_hold_no_data(approvals_service: ApprovalsService) -> None:
    """What the service serves without a key: its health, its schema and its docs page, nothing else."""
    for path in ("/openapi.json", "/docs"):
        resp = httpx.get(approvals_service.base_url + path)
        assert resp.status_code == 200
        assert 'call_id": "call-' not in resp.text
    health = httpx.get(approvals_service.root_url + "/healthz")
    assert health.status_code == 200
    assert set(health.json()) <= {"status", "long_poll_waiters"}


@pytest.mark.parametrize(
    "path", ["/function_calls/", "/agent/function_calls/pending/", "/metrics/approvals/"]
)
def test_no_redirect_takes_its_host_from_the_request(approvals_service: ApprovalsService, path: str) -> None:
    resp = httpx.get(
        approvals_service.base_url + path,
        headers={"Host": "evil.example", "Authorization": f"Bearer {approvals_service.agent_key}"},
        follow_redirects=False,
    )
    assert resp.status_code == 404, resp.headers
    assert "location" not in resp.headers
