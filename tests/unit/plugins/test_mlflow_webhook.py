"""``POST /hlml/webhooks/mlflow``: MLflow's signature and freshness, hostile input, what is acted on.

Driven over HTTP through the webhook app the plugin mounts; the guard itself is replaced by a
recorder (the real one runs in tests/integration/test_alias_guard.py).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from airflow_provider_hlml.plugins.mlflow_webhook import (
    SeenDeliveries,
    add_mlflow_route,
    alias_event,
    mlflow_signature,
    mlflow_signature_problem,
)

SECRET = "s3cret"


def _event(name: str = "churn", alias: str = "champion", action: str = "created") -> bytes:
    data = {"name": name, "alias": alias, **({"version": "3"} if action == "created" else {})}
    return json.dumps(
        {
            "entity": "model_version_alias",
            "action": action,
            "timestamp": "2025-01-01T00:00:00+00:00",
            "data": data,
        }
    ).encode()


def _signed(
    body: bytes, *, secret: str = SECRET, at: float | None = None, delivery: str | None = None
) -> dict[str, str]:
    delivery = delivery or str(uuid.uuid4())
    stamp = str(int(time.time() if at is None else at))
    return {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery,
        "X-MLflow-Timestamp": stamp,
        "X-MLflow-Signature": mlflow_signature(secret, delivery, stamp, body),
    }


@pytest.fixture
def checked() -> list[tuple[str, str]]:
    return []


def _client(checked: list[tuple[str, str]], secret: str = SECRET) -> TestClient:
    from fastapi import FastAPI

    app = FastAPI()
    add_mlflow_route(
        app,
        secret,
        is_protected=lambda model, alias: alias == "champion",
        check=lambda model, alias: checked.append((model, alias)),
    )
    return TestClient(app)


class TestSignature:
    def test_matches_what_mlflow_sends(self) -> None:
        from mlflow.webhooks.delivery import _generate_hmac_signature

        body = _event()
        assert mlflow_signature(SECRET, "d-1", "1700000000", body) == _generate_hmac_signature(
            SECRET, "d-1", "1700000000", body.decode()
        )

    def test_problems(self) -> None:
        body = _event()
        now = 1_700_000_000
        good = mlflow_signature(SECRET, "d", str(now), body)
        assert mlflow_signature_problem(SECRET, body, good, str(now), "d", now=now) is None
        assert "not set" in str(mlflow_signature_problem("", body, good, str(now), "d", now=now))
        assert "missing" in str(mlflow_signature_problem(SECRET, body, None, str(now), "d", now=now))
        assert "Delivery-Id" in str(mlflow_signature_problem(SECRET, body, good, str(now), None, now=now))
        assert "Unix seconds" in str(mlflow_signature_problem(SECRET, body, good, "soon", "d", now=now))
        assert "window" in str(mlflow_signature_problem(SECRET, body, good, str(now), "d", now=now + 301))
        assert "does not match" in str(
            mlflow_signature_problem(SECRET, body + b" ", good, str(now), "d", now=now)
        )
        assert "does not match" in str(mlflow_signature_problem(SECRET, body, good, str(now), "e", now=now))


class TestRoute:
    def test_a_signed_alias_event_is_checked_after_the_answer(self, checked: list[tuple[str, str]]) -> None:
        body = _event()
        answer = _client(checked).post("/mlflow", content=body, headers=_signed(body))
        assert answer.status_code == 202
        assert answer.json() == {"outcome": "checking", "model": "churn", "alias": "champion"}
        assert checked == [("churn", "champion")]

    def test_a_deleted_alias_is_checked_too(self, checked: list[tuple[str, str]]) -> None:
        body = _event(action="deleted")
        assert _client(checked).post("/mlflow", content=body, headers=_signed(body)).status_code == 202
        assert checked == [("churn", "champion")]

    @pytest.mark.parametrize(
        "headers",
        [
            lambda body: {"Content-Type": "application/json"},
            lambda body: _signed(body, secret="wrong"),
            lambda body: _signed(body, at=time.time() - 3600),
            lambda body: _signed(body, at=time.time() + 3600),
            lambda body: {k: v for k, v in _signed(body).items() if k != "X-MLflow-Timestamp"},
        ],
        ids=["unsigned", "wrong-secret", "stale", "future", "no-timestamp"],
    )
    def test_refused_with_401_and_nothing_checked(self, checked: list[tuple[str, str]], headers: Any) -> None:
        body = _event()
        answer = _client(checked).post("/mlflow", content=body, headers=headers(body))
        assert answer.status_code == 401
        assert checked == []

    def test_without_a_secret_every_delivery_is_refused(self, checked: list[tuple[str, str]]) -> None:
        body = _event()
        answer = _client(checked, secret="").post("/mlflow", content=body, headers=_signed(body, secret=""))
        assert answer.status_code == 401
        assert "mlflow_webhook_secret" in answer.json()["error"]["message"]
        assert checked == []

    def test_a_replayed_delivery_is_acted_on_once(self, checked: list[tuple[str, str]]) -> None:
        body = _event()
        client, headers = _client(checked), _signed(body)
        assert client.post("/mlflow", content=body, headers=headers).status_code == 202
        again = client.post("/mlflow", content=body, headers=headers)
        assert again.status_code == 200
        assert again.json()["outcome"] == "duplicate"
        assert checked == [("churn", "champion")]

    @pytest.mark.parametrize(
        "body",
        [
            json.dumps(
                {"entity": "registered_model", "action": "created", "data": {"name": "churn"}}
            ).encode(),
            _event(alias="staging"),
            json.dumps(
                {"entity": "model_version_alias", "action": "created", "data": {"name": 5.5}}
            ).encode(),
        ],
        ids=["other-entity", "unprotected-alias", "malformed-name"],
    )
    def test_other_events_are_ignored(self, checked: list[tuple[str, str]], body: bytes) -> None:
        answer = _client(checked).post("/mlflow", content=body, headers=_signed(body))
        assert answer.status_code == 200
        assert answer.json()["outcome"] == "ignored"
        assert checked == []

    @pytest.mark.parametrize(
        "body",
        [b"not json", b'{"a": NaN}', b'{"a": "\\u0000"}', b"[" * 100 + b"]" * 100],
        ids=["not-json", "nan", "nul", "deep"],
    )
    def test_hostile_bodies_are_refused_signed_or_not(
        self, checked: list[tuple[str, str]], body: bytes
    ) -> None:
        answer = _client(checked).post("/mlflow", content=body, headers=_signed(body))
        assert answer.status_code == 422
        assert checked == []

    def test_a_large_body_is_refused_unread(self, checked: list[tuple[str, str]]) -> None:
        body = b"{" + b" " * 1_100_000 + b"}"
        answer = _client(checked).post("/mlflow", content=body, headers=_signed(body))
        assert answer.status_code == 413

    def test_mounted_by_the_plugin_webhook_app(self) -> None:
        from airflow_provider_hlml.plugins.webhooks import create_webhook_app

        app = create_webhook_app(None, "x", "")
        assert "/mlflow" in {getattr(r, "path", None) for r in app.routes}


class TestParsing:
    def test_alias_event(self) -> None:
        assert alias_event(json.loads(_event())) == ("created", "churn", "champion")
        assert alias_event({"entity": "model_version_alias", "action": "updated", "data": {}}) is None
        assert (
            alias_event(
                {"entity": "model_version_alias", "action": "created", "data": {"name": "a\nb", "alias": "c"}}
            )
            is None
        )
        assert alias_event([1]) is None

    def test_seen_deliveries(self) -> None:
        seen = SeenDeliveries(limit=2)
        assert seen.first_time("a")
        assert not seen.first_time("a")
        assert seen.first_time("b")
        assert seen.first_time("c")  # "a" dropped: bounded
        assert seen.first_time("a")
