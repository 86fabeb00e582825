"""A verdict's history: every judgment of an alarm and whether and when it was notified.

The ``assess`` repo keeps every version of ``/<camera>/<file>/verdict.json`` (``Pfs.file_versions``):
each version is one judgment, recorded by the commit that wrote it (a video clip: ``clips`` keeps its
``clip-verdict.json``). The notification ledger says which
of them were delivered (key: the alarm's path and image sha256, as ``notify`` sends it; routed
deliveries add ``:channel:recipient`` to it). Nothing here writes anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from alarmsieve.notify.ledger import NotificationRecord
from alarmsieve.pfs.api import Pfs
from alarmsieve.pfs.db import get_engine
from alarmsieve.stages.notify import clip_notification_key, notification_key
from alarmsieve.stages.records import CLIP_VERDICT_FILE, VERDICT_FILE, ClipVerdictRecord, VerdictRecord
from alarmsieve.verdicts import ASSESS_REPO, CLIPS_REPO


class Delivery(BaseModel):
    """One ledger row of the alarm: a channel and recipient, its state and when it was sent."""

    key: str
    channel: str
    recipient: str
    state: str
    sent_at: datetime | None
    attempts: int


class Judgment(BaseModel):
    """One version of the alarm's verdict."""

    verdict: str
    reason: str  # the first reason
    rules_commit: str | None
    rules_note: str
    models: dict[str, str]  # model name -> sha256
    pipeline_versions: dict[str, str]
    judged_at: datetime  # when the assess commit that recorded it was made
    commit: str  # that assess commit
    image_sha256: str
    verdict_sha256: str  # the verdict.json version's body (a rerun writing the same bytes is the same judgment)
    notification_key: str  # the ledger key (alarm path + image sha256): one notification per key, ever
    notified_at: datetime | None  # when this judgment's alert was delivered (None: not by this judgment)
    already_notified_at: datetime | None = None  # an alert whose key was delivered before it was judged
    current: bool


class VerdictHistory(BaseModel):
    """``explain ALARM --json``: ``history``; the dashboard's alarm page shows the same."""

    alarm: str
    judgments: list[Judgment]  # oldest first
    deliveries: list[Delivery]
    flip: str | None  # set when a notified alert is now something else: says both, with rules and times


def _deliveries(catalog_url: str, key: str) -> list[Delivery]:
    with Session(get_engine(catalog_url)) as s:
        rows = list(
            s.scalars(
                select(NotificationRecord)
                .where(or_(NotificationRecord.key == key, NotificationRecord.key.like(key + ":%")))
                .order_by(NotificationRecord.id)
            )
        )
        return [
            Delivery(
                key=r.key,
                channel=r.channel,
                recipient=r.recipient,
                state=r.state,
                sent_at=r.sent_at,
                attempts=r.attempts,
            )
            for r in rows
        ]


def _short(commit: str | None) -> str:
    return commit[:12] if commit else "built-in rules"


@dataclass(frozen=True)
class _Judged:
    """What one stored verdict says, whichever record (snapshot or clip) holds it."""

    alarm: str
    verdict: str
    reason: str
    rules_commit: str | None
    rules_note: str
    models: dict[str, str]
    pipeline_versions: dict[str, str]
    content_sha256: str  # the image's (a clip: the clip file's): with the path, the notification key
    notification_key: str


def _of_snapshot(raw: bytes) -> _Judged:
    r = VerdictRecord.model_validate_json(raw)
    return _Judged(
        alarm=r.alarm,
        verdict=r.verdict,
        reason=r.reasons[0] if r.reasons else "",
        rules_commit=r.rules_commit,
        rules_note=r.rules_note,
        models={m.name: m.sha256 for m in r.models} or ({r.model.name: r.model.sha256} if r.model else {}),
        pipeline_versions=r.pipeline_versions,
        content_sha256=r.image_sha256,
        notification_key=notification_key(r),
    )


def _of_clip(raw: bytes) -> _Judged:
    r = ClipVerdictRecord.model_validate_json(raw)
    return _Judged(
        alarm=r.clip,
        verdict=r.verdict,
        reason=r.reasons[0] if r.reasons else "",
        rules_commit=r.rules_commit,
        rules_note="",
        models={r.model.name: r.model.sha256} if r.model else {},
        pipeline_versions={},  # a clip verdict names none; its frames' verdicts do
        content_sha256=r.clip_sha256,
        notification_key=clip_notification_key(r),
    )


def verdict_history(pfs: Pfs, catalog_url: str, folder: str, repo: str = ASSESS_REPO) -> VerdictHistory:
    """Every judgment of the alarm whose verdict lives at ``<folder>/verdict.json`` in ``repo``."""
    return _history(pfs, catalog_url, repo, f"{folder}/{VERDICT_FILE}", _of_snapshot, folder)


def clip_history(pfs: Pfs, catalog_url: str, folder: str) -> VerdictHistory:
    """Every verdict of a video clip (``clips@master:<folder>/clip-verdict.json``) and its notification."""
    return _history(pfs, catalog_url, CLIPS_REPO, f"{folder}/{CLIP_VERDICT_FILE}", _of_clip, folder)


def _history(
    pfs: Pfs, catalog_url: str, repo: str, path: str, read: Callable[[bytes], _Judged], alarm: str
) -> VerdictHistory:
    judgments: list[Judgment] = []
    deliveries: dict[str, list[Delivery]] = {}  # notification key -> its ledger rows
    for version in pfs.file_versions(repo, path):
        if version.sha256 is None:
            continue
        if judgments and judgments[-1].verdict_sha256 == version.sha256:
            judgments[-1].current = version.removed_by is None
            continue  # the same bytes written again (a rerun): the same judgment
        judged = read(pfs.objects.get_bytes(version.sha256))
        alarm = judged.alarm
        key = judged.notification_key
        if key not in deliveries:
            deliveries[key] = _deliveries(catalog_url, key)
        judgments.append(
            Judgment(
                verdict=judged.verdict,
                reason=judged.reason,
                rules_commit=judged.rules_commit,
                rules_note=judged.rules_note,
                models=judged.models,
                pipeline_versions=judged.pipeline_versions,
                judged_at=version.committed_at,
                commit=version.commit,
                image_sha256=judged.content_sha256,
                verdict_sha256=version.sha256,
                notification_key=key,
                notified_at=None,
                current=version.removed_by is None,
            )
        )
    _attribute_notifications(judgments, deliveries)
    return VerdictHistory(
        alarm=alarm,
        judgments=judgments,
        deliveries=[d for rows in deliveries.values() for d in rows],
        flip=flip_text(judgments),
    )


def _attribute_notifications(judgments: list[Judgment], deliveries: dict[str, list[Delivery]]) -> None:
    """A delivery belongs to the alert judgment in force when it was sent (from its commit to the next one)."""
    for n, j in enumerate(judgments):
        if j.verdict != "alert":
            continue
        sent = sorted(d.sent_at for d in deliveries[j.notification_key] if d.state == "sent" and d.sent_at is not None)
        until = judgments[n + 1].judged_at if n + 1 < len(judgments) else None
        during = [t for t in sent if t >= j.judged_at and (until is None or t < until)]
        before = [t for t in sent if t < j.judged_at]
        if during:
            j.notified_at = during[0]
        elif before:
            j.already_notified_at = before[0]


def flip_text(judgments: list[Judgment]) -> str | None:
    """ "alerted and notified … under rules …; now dismiss under …" when a notified alert is no longer one."""
    if not judgments or judgments[-1].verdict == "alert":
        return None
    notified = [j for j in judgments if j.verdict == "alert" and j.notified_at is not None]
    if not notified:
        return None
    was, now = notified[-1], judgments[-1]
    return (
        f"alerted and notified {was.notified_at.isoformat(timespec='seconds') if was.notified_at else ''} "
        f"under rules {_short(was.rules_commit)}; now {now.verdict} under rules {_short(now.rules_commit)} "
        f"(judged {now.judged_at.isoformat(timespec='seconds')})"
    )
