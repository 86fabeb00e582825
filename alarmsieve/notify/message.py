"""The notification payload and its rendering as an RFC 5322 e-mail.

Every channel renders from the same helpers (subject, text, HTML, content id), so an e-mail written
to the outbox and one sent through SendGrid read the same.
"""

from __future__ import annotations

import email.policy
import hashlib
import html
import mimetypes
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from alarmsieve.rules.clock import local_text

ANNOTATED_FILENAME = "annotated.jpg"


class AlarmNotification(BaseModel):
    """The one schema of a notification payload (JSON-safe: bytes travel as base64)."""

    model_config = ConfigDict(extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")

    # Idempotency key chosen by the caller: the same alarm always gets the same key (ledger column: 200).
    key: str = Field(min_length=1, max_length=200)
    camera: str
    alarm_path: str
    time: datetime
    verdict: Literal["alert", "review", "dismiss"]
    reasons: list[str]
    objects: list[dict[str, Any]]  # {"label": str, "score": float, "box": [x1, y1, x2, y2]}
    rules_version: str
    model: str
    annotated_jpeg: bytes
    original: bytes | None = None
    original_name: str | None = None
    # Added by routing and grouping (all optional: a bare notification is a new, ungrouped alarm).
    site: str | None = None
    timezone: str | None = None  # IANA zone of the camera: times are shown in it
    kind: Literal["new", "update", "escalation", "summary", "end"] = "new"
    incident_id: str | None = None
    incident_alarms: int = 1  # alarms in the incident so far, this one included
    note: str = ""  # one line shown first (update / escalation / rate-limit summary)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def utc_time(n: AlarmNotification) -> datetime:
    # A naive time is taken as UTC (the pipeline stores UTC).
    return n.time.replace(tzinfo=UTC) if n.time.tzinfo is None else n.time.astimezone(UTC)


def _when(n: AlarmNotification) -> str:
    """The camera's local time with offset and zone: ``2026-03-15 23:00:00 -04:00 (America/New_York)``."""
    return local_text(utc_time(n), n.timezone)


def message_id(key: str, sender: str = "") -> str:
    """Deterministic Message-ID (with angle brackets): a resend of the same key is recognisable."""
    domain = sender.rpartition("@")[2].strip(" >") or "alarmsieve.invalid"
    return f"<alarm.{_digest(key)[:40]}@{domain}>"


def content_id(n: AlarmNotification) -> str:
    """Content-ID of the inline annotated image, without angle brackets (``cid:`` form in HTML)."""
    return f"annotated.{_digest(n.key)[:24]}@alarmsieve"


def _labels(n: AlarmNotification) -> list[str]:
    return list(dict.fromkeys(str(o.get("label", "?")) for o in n.objects))


def _object_line(o: dict[str, Any]) -> str:
    score = o.get("score")
    score_text = f"{score:.2f}" if isinstance(score, int | float) else "?"
    box = o.get("box")
    box_text = f" box ({', '.join(f'{v:.0f}' for v in box)})" if isinstance(box, list | tuple) else ""
    return f"{o.get('label', '?')} {score_text}{box_text}"


def subject(n: AlarmNotification) -> str:
    labels = _labels(n)
    what = f" {', '.join(labels[:3])}{' …' if len(labels) > 3 else ''}" if labels else ""
    prefix = {"new": "", "update": "UPDATE ", "escalation": "ESCALATION ", "summary": "SUMMARY ", "end": "END "}[n.kind]
    where = f"{n.camera} ({n.site})" if n.site else n.camera
    return f"[alarmsieve] {prefix}{n.verdict.upper()}{what} on {where} at {_when(n)}"


def render_text(n: AlarmNotification) -> str:
    lines = [
        *([n.note, ""] if n.note else []),
        f"Verdict: {n.verdict.upper()}",
        f"Camera:  {n.camera}",
        *([f"Site:    {n.site}"] if n.site else []),
        f"Time:    {_when(n)}",
        f"Alarm:   {n.alarm_path}",
        "",
        "Objects:",
        *([f"  - {_object_line(o)}" for o in n.objects] or ["  (none)"]),
        "",
        "Reasons:",
        *([f"  - {r}" for r in n.reasons] or ["  (none)"]),
        "",
        f"Rules version: {n.rules_version}",
        f"Model:         {n.model}",
        f"Key:           {n.key}",
        *([f"Incident:      {n.incident_id} ({n.incident_alarms} alarm(s))"] if n.incident_id else []),
    ]
    return "\n".join(lines) + "\n"


def render_html(n: AlarmNotification, cid: str | None = None) -> str:
    e = html.escape
    cid = cid or content_id(n)
    objects = "".join(f"<li>{e(_object_line(o))}</li>" for o in n.objects) or "<li>(none)</li>"
    reasons = "".join(f"<li>{e(r)}</li>" for r in n.reasons) or "<li>(none)</li>"
    return (
        "<!DOCTYPE html><html><body>"
        + (f"<p><b>{e(n.note)}</b></p>" if n.note else "")
        + f"<h2>{e(n.verdict.upper())} on {e(n.camera)}</h2>"
        "<table>"
        f"<tr><th align='left'>Camera</th><td>{e(n.camera)}</td></tr>"
        + (f"<tr><th align='left'>Site</th><td>{e(n.site)}</td></tr>" if n.site else "")
        + f"<tr><th align='left'>Time</th><td>{e(_when(n))}</td></tr>"
        f"<tr><th align='left'>Verdict</th><td>{e(n.verdict.upper())}</td></tr>"
        f"<tr><th align='left'>Alarm</th><td>{e(n.alarm_path)}</td></tr>"
        "</table>"
        f'<p><img src="cid:{e(cid)}" alt="annotated alarm image" style="max-width:100%"></p>'
        f"<h3>Objects</h3><ul>{objects}</ul>"
        f"<h3>Reasons</h3><ul>{reasons}</ul>"
        f"<p><small>rules {e(n.rules_version)} · model {e(n.model)} · key {e(n.key)}</small></p>"
        "</body></html>\n"
    )


def original_filename(n: AlarmNotification) -> str:
    return n.original_name or "original.jpg"


def original_mime(n: AlarmNotification) -> tuple[str, str]:
    mime = mimetypes.guess_type(original_filename(n))[0] or "application/octet-stream"
    main, _, sub = mime.partition("/")
    return main, sub


def build_email(n: AlarmNotification, *, sender: str, recipients: list[str]) -> EmailMessage:
    """multipart/mixed[ alternative[ text, related[ html, inline annotated JPEG ] ], original ]."""
    if not recipients:
        raise ValueError("build_email needs at least one recipient")
    # Headers up to RFC 5322's 998 characters unfolded: a subject with the camera's local time, offset and
    # zone passes 78, and a header folded before its first word reads back with a leading space.
    msg = EmailMessage(policy=email.policy.default.clone(max_line_length=998))
    msg["Subject"] = subject(n)
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = format_datetime(utc_time(n))
    msg["Message-ID"] = message_id(n.key, sender)
    msg["X-Alarmsieve-Key"] = n.key
    msg["X-Alarmsieve-Verdict"] = n.verdict
    msg.set_content(render_text(n))
    cid = content_id(n)
    msg.add_alternative(render_html(n, cid), subtype="html")
    html_part = msg.get_payload()[1]
    html_part.add_related(
        n.annotated_jpeg,
        maintype="image",
        subtype="jpeg",
        cid=f"<{cid}>",
        disposition="inline",
        filename=ANNOTATED_FILENAME,
    )
    if n.original is not None:
        main, sub = original_mime(n)
        msg.add_attachment(n.original, maintype=main, subtype=sub, filename=original_filename(n))
    return msg
