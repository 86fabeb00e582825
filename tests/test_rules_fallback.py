"""A bad head of rules@master never takes effect in assess: last valid rules, said in every verdict."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alarmsieve.rules.repo import in_force
from alarmsieve.workspace import Workspace
from tests.conftest import run_cli
from tests.test_rules_e2e import PHOTO, verdicts


def test_a_bad_head_does_not_take_effect_in_assess(make_workspace: Callable[..., Workspace], shared_dir: Path) -> None:
    ws = make_workspace()
    builder = ws.pfs.start_commit("images")
    builder.put_local_file("/yard/20261127_030000.png", shared_dir / PHOTO)
    builder.finish()
    with ws.runner() as runner:
        runner.run_until_idle()
    good = ws.pfs.head("rules")
    # A bad commit that bypassed `rules put` (plain `put file`): person ignored, plus a typo
    builder = ws.pfs.start_commit("rules")
    builder.put_bytes("/default.yaml", b"defaults:\n  labels:\n    person: {severity: ignore}\n    persn: {}\n")
    bad = builder.finish()
    builder = ws.pfs.start_commit("images")
    builder.put_local_file("/yard/20261127_040000.png", shared_dir / PHOTO)
    builder.finish()
    with ws.runner() as runner:  # fresh workers: the last valid rules come from the workspace cache
        jobs = runner.run_until_idle()
    assert all(j.state == "success" for j in jobs)
    found = verdicts(ws)
    assert good is not None
    new = found["/yard/20261127_040000.png"]
    assert (new.verdict, new.rules_commit) == ("alert", good.id)  # the last valid rules judged it
    assert f"rules head rules@{bad.id} is invalid" in new.rules_note
    assert "persn" in new.rules_note
    assert in_force(ws.pfs).commit == good.id
    logs = run_cli("logs", "--pipeline", "assess", home=ws.home).stdout.decode()
    assert "is invalid" in logs


def test_a_bad_head_with_no_valid_rules_known_never_dismisses(
    make_workspace: Callable[..., Workspace], shared_dir: Path
) -> None:
    ws = make_workspace()
    builder = ws.pfs.start_commit("rules")
    builder.put_bytes("/default.yaml", b"defaults: [\n")
    builder.finish()
    builder = ws.pfs.start_commit("images")
    builder.put_local_file("/yard/brick.png", shared_dir / "images/skimage/brick.png")
    builder.finish()
    with ws.runner() as runner:
        runner.run_until_idle()
    v = verdicts(ws)["/yard/brick.png"]
    assert v.verdict == "review"
    assert v.reasons[0] == "no valid rules known: review (never dismiss on doubt)"
    assert "no valid rules are known" in v.rules_note
