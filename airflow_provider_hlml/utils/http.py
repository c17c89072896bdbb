"""HTTP helpers shared by the hooks and the dashboard: error bodies, credential-free URLs, auth headers.

Airflow-free and cheap to import (standard library only).
"""

from __future__ import annotations

import base64
import json
from urllib.parse import urlsplit, urlunsplit

#: Longest error detail kept from an answer's body.
MAX_DETAIL_CHARS = 300


def redact_url(url: str) -> str:
    """``url`` without any ``user:password@`` part, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def error_detail(body: str | bytes) -> str:
    """The message inside a HumanLayer, approvals-service or FastAPI error body, else its start.

    Reads ``{"error": {"message": ...}}`` (HumanLayer and the approvals service), then FastAPI's
    ``{"detail": ...}`` (a string, an object with ``message``, or validation errors as JSON).
    """
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        return text.strip()[:MAX_DETAIL_CHARS]
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:MAX_DETAIL_CHARS]
        if "detail" in data:
            detail = data["detail"]
            if isinstance(detail, dict) and detail.get("message"):
                return str(detail["message"])[:MAX_DETAIL_CHARS]
            text = detail if isinstance(detail, str) else json.dumps(detail)
            return text[:MAX_DETAIL_CHARS]
    return json.dumps(data)[:MAX_DETAIL_CHARS]


def error_code(body: str | bytes) -> str | None:
    """The ``error.code`` of an error body, if it names one as a string."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    err = data.get("error") if isinstance(data, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    return code if isinstance(code, str) else None


def authorization_header(login: str | None, password: str | None, token: str | None) -> str | None:
    """``Authorization`` value of a connection: basic auth when it has both login and password,
    else its bearer token, else ``None``."""
    if login and password:
        return "Basic " + base64.standard_b64encode(f"{login}:{password}".encode()).decode()
    if token:
        return f"Bearer {token}"
    return None
