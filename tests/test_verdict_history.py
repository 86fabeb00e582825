"""A verdict's history is never rewritten silently (issue 13): reprocess, explain, compare.

Real photos, the real detector, real workers and pipelines, the notification outbox; the CLI runs in
this process (typer's runner) except `compare`, which runs as the real command line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from alarmsieve.cli import _known_errors, app
from alarmsieve.rules.repo import commit_rules, in_force
from alarmsieve.stages.records import VerdictRecord
from alarmsieve.verdicts import read_verdicts
from alarmsieve.workspace import Workspace
from tests.conftest import PROJECT, run_cli
from tests.test_api import serve_api

PHOTO = "images/skimage/astronaut.png"  # one person, well above 0.5: alert under the default rules
FRONT_IGNORES_PEOPLE = b"cameras:\n  front:\n    labels:\n      person: {severity: ignore}\n"


def _cli(ws: Workspace, *args: str) -> tuple[int, str, str]:
    """The real CLI in this process: (exit code, stdout, stderr as `alarmsieve` prints a user error)."""
    result = CliRunner().invoke(app, list(args), env={"ALARMSIEVE_HOME": str(ws.home)})
    err = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        if not isinstance(result.exception, _known_errors()):
            raise result.exception
        return 1, result.stdout, err + f"error: {result.exception}"
    return result.exit_code, result.stdout, err


def _run(ws: Workspace) -> None:
    with ws.runner() as runner:
        jobs = runner.run_until_idle()
    assert all(j.state == "success" for j in jobs), [(j.pipeline, j.reason) for j in jobs]


def _verdicts(ws: Workspace) -> dict[str, VerdictRecord]:
    return {v.alarm: v for v in read_verdicts(ws.pfs)}


def _explain(ws: Workspace, alarm: str) -> dict[str, Any]:
    code, out, err = _cli(ws, "explain", alarm, "--json")
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


def test_reprocess_keeps_the_notified_alert_and_rules_head_shows_the_flip(
    make_workspace: Callable[..., Workspace], shared_dir: Path
) -> None:
    ws = make_workspace()
    builder = ws.pfs.start_commit("images")
    builder.put_local_file("/front/astronaut.png", shared_dir / PHOTO)
    builder.finish()
    _run(ws)
    first_rules = in_force(ws.pfs).commit
    assert _verdicts(ws)["/front/astronaut.png"].verdict == "alert"
    assert len(list(ws.outbox.glob("*.eml"))) == 1

    # a rules commit that would dismiss it, then a reprocess of detect (and a new alarm at once)
    new_rules = commit_rules(ws.pfs, {"/front.yaml": FRONT_IGNORES_PEOPLE}, message="front: people ignored").id
    code, out, err = _cli(ws, "update", "pipeline", "-f", str(PROJECT / "pipelines/detect.json"), "--reprocess")
    assert code == 0, err
    assert "assess" not in out  # the default (first) is assess's default: its version does not change
    builder = ws.pfs.start_commit("images")
    builder.put_local_file("/front/later.png", shared_dir / PHOTO)
    builder.finish()
    _run(ws)
    found = _verdicts(ws)
    kept = found["/front/astronaut.png"]
    assert (kept.verdict, kept.rules_commit) == ("alert", first_rules)
    assert kept.pipeline_versions["detect"] == "detect@v2"  # it was judged again, by the new detect version
    assert f"rules@{first_rules}" in kept.rules_note and new_rules in kept.rules_note
    later = found["/front/later.png"]  # a new alarm: the rules in force now
    assert (later.verdict, later.rules_commit, later.rules_note) == ("dismiss", new_rules, "")
    assert len(list(ws.outbox.glob("*.eml"))) == 1  # nothing sent again

    history = _explain(ws, "/front/astronaut.png")["history"]
    judged = history["judgments"]
    assert [(j["verdict"], j["rules_commit"]) for j in judged] == [("alert", first_rules), ("alert", first_rules)]
    assert [j["pipeline_versions"]["detect"] for j in judged] == ["detect@v1", "detect@v2"]
    assert all(j["models"] and len(next(iter(j["models"].values()))) == 64 for j in judged)
    assert [j["current"] for j in judged] == [False, True]
    assert judged[0]["judged_at"] < judged[1]["judged_at"]
    [delivery] = history["deliveries"]
    assert delivery["state"] == "sent" and delivery["channel"] == "outbox"
    assert judged[0]["notified_at"] == delivery["sent_at"] and history["flip"] is None
    assert judged[1]["notified_at"] is None and judged[1]["already_notified_at"] == delivery["sent_at"]

    # the operator asks for the head: the alarm is re-judged under it, and the history says it flipped
    code, out, err = _cli(
        ws, "update", "pipeline", "-f", str(PROJECT / "pipelines/detect.json"), "--reprocess", "--rules", "head"
    )
    assert code == 0, err
    assert "pipeline assess: updated: spec changed: past alarms re-judged with --rules head" in out
    assert ws.pps.get_spec("assess")[0].transform.cmd[-2:] == ["--rejudge-rules", "head"]
    _run(ws)
    now = _verdicts(ws)["/front/astronaut.png"]
    assert (now.verdict, now.rules_commit) == ("dismiss", new_rules)
    assert len(list(ws.outbox.glob("*.eml"))) == 1

    data = _explain(ws, "astronaut.png")
    assert data["verdict"] == "dismiss"
    history = data["history"]
    assert [(j["verdict"], j["rules_commit"]) for j in history["judgments"]] == [
        ("alert", first_rules),
        ("alert", first_rules),
        ("dismiss", new_rules),
    ]
    sent_at = history["deliveries"][0]["sent_at"][:19]
    assert history["flip"].startswith(f"alerted and notified {sent_at}")
    assert f"under rules {first_rules[:12]}; now dismiss under rules {new_rules[:12]}" in history["flip"]
    code, out, _ = _cli(ws, "explain", "astronaut.png")
    assert code == 0
    assert f"flipped: alerted and notified {sent_at}" in out
    assert "history (3 judgment(s)):" in out and "notification outbox to " in out

    # the dashboard's alarm page shows the same history, the flip first
    with serve_api(ws, runner=False) as api:
        page = httpx.get(f"{api.url}/review/front/astronaut.png", cookies={"alarmsieve_token": api.operator})
    assert page.status_code == 200
    section = page.text.split('<section id="history">', 1)[1].split("</section>", 1)[0]
    assert f"alerted and notified {sent_at}" in section
    assert section.count("<tr") == 4 and section.count(first_rules[:12]) >= 2 and new_rules[:12] in section

    # a further reprocess without --rules goes back to each alarm's own rules: assess drops the argument
    code, out, err = _cli(ws, "update", "pipeline", "-f", str(PROJECT / "pipelines/detect.json"), "--reprocess")
    assert code == 0, err
    assert "past alarms re-judged with --rules first" in out
    assert "--rejudge-rules" not in ws.pps.get_spec("assess")[0].transform.cmd
    # a rules commit that changes no rule (a comment-only file) leaves nothing to hold: the head is recorded
    same_rules = commit_rules(ws.pfs, {"/notes.yaml": b"# to do: the back gate\n"}, message="notes").id
    _run(ws)
    found = _verdicts(ws)
    assert {a: (v.verdict, v.rules_commit, v.rules_note) for a, v in found.items()} == {
        "/front/astronaut.png": ("dismiss", same_rules, ""),
        "/front/later.png": ("dismiss", same_rules, ""),
    }
    assert len(list(ws.outbox.glob("*.eml"))) == 1


def test_rules_flag_mistakes_are_one_clear_line(make_workspace: Callable[..., Workspace]) -> None:
    ws = make_workspace()
    detect = str(PROJECT / "pipelines/detect.json")
    code, _, err = _cli(ws, "update", "pipeline", "-f", detect, "--rules", "head")
    assert code == 2 and "--rules goes with --reprocess" in err
    code, _, err = _cli(ws, "update", "pipeline", "-f", detect, "--reprocess", "--rules", "newest")
    assert code == 1 and "--rules 'newest': give first" in err and "Traceback" not in err
    assert ws.pps.get_spec("detect")[1] == 1  # nothing was updated


def test_compare_counts_only_the_compared_pipelines_flips(
    make_workspace: Callable[..., Workspace], shared_dir: Path, model_dir: Path, tmp_path: Path
) -> None:
    ws = make_workspace()
    builder = ws.pfs.start_commit("images")
    builder.put_local_file("/front/astronaut.png", shared_dir / PHOTO)
    builder.put_local_file("/back/astronaut.png", shared_dir / PHOTO)
    builder.finish()
    _run(ws)
    first_rules = in_force(ws.pfs).commit
    assert {v.verdict for v in _verdicts(ws).values()} == {"alert"}
    # since then: a rules commit that would dismiss the front camera's alarm (not the detect change)
    commit_rules(ws.pfs, {"/front.yaml": FRONT_IGNORES_PEOPLE}, message="front: people ignored")

    def compare(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        spec = json.loads((PROJECT / "pipelines/detect.json").read_text())
        change(spec)
        candidate = tmp_path / "detect-candidate.json"
        candidate.write_text(json.dumps(spec))
        result = run_cli(
            "compare",
            "pipeline",
            "detect",
            "--with",
            str(candidate),
            "--json",
            home=ws.home,
            env={"ALARMSIEVE_MODEL_DIR": str(model_dir)},
        )
        assert result.returncode == 0, result.stderr.decode()
        report: dict[str, Any] = json.loads(result.stdout)
        return report

    # a change that does not alter the detections: nothing flips, though the rules changed since
    same = compare(lambda spec: spec["parallelismSpec"].update(constant=1))
    assert same["flips"] == [] and same["verdicts_compared"] == 2
    assert same["rules_held"] == {first_rules: 2} and same["stored_differs"] == []

    # a change that drops every person: both flip, each judged with the rules it was judged with
    strict = compare(lambda spec: spec["transform"]["cmd"].extend(["--score-threshold", "0.97"]))
    assert {(f["alarm"], f["before"], f["after"], f["rules_commit"]) for f in strict["flips"]} == {
        ("/front/astronaut.png", "alert", "dismiss", first_rules),
        ("/back/astronaut.png", "alert", "dismiss", first_rules),
    }
    assert {v.verdict for v in _verdicts(ws).values()} == {"alert"}  # the real workspace is untouched


def test_file_versions_lists_every_version_of_one_path_with_the_commits_that_wrote_and_replaced_it(
    make_workspace: Callable[..., Workspace],
) -> None:
    pfs = make_workspace(init=False).pfs
    pfs.create_repo("data")
    commits = []
    for change in (b"one", b"two", None, b"one"):  # write, overwrite, delete, write again
        builder = pfs.start_commit("data")
        builder.put_bytes("/other/file", change or b"untouched")
        if change is None:
            builder.delete("/cam/a.json")
        else:
            builder.put_bytes("/cam/a.json", change)
        commits.append(builder.finish())
    versions = pfs.file_versions("data", "cam/a.json")
    assert [(v.commit, v.removed_by) for v in versions] == [
        (commits[0].id, commits[1].id),
        (commits[1].id, commits[2].id),
        (commits[3].id, None),
    ]
    assert versions[0].sha256 == versions[2].sha256 != versions[1].sha256 and versions[1].size == 3
    assert [v.committed_at for v in versions] == [commits[0].created_at, commits[1].created_at, commits[3].created_at]
    assert versions[0].removed_at == commits[1].created_at
    assert pfs.file_versions("data", "/cam/never.json") == []
