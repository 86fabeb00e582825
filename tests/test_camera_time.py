"""Camera time (issue 13): a time without an offset is the camera's wall clock in its rules' time zone.

End to end: real photos (file-name stamps, real EXIF written with Pillow) committed to a real workspace,
`alarmsieve run` in a child process (real detector and workers), then the verdicts, `explain`, `status`,
the e-mails in the outbox and the dashboard. Expected instants are written out by hand (UTC), not
computed with the code under test. Zones are real zoneinfo: New York and Berlin (northern DST) and
Sydney (southern), each around both of its 2026 transitions.
"""

from __future__ import annotations

import email
import html
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from PIL import ExifTags, Image
from typer.testing import CliRunner

from alarmsieve.cli import _known_errors, app
from alarmsieve.config import Settings
from alarmsieve.notify.config import load_config
from alarmsieve.rules import AlarmFacts, ObjectBox, RulesError, judge, load_rules
from alarmsieve.rules.clock import local_text, skew_note, wall_to_utc
from alarmsieve.rules.repo import commit_rules
from alarmsieve.stages.records import AlarmMeta, ClipVerdictRecord, VerdictRecord
from alarmsieve.stages.validate import time_from_filename
from alarmsieve.verdicts import read_clip_verdicts, read_verdicts
from alarmsieve.vision.models import COCO_LABELS
from alarmsieve.workspace import Workspace
from tests.conftest import PROJECT, run_cli
from tests.test_video import write_clip

PHOTO = "images/skimage/astronaut.png"  # one person, scored well above 0.5: alert whenever armed
NY = ZoneInfo("America/New_York")

# alarm -> (verdict, the instant it must be read as, in UTC). Schedules: 22:00-06:00 local, every day.
ALARMS = {
    # the example: 23:00 New York time is armed, 07:00 is not
    "/gate/20260315_230000.png": ("alert", "2026-03-16T03:00:00+00:00"),
    "/gate/20260316_070000.png": ("dismiss", "2026-03-16T11:00:00+00:00"),
    # a stamp marked Z (as the HTTP API names uploads) is UTC: 23:00Z is 19:00 in New York
    "/gate/20260315_230000Z.png": ("dismiss", "2026-03-15T23:00:00+00:00"),
    # New York, clocks forward 2026-03-08 02:00 EST -> 03:00 EDT
    "/gate/20260307_230000.png": ("alert", "2026-03-08T04:00:00+00:00"),
    "/gate/20260308_023000.png": ("alert", "2026-03-08T07:30:00+00:00"),  # does not exist: 03:30 EDT
    "/gate/20260308_053000.png": ("alert", "2026-03-08T09:30:00+00:00"),
    "/gate/20260308_070000.png": ("dismiss", "2026-03-08T11:00:00+00:00"),
    # New York, clocks back 2026-11-01 02:00 EDT -> 01:00 EST
    "/gate/20261031_230000.png": ("alert", "2026-11-01T03:00:00+00:00"),
    "/gate/20261101_013000.png": ("alert", "2026-11-01T05:30:00+00:00"),  # twice: the first, EDT
    "/gate/20261101_053000.png": ("alert", "2026-11-01T10:30:00+00:00"),
    "/gate/20261101_070000.png": ("dismiss", "2026-11-01T12:00:00+00:00"),
    # armed 03:15-04:00 only: the missing 02:30 is read as 03:30 (shifted forward by the gap), so armed
    "/dawn/20260308_023000.png": ("alert", "2026-03-08T07:30:00+00:00"),
    # Berlin, clocks forward 2026-03-29 02:00 CET -> 03:00 CEST
    "/yard/20260328_230000.png": ("alert", "2026-03-28T22:00:00+00:00"),
    "/yard/20260329_023000.png": ("alert", "2026-03-29T01:30:00+00:00"),
    "/yard/20260329_053000.png": ("alert", "2026-03-29T03:30:00+00:00"),
    "/yard/20260329_070000.png": ("dismiss", "2026-03-29T05:00:00+00:00"),
    # Berlin, clocks back 2026-10-25 03:00 CEST -> 02:00 CET
    "/yard/20261024_230000.png": ("alert", "2026-10-24T21:00:00+00:00"),
    "/yard/20261025_023000.png": ("alert", "2026-10-25T00:30:00+00:00"),
    "/yard/20261025_053000.png": ("alert", "2026-10-25T04:30:00+00:00"),
    "/yard/20261025_070000.png": ("dismiss", "2026-10-25T06:00:00+00:00"),
    # Sydney, clocks back 2026-04-05 03:00 AEDT -> 02:00 AEST
    "/harbour/20260404_230000.png": ("alert", "2026-04-04T12:00:00+00:00"),
    "/harbour/20260405_023000.png": ("alert", "2026-04-04T15:30:00+00:00"),
    "/harbour/20260405_053000.png": ("alert", "2026-04-04T19:30:00+00:00"),
    "/harbour/20260405_070000.png": ("dismiss", "2026-04-04T21:00:00+00:00"),
    # Sydney, clocks forward 2026-10-04 02:00 AEST -> 03:00 AEDT
    "/harbour/20261003_230000.png": ("alert", "2026-10-03T13:00:00+00:00"),
    "/harbour/20261004_023000.png": ("alert", "2026-10-03T16:30:00+00:00"),
    "/harbour/20261004_053000.png": ("alert", "2026-10-03T18:30:00+00:00"),
    "/harbour/20261004_070000.png": ("dismiss", "2026-10-03T20:00:00+00:00"),
    # an NVR that writes UTC (clock: utc): 03:00 UTC is 23:00 in New York, 23:00 UTC is 19:00
    "/nvr/20260316_030000.png": ("alert", "2026-03-16T03:00:00+00:00"),
    "/nvr/20260315_230000.png": ("dismiss", "2026-03-15T23:00:00+00:00"),
    # EXIF DateTimeOriginal 2026:03:15 23:00:00 without an offset, with +00:00, with -04:00
    "/exif-cam/local.jpg": ("alert", "2026-03-16T03:00:00+00:00"),
    "/exif-cam/utc.jpg": ("dismiss", "2026-03-15T23:00:00+00:00"),
    "/exif-cam/new-york.jpg": ("alert", "2026-03-16T03:00:00+00:00"),
}
# A doubtful person (about 0.39, review band) in two snapshots 3 s apart: one named by the New York wall
# clock (23:00:00 EDT = 03:00:00Z), one by Unix seconds (03:00:03Z). One burst only if both are read right.
DOUBT = "images/skimage/motorcycle_left.png"
BURST = ("/porch/20260315_230000.png", "/porch/1773630003.png")
CLIPS = {
    "/gate/20260315_230000.mp4": ("alert", "2026-03-16T03:00:00+00:00"),
    "/gate/20260316_070000.mp4": ("dismiss", "2026-03-16T11:00:00+00:00"),
    "/gate/20260315_230000Z.mp4": ("dismiss", "2026-03-15T23:00:00+00:00"),  # UTC: 19:00 in New York
}
EXIF = {"/exif-cam/local.jpg": None, "/exif-cam/utc.jpg": "+00:00", "/exif-cam/new-york.jpg": "-04:00"}
NOTES = {
    "/gate/20260308_023000.png": "02:30 does not exist in America/New_York on 2026-03-08 (clocks went forward); "
    "read as 03:30 EDT",
    "/gate/20261101_013000.png": "01:30 happens twice in America/New_York on 2026-11-01 (clocks went back); "
    "read as the first, 01:30 EDT (-04:00)",
    "/yard/20260329_023000.png": "02:30 does not exist in Europe/Berlin on 2026-03-29 (clocks went forward); "
    "read as 03:30 CEST",
    "/yard/20261025_023000.png": "02:30 happens twice in Europe/Berlin on 2026-10-25 (clocks went back); "
    "read as the first, 02:30 CEST (+02:00)",
    "/harbour/20260405_023000.png": "02:30 happens twice in Australia/Sydney on 2026-04-05 (clocks went back); "
    "read as the first, 02:30 AEDT (+11:00)",
    "/harbour/20261004_023000.png": "02:30 does not exist in Australia/Sydney on 2026-10-04 (clocks went forward); "
    "read as 03:30 AEDT",
}
NIGHT = "[{days: daily, start: '22:00', end: '06:00'}]"
RULES = f"""
sites:
  hq:
    timezone: America/New_York
    clock_skew_max: off          # these file names are months from the upload; skew is tested at `branch`
    schedule: {NIGHT}
  berlin: {{timezone: Europe/Berlin, clock_skew_max: off, schedule: {NIGHT}}}
  sydney: {{timezone: Australia/Sydney, clock_skew_max: off, schedule: {NIGHT}}}
  branch:                        # the built-in clock_skew_max (2h)
    timezone: America/New_York
    schedule: [{{days: daily, start: '{{start}}', end: '{{end}}'}}]
cameras:
  gate: {{site: hq}}
  dawn: {{site: hq, schedule: [{{days: daily, start: '03:15', end: '04:00'}}]}}
  nvr: {{site: hq, clock: utc}}
  exif-cam: {{site: hq}}
  yard: {{site: berlin}}
  harbour: {{site: sydney}}
  drift: {{site: branch}}
  porch: {{site: hq}}
"""
# Deprecated fields that disagree with the rules: the rules must win (site hq, New York time).
NOTIFY = {
    "sites": {"old-hq": ["gate"]},
    "timezones": {"gate": "Europe/Paris"},
    "channels": [{"name": "mail", "type": "outbox"}],
    "routes": [{"channel": "mail", "to": ["ops@example.com"], "match": {"cameras": ["gate"]}}],
}


@dataclass
class Clocks:
    ws: Workspace
    upload: datetime  # when the images were committed
    skewed: str  # drift's alarm whose file name is 36 h behind the upload
    skewed_at: datetime  # the instant its name says
    fresh: str  # drift's alarm whose file name is 10 min before the upload
    verdicts: dict[str, VerdictRecord]
    clips: dict[str, ClipVerdictRecord]


def _exif_jpeg(photo: Path, offset: str | None) -> bytes:
    exif = Image.Exif()
    ifd = exif.get_ifd(ExifTags.IFD.Exif)
    ifd[ExifTags.Base.DateTimeOriginal] = "2026:03:15 23:00:00"
    if offset is not None:
        ifd[ExifTags.Base.OffsetTimeOriginal] = offset
    out = io.BytesIO()
    Image.open(photo).convert("RGB").save(out, "JPEG", quality=92, exif=exif)
    return out.getvalue()


def _cli(home: Path, *args: str) -> str:
    """The real CLI in this process (a child process costs seconds each on a busy machine)."""
    result = CliRunner().invoke(app, list(args), env={"ALARMSIEVE_HOME": str(home)})
    if result.exception is not None and not isinstance(result.exception, SystemExit | _known_errors()):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def clocks(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path, model_dir: Path) -> Clocks:
    home = tmp_path_factory.mktemp("clocks")
    ws = Workspace(Settings(home=home, model_dir=model_dir, model_cache=home / "cache"), must_exist=False)
    ws.init(pipelines_dir=PROJECT / "pipelines")
    now_utc = datetime.now(UTC).replace(microsecond=0)
    now = now_utc.astimezone(NY)
    # drift's armed window is around the upload; its skewed file name is 12 h (of the day) outside it
    window = {"start": f"{now - timedelta(hours=1):%H:%M}", "end": f"{now + timedelta(hours=2):%H:%M}"}
    rules = RULES.replace("{start}", window["start"]).replace("{end}", window["end"])
    commit_rules(ws.pfs, {"/sites.yaml": rules.encode(), "/notify.json": json.dumps(NOTIFY).encode()}, message="clocks")
    # instants first (UTC arithmetic: a DST change in between does not bend them), then New York wall names
    skew_at = now_utc - timedelta(hours=36)
    local = skew_at.astimezone(NY)
    if local.replace(fold=0).utcoffset() != local.replace(fold=1).utcoffset():  # an hour that happens twice
        skew_at -= timedelta(hours=2)
    skewed = f"/drift/{skew_at.astimezone(NY):%Y%m%d_%H%M%S}.png"
    fresh = f"/drift/{(now_utc - timedelta(minutes=10)).astimezone(NY):%Y%m%d_%H%M%S}.png"
    builder = ws.pfs.start_commit("images")
    for alarm in ALARMS:
        if alarm in EXIF:
            builder.put_bytes(alarm, _exif_jpeg(shared_dir / PHOTO, EXIF[alarm]))
        else:
            builder.put_local_file(alarm, shared_dir / PHOTO)
    for alarm in BURST:
        builder.put_local_file(alarm, shared_dir / DOUBT)
    builder.put_local_file(skewed, shared_dir / PHOTO)
    builder.put_local_file(fresh, shared_dir / PHOTO)
    upload = builder.finish()
    # clips named by the wall clock: their frames are stamped with the clip's start plus the offset
    clip = write_clip(home / "clip.mp4", shared_dir, seconds=2, person=(0.0, 1.0))
    videos = ws.pfs.start_commit("videos")
    for alarm in CLIPS:
        videos.put_local_file(alarm, clip)
    videos.finish()
    ran = run_cli("run", home=home, env={"ALARMSIEVE_MODEL_DIR": str(model_dir)})
    assert ran.returncode == 0, ran.stderr.decode()[-3000:]
    assert "job(s) run, 0 failed or errored" in ran.stdout.decode(), ran.stdout.decode()
    verdicts = {v.alarm: v for v in read_verdicts(ws.pfs)}
    upload_time = ws.pfs.inspect_commit("images", upload.id).created_at
    return Clocks(ws, upload_time, skewed, skew_at, fresh, verdicts, {c.clip: c for c in read_clip_verdicts(ws.pfs)})


# --- the pipeline: schedules per zone around both DST transitions -----------------------------------


def test_schedules_use_the_camera_wall_clock_around_both_dst_transitions(clocks: Clocks) -> None:
    got = {a: (clocks.verdicts[a].verdict, clocks.verdicts[a].time.isoformat()) for a in ALARMS}
    assert got == ALARMS
    zones = {v.camera: v.timezone for v in clocks.verdicts.values()}
    assert zones["gate"] == zones["nvr"] == "America/New_York"
    assert (zones["yard"], zones["harbour"]) == ("Europe/Berlin", "Australia/Sydney")


def test_clip_named_by_the_wall_clock(clocks: Clocks) -> None:
    got = {c: (clocks.clips[c].verdict, clocks.clips[c].time.isoformat()) for c in CLIPS}
    assert got == CLIPS
    assert {clocks.clips[c].timezone for c in CLIPS} == {"America/New_York"}
    frames = [v for v in clocks.verdicts.values() if v.clip is not None and v.clip.clip == "/gate/20260315_230000.mp4"]
    assert frames and all(v.timezone == "America/New_York" for v in frames)
    text = _cli(clocks.ws.home, "explain", "/gate/20260315_230000.mp4")
    assert "clip /gate/20260315_230000.mp4  camera gate  time 2026-03-15 23:00:00 -04:00 (America/New_York)" in text


def test_dismissed_outside_the_schedule_says_local_time(clocks: Clocks) -> None:
    morning = clocks.verdicts["/gate/20260316_070000.png"]
    assert "disarmed: Mon 07:00 is outside the armed schedule daily 22:00-06:00" in morning.reasons[1]
    assert "(America/New_York)" in morning.reasons[1]


def test_missing_and_repeated_hours_are_resolved_and_said(clocks: Clocks) -> None:
    for alarm, note in NOTES.items():
        v = clocks.verdicts[alarm]
        assert v.time_note == note, alarm
        assert v.reasons[-1] == f"time: {note}"
    dawn = clocks.verdicts["/dawn/20260308_023000.png"]
    assert dawn.time_note == NOTES["/gate/20260308_023000.png"] and dawn.verdict == "alert"
    plain = clocks.verdicts["/gate/20260315_230000.png"]
    assert plain.time_note == "" and not any(r.startswith("time: ") for r in plain.reasons)


def test_exif_offset_is_absolute_and_exif_without_offset_is_wall_clock(clocks: Clocks) -> None:
    meta = [AlarmMeta.model_validate_json(clocks.ws.pfs.get_file("validate", "master", f"{a}/meta.json")) for a in EXIF]
    assert [m.time_source for m in meta] == ["exif"] * 3
    assert [m.wall_time is not None for m in meta] == [True, False, False]
    # the same wall reading, three instants: only the offset (or its absence) decides
    assert [clocks.verdicts[a].time.isoformat() for a in EXIF] == [ALARMS[a][1] for a in EXIF]


def test_clock_utc_camera(clocks: Clocks) -> None:
    meta = AlarmMeta.model_validate_json(
        clocks.ws.pfs.get_file("validate", "master", "/nvr/20260316_030000.png/meta.json")
    )
    assert meta.wall_time == datetime(2026, 3, 16, 3, 0)  # validate keeps the reading; assess reads it as UTC
    assert clocks.verdicts["/nvr/20260316_030000.png"].verdict == "alert"


def test_camera_clock_a_day_and_a_half_off_uses_the_upload_time(clocks: Clocks) -> None:
    skewed, fresh = clocks.verdicts[clocks.skewed], clocks.verdicts[clocks.fresh]
    # judged at the upload time (inside drift's window) though the camera's clock is outside it
    assert skewed.verdict == "alert" and skewed.time == clocks.upload
    assert skewed.camera_time == clocks.skewed_at
    assert skewed.clock_skew_s == (clocks.skewed_at - clocks.upload).total_seconds()
    hours = int((clocks.upload - clocks.skewed_at).total_seconds() // 3600)  # 36 (38 next to a repeated hour)
    assert skewed.time_note.startswith(f"camera clock 1 d {hours - 24} h behind the upload time (camera ")
    assert "more than clock_skew_max 2 h, defaults): schedules use the upload time" in skewed.time_note
    assert skewed.reasons[-1] == f"time: {skewed.time_note}"
    assert fresh.verdict == "alert" and fresh.time_note == "" and fresh.clock_skew_s is None
    assert fresh.time != clocks.upload  # within 2h: the camera's own time stands


def test_burst_compares_camera_times_whatever_their_source(clocks: Clocks) -> None:
    named, epoch = (clocks.verdicts[a] for a in BURST)
    assert (named.time.isoformat(), epoch.time.isoformat()) == (
        "2026-03-16T03:00:00+00:00",
        "2026-03-16T03:00:03+00:00",
    )
    assert (named.verdict, epoch.verdict) == ("alert", "alert")
    assert "seen in 2 frames within 10 s (/porch/1773630003.png +3 s): alert" in named.reasons[0]
    assert "seen in 2 frames within 10 s (/porch/20260315_230000.png -3 s): alert" in epoch.reasons[0]


# --- what people read ------------------------------------------------------------------------------


def test_verdicts_show_local_time_and_json_stays_utc(clocks: Clocks) -> None:
    table = _cli(clocks.ws.home, "verdicts", "--device", "gate")
    row = next(line for line in table.splitlines() if "20260315_230000.png" in line)
    assert "2026-03-15 23:00:00 -04:00 (America/New_York)" in row and "alert" in row
    row = next(line for line in table.splitlines() if "20260316_070000.png" in line)
    assert "2026-03-16 07:00:00 -04:00 (America/New_York)" in row and "dismiss" in row
    listed = [json.loads(line) for line in _cli(clocks.ws.home, "verdicts", "--device", "gate", "--json").splitlines()]
    first = next(v for v in listed if v["input_path"] == "/gate/20260315_230000.png")
    assert first["time"] == "2026-03-16T03:00:00+00:00" and first["timezone"] == "America/New_York"
    assert first["verdict"] == "alert"


def test_explain_shows_local_time_and_the_note(clocks: Clocks) -> None:
    text = _cli(clocks.ws.home, "explain", "/gate/20260308_023000.png")
    assert "time 2026-03-08 03:30:00 -04:00 (America/New_York)" in text
    assert f"time note: {NOTES['/gate/20260308_023000.png']}" in text
    text = _cli(clocks.ws.home, "explain", clocks.skewed)
    assert f"camera clock said {local_text(clocks.skewed_at, 'America/New_York')}" in text
    assert "time note: camera clock 1 d " in text
    data = json.loads(_cli(clocks.ws.home, "explain", "/gate/20260315_230000.png", "--json"))
    assert data["time"] == "2026-03-16T03:00:00Z" and data["timezone"] == "America/New_York"


def test_rules_show_names_the_zone_and_clock_with_their_sources(clocks: Clocks) -> None:
    text = _cli(clocks.ws.home, "rules", "show", "nvr")
    assert "time zone America/New_York (sites/hq)" in text
    assert "clock utc (sites/hq/cameras/nvr), clock_skew_max off (sites/hq)" in text
    assert "clock local (defaults), clock_skew_max 2 h (defaults)" in _cli(clocks.ws.home, "rules", "show", "drift")


def test_status_lists_the_camera_with_a_skewed_clock(clocks: Clocks) -> None:
    text = _cli(clocks.ws.home, "status")
    lines = [line for line in text.splitlines() if "camera clock:" in line]
    hours = int((clocks.upload - clocks.skewed_at).total_seconds() // 3600)
    assert lines == [f"camera clock: camera drift: clock 1 d {hours - 24} h behind the upload time ({clocks.skewed})"]
    data = json.loads(_cli(clocks.ws.home, "status", "--json"))
    assert [c["camera"] for c in data["camera_clocks"]] == ["drift"]


def test_email_shows_camera_local_time_rules_win_over_notify_json(clocks: Clocks) -> None:
    mails = [
        email.message_from_bytes(p.read_bytes(), policy=policy.default)
        for p in (clocks.ws.home / "outbox").glob("*.eml")
    ]
    mail = next(m for m in mails if "/gate/20260315_230000.png" in m.get_body(("plain",)).get_content())
    # notify.json says site old-hq and Europe/Paris for gate; the rules say hq, America/New_York
    assert str(mail["Subject"]).endswith("on gate (hq) at 2026-03-15 23:00:00 -04:00 (America/New_York)")
    text = mail.get_body(("plain",)).get_content()
    assert "Time:    2026-03-15 23:00:00 -04:00 (America/New_York)\n" in text
    assert "Site:    hq\n" in text
    clip = next(m for m in mails if "Alarm:   /gate/20260315_230000.mp4" in m.get_body(("plain",)).get_content())
    assert str(clip["Subject"]).endswith("at 2026-03-15 23:00:00 -04:00 (America/New_York)")
    missing = next(m for m in mails if "/gate/20260308_023000.png" in m.get_body(("plain",)).get_content())
    assert f"time: {NOTES['/gate/20260308_023000.png']}" in missing.get_body(("plain",)).get_content()


def test_rules_check_shows_the_notify_json_deprecation(clocks: Clocks) -> None:
    text = " ".join(_cli(clocks.ws.home, "rules", "check").split())  # unwrap the console's line breaks
    assert "deprecated: rules@master:/notify.json: `sites` is deprecated" in text
    assert "deprecated: rules@master:/notify.json: `timezones` is deprecated" in text
    assert "camera gate: site 'old-hq' here, 'hq' in the rules: the rules win" in text
    assert "gate: time zone Europe/Paris here, America/New_York in the rules: the rules win" in text


@pytest.fixture
def dashboard(clocks: Clocks) -> Iterator[tuple[str, str]]:
    from tests.test_api import serve_api

    with serve_api(clocks.ws, runner=False) as api:
        yield api.url, api.operator


def test_dashboard_shows_local_time_and_the_clock_note(clocks: Clocks, dashboard: tuple[str, str]) -> None:
    url, token = dashboard
    cookies = {"alarmsieve_token": token}
    page = httpx.get(f"{url}/review", params={"camera": "drift"}, cookies=cookies, timeout=60)
    assert page.status_code == 200
    text = html.unescape(page.text)
    skewed = clocks.verdicts[clocks.skewed]
    assert skewed.time_note in text
    assert local_text(skewed.time, "America/New_York") in text
    detail = httpx.get(f"{url}/review{clocks.skewed}", cookies=cookies, timeout=60)
    text = html.unescape(detail.text)
    assert detail.status_code == 200 and skewed.time_note in text
    assert skewed.camera_time is not None and local_text(skewed.camera_time, "America/New_York") in text
    page = html.unescape(httpx.get(f"{url}/review", params={"camera": "gate"}, cookies=cookies, timeout=60).text)
    assert "2026-03-15 23:00:00 -04:00 (America/New_York)" in page


# --- the pieces, without the pipeline --------------------------------------------------------------


def test_wall_to_utc_is_deterministic_and_plain_times_have_no_note() -> None:
    assert wall_to_utc(datetime(2026, 3, 8, 2, 30), "America/New_York") == (
        datetime(2026, 3, 8, 7, 30, tzinfo=UTC),
        NOTES["/gate/20260308_023000.png"],
    )
    assert wall_to_utc(datetime(2026, 7, 1, 12, 0), "America/New_York") == (datetime(2026, 7, 1, 16, 0, tzinfo=UTC), "")
    assert wall_to_utc(datetime(2026, 7, 1, 12, 0), "UTC") == (datetime(2026, 7, 1, 12, 0, tzinfo=UTC), "")
    assert local_text(datetime(2026, 3, 16, 3, 0, tzinfo=UTC), "America/New_York") == (
        "2026-03-15 23:00:00 -04:00 (America/New_York)"
    )
    assert local_text(datetime(2026, 3, 16, 3, 0), None) == "2026-03-16 03:00:00 +00:00 (UTC)"


def test_file_name_stamps_wall_clock_unless_marked() -> None:
    assert time_from_filename("20260315_230000.jpg") == datetime(2026, 3, 15, 23, 0)
    assert time_from_filename("20260315_230000-0001.jpg") == datetime(2026, 3, 15, 23, 0)  # a counter
    assert time_from_filename("20260315_230000Z_5e1f0c2a9b3d.jpg") == datetime(2026, 3, 15, 23, 0, tzinfo=UTC)
    assert time_from_filename("2026-03-15T23:00:00-04:00.jpg") == datetime(2026, 3, 16, 3, 0, tzinfo=UTC)
    assert time_from_filename("cam_1773630003.jpg") == datetime(2026, 3, 16, 3, 0, 3, tzinfo=UTC)
    assert time_from_filename("snapshot.jpg") is None


def test_skew_by_the_zone_offset_suggests_clock_utc() -> None:
    upload = datetime(2026, 3, 16, 3, 0, tzinfo=UTC)
    camera = upload + timedelta(hours=4)  # a UTC reading taken for New York time
    skew, note = skew_note(camera, upload, "America/New_York", "local", 7200, "defaults")
    assert skew == 4 * 3600 and note.startswith("camera clock 4 h ahead of the upload time")
    assert note.endswith("if the camera writes UTC, set `clock: utc`")


def test_naive_time_given_to_judge_is_the_camera_wall_clock() -> None:
    rules = load_rules(
        {"/r.yaml": f"cameras:\n  gate: {{timezone: America/New_York, schedule: {NIGHT}}}\n".encode()},
        known_labels=COCO_LABELS,
    )
    person = [ObjectBox(label="person", score=0.9, box=(10, 10, 100, 300))]

    def verdict(when: datetime) -> str:
        facts = AlarmFacts(camera="gate", width=640, height=480, status="ok", objects=person, time=when)
        return judge(rules, facts).verdict

    assert verdict(datetime(2026, 3, 15, 23, 0)) == "alert"  # 23:00 New York
    assert verdict(datetime(2026, 3, 15, 23, 0, tzinfo=UTC)) == "dismiss"  # 19:00 New York


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("cameras:\n  a: {clock: gmt}\n", "cameras.a.clock"),
        ("cameras:\n  a: {clock_skew_max: 2 hours}\n", "expected a duration like '2h'"),
        ("cameras:\n  a: {clock_skew_max: 120}\n", "expected a duration like '2h'"),
        (
            "cameras:\n  a:\n    zones:\n      z: {polygon: [[0, 0], [1, 0], [1, 1]], clock: utc}\n",
            "clock is set per camera (or site, group, defaults), not per zone",
        ),
    ],
)
def test_bad_clock_settings_are_refused_with_the_field(yaml_text: str, message: str) -> None:
    with pytest.raises(RulesError) as caught:
        load_rules({"/bad.yaml": yaml_text.encode()}, known_labels=COCO_LABELS)
    assert message in str(caught.value) and str(caught.value).startswith("/bad.yaml:")


def test_clock_settings_layer_like_the_other_rules() -> None:
    rules = load_rules(
        {
            "/r.yaml": b"sites:\n  s: {clock: utc, clock_skew_max: 30m}\n"
            b"cameras:\n  a: {site: s}\n  b: {site: s, clock: local, clock_skew_max: off}\n"
        },
        known_labels=COCO_LABELS,
    )
    a, b, c = (rules.for_camera(x).clock for x in ("a", "b", "c"))
    assert (a.kind, a.kind_from, a.skew_max_s, a.skew_max_from) == ("utc", "sites/s", 1800, "sites/s")
    assert (b.kind, b.skew_max_s, b.skew_max_from) == ("local", 0, "sites/s/cameras/b")
    assert (c.kind, c.skew_max_s, c.skew_max_from) == ("local", 7200, "defaults")


def test_records_written_before_camera_time_still_read() -> None:
    old_meta = (
        '{"alarm": "/c/x.png", "camera": "c", "time": "2026-11-27T03:00:00Z", "time_source": "filename", '
        '"image_file": "image.png", "sha256": "00", "size_bytes": 1, "status": "ok"}'
    )
    meta = AlarmMeta.model_validate_json(old_meta)
    assert meta.wall_time is None and meta.upload_time is None  # absolute, as it was judged then
    old_verdict = (
        '{"alarm": "/c/x.png", "camera": "c", "time": "2026-11-27T03:00:00Z", "verdict": "alert", "reasons": [], '
        '"rule_path": "defaults", "rules_commit": null, "status": "ok", "detections": [], "model": null, '
        '"annotated_file": null, "image_sha256": "00", "pipeline_versions": {}}'
    )
    verdict = VerdictRecord.model_validate_json(old_verdict)
    assert (verdict.timezone, verdict.time_note, verdict.clock_skew_s) == ("", "", None)


def test_notify_json_sites_and_zones_yield_to_the_rules_and_say_so_once(caplog: pytest.LogCaptureFixture) -> None:
    files = {
        "/notify.json": json.dumps(
            {"sites": {"north": ["cam-q"]}, "timezones": {"north": "Europe/Paris", "cam-z": "Asia/Tokyo"}}
        ).encode(),
        "/places.yaml": b"sites:\n  south: {timezone: Australia/Sydney}\ncameras:\n  cam-q: {site: south}\n",
    }
    with caplog.at_level(logging.WARNING, logger="alarmsieve.notify.config"):
        _, config = load_config(files)
        load_config(files)
    assert config is not None
    assert (config.site_of("cam-q"), config.timezone_of("cam-q")) == ("south", "Australia/Sydney")
    assert config.timezone_of("cam-z") == "Asia/Tokyo"  # the rules say nothing of cam-z: the old field still works
    assert config.timezone_of("cam-none") is None
    assert config.deprecation_notes() == [
        "rules@master:/notify.json: `sites` is deprecated: name each camera's site in the rules "
        "(cameras: {gate: {site: hq}}); the rules win where both name one",
        "rules@master:/notify.json: `timezones` is deprecated: set `timezone:` on the site or camera in the rules "
        "(sites: {hq: {timezone: America/New_York}}); the rules win where both set one",
        "rules@master:/notify.json: camera cam-q: site 'north' here, 'south' in the rules: the rules win",
    ]
    logged = [r.getMessage() for r in caplog.records]
    # once per process although loaded twice (the general notes may have been logged by an earlier test)
    assert logged.count(config.deprecation_notes()[2]) == 1 and len(logged) == len(set(logged))
