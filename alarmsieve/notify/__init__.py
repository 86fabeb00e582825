"""Notifications of real threats: payload, rendering, channels, routing, incidents, the exactly-once ledger.

The names below are loaded on first use, so that a command that only reads the ledger (``status``) does
not pay for the channels' HTTP and MQTT clients.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_MODULE_OF = {
    **dict.fromkeys(
        [
            "Channel",
            "DeliveryError",
            "MqttChannel",
            "OutboxChannel",
            "SendGridChannel",
            "SmtpChannel",
            "WebhookChannel",
            "channel_from_env",
            "safe_key",
            "webhook_signature",
        ],
        "channels",
    ),
    **dict.fromkeys(["NotifyConfig", "NotifyConfigError", "load_config", "parse_config"], "config"),
    **dict.fromkeys(["DeliveryOutcome", "LedgerSummary", "NotificationLedger", "NotificationRecord"], "ledger"),
    **dict.fromkeys(["AlarmNotification", "build_email", "message_id"], "message"),
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
