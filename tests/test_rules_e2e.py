"""Threat rules end to end: real photos, real detector, real workers; the CLI in child processes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alarmsieve.cli import _known_errors, app
from alarmsieve.config import Settings
from alarmsieve.rules.repo import REJUDGED_REPO, commit_rules, in_force, set_arming
from alarmsieve.stages.records import VerdictRecord
from alarmsieve.verdicts import read_verdicts
from alarmsieve.workspace import Workspace
from tests.conftest import PROJECT, run_cli

RULES = """
sites:
  depot:
    timezone: Europe/London
    clock_skew_max: off  # file names days before the upload: their own time is judged, not the upload's
    schedule:
      - {days: daily, start: '22:00', end: '06:00'}
cameras:
  night-yard: {site: depot}
  night-off: {site: depot}
  shop-floor:
    site: depot
    schedule: always
    zones:
      aisle:
        polygon: [[0, 0], [1, 0], [1, 1], [0, 1]]
        labels:
          person: {severity: review}
"""
PHOTO = "images/skimage/astronaut.png"  # one person, scored well above 0.5
ALARMS = {
    "/night-yard/20261127_030000.png": "alert",  # 03:00 in London: armed by the site's schedule
    "/night-yard/20261127_120000.png": "dismiss",  # noon: outside the schedule
    "/night-off/20261127_030000.png": "dismiss",  # same time, camera disarmed by an operator
    "/shop-floor/20261127_030000.png": "review",  # review-only zone
}


@dataclass
class Ran:
    returncode: int
    stdout: bytes
    stderr: bytes


def _cli(home: Path, *args: str) -> Ran:
    """The real CLI, in this process (a child process costs seconds each on a busy machine)."""
    result = CliRunner().invoke(app, list(args), env={"ALARMSIEVE_HOME": str(home)})
    err = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        if not isinstance(result.exception, _known_errors()):
            raise result.exception
        err += f"error: {result.exception}"  # what `alarmsieve` (cli.main) prints for a user error
        return Ran(1, result.stdout.encode(), err.encode())
    return Ran(result.exit_code, result.stdout.encode(), err.encode())


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path, model_dir: Path) -> Workspace:
    home = tmp_path_factory.mktemp("rules")
    ws = Workspace(Settings(home=home, model_dir=model_dir, model_cache=home / "cache"), must_exist=False)
    ws.init(pipelines_dir=PROJECT / "pipelines")
    commit_rules(ws.pfs, {"/depot.yaml": RULES.encode()}, message="depot")
    set_arming(ws.pfs, "night-off", "disarmed", by="alice", note="maintenance")
    builder = ws.pfs.start_commit("images")
    for alarm in ALARMS:
        builder.put_local_file(alarm, shared_dir / PHOTO)
    builder.finish()
    with ws.runner() as runner:
        jobs = runner.run_until_idle()
    assert all(j.state == "success" for j in jobs), [j.reason for j in jobs]
    return ws


def verdicts(ws: Workspace) -> dict[str, VerdictRecord]:
    return {v.alarm: v for v in read_verdicts(ws.pfs)}


def test_same_photo_alert_dismiss_review_by_camera_rules(night: Workspace) -> None:
    found = verdicts(night)
    rules_commit = in_force(night.pfs).commit
    assert {a: v.verdict for a, v in found.items()} == ALARMS
    assert all(v.rules_commit == rules_commit and not v.rules_note for v in found.values())

    armed = found["/night-yard/20261127_030000.png"]
    assert armed.rule_path == "sites/depot/cameras/night-yard"
    assert armed.reasons[0].startswith("person 0.")
    assert "alert (defaults)" in armed.reasons[0]

    day = found["/night-yard/20261127_120000.png"]
    person = next(d for d in day.detections if d.label == "person")
    assert "Fri 12:00 is outside the armed schedule daily 22:00-06:00 (Europe/London) (sites/depot)" in person.why

    off = found["/night-off/20261127_030000.png"]
    person = next(d for d in off.detections if d.label == "person")
    assert "disarmed (camera night-off disarmed by alice" in person.why

    shop = found["/shop-floor/20261127_030000.png"]
    assert shop.rule_path == "sites/depot/cameras/shop-floor/zones/aisle"
    person = next(d for d in shop.detections if d.label == "person")
    assert (person.zone, person.kept, person.severity) == ("aisle", True, "review")
    # one notification: the single alert
    assert len(list(night.outbox.glob("*.eml"))) == 1


def test_explain_prints_rules_commit_rule_path_and_every_detection(night: Workspace) -> None:
    result = _cli(night.home, "explain", "/night-off/20261127_030000.png")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "verdict DISMISS" in out
    assert f"rules commit {in_force(night.pfs).commit}" in out
    assert "disarmed (camera night-off disarmed by alice" in out
    assert "person 0." in out and "dropped" in out

    result = _cli(night.home, "explain", "20261127_120000.png", "--json")
    data = json.loads(result.stdout)
    assert data["alarm"] == "/night-yard/20261127_120000.png" and data["rejudged"] is None

    result = _cli(night.home, "explain", "20261127_030000.png")
    assert result.returncode == 1
    assert "ambiguous" in result.stderr.decode()


def test_rules_show_arm_and_disarm(night: Workspace) -> None:
    result = _cli(night.home, "rules", "show", "shop-floor")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "sites/depot/cameras/shop-floor" in out and "time zone Europe/London" in out
    assert "zone aisle" in out and "sites/depot/cameras/shop-floor/zones/aisle" in out

    result = _cli(night.home, "rules", "show", "night-off", "--json")
    data = json.loads(result.stdout)
    assert data["armed_now"] is False
    assert data["arming"].startswith("camera night-off disarmed by alice")

    result = _cli(night.home, "disarm", "depot", "--until", "2h", "--by", "bob")
    assert result.returncode == 0, result.stderr
    assert "site depot disarmed by bob" in result.stdout.decode()
    state = in_force(night.pfs).rules.arming["sites/depot"]
    assert (state.by, state.state, state.until is not None) == ("bob", "disarmed", True)
    assert _cli(night.home, "arm", "depot", "--clear", "--by", "bob").returncode == 0
    assert "sites/depot" not in in_force(night.pfs).rules.arming

    result = _cli(night.home, "arm", "night-yard", "--until", "yesterday")
    assert result.returncode == 1
    assert "--until 'yesterday'" in result.stderr.decode()


def test_bad_rules_put_is_refused_and_rules_in_force_stay(night: Workspace, tmp_path: Path) -> None:
    before = night.pfs.head("rules")
    bad = tmp_path / "depot.yaml"
    cases = {
        "cameras:\n  x:\n    zones:\n      z:\n        polygon: [[0, 0], [1, 1]]\n": "depot.yaml:5",
        "cameras:\n  x:\n    labels:\n      persn: {severity: alert}\n": "unknown label 'persn'",
        "sites:\n  s:\n    timezone: Europe/Pariss\n": "unknown time zone",
        "cameras:\n  x: {site: nowhere}\n": "unknown site 'nowhere'",
        "cameras:\n  x: [\n": "invalid YAML",
    }
    for text, needle in cases.items():
        bad.write_text(text)
        result = _cli(night.home, "rules", "put", str(bad))
        err = result.stderr.decode()
        assert result.returncode == 1, text
        assert needle in err and "Nothing was committed" in err, err
    # and the same through the installed command line, in a child process
    result = run_cli("rules", "put", str(bad), home=night.home)
    assert result.returncode == 1 and b"error: rules change refused: /depot.yaml:3: invalid YAML" in result.stderr
    after = night.pfs.head("rules")
    assert before is not None and after is not None and after.id == before.id

    assert _cli(night.home, "rules", "check").returncode == 0
    folder = tmp_path / "candidate"
    folder.mkdir()
    (folder / "a.yaml").write_text("cameras:\n  x: {timezone: Mars/Base}\n")
    result = _cli(night.home, "rules", "check", str(folder))
    assert result.returncode == 1 and "a.yaml:2: cameras.x.timezone" in result.stderr.decode()


def test_what_if_shows_changes_without_notifying_and_apply_records_both(night: Workspace, tmp_path: Path) -> None:
    folder = tmp_path / "relaxed"
    folder.mkdir()
    (folder / "depot.yaml").write_text(
        RULES.replace(
            "      - {days: daily, start: '22:00', end: '06:00'}", "      - {days: daily, start: '00:00', end: '24:00'}"
        )
    )
    emails = sorted(p.name for p in night.outbox.glob("*.eml"))
    result = _cli(night.home, "rules", "what-if", "--rules", str(folder), "--json")
    assert result.returncode == 0, result.stderr
    changes = {row["input_path"]: (row["before"], row["after"]) for row in map(json.loads, result.stdout.splitlines())}
    # all day armed, and the folder has no arming file: both dismissals would be alerts
    assert changes == {
        "/night-yard/20261127_120000.png": ("dismiss", "alert"),
        "/night-off/20261127_030000.png": ("dismiss", "alert"),
    }
    assert not night.pfs.repo_exists(REJUDGED_REPO)

    result = _cli(night.home, "rules", "what-if", "--rules", str(folder), "--since", "2026-11-27T06:00", "--apply")
    assert result.returncode == 0, result.stderr
    assert "1 verdict(s) would change" in result.stdout.decode()
    assert "no notifications sent" in result.stdout.decode()
    out = _cli(night.home, "explain", "/night-yard/20261127_120000.png").stdout.decode()
    assert "verdict DISMISS" in out  # the pipeline's verdict stays what it was
    assert "dismiss -> alert" in out
    assert sorted(p.name for p in night.outbox.glob("*.eml")) == emails  # nobody notified
    # against the rules in force nothing changes
    result = _cli(night.home, "rules", "what-if")
    assert "0 verdict(s) would change" in result.stdout.decode()
    # a rules commit works as --rules too (here: the one before the arming of night-off)
    first = night.pfs.list_commits("rules")[-2]
    result = _cli(night.home, "rules", "what-if", "--rules", f"rules@{first.id}", "--json")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["input_path"], r["after"]) for r in rows] == [("/night-off/20261127_030000.png", "alert")]
    assert rows[0]["rules"] == f"rules@{first.id}"
    result = _cli(night.home, "rules", "what-if", "--rules", "nosuchcommit")
    assert result.returncode == 1 and "nosuchcommit" in result.stderr.decode()
