"""Stage ``notify``: one notification, with the annotated image, for every ``alert`` verdict.

Exactly once: the notification key is the alarm's path and image sha256, and the ledger in the
catalog records it as pending before sending and as sent after. A retried datum, a rerun or a
reprocess finds the key sent and sends nothing.
"""

from __future__ import annotations

import argparse
import hashlib

from alarmsieve.notify.channels import Channel, channel_from_env
from alarmsieve.notify.ledger import NotificationLedger
from alarmsieve.notify.message import AlarmNotification
from alarmsieve.stages.alarms import alarm_folders, read_record, write_record
from alarmsieve.stages.base import DatumContext, Stage, StageServices, StageUsageError, fault_point
from alarmsieve.stages.records import NOTIFICATION_FILE, VERDICT_FILE, NotificationRecord, VerdictRecord


class _FaultAwareChannel(Channel):
    """Wraps the real channel with the crash-test hook at the exact point between pending and sent."""

    def __init__(self, inner: Channel) -> None:
        self.inner = inner
        self.name = inner.name

    def send(self, n: AlarmNotification) -> str:
        fault_point("notify:before_send")
        return self.inner.send(n)


def notification_key(verdict: VerdictRecord) -> str:
    return hashlib.sha256(f"{verdict.alarm}\x00{verdict.image_sha256}".encode()).hexdigest()[:32]


class NotifyStage(Stage):
    name = "notify"

    def __init__(self, args: list[str], services: StageServices) -> None:
        super().__init__(args, services)
        parser = argparse.ArgumentParser(prog="alarmsieve stage notify", exit_on_error=False)
        parser.add_argument("--max-attempts", type=int, default=5)
        try:
            self.opts = parser.parse_args(args)
        except (argparse.ArgumentError, SystemExit) as exc:
            raise StageUsageError(f"notify: bad arguments {args}: {exc}") from exc
        if services.catalog_url is None or services.workspace is None:
            raise StageUsageError("notify needs the workspace's catalog (the notification ledger)")
        self.ledger = NotificationLedger(services.catalog_url)
        self.channel = _FaultAwareChannel(channel_from_env(services.workspace / "outbox"))

    def process(self, ctx: DatumContext) -> None:
        for folder, rel in alarm_folders(ctx, VERDICT_FILE):
            verdict = read_record(folder / VERDICT_FILE, VerdictRecord)
            key = notification_key(verdict)
            base = {"alarm": verdict.alarm, "camera": verdict.camera, "verdict": verdict.verdict, "key": key}
            if verdict.verdict != "alert":
                record = NotificationRecord(**base, state="not_needed", reason=f"verdict is {verdict.verdict}")
            else:
                annotated = (folder / verdict.annotated_file).read_bytes() if verdict.annotated_file else b""
                original_name = next((p.name for p in folder.glob("image.*")), None)
                notification = AlarmNotification(
                    key=key,
                    camera=verdict.camera,
                    alarm_path=verdict.alarm,
                    time=verdict.time,
                    verdict=verdict.verdict,
                    reasons=verdict.reasons,
                    objects=[
                        {"label": d.label, "score": d.score, "box": list(d.box)} for d in verdict.detections if d.kept
                    ],
                    rules_version=verdict.rules_commit or "",
                    model=f"{verdict.model.name} {verdict.model.sha256[:12]}" if verdict.model else "",
                    annotated_jpeg=annotated,
                    original=(folder / original_name).read_bytes() if original_name else None,
                    original_name=verdict.alarm.rsplit("/", 1)[-1],
                )
                outcome = self.ledger.deliver_once(self.channel, notification, max_attempts=self.opts.max_attempts)
                record = NotificationRecord(
                    **base,
                    state="already_sent" if outcome.already_sent else outcome.state,  # type: ignore[arg-type]
                    channel=self.channel.name,
                    provider_id=outcome.provider_id,
                    attempts=outcome.attempts,
                    reason=outcome.last_error or "",
                )
                ctx.log.info("alarm %s: notification %s via %s", verdict.alarm, record.state, self.channel.name)
                if outcome.state == "failed":
                    raise RuntimeError(f"notification for {verdict.alarm} failed: {record.reason}")
            write_record(ctx, rel, NOTIFICATION_FILE, record)
