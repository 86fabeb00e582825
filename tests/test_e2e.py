"""End to end on the embedded default: real photos, real detector, real files, real worker processes."""

from __future__ import annotations

import csv
import email
import io
import struct
import zlib
from collections.abc import Callable
from email import policy
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alarmsieve.config import Settings
from alarmsieve.notify.ledger import NotificationLedger
from alarmsieve.pps.spec import load_spec_file
from alarmsieve.stages.records import META_FILE, NOTIFICATION_FILE, AlarmMeta, NotificationRecord
from alarmsieve.verdicts import read_verdicts
from alarmsieve.vision.models import CATALOGUE
from alarmsieve.workspace import Workspace
from tests.conftest import PROJECT

ANIMALS = {"bird", "cat", "dog"}
# the default pipelines that run on snapshots (`frames` waits for a clip in `videos`; `clips` runs, finds none)
PIPELINES = ("validate", "detect", "assess", "clips", "notify")
ALARM_REPOS = ("validate", "detect", "assess", "notify")  # one folder per snapshot


def labelled_photos(shared: Path) -> dict[str, list[str]]:
    with (shared / "images" / "labels.csv").open() as handle:
        return {row["file"]: [o for o in row["objects"].split(";") if o] for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path, model_dir: Path) -> Workspace:
    """All 22 photos of ../shared/images under two cameras (coral, skimage), run once."""
    home = tmp_path_factory.mktemp("photos")
    ws = Workspace(Settings(home=home, model_dir=model_dir, model_cache=home / "cache"), must_exist=False)
    ws.init(pipelines_dir=PROJECT / "pipelines")
    builder = ws.pfs.start_commit("images")
    for file in labelled_photos(shared_dir):
        builder.put_local_file(f"/{file}", shared_dir / "images" / file)
    builder.finish()
    with ws.runner() as runner:
        jobs = runner.run_until_idle()
    assert [j.pipeline for j in jobs] == list(PIPELINES)
    assert all(j.state == "success" for j in jobs), [j.reason for j in jobs]
    return ws


def test_persons_alerted_calm_scenes_and_animals_dismissed(photo_run: Workspace, shared_dir: Path) -> None:
    verdicts = {v.alarm: v for v in read_verdicts(photo_run.pfs)}
    labels = labelled_photos(shared_dir)
    assert len(verdicts) == len(labels) == 22
    for file, objects in labels.items():
        v = verdicts[f"/{file}"]
        if "person" in objects:
            assert v.verdict == "alert", (file, v.reasons)
            assert any(d.label == "person" and d.kept for d in v.detections)
        elif not objects or set(objects) <= ANIMALS:
            assert v.verdict == "dismiss", (file, v.reasons)
        assert v.reasons, file


def test_verdicts_name_model_rules_and_boxes_in_original_pixels(photo_run: Workspace) -> None:
    rules_head = photo_run.pfs.head("rules")
    assert rules_head is not None
    for v in read_verdicts(photo_run.pfs):
        assert v.model is not None and v.model.sha256 == CATALOGUE["yolox-nano"].sha256
        assert v.rules_commit == rules_head.id
        assert v.rule_path == "defaults"
        assert v.pipeline_versions == {"detect": "detect@v1", "assess": "assess@v1"}
        meta = AlarmMeta.model_validate_json(photo_run.pfs.get_file("validate", "master", f"{v.alarm}/{META_FILE}"))
        for d in v.detections:
            x1, y1, x2, y2 = d.box
            assert 0 <= x1 < x2 <= meta.width and 0 <= y1 < y2 <= meta.height
    astronaut = next(v for v in read_verdicts(photo_run.pfs) if v.alarm == "/skimage/astronaut.png")
    person = next(d for d in astronaut.detections if d.label == "person")
    assert (person.box[2] - person.box[0]) * (person.box[3] - person.box[1]) > 0.25 * 512 * 512


def test_one_email_per_alert_with_the_annotated_image(photo_run: Workspace) -> None:
    alerts = [v for v in read_verdicts(photo_run.pfs) if v.verdict == "alert"]
    emails = sorted(photo_run.outbox.glob("*.eml"))
    assert len(emails) == len(alerts) >= 4
    message = email.message_from_bytes(emails[0].read_bytes(), policy=policy.default)
    images = [part for part in message.walk() if part.get_content_type().startswith("image/")]
    assert any(part.get_content_type() == "image/jpeg" and part["Content-ID"] for part in images)
    assert len(images) == 2  # annotated inline + the original attached
    assert "ALERT" in message["Subject"]
    records = {r.key: r for r in NotificationLedger(photo_run.catalog_url).list()}
    assert len(records) == len(alerts) and all(r.state == "sent" for r in records.values())


def test_every_commit_has_provenance_back_to_images(photo_run: Workspace) -> None:
    images_head = photo_run.pfs.head("images")
    assert images_head is not None
    commit = photo_run.pfs.head("notify")
    chain = []
    while commit is not None and commit.provenance:
        chain.append(commit.repo)
        upstream = {c.repo: c for c in map(photo_run.pfs.get_commit, commit.provenance)}
        if commit.repo == "notify":  # notify reads assess (snapshots, frames) and clips (one verdict per clip)
            assert set(upstream) == {"assess", "clips"}
        commit = upstream.get("assess") or next(iter(upstream.values()))
    assert chain == ["notify", "assess", "detect", "validate"]
    assert commit is not None and commit.id == images_head.id
    assert photo_run.pfs.head("detect").pipeline_version == "detect@v1"  # type: ignore[union-attr]


# ---- incremental --------------------------------------------------------------------------------------
def test_adding_one_file_runs_one_datum_per_pipeline_and_removing_removes_downstream(
    make_workspace: Callable[..., Workspace], shared_dir: Path
) -> None:
    ws = make_workspace()
    photos = shared_dir / "images"
    builder = ws.pfs.start_commit("images")
    for name in ("skimage/astronaut.png", "skimage/grass.png", "coral/owl.jpg"):
        builder.put_local_file(f"/cam-1/{name.split('/')[1]}", photos / name)
    builder.finish()
    with ws.runner() as runner:
        assert len(runner.run_until_idle()) == len(PIPELINES)
        builder = ws.pfs.start_commit("images")
        builder.put_local_file("/cam-2/squat.bmp", photos / "coral/squat.bmp")
        builder.finish()
        jobs = runner.run_until_idle()
        assert [(j.pipeline, j.processed, j.skipped) for j in jobs] == [(p, 1, 3) for p in PIPELINES]
        assert runner.run_until_idle() == []  # nothing new: no job at all

        builder = ws.pfs.start_commit("images")
        builder.delete("/cam-1/astronaut.png")
        builder.finish()
        jobs = runner.run_until_idle()
    assert [(j.pipeline, j.processed, j.removed) for j in jobs] == [(p, 0, 1) for p in PIPELINES]
    for repo in ALARM_REPOS:
        paths = [f.path for f in ws.pfs.walk(repo)]
        assert not any(p.startswith("/cam-1/astronaut.png/") for p in paths), repo
        assert any(p.startswith("/cam-2/squat.bmp/") for p in paths), repo
    assert {v.alarm for v in read_verdicts(ws.pfs)} == {"/cam-1/grass.png", "/cam-1/owl.jpg", "/cam-2/squat.bmp"}


# ---- bad input --------------------------------------------------------------------------------------
def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries only a few bytes of pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def test_bad_inputs_are_rejected_with_reasons_and_the_rest_is_processed(
    make_workspace: Callable[..., Workspace], shared_dir: Path
) -> None:
    ws = make_workspace()
    jpeg = (shared_dir / "images/coral/cat_720p.jpg").read_bytes()
    rng = np.random.default_rng(7)
    gray = np.clip(128 + rng.normal(0, 1, (480, 640, 3)), 0, 255).astype(np.uint8)
    bad = {
        "/cam-9/empty.jpg": (b"", "empty"),
        "/cam-9/cut.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "/cam-9/notes.jpg": (b"this is a text file, not a picture\n" * 20, "not_an_image"),
        "/cam-9/tiny.png": (encoded(np.zeros((32, 32, 3), np.uint8), "PNG"), "too_small"),
        "/cam-9/bomb.png": (png_header(100_000, 100_000), "decompression_bomb"),
        "/cam-9/anim.gif": (encoded(np.zeros((100, 100, 3), np.uint8), "GIF"), "unsupported_format"),
    }
    builder = ws.pfs.start_commit("images")
    for path, (data, _) in bad.items():
        builder.put_bytes(path, data)
    builder.put_bytes("/cam-9/covered-lens.png", encoded(gray, "PNG"))
    builder.put_local_file("/cam-9/person.png", shared_dir / "images/skimage/astronaut.png")
    builder.finish()
    with ws.runner() as runner:
        jobs = runner.run_until_idle()
    assert all(j.state == "success" and j.failed == 0 for j in jobs), [(j.pipeline, j.reason) for j in jobs]
    verdicts = {v.alarm: v for v in read_verdicts(ws.pfs)}
    for path, (_, code) in bad.items():
        meta = AlarmMeta.model_validate_json(ws.pfs.get_file("validate", "master", f"{path}/{META_FILE}"))
        assert (meta.status, meta.reason_code) == ("rejected", code), path
        assert meta.reason, path
        assert verdicts[path].verdict == "review", path  # never dismissed on doubt
        assert meta.reason in " ".join(verdicts[path].reasons), path
    assert verdicts["/cam-9/covered-lens.png"].verdict == "review"
    assert "uniform" in " ".join(verdicts["/cam-9/covered-lens.png"].reasons).lower()
    assert verdicts["/cam-9/person.png"].verdict == "alert"


# ---- crashes and exactly-once -------------------------------------------------------------------------
def _put_two_alarms(ws: Workspace, shared_dir: Path) -> None:
    builder = ws.pfs.start_commit("images")
    builder.put_local_file("/gate/a.png", shared_dir / "images/skimage/astronaut.png")
    builder.put_local_file("/gate/b.bmp", shared_dir / "images/coral/grace_hopper.bmp")
    builder.put_local_file("/gate/c.png", shared_dir / "images/skimage/grass.png")
    builder.finish()


def _notification_states(ws: Workspace) -> dict[str, str]:
    return {
        f.path: NotificationRecord.model_validate_json(ws.pfs.get_file("notify", "master", f.path)).state
        for f in ws.pfs.walk("notify")
        if f.path.endswith(NOTIFICATION_FILE)
    }


def test_worker_killed_between_pending_and_sent_sends_exactly_once(
    make_workspace: Callable[..., Workspace], shared_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = make_workspace()
    _put_two_alarms(ws, shared_dir)
    monkeypatch.setenv("ALARMSIEVE_FAULT", "notify:before_send")
    monkeypatch.setenv("ALARMSIEVE_FAULT_DIR", str(tmp_path))
    with ws.runner() as runner:
        jobs = runner.run_until_idle()
    assert (tmp_path / "fault-notify:before_send.fired").exists()  # the worker really was SIGKILLed
    notify_job = jobs[-1]
    assert notify_job.pipeline == "notify" and notify_job.state == "success"
    datums = ws.pps.list_datums("notify", notify_job.id)
    killed = [d for d in datums if d.state == "recovered"]
    assert len(killed) == 1 and killed[0].attempts == 2
    assert len(list(ws.outbox.glob("*.eml"))) == 2  # two alerts, one email each
    assert sorted(_notification_states(ws).values()) == ["not_needed", "sent", "sent"]
    logs = ws.pps.logs(pipeline="notify", job=notify_job.id)
    assert any("died" in line.message and line.datum == killed[0].datum_id for line in logs)


def test_worker_killed_mid_datum_leaves_one_result_and_reprocess_sends_nothing_again(
    make_workspace: Callable[..., Workspace], shared_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = make_workspace()
    _put_two_alarms(ws, shared_dir)
    monkeypatch.setenv("ALARMSIEVE_FAULT", "detect:mid_datum")
    monkeypatch.setenv("ALARMSIEVE_FAULT_DIR", str(tmp_path))
    with ws.runner() as runner:
        runner.run_until_idle()
    detect_datums = ws.pps.list_datums("detect")
    assert sorted(d.state for d in detect_datums) == ["recovered", "success", "success"]
    for alarm in ("/gate/a.png", "/gate/b.bmp", "/gate/c.png"):
        files = sorted(f.path for f in ws.pfs.walk("detect", "master", alarm))
        assert files.count(f"{alarm}/detections.json") == 1
        assert f"{alarm}/meta.json" in files
    emails = sorted(p.name for p in ws.outbox.glob("*.eml"))
    assert len(emails) == 2

    # reprocess every pipeline with a new salt: every datum runs again, nobody is notified twice
    monkeypatch.delenv("ALARMSIEVE_FAULT")
    for name in PIPELINES:
        version, what = ws.pps.create_pipeline(
            load_spec_file(PROJECT / "pipelines" / f"{name}.json"), update=True, reprocess=True
        )
        assert version == 2 and "reprocess" in what
    with ws.runner() as runner:
        jobs = runner.run_until_idle()
    assert [(j.pipeline, j.processed, j.version) for j in jobs] == [(p, 3, 2) for p in PIPELINES]
    assert sorted(p.name for p in ws.outbox.glob("*.eml")) == emails
    assert sorted(_notification_states(ws).values()) == ["already_sent", "already_sent", "not_needed"]


def test_a_later_rules_commit_does_not_rejudge_old_alarms(
    make_workspace: Callable[..., Workspace], shared_dir: Path
) -> None:
    ws = make_workspace()
    builder = ws.pfs.start_commit("images")
    builder.put_local_file("/yard/a.png", shared_dir / "images/skimage/astronaut.png")
    builder.finish()
    with ws.runner() as runner:
        runner.run_until_idle()
        first_rules = ws.pfs.head("rules")
        builder = ws.pfs.start_commit("rules")
        builder.put_bytes("/default.yaml", b"defaults:\n  labels:\n    person: {severity: ignore}\n")
        new_rules = builder.finish()
        assert runner.run_until_idle() == []  # rules are not a datum input: nothing re-runs silently
        builder = ws.pfs.start_commit("images")
        builder.put_local_file("/yard/b.png", shared_dir / "images/skimage/astronaut.png")
        builder.finish()
        runner.run_until_idle()
    verdicts = {v.alarm: v for v in read_verdicts(ws.pfs)}
    assert first_rules is not None
    assert (verdicts["/yard/a.png"].verdict, verdicts["/yard/a.png"].rules_commit) == ("alert", first_rules.id)
    assert (verdicts["/yard/b.png"].verdict, verdicts["/yard/b.png"].rules_commit) == ("dismiss", new_rules.id)


def test_a_missing_model_stops_detect_with_one_clear_message_and_runs_once_fixed(
    tmp_path: Path, shared_dir: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALARMSIEVE_OFFLINE", "1")  # no download attempt from this machine
    empty = tmp_path / "no-models"
    empty.mkdir()
    ws = Workspace(Settings(home=tmp_path / "ws", model_dir=empty, model_cache=tmp_path / "cache"), must_exist=False)
    ws.init(pipelines_dir=PROJECT / "pipelines")
    builder = ws.pfs.start_commit("images")
    builder.put_local_file("/cam/a.png", shared_dir / "images/skimage/astronaut.png")
    builder.finish()
    with ws.runner() as runner:
        jobs = runner.run_until_idle()
    detect = next(j for j in jobs if j.pipeline == "detect")
    assert detect.state == "error"
    assert "ALARMSIEVE_MODEL_DIR" in detect.reason and "yolox_nano.onnx" in detect.reason
    assert "d39bee73564e338080378b0ad567fbb40e818b55bbfaf971de82a0267ed16b8a" in detect.reason
    assert [j.pipeline for j in jobs] == ["validate", "detect"]  # nothing downstream ran on missing output

    fixed = Workspace(ws.settings.model_copy(update={"model_dir": model_dir}))
    with fixed.runner() as runner:
        jobs = runner.run_until_idle()
    assert [(j.pipeline, j.state) for j in jobs] == [(p, "success") for p in PIPELINES[1:]]
    assert read_verdicts(fixed.pfs)[0].verdict == "alert"
