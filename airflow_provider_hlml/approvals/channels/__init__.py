"""Delivery channels of the approvals service: e-mail (SMTP) and Slack (Web API), one module each."""

from airflow_provider_hlml.approvals.channels.base import (
    ActionLinks,
    Channel,
    DeliveryFailed,
    Notice,
    NoticeKind,
    Recipient,
    Sent,
)

__all__ = ["ActionLinks", "Channel", "DeliveryFailed", "Notice", "NoticeKind", "Recipient", "Sent"]
