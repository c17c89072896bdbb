"""Delivery of requests to reviewers: the outbox in the database and the worker that sends it."""

from airflow_provider_hlml.approvals.delivery.worker import (
    ACTION_PATH,
    DeliveryWorker,
    ServiceLinks,
    channels_from_settings,
)

__all__ = ["ACTION_PATH", "DeliveryWorker", "ServiceLinks", "channels_from_settings"]
