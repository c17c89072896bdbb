from __future__ import annotations

import pytest
from fastapi import HTTPException
from starlette.requests import Request

from airflow_provider_hlml.plugins.auth import Identity, require_same_origin


def _request(headers: dict[str, str]) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw, "query_string": b""})


class TestIdentity:
    def test_matches_name_and_email_case_insensitively(self) -> None:
        me = Identity(name="Ann", email="ann@example.com", user_id="42")
        assert me.matches_any(["ANN"])
        assert me.matches_any([" Ann@Example.com "])
        # The service judges the answer by the name and e-mail address the dashboard sends.
        assert not me.matches_any(["42"])
        assert not me.matches_any(["bob", None, 3])
        assert not me.matches_any([])

    def test_user_info_is_what_the_delegate_sends(self) -> None:
        assert Identity(name="ann", email=None, user_id="ann").user_info() == {"name": "ann", "email": None}


class TestRequireSameOrigin:
    def test_same_origin_and_no_origin_pass(self) -> None:
        require_same_origin(_request({"host": "airflow:8080", "origin": "http://airflow:8080"}))
        require_same_origin(_request({"host": "airflow:8080"}))

    def test_other_origin_is_refused(self) -> None:
        with pytest.raises(HTTPException) as err:
            require_same_origin(_request({"host": "airflow:8080", "origin": "https://evil.example"}))
        assert err.value.status_code == 403
