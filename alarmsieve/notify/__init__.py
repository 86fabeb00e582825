"""Notifications of real threats: payload, rendering, channels, routing, incidents, the exactly-once ledger."""

from alarmsieve.notify.channels import (
    Channel,
    DeliveryError,
    MqttChannel,
    OutboxChannel,
    SendGridChannel,
    SmtpChannel,
    WebhookChannel,
    channel_from_env,
    safe_key,
    webhook_signature,
)
from alarmsieve.notify.config import NotifyConfig, NotifyConfigError, load_config, parse_config
from alarmsieve.notify.ledger import DeliveryOutcome, LedgerSummary, NotificationLedger, NotificationRecord
from alarmsieve.notify.message import AlarmNotification, build_email, message_id

__all__ = [
    "AlarmNotification",
    "Channel",
    "DeliveryError",
    "DeliveryOutcome",
    "LedgerSummary",
    "MqttChannel",
    "NotificationLedger",
    "NotificationRecord",
    "NotifyConfig",
    "NotifyConfigError",
    "OutboxChannel",
    "SendGridChannel",
    "SmtpChannel",
    "WebhookChannel",
    "build_email",
    "channel_from_env",
    "load_config",
    "message_id",
    "parse_config",
    "safe_key",
    "webhook_signature",
]
