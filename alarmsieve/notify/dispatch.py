"""Routing: which channels and recipients an alarm goes to, as what (new / update / escalation), and when not.

One delivery = one (alarm, channel, recipient): its own ledger row, so that exactly-once, retries,
the rate limit and the dead-letter list all work per recipient.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from alarmsieve.notify.channels import (
    Channel,
    MqttChannel,
    OutboxChannel,
    SendGridChannel,
    SmtpChannel,
    WebhookChannel,
)
from alarmsieve.notify.config import ChannelConfig, NotifyConfig, NotifyConfigError
from alarmsieve.notify.grouping import SEVERITY_RANK, IncidentBook
from alarmsieve.notify.ledger import NotificationLedger
from alarmsieve.notify.message import AlarmNotification

EMAIL_TYPES = ("outbox", "sendgrid", "smtp")


class DeliveryResult(BaseModel):
    """One line of ``deliveries.json`` in the notify repo: what happened to one recipient."""

    channel: str
    recipient: str
    key: str
    kind: str
    state: Literal["sent", "already_sent", "failed", "grouped", "rate_limited"]
    provider_id: str | None = None
    attempts: int = 0
    dead: bool = False
    reason: str = ""


class DeliveriesRecord(BaseModel):
    """``deliveries.json``: one entry per recipient of one alarm."""

    model_config = ConfigDict(extra="forbid")

    deliveries: list[DeliveryResult]


def delivery_key(alarm_key: str, channel: str, recipient: str) -> str:
    return f"{alarm_key}:{channel}:{hashlib.sha256(recipient.encode()).hexdigest()[:12]}"[:200]


def build_channel(cfg: ChannelConfig, recipient: str | None, outbox_dir: Path, env: Mapping[str, str]) -> Channel:
    """A channel from its configuration; secrets are read here (env or file) and kept out of repr and logs."""
    what = f"notification channel {cfg.name!r}"
    if cfg.type == "outbox":
        return _named(
            OutboxChannel(Path(cfg.folder or outbox_dir), sender=cfg.sender, recipients=[recipient or ""]), cfg
        )
    if cfg.type == "sendgrid":
        key = cfg.api_key.resolve(env, f"{what} api_key")
        return _named(
            SendGridChannel(
                key, sender=cfg.sender, recipients=[recipient or ""], base_url=cfg.base_url, timeout=cfg.timeout_s
            ),
            cfg,
        )
    if cfg.type == "smtp":
        password = cfg.password.resolve(env, f"{what} password") if cfg.password else None
        return SmtpChannel(
            host=cfg.host,
            port=cfg.port,
            sender=cfg.sender,
            recipients=[recipient or ""],
            security=cfg.security,
            username=cfg.username,
            password=password,
            timeout=cfg.timeout_s,
            ca_file=cfg.ca_file,
            name=cfg.name,
        )
    if cfg.type == "webhook":
        from alarmsieve.notify.channels import DeliveryError

        try:
            return WebhookChannel(
                cfg.url,
                secret=cfg.secret.resolve(env, f"{what} secret"),
                allowed_hosts=cfg.allowed_hosts,
                timeout=cfg.timeout_s,
                images=cfg.images,
                image_url_template=cfg.image_url_template,
                name=cfg.name,
            )
        except DeliveryError as exc:
            raise NotifyConfigError(f"{what}: {exc.message}") from None
    password = cfg.password.resolve(env, f"{what} password") if cfg.password else None
    return MqttChannel(
        host=cfg.host,
        port=cfg.port,
        topic_prefix=cfg.topic_prefix,
        qos=cfg.qos,
        username=cfg.username,
        password=password,
        timeout=cfg.timeout_s,
        snapshot=cfg.snapshot,
        name=cfg.name,
    )


def _named(channel: Channel, cfg: ChannelConfig) -> Channel:
    channel.name = cfg.name  # the ledger's channel column names the configured channel
    return channel


@dataclass
class Dispatcher:
    ledger: NotificationLedger
    book: IncidentBook
    outbox_dir: Path
    env: Mapping[str, str]
    wrap: Callable[[Channel], Channel] = lambda c: c
    max_attempts: int = 5
    backoff: float = 0.5

    def __post_init__(self) -> None:
        self._channels: dict[tuple[str, str], Channel] = {}
        self._config: NotifyConfig | None = None

    def channel(self, config: NotifyConfig, cfg: ChannelConfig, recipient: str | None) -> Channel:
        """The channel for one recipient, kept (with its connection) while the configuration stays the same."""
        if config is not self._config:
            self.close()  # a new configuration: its channels may point elsewhere
            self._config = config
        cache_key = (cfg.name, recipient or "")
        channel = self._channels.get(cache_key)
        if channel is None:
            channel = self.wrap(build_channel(cfg, recipient, self.outbox_dir, self.env))
            self._channels[cache_key] = channel
        return channel

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def dispatch(self, config: NotifyConfig, base: AlarmNotification, labels: list[str]) -> list[DeliveryResult]:
        """Route ``base`` (keyed by the alarm) to every matching recipient; [] when no route matches."""
        routes = config.routes_for(base.camera, base.verdict)
        if not routes:
            return []
        site = config.site_of(base.camera)
        scope = f"site:{site}" if config.grouping.scope == "site" and site else f"camera:{base.camera}"
        assignment = self.book.assign(
            base.key,
            scope=scope,
            camera=base.camera,
            site=site,
            time=base.time,
            severity=base.verdict,
            labels=labels,
            grouping=config.grouping,
        )
        common = {
            "site": site,
            "timezone": config.timezone_of(base.camera) or base.timezone,
            "incident_id": assignment.incident_id,
            "incident_alarms": assignment.alarms,
        }
        results: list[DeliveryResult] = []
        for route in routes:
            cfg = config.channel(route.channel)
            email = cfg.type in EMAIL_TYPES
            for recipient in route.to if email else [None]:
                channel = self.channel(config, cfg, recipient)
                who = recipient or channel.recipient
                key = delivery_key(base.key, cfg.name, who)
                kind = assignment.kind
                if kind == "quiet" and email:
                    results.append(
                        DeliveryResult(
                            channel=cfg.name,
                            recipient=who,
                            key=key,
                            kind=kind,
                            state="grouped",
                            reason=f"grouped into incident {assignment.incident_id} (update cooldown)",
                        )
                    )
                    continue
                kind_out = "update" if kind == "quiet" else kind
                if not email and assignment.ended_incident and cfg.type == "mqtt":
                    self._end(channel, base, assignment.ended_incident, common)
                n = base.model_copy(update={**common, "key": key, "kind": kind_out, "note": _note(kind_out, common)})
                if email and kind in ("new", "update"):
                    limited = self._rate_limited(config, channel, cfg.name, who, n)
                    if limited is not None:
                        results.append(limited)
                        continue
                results.append(self._deliver(channel, cfg.name, who, n))
        return results

    def _deliver(self, channel: Channel, name: str, who: str, n: AlarmNotification) -> DeliveryResult:
        out = self.ledger.deliver_once(
            channel, n, max_attempts=self.max_attempts, backoff=self.backoff, retry_dead=False
        )
        state: Literal["sent", "already_sent", "failed"] = (
            "already_sent" if out.already_sent else ("sent" if out.state == "sent" else "failed")
        )
        return DeliveryResult(
            channel=name,
            recipient=who,
            key=n.key,
            kind=n.kind,
            state=state,
            provider_id=out.provider_id,
            attempts=out.attempts,
            dead=out.dead,
            reason=out.last_error or "",
        )

    def _end(self, channel: Channel, base: AlarmNotification, ended: str, common: dict[str, object]) -> None:
        n = base.model_copy(
            update={**common, "key": f"end:{ended}:{channel.name}"[:200], "kind": "end", "incident_id": ended}
        )
        self.ledger.deliver_once(channel, n, max_attempts=self.max_attempts, backoff=self.backoff, retry_dead=False)

    def end_quiet_incidents(self, config: NotifyConfig, now: datetime | None = None) -> list[DeliveryResult]:
        """Close the incidents no alarm joined for the grouping window and publish their MQTT ``end``.

        Called by the serve loops every few seconds, so ``end`` follows the last alarm by about one
        window instead of waiting for the camera's next incident. Same keys as the ``end`` sent when a
        new incident replaces an old one: the ledger sends each ``end`` once, whoever gets there first.
        """
        results: list[DeliveryResult] = []
        window = config.grouping.window_s
        for incident in self.book.end_quiet(now or datetime.now(UTC), window):
            verdict = "alert" if incident.severity >= SEVERITY_RANK["alert"] else "review"
            base = AlarmNotification(
                key=f"end:{incident.id}",
                camera=incident.camera,
                alarm_path="",
                time=incident.last_at,
                verdict=verdict,
                reasons=[f"incident ended: no alarm for {window:.0f}s"],
                objects=[{"label": label} for label in json.loads(incident.labels)],
                rules_version="",
                model="",
                annotated_jpeg=b"",
                site=incident.site,
                timezone=config.timezone_of(incident.camera),
                kind="end",
                incident_id=incident.id,
                incident_alarms=incident.alarms,
            )
            delivered = True
            for route in config.routes_for(incident.camera, verdict):
                cfg = config.channel(route.channel)
                if cfg.type != "mqtt":
                    continue
                channel = self.channel(config, cfg, None)
                n = base.model_copy(update={"key": f"end:{incident.id}:{channel.name}"[:200]})
                # One attempt per sweep: the sweep itself is the retry loop, and a broker that is down
                # must not hold up the serve loop with backoff sleeps.
                out = self.ledger.deliver_once(channel, n, max_attempts=1, retry_dead=False)
                delivered = delivered and (out.state == "sent" or out.dead)  # a dead letter waits for `retry`
                results.append(
                    DeliveryResult(
                        channel=cfg.name,
                        recipient=channel.recipient,
                        key=n.key,
                        kind="end",
                        state="already_sent" if out.already_sent else ("sent" if out.state == "sent" else "failed"),
                        provider_id=out.provider_id,
                        attempts=out.attempts,
                        dead=out.dead,
                        reason=out.last_error or "",
                    )
                )
            if delivered:
                self.book.mark_end_sent(incident.id)
        return results

    def _rate_limited(
        self, config: NotifyConfig, channel: Channel, name: str, who: str, n: AlarmNotification
    ) -> DeliveryResult | None:
        limit = config.rate_limit
        reason = self.book.suppressed(n.key)
        if reason is None:
            if self.ledger.get(n.key) is not None:
                return None  # decided before (and maybe sent): resume it, never count it against itself
            now = datetime.now(UTC)
            since = now - timedelta(seconds=limit.period_s)
            sent = self.ledger.count_recent(name, who, since, exclude_kinds=("summary",))
            if sent < limit.max_messages:
                return None
            reason = (
                f"rate limit: {sent} messages to {who} in the last {limit.period_s:.0f}s (max {limit.max_messages})"
            )
            self.book.suppress(n.key, reason)
            bucket = int(now.timestamp() // limit.period_s)
            until = datetime.fromtimestamp((bucket + 1) * limit.period_s, UTC)
            summary = n.model_copy(
                update={
                    "key": f"summary:{name}:{hashlib.sha256(who.encode()).hexdigest()[:16]}:{bucket}",
                    "kind": "summary",
                    "note": (
                        f"Rate limit reached: more than {limit.max_messages} alarm messages to you in "
                        f"{limit.period_s:.0f}s. Further routine alarms are held back until "
                        f"{until.isoformat(timespec='minutes')} (escalations still come through). "
                        "See them with `alarmsieve verdicts --since 1h`."
                    ),
                }
            )
            self.ledger.deliver_once(channel, summary, max_attempts=self.max_attempts, backoff=self.backoff)
        return DeliveryResult(channel=name, recipient=who, key=n.key, kind=n.kind, state="rate_limited", reason=reason)


def _note(kind: str, common: Mapping[str, object]) -> str:
    if kind == "update":
        return f"Update to incident {common['incident_id']}: {common['incident_alarms']} alarms so far."
    if kind == "escalation":
        return f"ESCALATION of incident {common['incident_id']}: a higher severity or a new kind of object."
    return ""


class RetryError(NotifyConfigError):
    """A notification cannot be retried (unknown id, no stored message, channel gone)."""


def channel_for_row(
    channel_name: str, recipient: str, config: NotifyConfig | None, outbox_dir: Path, env: Mapping[str, str]
) -> Channel:
    """Rebuild the channel a ledger row was sent through: from the configuration, else the environment default."""
    if config is not None and any(c.name == channel_name for c in config.channels):
        cfg = config.channel(channel_name)
        return build_channel(cfg, recipient if cfg.type in EMAIL_TYPES else None, outbox_dir, env)
    from alarmsieve.notify.channels import channel_from_env

    channel = channel_from_env(outbox_dir, env)
    if channel.name != channel_name:
        raise RetryError(
            f"notification was sent through channel {channel_name!r}, which is no longer configured "
            f"(rules repo /notify.json, or SENDGRID_API_KEY for sendgrid); configure it again to retry"
        )
    return channel


def retry(
    ledger: NotificationLedger,
    row_id: int,
    config: NotifyConfig | None,
    outbox_dir: Path,
    env: Mapping[str, str],
    *,
    max_attempts: int = 3,
    backoff: float = 0.5,
) -> DeliveryResult:
    """Send a failed (or stuck pending) notification again; a sent one is reported, never resent."""
    row = ledger.by_id(row_id)
    if row is None:
        raise RetryError(f"no notification with id {row_id}; see `alarmsieve list notification`")
    n = ledger.payload(row.key)
    if n is None:
        raise RetryError(
            f"notification {row_id} has no stored message (written before 0002_notify); "
            "rerun its alarm with `alarmsieve update pipeline -f pipelines/notify.json --reprocess`"
        )
    channel = channel_for_row(row.channel, row.recipient, config, outbox_dir, env)
    out = ledger.deliver_once(channel, n, max_attempts=max_attempts, backoff=backoff, retry_dead=True)
    return DeliveryResult(
        channel=row.channel,
        recipient=row.recipient,
        key=row.key,
        kind=row.kind or "new",
        state="already_sent" if out.already_sent else ("sent" if out.state == "sent" else "failed"),
        provider_id=out.provider_id,
        attempts=out.attempts,
        dead=out.dead,
        reason=out.last_error or "",
    )
