"""Adversarial tests of the dashboard and the webhook receiver in a real Airflow API server.

A real ``airflow api-server`` with the plugin, SimpleAuthManager users, the embedded approvals
service and a real MLflow server whose connection names a hostile UI URL; headless Chromium for
the stored-XSS check; raw sockets where the test must control exactly what goes on the wire. The
signed-webhook tests serve the receiver app with a secret under uvicorn on a real metadata DB.

Signatures are computed here from the documented format (HMAC-SHA256 of ``v1:{timestamp}:{body}``)
rather than with the package's own helper, so the format itself is under test.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import select
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.browser.dashboard_stack import (
    CHROMIUM,
    DashboardServer,
    dashboard_routes,
    gate_dag_source,
    require_browser,
    start_dashboard_server,
)
from tests.fixtures.airflow_stack import MetadataDatabases
from tests.fixtures.processes import free_port

pytestmark = pytest.mark.integration

DAG_ID = "hlml_security_gate"
#: What ``DashboardServer.create_gate_request`` puts in ``spec.state.hlml.airflow``.
GATE_RUN_ID = "manual__1"
GATE_TASK_ID = "approve"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
HOSTILE_HOST = "evil.example"
#: The MLflow UI URL of the connection: every MLflow link of the dashboard starts with it.
HOSTILE_MLFLOW_UI = "javascript:alert(document.cookie)//"
WEBHOOK_PATH = "/hlml/webhooks/humanlayer"
SECRET = "security-webhook-secret"


def hostile_urls(victim: str) -> list[str]:
    """``ti_url`` values an agent key may write; the first approves ``victim`` as whoever clicks."""
    approve_victim = (
        f"fetch('/hlml/api/approvals/{victim}/decision',{{method:'POST',credentials:'same-origin',"
        "headers:{'Content-Type':'application/json'},"
        "body:JSON.stringify({approved:true,comment:'clicked'})})"
    )
    return [
        f"javascript:{approve_victim}",
        f"JaVaScRiPt:{approve_victim}",
        f"java\tscript:{approve_victim}",
        f" \njavascript:{approve_victim}",
        "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
        "vbscript:msgbox(1)",
        f"//{HOSTILE_HOST}/phish",
        f"/\\{HOSTILE_HOST}/phish",
        f"https://{HOSTILE_HOST}/phish",
    ]


# ----------------------------------------------------------------------------- fixtures


def _seed_mlflow(url: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url)
    exp_id = client.create_experiment(f"security-{uuid.uuid4().hex[:6]}")
    run = client.create_run(exp_id, run_name="train")
    client.log_metric(run.info.run_id, "accuracy", 0.9)
    client.set_terminated(run.info.run_id)
    client.create_registered_model("security-model")
    client.create_model_version("security-model", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)


@pytest.fixture(scope="module")
def server(metadata_databases: MetadataDatabases, mlflow_server: Any) -> Iterator[DashboardServer]:
    """The API server without a webhook secret: every webhook body is read again, unauthenticated."""
    _seed_mlflow(mlflow_server.url)
    workdir = Path(tempfile.mkdtemp(prefix="hlml-security-"))
    (workdir / "dags").mkdir()
    (workdir / "dags" / "gate_dag.py").write_text(gate_dag_source(DAG_ID))
    mlflow_conn = {"conn_type": "mlflow", "host": mlflow_server.url, "extra": {"ui_url": HOSTILE_MLFLOW_UI}}
    srv = start_dashboard_server(
        workdir,
        metadata_databases.sqlite(workdir / "airflow.db"),
        extra_env={"AIRFLOW_CONN_MLFLOW_DEFAULT": json.dumps(mlflow_conn)},
    )
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def signed_webhook_url(airflow_db: Any) -> Iterator[str]:
    """The receiver app with ``[hlml] webhook_secret`` set, served by uvicorn on a free port."""
    import uvicorn

    from airflow_provider_hlml.plugins.webhooks import create_webhook_app

    port = free_port()
    uv = uvicorn.Server(
        uvicorn.Config(
            create_webhook_app(data=None, secret=SECRET), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/humanlayer"
    finally:
        uv.should_exit = True
        thread.join(10)


def _pending(server: DashboardServer, **kwargs: Any) -> str:
    call_id = f"sec-{uuid.uuid4().hex[:10]}"
    server.create_gate_request(call_id=call_id, dag_id=DAG_ID, **kwargs)
    return call_id


def _envelope(call: Any) -> dict[str, Any]:
    return {"is_test": False, "type": "function_call.completed", "event": call}


def _function_call(call_id: Any) -> dict[str, Any]:
    return {
        "run_id": "r",
        "call_id": call_id,
        "spec": {"fn": "deploy", "kwargs": {}},
        "status": {"approved": True, "comment": "ok", "responded_at": "2026-01-01T00:00:00Z"},
    }


# ----------------------------------------------------------------------------- the URL rule

GOOD_LINKS = [
    "/dags/x/runs/manual__1/tasks/approve",
    "/airflow/dags/a%2Fb",
    "/hlml/approvals?status=all#top",
    "http://mlflow.internal:5000/#/experiments/1",
    "https://mlflow.example.com/#/models/churn%20model/versions/3",
    "HTTPS://Airflow.Example.com/dags",
]
BAD_LINKS = [
    None,
    "",
    42,
    ["/dags"],
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    " javascript:alert(1)",
    "java\tscript:alert(1)",
    "java\nscript:alert(1)",
    "java\x00script:alert(1)",
    "\x01javascript:alert(1)",
    "javascript\u200b:alert(1)",
    "&#106;avascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "vbscript:msgbox(1)",
    "file:///etc/passwd",
    "ftp://example.com/x",
    "//evil.example/x",
    "/\\evil.example/x",
    "\\\\evil.example/x",
    "http:/\\evil.example",
    "http:\\\\evil.example",
    "https:evil.example",
    "https:///path-only",
    "http://user:pass@evil.example/",
    "https://evil.example\\@good.example/",
    "https://evil .example/",
    "https://évil.example/",
    "dags/relative",
    "#fragment",
    "?query",
    "/" + "a" * 5000,
]


class TestLinkRule:
    @pytest.mark.parametrize("url", GOOD_LINKS)
    def test_allowed(self, url: str) -> None:
        from airflow_provider_hlml.review.links import safe_link

        assert safe_link(url) == url

    @pytest.mark.parametrize("url", BAD_LINKS, ids=lambda v: repr(v)[:40])
    def test_refused(self, url: Any) -> None:
        from airflow_provider_hlml.review.links import safe_link

        assert safe_link(url) is None

    def test_task_link_is_built_from_ids_never_from_the_request(self) -> None:
        from airflow_provider_hlml.plugins.views import normalize_call

        def call(airflow: dict[str, Any]) -> dict[str, Any]:
            return {
                "call_id": "c",
                "spec": {"fn": "f", "kwargs": {}, "state": {"hlml": {"airflow": airflow}}},
            }

        ids = {"dag_id": "d/1", "run_id": "manual__1", "task_id": "gate"}
        hostile = {**ids, "ti_url": "https://evil.example/"}
        assert normalize_call(call(hostile), airflow_base_path="/af")["ti_url"] == (
            "/af/dags/d%2F1/runs/manual__1/tasks/gate"
        )
        mapped = {**ids, "map_index": 3}
        assert normalize_call(call(mapped), airflow_base_path="")["ti_url"] == (
            "/dags/d%2F1/runs/manual__1/tasks/gate/mapped/3"
        )
        only_url = {"ti_url": "/dags/x/runs/y/tasks/z"}
        assert normalize_call(call(only_url), airflow_base_path="")["ti_url"] is None
        not_strings = {"dag_id": ["d"], "run_id": {"r": 1}, "task_id": 3, "ti_url": "/x"}
        item = normalize_call(call(not_strings), airflow_base_path="")
        assert (item["dag_id"], item["dag_run_id"], item["task_id"], item["ti_url"]) == (
            None,
            None,
            None,
            None,
        )


# ----------------------------------------------------------------------------- stored XSS, in Chromium


ALL_HREFS = "els => els.map(a => ({raw: a.getAttribute('href'), resolved: a.href}))"


def _assert_inert(links: list[dict[str, str]], origin: str, page: str) -> None:
    """Every link of a dashboard page is http(s) on the Airflow origin (MLflow's UI URL is hostile)."""
    assert links, page
    for link in links:
        raw, resolved = link["raw"], link["resolved"]
        scheme = raw.split(":", 1)[0].strip().lower() if ":" in raw else ""
        assert scheme not in ("javascript", "data", "vbscript"), (page, raw)
        assert not raw.startswith(("//", "/\\", "\\")), (page, raw)
        assert urlsplit(resolved).scheme in ("http", "https"), (page, raw)
        assert f"{urlsplit(resolved).scheme}://{urlsplit(resolved).netloc}" == origin, (page, raw)


@pytest.mark.browser
def test_urls_from_requests_and_mlflow_render_inert_in_chromium(server: DashboardServer) -> None:
    require_browser()
    from playwright.sync_api import sync_playwright

    victim = _pending(server, approvers=["approver"], subject="Victim request")
    hostile = {
        _pending(server, approvers=[], subject=f"Hostile link {n}", ti_url=url, map_index=n - 1): url
        for n, url in enumerate(hostile_urls(victim))
    }
    everyone = [victim, *hostile]
    token = server.token("approver")
    origin = server.url

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context()
            context.add_cookies([{"name": "_token", "value": token, "url": server.url}])
            page = context.new_page()
            page.set_default_timeout(60_000)
            for path in ("/hlml/", "/hlml/approvals?status=all", "/hlml/experiments", "/hlml/analytics"):
                page.goto(server.url + path)
                page.wait_for_selector("nav.tabs")
                _assert_inert(page.eval_on_selector_all("a[href]", ALL_HREFS), origin, path)
                if path == "/hlml/experiments":
                    # The MLflow data is there, shown as text: its links were refused, not lost.
                    assert "security-model" in page.inner_text("main")

            for call_id, url in hostile.items():
                page.goto(f"{server.url}/hlml/approvals?status=pending")
                link = page.locator(f"article[data-call-id='{call_id}'] .meta a")
                map_index = hostile_urls(victim).index(url) - 1
                expected = f"/dags/{DAG_ID}/runs/{GATE_RUN_ID}/tasks/{GATE_TASK_ID}" + (
                    f"/mapped/{map_index}" if map_index >= 0 else ""
                )
                assert link.get_attribute("href") == expected, url
                link.click()
                page.wait_for_url(f"**{expected}")
            page.wait_for_timeout(1_000)  # a fetch() fired by a click would have landed by now
        finally:
            browser.close()

    for call_id in everyone:
        status = server.get_call(call_id)["status"]
        assert status["approved"] is None, (call_id, status)
        assert status.get("responded_at") is None, call_id


# ----------------------------------------------------------------------------- the webhook route, unsigned


HOSTILE_CALL_IDS: list[Any] = [
    "a\x00b",
    "\x00",
    "\ud800",
    "ok\udfffok",
    "x" * 10_000,
    "x/../../function_calls",
    "..",
    "a b",
    "a\nb",
    "a?b",
    "a#b",
    "%00",
    5,
    1.5,
    True,
    ["x"],
    {"a": "b"},
]


def _hostile_bodies() -> list[tuple[str, bytes]]:
    bodies = [
        (f"call_id={cid!r:.40}", json.dumps(_envelope(_function_call(cid))).encode())
        for cid in HOSTILE_CALL_IDS
    ]
    deep = "[" * 20_000 + "]" * 20_000
    bodies += [
        (
            "deep nesting",
            f'{{"type": "function_call.completed", "event": {{"call_id": "x", "spec": {deep}}}}}'.encode(),
        ),
        ("NUL in a key", json.dumps(_envelope({"call_id": "x", "spec\x00": {}})).encode()),
        ("NUL elsewhere", json.dumps(_envelope({**_function_call("x"), "run_id": "r\x00"})).encode()),
        ("NaN", b'{"type": "function_call.completed", "event": {"call_id": "x", "n": NaN}}'),
        ("invalid UTF-8", b'{"type": "function_call.completed", "event": {"call_id": "\xff\xfe"}}'),
        ("event is a string", json.dumps({"type": "function_call.completed", "event": "x"}).encode()),
        ("type is a number", json.dumps({"type": 5, "event": _function_call("x")}).encode()),
        ("a bare number", b"12"),
        ("not JSON", b"\x00\x01\x02"),
        ("empty", b""),
    ]
    return bodies


def test_hostile_webhook_bodies_get_4xx_never_5xx(server: DashboardServer) -> None:
    answers = {}
    for name, raw in _hostile_bodies():
        resp = httpx.post(
            server.url + WEBHOOK_PATH, content=raw, headers={"Content-Type": "application/json"}, timeout=60
        )
        answers[name] = resp.status_code
    assert all(400 <= code < 500 for code in answers.values()), answers
    # The server is still fine.
    assert httpx.get(f"{server.url}/api/v2/monitor/health", timeout=30).status_code == 200


def _read_response(sock: socket.socket, buffered: bytes) -> bytes:
    data = buffered
    sock.settimeout(10)
    while b"\r\n\r\n" not in data:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
    return data


def test_huge_streamed_body_is_refused_before_it_is_read(server: DashboardServer) -> None:
    host, port = urlsplit(server.url).hostname, urlsplit(server.url).port
    total = 60 * 1024 * 1024
    chunk = b"a" * (256 * 1024)
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(
            (
                f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                "Transfer-Encoding: chunked\r\n\r\n"
            ).encode()
        )
        sock.setblocking(False)
        sent, answer = 0, b""
        deadline = time.monotonic() + 120
        pending = memoryview(framed)
        while sent < total and time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock], [], 1.0)
            if readable:
                try:
                    answer = sock.recv(65536)
                except (ConnectionResetError, BlockingIOError):
                    answer = answer or b""
                break
            if writable:
                try:
                    n = sock.send(pending)
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += n
                pending = pending[n:] if n < len(pending) else memoryview(framed)
        sock.setblocking(True)
        answer = _read_response(sock, answer) if not answer.endswith(b"\r\n\r\n") else answer
    status_line = answer.split(b"\r\n", 1)[0]
    assert b" 413 " in status_line, (status_line, sent)
    # Answered long before the client was done: the server stopped reading at the limit.
    assert sent < 16 * 1024 * 1024, sent


def test_declared_oversized_body_is_refused_before_any_byte_of_it(server: DashboardServer) -> None:
    host, port = urlsplit(server.url).hostname, urlsplit(server.url).port
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(
            (
                f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {60 * 1024 * 1024}\r\n\r\n"
            ).encode()
        )
        answer = _read_response(sock, b"")
    assert b" 413 " in answer.split(b"\r\n", 1)[0], answer[:200]


# ----------------------------------------------------------------------------- redirects and anonymous callers


def test_redirects_never_take_their_host_from_the_request(server: DashboardServer) -> None:
    paths = [
        ("GET", "/hlml/approvals/"),
        ("GET", "/hlml/experiments/"),
        ("GET", "/hlml/api/overview/"),
        ("GET", "/hlml/static/dashboard.css/"),
        ("POST", WEBHOOK_PATH + "/"),
        ("GET", "/hlml/humanlayer/v1/function_calls/"),
        ("GET", "/hlml"),
    ]
    for hostile_headers in ({"Host": HOSTILE_HOST}, {"X-Forwarded-Host": HOSTILE_HOST}):
        for method, path in paths:
            for user in (None, "admin"):
                headers = dict(hostile_headers)
                if user:
                    headers["Authorization"] = f"Bearer {server.token(user)}"
                resp = httpx.request(method, server.url + path, headers=headers, timeout=30)
                location = resp.headers.get("location", "")
                assert HOSTILE_HOST not in location, (method, path, resp.status_code, location)
                if location:
                    assert (
                        not urlsplit(location).netloc
                        or urlsplit(location).netloc == urlsplit(server.url).netloc
                    )


def _dashboard_routes() -> list[tuple[str, str]]:
    return [
        (method, route.path.replace("{call_id}", "any-call").replace("{name}", "dashboard.js"))
        for route in dashboard_routes()
        for method in sorted(route.methods or ())
    ]


def test_nothing_is_served_to_anonymous_callers_but_the_webhook(server: DashboardServer) -> None:
    routes = _dashboard_routes()
    assert len(routes) >= 11
    call_id = _pending(server, approvers=[], subject="Anonymous must not see this subject")
    answers: dict[tuple[str, str, str], int] = {}
    for method, path in routes:
        for variant in {path, path.rstrip("/") + "/", path + "/"}:
            body = {"approved": True, "comment": "x"} if method == "POST" else None
            for cookie in ("", "_token=not-a-jwt"):
                resp = httpx.request(
                    method,
                    f"{server.url}/hlml{variant}",
                    json=body,
                    headers={"Cookie": cookie} if cookie else {},
                    timeout=30,
                )
                answers[(method, variant, cookie)] = resp.status_code
                assert "Anonymous must not see" not in resp.text, (method, variant)
    # Exact paths need a login; anything else is not found. Nothing redirects or fails.
    assert all(code in (401, 403, 404, 405) for code in answers.values()), answers
    assert all(answers[(m, p, c)] in (401, 403) for m, p in routes for c in ("", "_token=not-a-jwt")), answers
    for extra in ("/hlml/webhooks/humanlayer", "/hlml/webhooks/docs", "/hlml/webhooks/openapi.json"):
        assert httpx.get(server.url + extra, timeout=30).status_code in (404, 405), extra
    # The webhook is public by design: it answers what happened, never the request's content.
    resp = httpx.post(server.url + WEBHOOK_PATH, json=_envelope(_function_call(call_id)), timeout=30)
    assert resp.status_code == 200, resp.text
    assert set(resp.json()) <= {"call_id", "outcome", "detail"}
    assert "Anonymous must not see" not in resp.text
    assert server.get_call(call_id)["status"]["approved"] is None


# ----------------------------------------------------------------------------- signed webhooks


def _sign(raw: bytes, timestamp: int | str, secret: str = SECRET) -> str:
    return "v1=" + hmac.new(secret.encode(), f"v1:{timestamp}:".encode() + raw, hashlib.sha256).hexdigest()


def _post_signed(
    url: str, raw: bytes, *, timestamp: int | str | None = None, sig: str | None = None
) -> httpx.Response:
    ts = str(int(time.time())) if timestamp is None else str(timestamp)
    headers = {
        "Content-Type": "application/json",
        "X-HLML-Request-Timestamp": ts,
        "X-HLML-Signature": sig or _sign(raw, ts),
    }
    return httpx.post(url, content=raw, headers=headers, timeout=30)


def _signed_body(call_id: str = "sec-signed") -> bytes:
    return json.dumps(_envelope(_function_call(call_id))).encode()


def test_correctly_signed_fresh_body_is_accepted(signed_webhook_url: str) -> None:
    resp = _post_signed(signed_webhook_url, _signed_body())
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"call_id": "sec-signed", "outcome": "not-a-gate"}


# Clear of the 300 s window by more than the whole seconds the timestamp loses and the time the
# request takes (301 ahead could land at 299.x once the server read its clock).
@pytest.mark.parametrize("skew", [-330, 330, -86_400])
def test_stale_or_future_timestamp_is_refused(signed_webhook_url: str, skew: int) -> None:
    raw = _signed_body()
    resp = _post_signed(signed_webhook_url, raw, timestamp=int(time.time()) + skew)
    assert resp.status_code == 401
    message = resp.json()["error"]["message"]
    assert "X-HLML-Request-Timestamp" in message
    assert "replay window" in message


def test_replayed_signature_with_a_new_timestamp_is_refused(signed_webhook_url: str) -> None:
    raw = _signed_body()
    captured_at = int(time.time())
    captured = _sign(raw, captured_at)
    assert _post_signed(signed_webhook_url, raw, timestamp=captured_at, sig=captured).status_code == 200
    for replayed_at in (captured_at + 1, captured_at - 1, f"+{captured_at}", f"0{captured_at}"):
        resp = _post_signed(signed_webhook_url, raw, timestamp=replayed_at, sig=captured)
        assert resp.status_code == 401, replayed_at
    # The old, timestamp-less signature of the body alone is no longer accepted.
    bare = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
    resp = httpx.post(signed_webhook_url, content=raw, headers={"X-HLML-Signature": bare}, timeout=30)
    assert resp.status_code == 401
    assert "X-HLML-Request-Timestamp" in resp.json()["error"]["message"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-HLML-Request-Timestamp": "1e9"},
        {"X-HLML-Request-Timestamp": "-5"},
        {"X-HLML-Request-Timestamp": "\uff11\uff12\uff13"},
        {"X-HLML-Request-Timestamp": "9" * 40},
    ],
    ids=["none", "float", "negative", "fullwidth", "huge"],
)
def test_malformed_timestamp_is_refused(signed_webhook_url: str, headers: dict[str, str]) -> None:
    raw = _signed_body()
    ts = headers.get("X-HLML-Request-Timestamp", "")
    sent = {k: v.encode() for k, v in headers.items()}
    resp = httpx.post(
        signed_webhook_url, content=raw, headers={**sent, "X-HLML-Signature": _sign(raw, ts)}, timeout=30
    )
    assert resp.status_code == 401
    assert "X-HLML-Request-Timestamp" in resp.json()["error"]["message"]


def test_signed_hostile_bodies_get_422(signed_webhook_url: str) -> None:
    answers = {}
    for name, raw in _hostile_bodies():
        answers[name] = _post_signed(signed_webhook_url, raw).status_code
    assert all(code == 422 for code in answers.values()), answers
