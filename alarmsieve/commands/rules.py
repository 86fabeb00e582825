"""Threat-rules commands: ``rules check|put|show|what-if``, ``explain ALARM``, ``arm|disarm``.

Every change to the rules repo made here is validated first: a bad file is refused with its file,
line and field, nothing is committed, and the rules in force stay in force.
"""

from __future__ import annotations

import getpass
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.table import Table

from alarmsieve.cli import JsonFlag, app, console, emit_json, fail, parse_since, workspace
from alarmsieve.errors import AlarmsieveError

rules_app = typer.Typer(help="Check, commit, show and try out the threat rules.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")

ByOption = Annotated[str | None, typer.Option("--by", help="who does it (default: $USER)")]
UntilOption = Annotated[
    str | None,
    typer.Option("--until", help="until an ISO time (camera-independent, UTC if no offset) or for 2h / 30m / 1d"),
]


def _who(by: str | None) -> str:
    if by:
        return by
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def parse_until(text: str | None, now: datetime | None = None) -> datetime | None:
    """An ISO time (UTC when it has no offset) or a duration forward from now: 30m, 2h, 1d."""
    if not text:
        return None
    now = now or datetime.now(UTC)
    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if match:
        seconds = int(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
        return now + timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise AlarmsieveError(
            f"--until {text!r}: give an ISO time (2026-11-28T06:00, 2026-11-28T06:00+01:00) or a duration (8h, 30m)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


# --- check / put ---------------------------------------------------------------------------------


@rules_app.command("check")
def rules_check(
    folder: Annotated[
        Path | None, typer.Argument(help="folder of rules files (default: the head of rules@master)")
    ] = None,
) -> None:
    """Validate rules files without committing them (exit 1 with file, line and field if they are bad)."""
    from alarmsieve.rules.repo import read_dir, read_files, validate

    if folder is not None:
        files, where = read_dir(folder), str(folder)
    else:
        commit, files = read_files(workspace().pfs)
        where = f"rules@{commit}"
    rules = validate(files)
    console.print(
        f"{where}: valid ({len(rules.sites)} site(s), {len(rules.groups)} group(s), {len(rules.cameras)} camera(s), "
        f"{len(rules.arming)} arming state(s))"
    )
    from alarmsieve.notify.config import NotifyConfigError, load_config

    try:  # the notification settings live in the same repo: their deprecated fields are said here too
        path, notify = load_config(files)
    except NotifyConfigError as exc:
        console.print(f"[yellow]notification configuration:[/] {exc}", highlight=False, soft_wrap=True)
        return
    for note in notify.deprecation_notes(path or "") if notify is not None else []:
        console.print(f"[yellow]deprecated:[/] {note}", highlight=False, soft_wrap=True)


@rules_app.command("put")
def rules_put(
    file: Annotated[Path, typer.Argument(help="a local rules YAML file")],
    path: Annotated[str | None, typer.Option("--path", help="where in the rules repo (default: /<file name>)")] = None,
    message: Annotated[str, typer.Option("--message", "-m")] = "",
) -> None:
    """Commit a rules file, only if the whole rules repo is valid with it; else nothing changes."""
    from alarmsieve.rules.repo import commit_rules

    if not file.is_file():
        fail(f"{file}: no such file", 2)
    dest = "/" + (path or file.name).lstrip("/")
    if not dest.lower().endswith((".yaml", ".yml")):
        fail(f"--path {dest}: rules files end in .yaml or .yml (others are not read)", 2)
    commit = commit_rules(workspace().pfs, {dest: file.read_bytes()}, message=message or f"rules: put {dest}")
    console.print(f"rules@{commit.id}: {dest} committed; in force for alarms assessed from now on")


# --- show ----------------------------------------------------------------------------------------


def _area(value: Any) -> str:
    if value is None or value == 0:
        return "-"
    return f"{value.pixels} px" if hasattr(value, "pixels") else f"{value:g}"


def _policy_table(eff: Any) -> Table:
    table = Table("LABEL", "SEVERITY", "MIN SCORE", "REVIEW FROM", "AREA", "ASPECT", "MIN COUNT", "FROM", box=None)
    for label, p in [*eff.labels.items(), ("(other)", eff.other)]:
        sources = dict.fromkeys([p.severity_from, p.min_score_from, p.min_box_area_from, p.min_count_from])
        aspect = f"{p.aspect_ratio[0]:g}-{p.aspect_ratio[1]:g}" if p.aspect_ratio else "-"
        table.add_row(
            label,
            p.severity,
            f"{p.min_score:.2f}",
            f"{p.review_min_score:.2f}" if p.review_min_score < p.min_score else "-",
            f"{_area(p.min_box_area)} .. {_area(p.max_box_area)}",
            aspect,
            str(p.min_count),
            ", ".join(sources),
        )
    return table


def _arming_text(rules: Any, camera: str, now: datetime) -> str:
    state = rules.arming_for(camera)
    if state is None:
        return "no operator override (the schedule decides)"
    if not state.active(now):
        return f"expired: {state.text()} (the schedule decides)"
    return state.text()


@rules_app.command("show")
def rules_show(
    camera: Annotated[str, typer.Argument(help="camera id (the first folder of its alarms' paths)")],
    as_json: JsonFlag = False,
) -> None:
    """The effective rules of a camera after inheritance (defaults, site, group, camera, zones)."""
    from alarmsieve.rules.repo import in_force

    found = in_force(workspace().pfs)
    eff = found.rules.for_camera(camera)
    now = datetime.now(UTC)
    if as_json:
        data = eff.model_dump(mode="json")
        data["rules_commit"] = found.commit
        data["arming"] = _arming_text(found.rules, camera, now)
        data["armed_now"] = _armed_now(found.rules, camera, now)
        return emit_json([data])
    if found.note:
        console.print(f"[yellow]warning:[/] {found.note}", highlight=False)
    console.print(f"camera [bold]{camera}[/]  rules {eff.rule_path}  (rules@{found.commit or 'built-in'})")
    if eff.rule_path == "defaults":
        console.print("  not declared in the rules: the defaults apply")
    console.print(f"  site {eff.site or '-'}  group {eff.group or '-'}  time zone {eff.timezone} ({eff.timezone_from})")
    from alarmsieve.rules.clock import duration_text

    skew = duration_text(eff.clock.skew_max_s) if eff.clock.skew_max_s else "off"
    console.print(
        f"  clock {eff.clock.kind} ({eff.clock.kind_from}), clock_skew_max {skew} ({eff.clock.skew_max_from})",
        highlight=False,
    )
    frame = f"{eff.frame.width}x{eff.frame.height}" if eff.frame else "from each image"
    console.print(f"  frame size {frame}")
    sched = eff.schedule
    console.print(f"  schedule {sched.text() if sched else 'always armed'} ({sched.source if sched else 'defaults'})")
    console.print(f"  arming {_arming_text(found.rules, camera, now)}")
    console.print(f"  armed now: {'yes' if _armed_now(found.rules, camera, now) else 'no'}")
    console.print(_policy_table(eff))
    for name, polygon in eff.masks.items():
        console.print(f"  mask {name}: {[list(p) for p in polygon]} (detections standing here are ignored)")
    for zone in eff.zones:
        req = "required" if zone.required else "optional"
        console.print(
            f"\nzone [bold]{zone.name}[/] ({req})  rules {zone.path}  polygon {[list(p) for p in zone.polygon]}"
        )
        if zone.rules.schedule:
            console.print(f"  schedule {zone.rules.schedule.text()} ({zone.rules.schedule.source})")
        console.print(_policy_table(zone.rules))


def _armed_now(rules: Any, camera: str, now: datetime) -> bool:
    state = rules.arming_for(camera)
    if state is not None and state.active(now):
        return bool(state.state == "armed")
    sched = rules.for_camera(camera).schedule
    return sched is None or sched.armed_at(now)


# --- arm / disarm --------------------------------------------------------------------------------


def _arm(target: str, state: Literal["armed", "disarmed"], until: str | None, by: str | None, clear: bool) -> None:
    from alarmsieve.rules.repo import set_arming

    ws = workspace()
    who = _who(by)
    if clear:
        _, commit = set_arming(ws.pfs, target, None, by=who)
        console.print(f"rules@{commit.id}: arming override of {target} cleared by {who}; the schedule decides")
        return
    done, commit = set_arming(ws.pfs, target, state, by=who, until=parse_until(until))
    assert done is not None
    console.print(f"rules@{commit.id}: {done.text()}")


@app.command("arm")
def arm(
    target: Annotated[str, typer.Argument(help="a site (as named under sites:) or a camera id")],
    until: UntilOption = None,
    by: ByOption = None,
    clear: Annotated[bool, typer.Option("--clear", help="remove the override: the schedule decides again")] = False,
) -> None:
    """Arm a site or camera now (beats its schedule), optionally until a time; recorded with who and when."""
    _arm(target, "armed", until, by, clear)


@app.command("disarm")
def disarm(
    target: Annotated[str, typer.Argument(help="a site (as named under sites:) or a camera id")],
    until: UntilOption = None,
    by: ByOption = None,
    clear: Annotated[bool, typer.Option("--clear", help="remove the override: the schedule decides again")] = False,
) -> None:
    """Disarm a site or camera (its detections are dismissed), optionally until a time; recorded with who and when."""
    _arm(target, "disarmed", until, by, clear)


# --- explain -------------------------------------------------------------------------------------


def explain_lines(stored: Any, rejudged: Any = None) -> list[str]:
    from alarmsieve.rules.clock import local_text

    v = stored.record
    zone = v.timezone or "UTC"
    lines = [f"alarm {v.alarm}  camera {v.camera}  time {local_text(v.time, zone)}"]
    if v.camera_time is not None:
        lines.append(f"camera clock said {local_text(v.camera_time, zone)}")
    if v.time_note:
        lines.append(f"time note: {v.time_note}")
    lines += [
        f"verdict {v.verdict.upper()}  decided by {v.rule_path}",
        f"rules commit {v.rules_commit or '(built-in or crossed-in rules)'}",
    ]
    if v.rules_note:
        lines.append(f"rules note: {v.rules_note}")
    if len(v.models) > 1:
        lines.append("models " + ", ".join(f"{m.name} sha256 {m.sha256[:16]}…" for m in v.models))
    elif v.model:
        lines.append(f"model {v.model.name} sha256 {v.model.sha256[:16]}…")
    if v.second_look:
        lines.append(f"second look: {v.second_look}")
    lines.append(f"image status {v.status}")
    lines.append("reasons:")
    lines += [f"  - {r}" for r in v.reasons]
    lines.append("detections:" if v.detections else "detections: none")
    for d in v.detections:
        box = ", ".join(f"{c:.0f}" for c in d.box)
        zone = f" zone {d.zone}" if d.zone else ""
        state = f"kept ({d.severity})" if d.kept else "dropped"
        lines.append(f"  {d.label} {d.score:.2f} [{box}]{zone}: {state}: {d.why}")
        if d.sources:
            lines.append("    seen by " + ", ".join(f"{look} {raw:.2f}" for look, raw in d.sources.items()))
    if rejudged is not None:
        a = rejudged.after
        lines.append(
            f"re-judged {rejudged.applied_at.isoformat()} by {rejudged.by} with {rejudged.rules}: "
            f"{rejudged.before.verdict} -> {a.verdict} ({a.reasons[0] if a.reasons else ''})"
        )
    return lines


@app.command("explain")
def explain(
    alarm: Annotated[str, typer.Argument(help="the alarm's path (/cam-1/0001.jpg) or, if unique, its file name")],
    as_json: JsonFlag = False,
) -> None:
    """Why an alarm got its verdict: the rules commit, the deciding rule path and every detection's fate.

    For a video clip: its frames' verdicts, which frame decided, and that frame's explanation.
    """
    from alarmsieve.rules.repo import find_verdict, rejudgement_of
    from alarmsieve.verdicts import find_clip_verdict

    pfs = workspace().pfs
    clip = find_clip_verdict(pfs, alarm)
    if clip is not None:
        return _explain_clip(pfs, clip, as_json)
    stored = find_verdict(pfs, alarm)
    rejudged = rejudgement_of(pfs, stored.folder)
    history = _history(pfs, stored.folder)
    if as_json:
        data = stored.record.model_dump(mode="json")
        data["rejudged"] = rejudged.model_dump(mode="json") if rejudged else None
        data["history"] = history.model_dump(mode="json")
        return emit_json([data])
    for line in [*explain_lines(stored, rejudged), *history_lines(history, stored.record.timezone or None)]:
        console.print(line, highlight=False, soft_wrap=True)


def _history(pfs: Any, folder: str) -> Any:
    from alarmsieve.history import verdict_history

    return verdict_history(pfs, pfs.catalog_url, folder)  # the ledger lives in the same catalog


def _clip_history(pfs: Any, clip: str) -> Any:
    from alarmsieve.history import clip_history

    return clip_history(pfs, pfs.catalog_url, clip)


def history_lines(history: Any, zone: str | None = None) -> list[str]:
    """Every judgment of the alarm, oldest first, with its rules, models and notification; times in the
    camera's zone (``zone``) with their offset."""
    from alarmsieve.rules.clock import local_text

    lines = [f"history ({len(history.judgments)} judgment(s)):"]
    for j in history.judgments:
        models = ", ".join(f"{name} {sha[:12]}" for name, sha in j.models.items()) or "no model"
        versions = ", ".join(j.pipeline_versions.values())
        notified = ""
        if j.notified_at:
            notified = f"; notified {local_text(j.notified_at, zone)}"
        elif j.already_notified_at:
            notified = f"; already notified {local_text(j.already_notified_at, zone)} (not sent again)"
        now = " (current)" if j.current else ""
        lines.append(
            f"  {local_text(j.judged_at, zone)} {j.verdict.upper()}{now} under rules "
            f"{j.rules_commit or 'built-in'}; {models}; {versions}{notified}"
        )
        if j.rules_note:
            lines.append(f"      {j.rules_note}")
    for d in history.deliveries:
        when = local_text(d.sent_at, zone) if d.sent_at else "-"
        lines.append(f"  notification {d.channel} to {d.recipient}: {d.state} {when}")
    if history.flip:
        lines.append(f"flipped: {history.flip}")
    return lines


def clip_explain_lines(clip: Any, zone: str | None = None) -> list[str]:
    """A clip's verdict, its frames (the deciding one marked) and its caveats (partial, capped)."""
    from alarmsieve.rules.clock import local_text

    lines = [
        f"clip {clip.clip}  camera {clip.camera}  time {local_text(clip.time, zone)}",
        f"verdict {clip.verdict.upper()}  from {len(clip.frames)} frame(s)",
        "reasons:",
        *[f"  - {r}" for r in clip.reasons],
        "frames (offset, verdict, strongest kept object, first reason):",
    ]
    for f in clip.frames:
        mark = "  <- decided" if f.alarm == clip.deciding_frame else ""
        first = f.reasons[0] if f.reasons else ""
        lines.append(f"  {f.offset_s:7.1f}s {f.verdict:<7} {f.top or '-':<14} {first}{mark}")
    if clip.deciding_frame is None:
        lines.append("no frame decided: none alerted or needed review")
    return lines


def _explain_clip(pfs: Any, clip: Any, as_json: bool) -> None:
    from alarmsieve.rules.repo import find_verdict, rejudgement_of

    stored = find_verdict(pfs, clip.deciding_frame) if clip.deciding_frame else None
    rejudged = rejudgement_of(pfs, stored.folder) if stored is not None else None
    if as_json:
        data = {"kind": "clip", **clip.model_dump(mode="json")}
        frame = stored.record.model_dump(mode="json") if stored is not None else None
        if frame is not None and stored is not None:
            frame["rejudged"] = rejudged.model_dump(mode="json") if rejudged else None
            frame["history"] = _history(pfs, stored.folder).model_dump(mode="json")
        data["deciding_frame_verdict"] = frame
        data["history"] = _clip_history(pfs, clip.clip).model_dump(mode="json")
        return emit_json([data])
    lines = [
        *clip_explain_lines(clip, clip.timezone or None),
        *history_lines(_clip_history(pfs, clip.clip), clip.timezone or None),
    ]
    if stored is not None:
        lines.append(f"deciding frame {clip.deciding_frame}:")
        lines += [f"  {line}" for line in explain_lines(stored, rejudged)]
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


# --- what-if -------------------------------------------------------------------------------------


@rules_app.command("what-if")
def rules_what_if(
    rules: Annotated[
        str | None, typer.Option("--rules", help="a folder of rules files or a rules commit (default: rules in force)")
    ] = None,
    since: Annotated[str | None, typer.Option("--since", help="ISO time or 30m / 2h / 7d")] = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="re-judge the changed alarms and record both verdicts")
    ] = False,
    by: ByOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Which past verdicts would change under other rules (no notifications); --apply records them."""
    from alarmsieve.rules.repo import REJUDGED_REPO, apply_what_if, what_if

    pfs = workspace().pfs
    result = what_if(pfs, rules, parse_since(since))
    commit = apply_what_if(pfs, result, by=_who(by)) if apply else None
    if as_json:
        return emit_json(
            [
                {
                    "input_path": stored.record.alarm,
                    "device": stored.record.camera,
                    "time": stored.record.time.isoformat(),
                    "before": stored.record.verdict,
                    "after": new.verdict,
                    "before_rule_path": stored.record.rule_path,
                    "after_rule_path": new.rule_path,
                    "why": new.reasons[0] if new.reasons else "",
                    "rules": result.rules_ref,
                    "applied": commit.id if commit else None,
                }
                for stored, new in result.changes
            ]
        )
    table = Table("ALARM", "TIME", "NOW", "WOULD BE", "WHY", box=None)
    for stored, new in result.changes:
        table.add_row(
            stored.record.alarm,
            stored.record.time.isoformat(timespec="minutes"),
            stored.record.verdict,
            new.verdict,
            new.reasons[0] if new.reasons else "",
        )
    if result.changes:
        console.print(table)
    console.print(
        f"{len(result.changes)} verdict(s) would change under {result.rules_ref}, {result.unchanged} unchanged"
        + (f", {len(result.missing)} without detections to re-judge" if result.missing else "")
    )
    if commit is not None:
        console.print(f"recorded both verdicts in {REJUDGED_REPO}@{commit.id} (no notifications sent)")
    elif apply:
        console.print("nothing to apply")
