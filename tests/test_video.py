"""Video alarms: real clips built from the photos in ../shared, sampled, judged; one verdict, one notification."""

from __future__ import annotations

import email
import io
import json
import struct
from collections.abc import Callable
from email import policy
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from alarmsieve.cli import verdict_table
from alarmsieve.pps.spec import load_spec_file
from alarmsieve.stages.records import (
    CLIP_FILE,
    META_FILE,
    NOTIFICATION_FILE,
    AlarmMeta,
    ClipRecord,
    NotificationRecord,
)
from alarmsieve.verdicts import list_verdicts, read_clip_verdicts, read_verdicts
from alarmsieve.vision.video import VideoRejected, sample_clip
from alarmsieve.workspace import Workspace
from tests.conftest import PROJECT, run_cli

FPS = 10


def write_clip(
    path: Path,
    shared: Path,
    *,
    seconds: int = 12,
    person: tuple[float, float] | None = (7.0, 8.0),
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
) -> Path:
    """A 640x480 clip of a calm lawn; with ``person``, the astronaut crosses the view in that window."""
    background = cv2.resize(cv2.imread(str(shared / "images/skimage/grass.png")), (640, 480))
    intruder = cv2.resize(cv2.imread(str(shared / "images/skimage/astronaut.png")), (240, 240))
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 640, 480, pix_fmt
        stream.codec_context.gop_size = FPS  # a key frame every second, as security cameras do
        for i in range(seconds * FPS):
            frame = background.copy()
            if person and person[0] <= i / FPS < person[1]:
                x = 60 + int((i / FPS - person[0]) * 300)
                frame[200:440, x : x + 240] = intruder
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path) -> dict[str, Path]:
    """The two 12 s H.264 clips, encoded once for the module: ``intruder`` (person at 7-8 s) and ``calm``."""
    folder = tmp_path_factory.mktemp("clips")
    return {
        "intruder": write_clip(folder / "intruder.mp4", shared_dir),
        "calm": write_clip(folder / "calm.mp4", shared_dir, person=None),
    }


def test_motion_peaks_catch_what_the_regular_samples_miss(clips: dict[str, Path]) -> None:
    clip = sample_clip(clips["intruder"], every_s=5.0)
    assert clip.codec == "h264" and clip.fps == FPS and (clip.width, clip.height) == (640, 480)
    regular = [f.offset_s for f in clip.frames if "motion" not in f.reasons]
    assert regular == [0.0, 5.0, 10.0]
    motion = [f.offset_s for f in clip.frames if "motion" in f.reasons]
    assert motion and all(7.0 <= t < 8.1 for t in motion)
    calm = sample_clip(clips["calm"], every_s=5.0)
    assert [f.offset_s for f in calm.frames] == [0.0, 5.0, 10.0]


@pytest.mark.parametrize(
    ("name", "codec", "pix_fmt"),
    [("c.mkv", "libx264", "yuv420p"), ("c.mov", "libx264", "yuv420p"), ("c.avi", "mjpeg", "yuvj420p")],
)
def test_containers_and_codecs(tmp_path: Path, shared_dir: Path, name: str, codec: str, pix_fmt: str) -> None:
    clip = sample_clip(write_clip(tmp_path / name, shared_dir, seconds=3, person=None, codec=codec, pix_fmt=pix_fmt))
    assert clip.frames_decoded == 30 and [f.offset_s for f in clip.frames] == [0.0]
    assert clip.frames[0].bgr.shape == (480, 640, 3) and not clip.partial


def test_broken_clips(tmp_path: Path, shared_dir: Path, clips: dict[str, Path]) -> None:
    whole = clips["calm"].read_bytes()
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoRejected) as rejected:
        sample_clip(empty)
    assert rejected.value.code == "empty"
    jpeg = tmp_path / "photo.mp4"
    jpeg.write_bytes((shared_dir / "images/coral/owl.jpg").read_bytes())
    with pytest.raises(VideoRejected) as rejected:
        sample_clip(jpeg)
    assert rejected.value.code in {"not_a_video", "zero_fps", "no_video_stream"}
    # an MKV cut in the middle (MP4 keeps its index at the end, so cut MP4s are unreadable, not partial)
    mkv = write_clip(tmp_path / "whole.mkv", shared_dir, person=None).read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(mkv[: len(mkv) // 2])
    partial = sample_clip(cut)
    assert 0 < partial.frames_decoded < 120 and partial.frames[0].offset_s == 0.0
    assert "of a declared 12.0s" in partial.partial
    assert partial.duration_s < 11.9
    truncated_mp4 = tmp_path / "cut.mp4"
    truncated_mp4.write_bytes(whole[: len(whole) // 2])
    try:
        result = sample_clip(truncated_mp4)
        assert result.partial or result.frames_decoded < 120
    except VideoRejected as exc:
        assert exc.code in {"not_a_video", "undecodable"}


def test_a_clip_over_the_cap_is_read_up_to_it_and_says_so(clips: dict[str, Path]) -> None:
    capped = sample_clip(clips["intruder"], every_s=5.0, max_duration_s=4.0)
    assert capped.capped and not capped.partial
    assert [f.offset_s for f in capped.frames] == [0.0] and capped.duration_s <= 4.0  # the person (7 s) is past it
    assert capped.frames_decoded == 41


def zero_fps_mp4(path: Path, frames: int) -> Path:
    """An MJPEG MP4 whose sample table gives every frame a duration of 0: a stream of 0 fps."""
    img = np.zeros((240, 320, 3), np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuvj420p"
        for _ in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = bytearray(path.read_bytes())
    stts = data.index(b"stts")  # box: size, "stts", version+flags, entry count, (count, delta) entries
    for entry in range(struct.unpack(">I", data[stts + 8 : stts + 12])[0]):
        delta = stts + 12 + entry * 8 + 4
        data[delta : delta + 4] = bytes(4)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("frames", [1, 30])
def test_zero_fps_stream_is_rejected_with_its_reason(tmp_path: Path, frames: int) -> None:
    clip = zero_fps_mp4(tmp_path / "zero.mp4", frames)
    with av.open(str(clip)) as container:  # the file itself opens: only its timing is broken
        assert container.streams.video[0].guessed_rate is None
    with pytest.raises(VideoRejected) as rejected:
        sample_clip(clip)
    assert rejected.value.code == "zero_fps"
    assert "0 fps" in rejected.value.message and "re-encode" in rejected.value.message


def _put_clips(ws: Workspace, shared_dir: Path, tmp_path: Path, clips: dict[str, Path]) -> None:
    builder = ws.pfs.start_commit("videos")
    builder.put_local_file("/yard/intruder.mp4", clips["intruder"])
    builder.put_local_file("/yard/calm.mp4", clips["calm"])
    mkv = write_clip(tmp_path / "p.mkv", shared_dir, seconds=6, person=None).read_bytes()
    builder.put_bytes("/yard/partial.mkv", mkv[: len(mkv) // 2])
    builder.put_bytes("/yard/empty.mp4", b"")
    builder.put_local_file("/yard/renamed.mp4", shared_dir / "images/coral/owl.jpg")
    builder.put_local_file("/yard/zero.mp4", zero_fps_mp4(tmp_path / "z.mp4", 5))
    builder.finish()


def test_clips_in_the_default_pipelines_one_verdict_and_one_notification_per_clip(
    make_workspace: Callable[..., Workspace], shared_dir: Path, tmp_path: Path, clips: dict[str, Path]
) -> None:
    ws = make_workspace()  # the default setup: `videos` repo, frames -> validate (union) -> ... -> clips -> notify
    builder = ws.pfs.start_commit("images")  # snapshots first: the pipelines run before any clip arrives
    builder.put_local_file("/yard/snapshot.png", shared_dir / "images/skimage/astronaut.png")
    builder.finish()
    with ws.runner() as runner:
        jobs = runner.run_until_idle()
        assert [j.pipeline for j in jobs] == ["validate", "detect", "assess", "clips", "notify"]
        assert len(list(ws.outbox.glob("*.eml"))) == 1
        _put_clips(ws, shared_dir, tmp_path, clips)
        jobs = runner.run_until_idle()
    assert [j.pipeline for j in jobs] == ["frames", "validate", "detect", "assess", "clips", "notify"]
    assert all(j.state == "success" and j.failed == 0 for j in jobs), [(j.pipeline, j.reason) for j in jobs]

    judged = {c.clip: c for c in read_clip_verdicts(ws.pfs)}
    assert set(judged) == {"/yard/intruder.mp4", "/yard/calm.mp4", "/yard/partial.mkv"}  # snapshots have none
    intruder = judged["/yard/intruder.mp4"]
    assert intruder.verdict == "alert"
    assert intruder.deciding_frame is not None and "frame at 7." in intruder.reasons[0]
    assert [f.verdict for f in intruder.frames if f.offset_s in (0.0, 5.0, 10.0)] == ["dismiss"] * 3
    assert intruder.best_frame_file == "best.jpg" and intruder.summary_file == "summary.gif"
    assert any(d.label == "person" and d.kept for d in intruder.detections) and intruder.clip_sha256
    assert judged["/yard/calm.mp4"].verdict == "dismiss"
    assert "partial clip" in " ".join(judged["/yard/partial.mkv"].reasons)

    record = ClipRecord.model_validate_json(ws.pfs.get_file("frames", "master", f"/yard/intruder.mp4/{CLIP_FILE}"))
    assert record.start_source == "commit" and record.frames[0].time == record.start
    verdicts = {v.alarm: v for v in read_verdicts(ws.pfs)}
    for rejected, code in (
        ("/yard/empty.mp4", "empty"),
        ("/yard/renamed.mp4", "not_a_video"),
        ("/yard/zero.mp4", "zero_fps"),
    ):
        assert verdicts[rejected].verdict == "review", rejected  # never dismissed on doubt
        meta = AlarmMeta.model_validate_json(ws.pfs.get_file("validate", "master", f"{rejected}/{META_FILE}"))
        assert (meta.status, meta.reason_code) == ("rejected", code) and meta.reason in verdicts[rejected].reasons[0]
    assert verdicts["/yard/snapshot.png"].verdict == "alert" and verdicts["/yard/snapshot.png"].clip is None
    decider = verdicts[intruder.deciding_frame]
    assert np.isclose((decider.time - record.start).total_seconds(), decider.clip.offset_s)  # type: ignore[union-attr]

    # one notification for the alerting clip (not one per alerting frame), with its best frame and animation
    emails = sorted(ws.outbox.glob("*.eml"))
    assert len(emails) == 2  # the snapshot's, then the clip's
    clip_mails = [m for m in map(_mail, emails) if any(p.get_content_type() == "image/gif" for p in m.walk())]
    assert len(clip_mails) == 1 and "/yard/intruder.mp4" in clip_mails[0].get_body(("plain",)).get_content()
    parts = {part.get_content_type(): part for part in clip_mails[0].walk()}
    best = ws.pfs.get_file("clips", "master", "/yard/intruder.mp4/best.jpg")
    assert parts["image/jpeg"].get_payload(decode=True) == best and parts["image/jpeg"]["Content-ID"]
    gif = parts["image/gif"].get_payload(decode=True)
    assert gif[:6] == b"GIF89a" and Image.open(io.BytesIO(gif)).n_frames == len(intruder.frames)
    assert parts["image/gif"].get_filename() == "intruder.mp4-summary.gif"
    states = _notification_states(ws)
    assert states["/yard/intruder.mp4"] == "sent"
    assert states["/yard/calm.mp4"] == states["/yard/partial.mkv"] == "not_needed"
    frame_states = {k: v for k, v in states.items() if k.startswith("/yard/intruder.mp4/")}
    assert frame_states and set(frame_states.values()) == {"not_needed"}

    # exactly once: reprocessing notify (every datum runs again) sends nothing again
    ws.pps.create_pipeline(load_spec_file(PROJECT / "pipelines" / "notify.json"), update=True, reprocess=True)
    with ws.runner() as runner:
        jobs = runner.run_until_idle()
    assert [(j.pipeline, j.state, j.processed) for j in jobs] == [("notify", "success", 10)]
    assert sorted(ws.outbox.glob("*.eml")) == emails
    assert _notification_states(ws)["/yard/intruder.mp4"] == "already_sent"

    # the CLI lists the clip with its frames and explains which frame decided
    listed = run_cli("verdicts", "--json", home=ws.home)
    assert listed.returncode == 0, listed.stderr.decode()
    entries = {e["input_path"]: e for e in map(json.loads, listed.stdout.splitlines())}  # JSON Lines
    assert entries["/yard/intruder.mp4"]["kind"] == "clip"
    assert [f["input_path"] for f in entries["/yard/intruder.mp4"]["frames"]] == [f.alarm for f in intruder.frames]
    assert not any(path.startswith("/yard/intruder.mp4/") for path in entries)  # frames only under their clip
    console = Console(record=True, width=200)
    console.print(verdict_table(list_verdicts(ws.pfs, device="yard")))
    table = console.export_text()
    assert "intruder.mp4 (clip, " in table and "(decided)" in table and "snapshot.png" in table
    explained = run_cli("explain", "intruder.mp4", home=ws.home)
    assert explained.returncode == 0, explained.stderr.decode()
    out = explained.stdout.decode()
    assert "verdict ALERT" in out and f"deciding frame {intruder.deciding_frame}" in out and "<- decided" in out
    assert "person" in out


def _mail(path: Path) -> email.message.EmailMessage:
    return email.message_from_bytes(path.read_bytes(), policy=policy.default)  # type: ignore[return-value]


def _notification_states(ws: Workspace) -> dict[str, str]:
    return {
        f.path.rsplit("/", 1)[0]: NotificationRecord.model_validate_json(
            ws.pfs.get_file("notify", "master", f.path)
        ).state
        for f in ws.pfs.walk("notify")
        if f.path.endswith(NOTIFICATION_FILE)
    }
