"""Stage ``notify``: notifications, with the annotated image, for the verdicts the configuration routes.

Configuration: ``/notify.json`` (or ``/notify.yaml``) at the head of the rules repo, read once per job
(see docs/notifications.md). Without one, every ``alert`` goes to the channel from the environment
(SendGrid) or the outbox folder, as before.

Input: the union of ``assess`` (one verdict per snapshot, one per sampled frame of a clip) and
``clips`` (one verdict per clip). A video clip gets one notification, from its clip verdict, carrying
the annotated frame that decided and the animated summary of its frames; its frames' own verdicts
are recorded ``not_needed`` (the clip speaks for them).

Exactly once: every delivery has a key (the alarm's path and image sha256, a clip's path and file
sha256, plus channel and recipient when configured), and the ledger in the catalog records it as
pending before sending and as sent after. A retried datum, a rerun or a reprocess finds the key sent
and sends nothing; incident decisions are stored per alarm, so a reprocess groups the same way.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

from alarmsieve.notify.channels import Channel, channel_from_env
from alarmsieve.notify.config import NotifyConfig, load_config
from alarmsieve.notify.dispatch import DeliveriesRecord, DeliveryResult, Dispatcher
from alarmsieve.notify.grouping import IncidentBook
from alarmsieve.notify.ledger import NotificationLedger
from alarmsieve.notify.message import AlarmNotification
from alarmsieve.stages.alarms import alarm_folders, read_record, write_record
from alarmsieve.stages.base import DatumContext, Stage, StageServices, StageUsageError, fault_point
from alarmsieve.stages.records import (
    CLIP_VERDICT_FILE,
    NOTIFICATION_FILE,
    VERDICT_FILE,
    ClipVerdictRecord,
    NotificationRecord,
    VerdictRecord,
)

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

    def close(self) -> None:
        self.inner.close()

    def __repr__(self) -> str:
        return repr(self.inner)


def notification_key(verdict: VerdictRecord) -> str:
    return hashlib.sha256(f"{verdict.alarm}\x00{verdict.image_sha256}".encode()).hexdigest()[:32]


def clip_notification_key(clip: ClipVerdictRecord) -> str:
    """The same clip file under the same path is notified once, whatever reruns or reprocesses."""
    # "clip" keeps it apart from a snapshot's key; old records without the clip sha256 use the frames
    content = clip.clip_sha256 or ",".join(f.alarm for f in clip.frames)
    return hashlib.sha256(f"clip\x00{clip.clip}\x00{content}".encode()).hexdigest()[:32]


class NotifyStage(Stage):
    name = "notify"
    code_version = "3"  # 3: one notification per clip (from the clips repo), none per frame

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
            if verdict.clip is not None:
                why = f"a frame of clip {verdict.clip.clip}: the clip's verdict is notified once, not each frame"
                write_record(ctx, rel, NOTIFICATION_FILE, NotificationRecord(**base, state="not_needed", reason=why))
                continue
            labels = sorted({d.label for d in verdict.detections if d.kept})
            self._deliver(ctx, rel, base, config, labels, partial(self._notification, verdict, key, folder))
        for folder, rel in alarm_folders(ctx, CLIP_VERDICT_FILE):
            clip = read_record(folder / CLIP_VERDICT_FILE, ClipVerdictRecord)
            key = clip_notification_key(clip)
            base = {"alarm": clip.clip, "camera": clip.camera, "verdict": clip.verdict, "key": key}
            labels = sorted({d.label for d in clip.detections if d.kept})
            self._deliver(ctx, rel, base, config, labels, partial(self._clip_notification, clip, key, folder))

    def _deliver(
        self,
        ctx: DatumContext,
        rel: str,
        base: dict[str, str],
        config: NotifyConfig | None,
        labels: list[str],
        build: Callable[[], AlarmNotification],
    ) -> None:
        """Route and send one alarm's (or clip's) notification through the ledger; write notification.json."""
        camera, verdict = base["camera"], base["verdict"]
        routed = config is not None and bool(config.routes_for(camera, verdict))
        if verdict == "dismiss" or (config is None and verdict != "alert") or (config is not None and not routed):
            why = f"verdict is {verdict}" + (", no route matches it" if config is not None else "")
            write_record(ctx, rel, NOTIFICATION_FILE, NotificationRecord(**base, state="not_needed", reason=why))
            return
        notification = build()
        if config is None:
            record, failed = self._send_default(notification, base)
            results: list[DeliveryResult] = []
        else:
            results = self.dispatcher.dispatch(config, notification, labels)
            record, failed = _summarise(results, base)
            write_record(ctx, rel, DELIVERIES_FILE, DeliveriesRecord(deliveries=results))
        ctx.log.info(
            "alarm %s: notification %s via %s%s",
            base["alarm"],
            record.state,
            record.channel,
            "".join(f"; {r.channel}->{r.recipient}: {r.state} ({r.kind})" for r in results),
        )
        if failed:
            raise RuntimeError(f"notification for {base['alarm']} failed (will be retried): {failed}")
        write_record(ctx, rel, NOTIFICATION_FILE, record)

    def _notification(self, verdict: VerdictRecord, key: str, folder: Path) -> AlarmNotification:
        annotated = (folder / verdict.annotated_file).read_bytes() if verdict.annotated_file else b""
        original_name = next((p.name for p in folder.glob("image.*")), None)
        return AlarmNotification(
            key=key,
            camera=verdict.camera,
            alarm_path=verdict.alarm,
            time=verdict.time,
            timezone=verdict.timezone or None,  # the zone the rules judged it in (e-mails show local time)
            verdict=verdict.verdict,
            reasons=verdict.reasons,
            objects=[{"label": d.label, "score": d.score, "box": list(d.box)} for d in verdict.detections if d.kept],
            rules_version=verdict.rules_commit or "",
            model=f"{verdict.model.name} {verdict.model.sha256[:12]}" if verdict.model else "",
            annotated_jpeg=annotated,
            original=(folder / original_name).read_bytes() if original_name else None,
            original_name=verdict.alarm.rsplit("/", 1)[-1],
        )

    def _clip_notification(self, clip: ClipVerdictRecord, key: str, folder: Path) -> AlarmNotification:
        """The clip's deciding annotated frame inline, its animated summary attached."""
        best = folder / clip.best_frame_file if clip.best_frame_file else None
        summary = folder / clip.summary_file if clip.summary_file else None
        name = clip.clip.rsplit("/", 1)[-1]
        deciding = next((f for f in clip.frames if f.alarm == clip.deciding_frame), None)
        reasons = list(clip.reasons)
        if deciding is not None:
            reasons.append(f"deciding frame: {deciding.alarm} at {deciding.offset_s:.1f}s of the clip")
        reasons.append(
            f"{len(clip.frames)} frame(s) judged: " + ", ".join(f"{f.offset_s:.1f}s {f.verdict}" for f in clip.frames)
        )
        gif = summary.read_bytes() if summary is not None and summary.is_file() else None
        return AlarmNotification(
            key=key,
            camera=clip.camera,
            alarm_path=clip.clip,
            time=clip.time,
            timezone=clip.timezone or None,
            verdict=clip.verdict,
            reasons=reasons,
            objects=[{"label": d.label, "score": d.score, "box": list(d.box)} for d in clip.detections if d.kept],
            rules_version=clip.rules_commit or "",
            model=f"{clip.model.name} {clip.model.sha256[:12]}" if clip.model else "",
            annotated_jpeg=best.read_bytes() if best is not None and best.is_file() else b"",
            original=gif,  # the animated summary travels where a snapshot's original does
            original_name=f"{name}-summary{summary.suffix}" if gif is not None and summary is not None else None,
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
