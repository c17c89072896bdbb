"""Alerts from Airflow task callbacks, sent by Airflow's notifiers (see ``docs/alerts.md``)."""

from __future__ import annotations

from airflow_provider_hlml.notifications.alerts import ConsecutiveFailuresAlert, default_training_alert

__all__ = ["ConsecutiveFailuresAlert", "default_training_alert"]
