"""Stage ``notify``: notifications, with the annotated image, for the verdicts the configuration routes.

Configuration: ``/notify.json`` (or ``/notify.yaml``) at the head of the rules repo, read once per job
(see docs/notifications.md). Without one, every ``alert`` goes to the channel from the environment
(SendGrid) or the outbox folder, as before.

Exactly once: every delivery has a key (the alarm's path and image sha256, plus channel and recipient
when configured), and the ledger in the catalog records it as pending before sending and as sent
after. A retried datum, a rerun or a reprocess finds the key sent and sends nothing; incident
decisions are stored per alarm, so a reprocess groups the same way.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

from alarmsieve.notify.channels import Channel, channel_from_env
from alarmsieve.notify.config import NotifyConfig, load_config
from alarmsieve.notify.dispatch import DeliveriesRecord, DeliveryResult, Dispatcher
from alarmsieve.notify.grouping import IncidentBook
from alarmsieve.notify.ledger import NotificationLedger
from alarmsieve.notify.message import AlarmNotification
from alarmsieve.stages.alarms import alarm_folders, read_record, write_record
from alarmsieve.stages.base import DatumContext, Stage, StageServices, StageUsageError, fault_point
from alarmsieve.stages.records import NOTIFICATION_FILE, VERDICT_FILE, NotificationRecord, VerdictRecord

DELIVERIES_FILE = "deliveries.json"


class _FaultAwareChannel(Channel):
    """Wraps the real channel with the crash-test hooks just before and just after the provider call."""

    def __init__(self, inner: Channel) -> None:
        self.inner = inner
        self.name = inner.name
        self.recipient = getattr(inner, "recipient", "")

    def send(self, n: AlarmNotification) -> str:
        fault_point("notify:before_send")
        provider_id = self.inner.send(n)
        fault_point("notify:after_send")  # the provider has it; the ledger does not know yet
        return provider_id

    def already_delivered(self, n: AlarmNotification) -> str | None:
        return self.inner.already_delivered(n)

    def __repr__(self) -> str:
        return repr(self.inner)


def notification_key(verdict: VerdictRecord) -> str:
    return hashlib.sha256(f"{verdict.alarm}\x00{verdict.image_sha256}".encode()).hexdigest()[:32]


class NotifyStage(Stage):
    name = "notify"
    code_version = "2"

    def __init__(self, args: list[str], services: StageServices) -> None:
        super().__init__(args, services)
        parser = argparse.ArgumentParser(prog="alarmsieve stage notify", exit_on_error=False)
        parser.add_argument("--max-attempts", type=int, default=5)
        parser.add_argument("--config-repo", default="rules", help="repo holding /notify.json (default: rules)")
        try:
            self.opts = parser.parse_args(args)
        except (argparse.ArgumentError, SystemExit) as exc:
            raise StageUsageError(f"notify: bad arguments {args}: {exc}") from exc
        if services.catalog_url is None or services.workspace is None:
            raise StageUsageError("notify needs the workspace's catalog (the notification ledger)")
        self.ledger = NotificationLedger(services.catalog_url)
        self.outbox = services.workspace / "outbox"
        self._default: Channel | None = None
        self.dispatcher = Dispatcher(
            self.ledger,
            IncidentBook(services.catalog_url),
            self.outbox,
            os.environ,
            wrap=_FaultAwareChannel,
            max_attempts=self.opts.max_attempts,
        )
        self._job: str | None = None
        self._config: NotifyConfig | None = None
        self._by_commit: dict[str | None, NotifyConfig | None] = {}

    @property
    def default_channel(self) -> Channel:
        if self._default is None:
            self._default = _FaultAwareChannel(channel_from_env(self.outbox))
        return self._default

    def config_for(self, ctx: DatumContext) -> NotifyConfig | None:
        """The configuration at the head of the config repo, read once per job, parsed once per commit."""
        if self._job == ctx.job_id and self._job is not None:
            return self._config
        config: NotifyConfig | None = None
        if self.services.read_repo is not None:
            snapshot = self.services.read_repo(self.opts.config_repo, "master")
            if snapshot.commit_id in self._by_commit:
                config = self._by_commit[snapshot.commit_id]
            else:
                config = load_config(snapshot.files)[1]
                self._by_commit[snapshot.commit_id] = config
        self._job, self._config = ctx.job_id, config
        return config

    def process(self, ctx: DatumContext) -> None:
        config = self.config_for(ctx)
        for folder, rel in alarm_folders(ctx, VERDICT_FILE):
            verdict = read_record(folder / VERDICT_FILE, VerdictRecord)
            key = notification_key(verdict)
            base = {"alarm": verdict.alarm, "camera": verdict.camera, "verdict": verdict.verdict, "key": key}
            routed = config is not None and bool(config.routes_for(verdict.camera, verdict.verdict))
            if (
                verdict.verdict == "dismiss"
                or (config is None and verdict.verdict != "alert")
                or (config is not None and not routed)
            ):
                why = f"verdict is {verdict.verdict}" + (", no route matches it" if config is not None else "")
                write_record(ctx, rel, NOTIFICATION_FILE, NotificationRecord(**base, state="not_needed", reason=why))
                continue
            notification = self._notification(verdict, key, folder)
            if config is None:
                record, failed = self._send_default(notification, base)
                results: list[DeliveryResult] = []
            else:
                labels = sorted({d.label for d in verdict.detections if d.kept})
                results = self.dispatcher.dispatch(config, notification, labels)
                record, failed = _summarise(results, base)
                write_record(ctx, rel, DELIVERIES_FILE, DeliveriesRecord(deliveries=results))
            ctx.log.info(
                "alarm %s: notification %s via %s%s",
                verdict.alarm,
                record.state,
                record.channel,
                "".join(f"; {r.channel}->{r.recipient}: {r.state} ({r.kind})" for r in results),
            )
            if failed:
                raise RuntimeError(f"notification for {verdict.alarm} failed (will be retried): {failed}")
            write_record(ctx, rel, NOTIFICATION_FILE, record)

    def _notification(self, verdict: VerdictRecord, key: str, folder: Path) -> AlarmNotification:
        annotated = (folder / verdict.annotated_file).read_bytes() if verdict.annotated_file else b""
        original_name = next((p.name for p in folder.glob("image.*")), None)
        return AlarmNotification(
            key=key,
            camera=verdict.camera,
            alarm_path=verdict.alarm,
            time=verdict.time,
            verdict=verdict.verdict,
            reasons=verdict.reasons,
            objects=[{"label": d.label, "score": d.score, "box": list(d.box)} for d in verdict.detections if d.kept],
            rules_version=verdict.rules_commit or "",
            model=f"{verdict.model.name} {verdict.model.sha256[:12]}" if verdict.model else "",
            annotated_jpeg=annotated,
            original=(folder / original_name).read_bytes() if original_name else None,
            original_name=verdict.alarm.rsplit("/", 1)[-1],
        )

    def _send_default(self, n: AlarmNotification, base: dict[str, str]) -> tuple[NotificationRecord, str]:
        channel = self.default_channel
        outcome = self.ledger.deliver_once(channel, n, max_attempts=self.opts.max_attempts, retry_dead=False)
        record = NotificationRecord(
            **base,
            state="already_sent" if outcome.already_sent else outcome.state,  # type: ignore[arg-type]
            channel=channel.name,
            provider_id=outcome.provider_id,
            attempts=outcome.attempts,
            reason=outcome.last_error or "",
        )
        failed = (outcome.last_error or "failed") if outcome.state == "failed" and not outcome.dead else ""
        return record, failed


def _summarise(results: list[DeliveryResult], base: dict[str, str]) -> tuple[NotificationRecord, str]:
    """notification.json from the deliveries: failed > sent > already_sent > not_needed (grouped / limited)."""
    retryable = [r for r in results if r.state == "failed" and not r.dead]
    failed = "; ".join(f"{r.channel}->{r.recipient}: {r.reason}" for r in retryable)
    sent = [r for r in results if r.state in ("sent", "already_sent")]
    channels = ",".join(dict.fromkeys(r.channel for r in results)) or None
    if any(r.state == "failed" for r in results):
        state = "failed"
        reason = "; ".join(f"{r.channel}->{r.recipient}: {r.reason}" for r in results if r.state == "failed")
    elif any(r.state == "sent" for r in results):
        state, reason = "sent", ""
    elif sent:
        state, reason = "already_sent", ""
    else:
        state = "not_needed"
        reason = "; ".join(dict.fromkeys(r.reason for r in results)) or "no recipient"
    record = NotificationRecord(
        **base,
        state=state,  # type: ignore[arg-type]
        channel=channels,
        provider_id=next((r.provider_id for r in sent if r.provider_id), None),
        attempts=sum(r.attempts for r in results),
        reason=reason[:2000],
    )
    return record, failed
