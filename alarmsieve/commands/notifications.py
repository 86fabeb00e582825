"""``list notification``, ``inspect notification``, ``retry notification``: the delivery ledger."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.table import Table

from alarmsieve.cli import JsonFlag, app, console, emit_json, fail, inspect_app, list_app, workspace
from alarmsieve.errors import AlarmsieveError

retry_app = typer.Typer(help="Send a failed notification again.", no_args_is_help=True)
app.add_typer(retry_app, name="retry")


class NotificationView(BaseModel):
    """One ledger row as the CLI shows it (``--json``)."""

    id: int
    key: str
    channel: str
    recipient: str
    state: str
    dead_letter: bool
    kind: str | None
    camera: str | None
    incident_id: str | None
    attempts: int
    provider_id: str | None
    last_error: str | None
    created_at: Any
    first_attempt_at: Any
    last_attempt_at: Any
    sent_at: Any
    seconds_to_send: float | None


def _view(row: Any) -> NotificationView:
    took = (row.sent_at - row.created_at).total_seconds() if row.sent_at and row.created_at else None
    return NotificationView(
        id=row.id,
        key=row.key,
        channel=row.channel,
        recipient=row.recipient,
        state=row.state,
        dead_letter=bool(row.dead),
        kind=row.kind,
        camera=row.camera,
        incident_id=row.incident_id,
        attempts=row.attempts,
        provider_id=row.provider_id,
        last_error=row.last_error,
        created_at=row.created_at,
        first_attempt_at=row.first_attempt_at,
        last_attempt_at=row.last_attempt_at,
        sent_at=row.sent_at,
        seconds_to_send=took,
    )


def _ledger(ws: Any) -> Any:
    from alarmsieve.notify.ledger import NotificationLedger

    return NotificationLedger(ws.catalog_url)


def _config(ws: Any) -> Any:
    from alarmsieve.notify.sweep import read_notify_config

    return read_notify_config(ws.pfs)


@list_app.command("notification")
def list_notification(
    failed: Annotated[bool, typer.Option("--failed", help="only failed ones (the dead-letter list first)")] = False,
    state: Annotated[str | None, typer.Option("--state", help="pending, sent or failed")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n")] = 100,
    as_json: JsonFlag = False,
) -> None:
    """List notifications (newest first): channel, recipient, state, attempts, provider id."""
    ledger = _ledger(workspace())
    if failed:
        rows = sorted(ledger.list_failed(), key=lambda r: (not r.dead, -r.id))
    else:
        try:
            rows = list(reversed(ledger.list(state)))
        except ValueError as exc:
            fail(f"{exc} (e.g. --state failed)")
    views = [_view(r) for r in rows[:limit]]
    if as_json:
        return emit_json(views)
    table = Table("ID", "CHANNEL", "RECIPIENT", "CAMERA", "KIND", "STATE", "ATTEMPTS", "PROVIDER ID", "ERROR", box=None)
    for v in views:
        state_text = "dead-letter" if v.dead_letter and v.state == "failed" else v.state
        table.add_row(
            str(v.id),
            v.channel,
            v.recipient,
            v.camera or "-",
            v.kind or "-",
            state_text,
            str(v.attempts),
            v.provider_id or "-",
            (v.last_error or "")[:60],
        )
    console.print(table)


@inspect_app.command("notification")
def inspect_notification(notification_id: int, as_json: JsonFlag = False) -> None:
    """Show one notification: channel, recipient, state, attempts, last error, provider id, timings."""
    row = _ledger(workspace()).by_id(notification_id)
    if row is None:
        fail(f"no notification with id {notification_id}; see `alarmsieve list notification`")
    v = _view(row)
    if as_json:
        return emit_json([v])
    for key, value in [
        ("ID", str(v.id)),
        ("Key", v.key),
        ("Channel", v.channel),
        ("Recipient", v.recipient),
        ("State", v.state + (" (dead letter: retry with `alarmsieve retry notification`)" if v.dead_letter else "")),
        ("Kind", v.kind or "-"),
        ("Camera", v.camera or "-"),
        ("Incident", v.incident_id or "-"),
        ("Attempts", str(v.attempts)),
        ("Provider ID", v.provider_id or "-"),
        ("Last error", v.last_error or "-"),
        ("Created", v.created_at.isoformat() if v.created_at else "-"),
        ("First attempt", v.first_attempt_at.isoformat() if v.first_attempt_at else "-"),
        ("Last attempt", v.last_attempt_at.isoformat() if v.last_attempt_at else "-"),
        ("Sent", v.sent_at.isoformat() if v.sent_at else "-"),
        ("To send", f"{v.seconds_to_send:.3f}s" if v.seconds_to_send is not None else "-"),
    ]:
        console.print(f"[bold]{key}:[/] {value}", highlight=False, soft_wrap=True)


@retry_app.command("notification")
def retry_notification(
    notification_id: Annotated[int | None, typer.Argument(help="the id from `list notification`")] = None,
    all_failed: Annotated[bool, typer.Option("--all-failed", help="every failed notification")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Send failed notifications again (a sent one is never sent twice)."""
    from alarmsieve.notify.dispatch import retry

    if (notification_id is None) == (not all_failed):
        fail("give a notification ID or --all-failed (not both)")
    ws = workspace()
    ledger = _ledger(ws)
    ids = [notification_id] if notification_id is not None else [r.id for r in ledger.list_failed()]
    config = _config(ws)
    results = []
    for row_id in ids:
        try:
            results.append((row_id, retry(ledger, row_id, config, ws.outbox, os.environ)))
        except AlarmsieveError as exc:
            if notification_id is not None:
                raise
            fail(f"notification {row_id}: {exc}")
    if as_json:
        return emit_json([{"id": i, **r.model_dump(mode="json")} for i, r in results])
    if not results:
        console.print("no failed notifications")
    for row_id, r in results:
        console.print(f"{row_id} {r.channel} -> {r.recipient}: {r.state} {r.provider_id or ''} {r.reason}".rstrip())
    if any(r.state == "failed" for _, r in results):
        raise typer.Exit(1)
