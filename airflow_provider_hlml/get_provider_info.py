"""Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from typing import Any

from airflow_provider_hlml import __version__

INTEGRATION = "Human-gated ML (MLflow + HumanLayer)"


def _opt(description: str, type_: str, default: str | None, example: str | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "version_added": "0.1.0",
        "type": type_,
        "example": example,
        "default": default,
    }


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-hlml",
        "name": "Human-gated ML pipelines (HLML)",
        "description": "MLflow training, validation and promotion stages with HumanLayer approval gates.",
        "versions": [__version__],
        "integrations": [{"integration-name": INTEGRATION, "tags": ["software"]}],
        "hooks": [
            {
                "integration-name": INTEGRATION,
                "python-modules": [
                    "airflow_provider_hlml.hooks.humanlayer",
                    "airflow_provider_hlml.hooks.mlflow",
                ],
            }
        ],
        "operators": [
            {
                "integration-name": INTEGRATION,
                "python-modules": [
                    "airflow_provider_hlml.operators.train",
                    "airflow_provider_hlml.operators.validate",
                    "airflow_provider_hlml.operators.promote",
                    "airflow_provider_hlml.operators.alias_guard",
                    "airflow_provider_hlml.operators.drift",
                ],
            }
        ],
        "sensors": [
            {
                "integration-name": INTEGRATION,
                "python-modules": [
                    "airflow_provider_hlml.sensors.approval",
                    "airflow_provider_hlml.sensors.factories",
                    "airflow_provider_hlml.sensors.drift",
                ],
            }
        ],
        "triggers": [
            {"integration-name": INTEGRATION, "python-modules": ["airflow_provider_hlml.triggers.approval"]}
        ],
        "extra-links": [
            "airflow_provider_hlml.links.mlflow.MLflowRunLink",
            "airflow_provider_hlml.links.approval.ApprovalRequestLink",
        ],
        "task-decorators": [
            {
                "name": "mlflow_train",
                "class-name": "airflow_provider_hlml.decorators.mlflow_train.mlflow_train_task",
            }
        ],
        "plugins": [{"name": "hlml", "plugin-class": "airflow_provider_hlml.plugins.plugin.HlmlPlugin"}],
        "connection-types": [
            {
                "hook-class-name": "airflow_provider_hlml.hooks.humanlayer.HumanLayerHook",
                "hook-name": "HumanLayer",
                "connection-type": "humanlayer",
                "conn-fields": {
                    "run_id_prefix": {
                        "label": "Run id prefix",
                        "schema": {"type": ["string", "null"]},
                        "description": "Prefix of the HumanLayer run_id sent with every request.",
                    },
                    "timeout": {
                        "label": "HTTP timeout (seconds)",
                        "schema": {"type": ["number", "null"], "default": 30},
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "port", "extra"],
                    "relabeling": {"host": "Base URL", "password": "API key"},
                    "placeholders": {
                        "host": "https://api.humanlayer.dev/humanlayer/v1",
                        "password": "HumanLayer or approvals-service API key",
                    },
                },
            },
            {
                "hook-class-name": "airflow_provider_hlml.hooks.mlflow.MLflowHook",
                "hook-name": "MLflow",
                "connection-type": "mlflow",
                "conn-fields": {
                    "registry_uri": {
                        "label": "Registry URI",
                        "schema": {"type": ["string", "null"]},
                        "description": "Model registry URI; defaults to the tracking URI.",
                    },
                    "ui_url": {
                        "label": "MLflow UI base URL",
                        "schema": {"type": ["string", "null"]},
                        "description": "Used for links from Airflow to MLflow; defaults to the tracking URI.",
                    },
                    "token": {
                        "label": "Bearer token",
                        "schema": {"type": ["string", "null"], "format": "password"},
                    },
                    "timeout": {
                        "label": "HTTP timeout (seconds)",
                        "schema": {"type": ["number", "null"], "exclusiveMinimum": 0},
                        "description": "Per request of a task; default MLflow's MLFLOW_HTTP_REQUEST_TIMEOUT "
                        "(120). The Test button waits at most 4 s.",
                    },
                    "max_retries": {
                        "label": "HTTP retries",
                        "schema": {"type": ["integer", "null"], "minimum": 0, "maximum": 10},
                        "description": "Retries of a failed request in a task; default MLflow's "
                        "MLFLOW_HTTP_REQUEST_MAX_RETRIES (7). The Test button retries once.",
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "extra"],
                    "relabeling": {"host": "Tracking URI", "login": "Username", "password": "Password"},
                    "placeholders": {"host": "http://mlflow:5000"},
                },
            },
        ],
        "config": {
            "hlml": {
                "description": "Settings of the human-gated ML provider (airflow-provider-hlml).",
                "options": {
                    "humanlayer_conn_id": _opt(
                        "Default HumanLayer connection id.", "string", "humanlayer_default"
                    ),
                    "mlflow_conn_id": _opt("Default MLflow connection id.", "string", "mlflow_default"),
                    "poll_interval": _opt(
                        "Seconds between status reads of a waiting approval gate.", "float", "5"
                    ),
                    "long_poll_seconds": _opt(
                        "Seconds a status read may wait on servers that support long-polling.",
                        "integer",
                        "25",
                    ),
                    "wait_mode": _opt(
                        "How approval gates wait: 'park' (Airflow 3.3+: the task waits in the "
                        "awaiting_input state, no worker or triggerer slot, resumed by the API server "
                        "when the decision is pushed to it), 'defer' (the triggerer long-polls the "
                        "approvals backend; reschedule mode when the gate is not deferrable), or "
                        "'auto' (park on Airflow 3.3+ when the approvals backend pushes decisions to "
                        "this Airflow: the built-in service mounted in the API server, or a "
                        "standalone one with HLML_APPROVALS_WEBHOOK_URLS; defer otherwise).",
                        "string",
                        "auto",
                    ),
                    "finish_in_place": _opt(
                        "Whether an approved gate ends where its decision lands: in the triggerer "
                        "(deferred gates) or in the API server that received the decision (parked "
                        "gates, and deferred ones it wakes), with its result written as the "
                        "return_value XCom, instead of being scheduled again to resume on a worker. "
                        "Rejections, timeouts and escalations always resume on a worker. A gate's "
                        "finish_in_place argument overrides it.",
                        "boolean",
                        "True",
                    ),
                    "reconcile_interval": _opt(
                        "Seconds between two reconciliations of parked gates by the API server: one "
                        "batched read of all of them per approvals connection, resuming any whose "
                        "decision was not pushed (made while the API server was down). Also run at "
                        "start; 0 runs it only at start.",
                        "integer",
                        "300",
                    ),
                    "deployment_id": _opt(
                        "Name unique to this Airflow deployment, part of every approval request id; "
                        "set it when several deployments share one approvals backend (e.g. staging "
                        "and production on one HumanLayer project), or they would find each "
                        "other's requests. Changing it makes waiting gates ask again.",
                        "string",
                        "",
                        "prod-eu",
                    ),
                    "approval_url_template": _opt(
                        "URL of the page where a reviewer decides, with a {call_id} placeholder "
                        "(empty: the provider's dashboard in the Airflow UI).",
                        "string",
                        "",
                        "https://app.example.com/approvals/{call_id}",
                    ),
                    "approval_policy_file": _opt(
                        "YAML file of the organisation's approval rules by approval type and urgency "
                        "(docs/governance.md). Every gate must meet them; a gate's own rules only add "
                        "to them. Empty: no policy file.",
                        "string",
                        "",
                        "/opt/airflow/config/approval-policy.yaml",
                    ),
                    "approvals_enabled": _opt(
                        "Mount the built-in approvals service in the Airflow API server.", "boolean", "True"
                    ),
                    "approvals_database_url": _opt(
                        "SQLAlchemy URL of the built-in approvals service database.",
                        "string",
                        "",
                        "sqlite:////opt/airflow/hlml_approvals.db",
                    ),
                    "approvals_delegate_key": {
                        **_opt(
                            "API key with the delegate role the dashboard uses to decide on behalf of users.",
                            "string",
                            "",
                        ),
                        # Masked in the config UI; may come from ``_CMD`` / ``_SECRET`` variables.
                        "sensitive": True,
                    },
                    "webhook_secret": {
                        **_opt(
                            "Secret the approvals service signs its webhooks with "
                            "(HLML_APPROVALS_WEBHOOK_SECRET); empty: /hlml/webhooks/humanlayer "
                            "reads each notified request again instead of trusting the body.",
                            "string",
                            "",
                        ),
                        "sensitive": True,
                    },
                    "dashboard_refresh_seconds": _opt(
                        "Auto-refresh interval of the dashboard pages.", "integer", "30"
                    ),
                    "workflow_logging_enabled": _opt(
                        "Log finished DAG runs that use HLML operators to MLflow.", "boolean", "True"
                    ),
                    "workflow_logging_experiment": _opt(
                        "MLflow experiment that receives workflow execution records.",
                        "string",
                        "hlml-workflow-executions",
                    ),
                    "training_failure_alert_threshold": _opt(
                        "Consecutive finally-failed runs of a training task (retries not counted) after "
                        "which its alert fires, once until the task succeeds again (docs/alerts.md).",
                        "integer",
                        "3",
                    ),
                    "alert_email_to": _opt(
                        "Comma-separated addresses that training tasks e-mail their alert to through "
                        "the SMTP provider's SmtpNotifier; empty: no default alert.",
                        "string",
                        "",
                        "ml-team@example.com, oncall@example.com",
                    ),
                    "alert_smtp_conn_id": _opt(
                        "SMTP connection the training alert e-mail is sent through.",
                        "string",
                        "smtp_default",
                    ),
                    "protected_aliases": _opt(
                        "Registered-model aliases the alias guard watches (docs/security.md): a "
                        "comma list for every model, or a JSON object of model name to aliases with "
                        '"*" for models without their own entry. A version holding one must carry a '
                        "valid signed attestation of its approval.",
                        "string",
                        "champion",
                        '{"*": ["champion"], "fraud": ["champion", "prod"]}',
                    ),
                    "alias_guard_revert": _opt(
                        "Whether the alias guard moves a protected alias found on a version without a "
                        "valid attestation back to the last attested version (off: it alerts and "
                        "records only).",
                        "boolean",
                        "False",
                    ),
                    "mlflow_webhook_secret": {
                        **_opt(
                            "Secret of the MLflow registry webhook that posts alias changes to "
                            "/hlml/webhooks/mlflow (MlflowClient.create_webhook(secret=...)); empty: "
                            "every delivery is refused and only the reconcile DAG guards aliases.",
                            "string",
                            "",
                        ),
                        "sensitive": True,
                    },
                },
            }
        },
    }
