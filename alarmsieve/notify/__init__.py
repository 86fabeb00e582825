"""Notifications of real threats: payload, e-mail rendering, channels and the exactly-once ledger."""

from alarmsieve.notify.channels import (
    Channel,
    DeliveryError,
    OutboxChannel,
    SendGridChannel,
    channel_from_env,
    safe_key,
)
from alarmsieve.notify.ledger import DeliveryOutcome, NotificationLedger, NotificationRecord
from alarmsieve.notify.message import AlarmNotification, build_email, message_id

__all__ = [
    "AlarmNotification",
    "Channel",
    "DeliveryError",
    "DeliveryOutcome",
    "NotificationLedger",
    "NotificationRecord",
    "OutboxChannel",
    "SendGridChannel",
    "build_email",
    "channel_from_env",
    "message_id",
    "safe_key",
]
