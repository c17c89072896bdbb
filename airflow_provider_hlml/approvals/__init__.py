"""A self-hosted, HumanLayer-compatible approvals service.

The unmodified ``humanlayer`` SDK (sync and async) talks to it; it adds cancellation, filtered
lists, an append-only audit trail, metrics and long-polling. This package never imports Airflow:
the UI plugin mounts :func:`create_app`, and ``hlml-approvals serve`` runs it standalone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_hlml.approvals.app import create_app
    from airflow_provider_hlml.approvals.settings import ApprovalsSettings

__all__ = ["ApprovalsSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from airflow_provider_hlml.approvals.app import create_app

        return create_app
    if name == "ApprovalsSettings":
        from airflow_provider_hlml.approvals.settings import ApprovalsSettings

        return ApprovalsSettings
    raise AttributeError(name)
