"""The one error-body parser, URL redactor and Authorization header of the provider."""

from __future__ import annotations

import json

import pytest

from airflow_provider_hlml.utils.http import authorization_header, error_code, error_detail, redact_url


class TestRedactUrl:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("http://u:pw@mlflow:5000/x?y=1", "http://mlflow:5000/x?y=1"),
            ("https://token@Host.Example/api", "https://Host.Example/api"),
            ("http://u:p@ss@[::1]:8080/", "http://[::1]:8080/"),
            ("http://mlflow:5000", "http://mlflow:5000"),
            ("not a url", "not a url"),
            ("http://[broken", "http://[broken"),
        ],
    )
    def test_credentials_are_dropped(self, url: str, expected: str) -> None:
        assert redact_url(url) == expected


class TestErrorDetail:
    @pytest.mark.parametrize(
        ("body", "expected"),
        [
            ({"error": {"message": "call_id taken", "code": "call_id_taken"}}, "call_id taken"),
            ({"detail": "Not authenticated"}, "Not authenticated"),
            ({"detail": {"message": "approvers: unknown"}}, "approvers: unknown"),
            ({"detail": [{"loc": ["body"], "msg": "bad"}]}, '[{"loc": ["body"], "msg": "bad"}]'),
            ({"other": 1}, '{"other": 1}'),
        ],
    )
    def test_json_bodies(self, body: object, expected: str) -> None:
        assert error_detail(json.dumps(body)) == expected

    def test_non_json_body_is_cut(self) -> None:
        assert error_detail("  <html>" + "x" * 1000) == ("<html>" + "x" * 1000)[:300]
        assert error_detail(b"Bad Gateway\n") == "Bad Gateway"

    def test_error_code(self) -> None:
        assert error_code('{"error": {"code": "call_id_taken"}}') == "call_id_taken"
        assert error_code('{"error": {"code": 409}}') is None
        assert error_code("oops") is None


class TestAuthorizationHeader:
    def test_basic_wins_over_token(self) -> None:
        assert authorization_header("u", "p", "t") == "Basic dTpw"
        assert authorization_header("u", None, "t") == "Bearer t"
        assert authorization_header(None, None, None) is None
