"""The one rule for URLs a reviewer is shown as links, on every channel.

Every ``href`` built from data (approval requests, Airflow runs, MLflow, Markdown in a request's
body) goes through :func:`safe_link`: the reviewer's card (:mod:`.card`), the Markdown sanitiser
(:mod:`.markdown`) and the dashboard's ``link`` macro (``plugins/templates/_macros.html``, the
``safe_link`` Jinja filter). A URL that fails the rule is shown as text, never as a link: a request
created with an agent key must not be able to put ``javascript:`` (or any other active scheme) in
front of a reviewer's click.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode, urlsplit

#: Path of the dashboard's approvals page in the Airflow UI.
DASHBOARD_APPROVALS_PATH = "/hlml/approvals"
#: Schemes an absolute link may have.
LINK_SCHEMES = frozenset({"http", "https"})
#: Longer URLs are not links (no page of ours or of MLflow needs more).
MAX_LINK_LENGTH = 4096


def _printable_ascii(url: str) -> bool:
    # Browsers drop tabs, newlines and other control characters inside a URL before reading its
    # scheme ("java\tscript:" is "javascript:"), so any of them, or any non-ASCII character, makes
    # the whole value suspect; the URLs we build are percent-encoded ASCII anyway.
    return all("!" <= ch <= "~" for ch in url)


def safe_link(url: object) -> str | None:
    """
    ``url`` when it may be an ``href`` of the dashboard, else None.

    Allowed: an absolute ``http``/``https`` URL with a host (``scheme://host...``), or a path of
    this site that starts with a single ``/``. Refused: every other scheme (``javascript:``,
    ``data:``, ``vbscript:``, in any case), scheme-relative ``//host`` and ``/\\host`` (browsers
    read both as another host), relative paths, whitespace, control and non-ASCII characters,
    backslashes, credentials in the host part, and non-strings.

    :param url: the value a view model carries.
    """
    if not isinstance(url, str) or not url or len(url) > MAX_LINK_LENGTH:
        return None
    if not _printable_ascii(url) or "\\" in url:
        return None
    if url.startswith("/"):
        return None if url.startswith("//") else url
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in LINK_SCHEMES or not url[len(scheme) :].startswith("://"):
        return None
    if not parts.hostname or "@" in parts.netloc:
        return None
    return url


def airflow_ui_path(
    base_path: str,
    dag_id: str,
    run_id: str | None = None,
    task_id: str | None = None,
    map_index: int | None = None,
) -> str:
    """Path of a DAG, DAG run, task instance or mapped task instance page in the Airflow UI.

    Built from ids only (each percent-encoded), so it is always a path under ``base_path`` (the
    UI's base path, or its absolute URL for channels outside the UI).
    """
    path = f"{base_path}/dags/{quote(dag_id, safe='')}"
    if run_id:
        path += f"/runs/{quote(run_id, safe='')}"
        if task_id:
            path += f"/tasks/{quote(task_id, safe='')}"
            if map_index is not None and map_index >= 0:
                path += f"/mapped/{map_index}"
    return path


def mlflow_model_url(ui_url: str, name: str, version: str | None = None) -> str:
    """The MLflow UI page of a registered model, or of one of its versions."""
    base = f"{ui_url}/#/models/{quote(name, safe='')}"
    return f"{base}/versions/{quote(version)}" if version else base


def dashboard_request_url(airflow_url: str, call_id: str) -> str:
    """The dashboard's approvals page in the Airflow UI at ``airflow_url``, showing request ``call_id``."""
    return f"{airflow_url}{DASHBOARD_APPROVALS_PATH}?{urlencode({'status': 'all', 'q': call_id})}"
