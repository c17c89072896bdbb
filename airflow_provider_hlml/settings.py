"""Every ``[hlml]`` option of the Airflow configuration, read from here only.

One function per option declared in :mod:`airflow_provider_hlml.get_provider_info` (``config``),
each reading ``airflow.sdk.conf`` when called, so a changed environment variable
(``AIRFLOW__HLML__<OPTION>``) applies at once. The fallbacks below are the declared defaults.
"""

from __future__ import annotations

from airflow.sdk import conf

SECTION = "hlml"

DEFAULT_HUMANLAYER_CONN_ID = "humanlayer_default"
DEFAULT_MLFLOW_CONN_ID = "mlflow_default"
DEFAULT_POLL_INTERVAL = 5.0
DEFAULT_LONG_POLL_SECONDS = 25
DEFAULT_DASHBOARD_REFRESH_SECONDS = 30
DEFAULT_WORKFLOW_LOGGING_EXPERIMENT = "hlml-workflow-executions"
DEFAULT_TRAINING_FAILURE_ALERT_THRESHOLD = 3
DEFAULT_ALERT_SMTP_CONN_ID = "smtp_default"
DEFAULT_RECONCILE_INTERVAL = 300
#: How approval gates wait (``[hlml] wait_mode``).
WAIT_MODES = ("auto", "park", "defer")


def _text(option: str, default: str = "") -> str:
    """The option's value stripped of surrounding whitespace; ``default`` when unset or blank."""
    return (conf.get(SECTION, option, fallback=default) or "").strip() or default


def humanlayer_conn_id() -> str:
    """``[hlml] humanlayer_conn_id``: the HumanLayer connection gates use unless given one."""
    return _text("humanlayer_conn_id", DEFAULT_HUMANLAYER_CONN_ID)


def mlflow_conn_id() -> str:
    """``[hlml] mlflow_conn_id``: the MLflow connection stages use unless given one."""
    return _text("mlflow_conn_id", DEFAULT_MLFLOW_CONN_ID)


def poll_interval() -> float:
    """``[hlml] poll_interval``: seconds between status reads of a waiting approval gate."""
    return conf.getfloat(SECTION, "poll_interval", fallback=DEFAULT_POLL_INTERVAL)


def long_poll_seconds() -> int:
    """``[hlml] long_poll_seconds``: seconds a status read may wait on a long-polling server."""
    return conf.getint(SECTION, "long_poll_seconds", fallback=DEFAULT_LONG_POLL_SECONDS)


def wait_mode() -> str:
    """``[hlml] wait_mode``: how approval gates wait: ``auto``, ``park`` or ``defer``.

    :raises ValueError: for any other value.
    """
    mode = _text("wait_mode", "auto").lower()
    if mode not in WAIT_MODES:
        raise ValueError(f"[{SECTION}] wait_mode must be one of {', '.join(WAIT_MODES)}; got {mode!r}")
    return mode


def finish_in_place() -> bool:
    """``[hlml] finish_in_place``: an approved gate ends where its decision lands (the triggerer or
    the API server) instead of resuming on a worker."""
    return conf.getboolean(SECTION, "finish_in_place", fallback=True)


def reconcile_interval() -> int:
    """``[hlml] reconcile_interval``: seconds between reconciliations of parked gates (0 = at start only).

    :raises ValueError: when negative.
    """
    seconds = conf.getint(SECTION, "reconcile_interval", fallback=DEFAULT_RECONCILE_INTERVAL)
    if seconds < 0:
        raise ValueError(f"[{SECTION}] reconcile_interval must be >= 0, got {seconds}")
    return seconds


def deployment_id() -> str:
    """``[hlml] deployment_id``: name of this deployment in every approval request id ("" = none)."""
    return _text("deployment_id")


def approval_url_template() -> str:
    """``[hlml] approval_url_template``: reviewer page URL with ``{call_id}`` ("" = the dashboard)."""
    return _text("approval_url_template")


def approval_policy_file() -> str:
    """``[hlml] approval_policy_file``: YAML routing approval types and urgencies to rules ("" = none)."""
    return _text("approval_policy_file")


def approvals_enabled() -> bool:
    """``[hlml] approvals_enabled``: mount the built-in approvals service in the API server."""
    return conf.getboolean(SECTION, "approvals_enabled", fallback=True)


def approvals_database_url() -> str:
    """``[hlml] approvals_database_url``: the built-in service's SQLAlchemy URL ("" = the default file)."""
    return _text("approvals_database_url")


def approvals_delegate_key() -> str:
    """``[hlml] approvals_delegate_key``: the dashboard's delegate API key ("" = deciding is off)."""
    return conf.get(SECTION, "approvals_delegate_key", fallback="") or ""


def webhook_secret() -> str:
    """``[hlml] webhook_secret``: secret the approvals service signs its webhooks with ("" = none)."""
    return conf.get(SECTION, "webhook_secret", fallback="") or ""


def dashboard_refresh_seconds() -> int:
    """``[hlml] dashboard_refresh_seconds``: auto-refresh interval of the pages (0 = off).

    :raises ValueError: when negative.
    """
    refresh = conf.getint(SECTION, "dashboard_refresh_seconds", fallback=DEFAULT_DASHBOARD_REFRESH_SECONDS)
    if refresh < 0:
        raise ValueError(f"[{SECTION}] dashboard_refresh_seconds must be >= 0, got {refresh}")
    return refresh


def workflow_logging_enabled() -> bool:
    """``[hlml] workflow_logging_enabled``: log finished HLML DAG runs to MLflow."""
    return conf.getboolean(SECTION, "workflow_logging_enabled", fallback=True)


def workflow_logging_experiment() -> str:
    """``[hlml] workflow_logging_experiment``: MLflow experiment receiving workflow records."""
    return _text("workflow_logging_experiment", DEFAULT_WORKFLOW_LOGGING_EXPERIMENT)


def training_failure_alert_threshold() -> int:
    """``[hlml] training_failure_alert_threshold``: consecutive failed runs of a task that raise an alert.

    :raises ValueError: when below 1.
    """
    threshold = conf.getint(
        SECTION, "training_failure_alert_threshold", fallback=DEFAULT_TRAINING_FAILURE_ALERT_THRESHOLD
    )
    if threshold < 1:
        raise ValueError(f"[{SECTION}] training_failure_alert_threshold must be >= 1, got {threshold}")
    return threshold


def alert_email_to() -> str:
    """``[hlml] alert_email_to``: comma-separated addresses of the training alert e-mail ("" = off)."""
    return _text("alert_email_to")


def alert_smtp_conn_id() -> str:
    """``[hlml] alert_smtp_conn_id``: the SMTP connection the training alert e-mail is sent through."""
    return _text("alert_smtp_conn_id", DEFAULT_ALERT_SMTP_CONN_ID)


DEFAULT_PROTECTED_ALIASES = "champion"
#: Key of ``[hlml] protected_aliases`` (JSON form) naming the aliases of every model without its own entry.
ANY_MODEL = "*"


def protected_aliases() -> str:
    """``[hlml] protected_aliases`` as written; :func:`protected_alias_table` reads it."""
    return _text("protected_aliases", DEFAULT_PROTECTED_ALIASES)


def protected_alias_table() -> dict[str, tuple[str, ...]]:
    """``[hlml] protected_aliases``: the aliases the alias guard watches, by registered model.

    A comma list (``champion, prod``) protects those aliases of every model; a JSON object maps
    model names to lists of aliases, ``"*"`` for every model without its own entry (a model's
    own entry replaces ``"*"``: ``[]`` leaves that model unguarded), e.g.
    ``{"*": ["champion"], "fraud": ["champion", "prod"]}``.

    :raises ValueError: for JSON that is not such an object.
    """
    import json

    raw = protected_aliases()
    if not raw.startswith("{"):
        return {ANY_MODEL: _alias_list(raw.split(","))}
    try:
        parsed = json.loads(raw)
    except ValueError:
        raise ValueError(f"[{SECTION}] protected_aliases: not a JSON object or a comma list") from None
    if not isinstance(parsed, dict) or not all(
        isinstance(v, list) and all(isinstance(a, str) for a in v) for v in parsed.values()
    ):
        raise ValueError(
            f"[{SECTION}] protected_aliases must map model names to lists of aliases, "
            'e.g. {"*": ["champion"], "fraud": ["champion", "prod"]}'
        )
    return {str(model): _alias_list(aliases) for model, aliases in parsed.items()}


def _alias_list(aliases: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(a.strip() for a in aliases if a.strip()))


def protected_aliases_of(model: str, table: dict[str, tuple[str, ...]] | None = None) -> tuple[str, ...]:
    """The protected aliases of registered model ``model`` (see :func:`protected_alias_table`)."""
    table = protected_alias_table() if table is None else table
    return table[model] if model in table else table.get(ANY_MODEL, ())


def alias_guard_revert() -> bool:
    """``[hlml] alias_guard_revert``: the alias guard moves an unattested protected alias back to
    the last attested version (off: it only alerts and records)."""
    return conf.getboolean(SECTION, "alias_guard_revert", fallback=False)


def mlflow_webhook_secret() -> str:
    """``[hlml] mlflow_webhook_secret``: secret MLflow signs its registry webhooks with ("" = the
    receiver ``/hlml/webhooks/mlflow`` refuses every delivery)."""
    return conf.get(SECTION, "mlflow_webhook_secret", fallback="") or ""
