"""Video alarms: real H.264 clips built from the photos in ../shared, sampled, judged, one verdict per clip."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from alarmsieve.pps.spec import load_spec_file
from alarmsieve.stages.clips import CLIP_VERDICT_FILE
from alarmsieve.stages.records import CLIP_FILE, ClipRecord, ClipVerdictRecord
from alarmsieve.verdicts import read_verdicts
from alarmsieve.vision.video import VideoRejected, sample_clip
from alarmsieve.workspace import Workspace
from tests.conftest import PROJECT

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


def test_motion_peaks_catch_what_the_regular_samples_miss(tmp_path: Path, shared_dir: Path) -> None:
    clip = sample_clip(write_clip(tmp_path / "a.mp4", shared_dir), every_s=5.0)
    assert clip.codec == "h264" and clip.fps == FPS and (clip.width, clip.height) == (640, 480)
    regular = [f.offset_s for f in clip.frames if "motion" not in f.reasons]
    assert regular == [0.0, 5.0, 10.0]
    motion = [f.offset_s for f in clip.frames if "motion" in f.reasons]
    assert motion and all(7.0 <= t < 8.1 for t in motion)
    calm = sample_clip(write_clip(tmp_path / "b.mp4", shared_dir, person=None), every_s=5.0)
    assert [f.offset_s for f in calm.frames] == [0.0, 5.0, 10.0]


@pytest.mark.parametrize(
    ("name", "codec", "pix_fmt"),
    [("c.mkv", "libx264", "yuv420p"), ("c.mov", "libx264", "yuv420p"), ("c.avi", "mjpeg", "yuvj420p")],
)
def test_containers_and_codecs(tmp_path: Path, shared_dir: Path, name: str, codec: str, pix_fmt: str) -> None:
    clip = sample_clip(write_clip(tmp_path / name, shared_dir, seconds=3, person=None, codec=codec, pix_fmt=pix_fmt))
    assert clip.frames_decoded == 30 and [f.offset_s for f in clip.frames] == [0.0]
    assert clip.frames[0].bgr.shape == (480, 640, 3) and not clip.partial


def test_broken_clips(tmp_path: Path, shared_dir: Path) -> None:
    whole = write_clip(tmp_path / "whole.mp4", shared_dir, person=None).read_bytes()
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


def test_clip_pipeline_one_verdict_per_clip(
    make_workspace: Callable[..., Workspace], shared_dir: Path, tmp_path: Path
) -> None:
    ws = make_workspace()
    ws.pfs.create_repo("videos")
    video_specs = PROJECT / "pipelines" / "video"
    ws.pps.create_pipeline(load_spec_file(video_specs / "frames.json"))
    ws.pps.create_pipeline(load_spec_file(video_specs / "validate.json"), update=True)
    ws.pps.create_pipeline(load_spec_file(video_specs / "clips.json"))
    builder = ws.pfs.start_commit("videos")
    builder.put_local_file("/yard/intruder.mp4", write_clip(tmp_path / "i.mp4", shared_dir))
    builder.put_local_file("/yard/calm.mp4", write_clip(tmp_path / "c.mp4", shared_dir, person=None))
    mkv = write_clip(tmp_path / "p.mkv", shared_dir, person=None).read_bytes()
    builder.put_bytes("/yard/partial.mkv", mkv[: len(mkv) // 2])
    builder.put_bytes("/yard/empty.mp4", b"")
    builder.put_local_file("/yard/renamed.mp4", shared_dir / "images/coral/owl.jpg")
    builder.finish()
    builder = ws.pfs.start_commit("images")  # snapshots and clips flow side by side
    builder.put_local_file("/yard/snapshot.png", shared_dir / "images/skimage/astronaut.png")
    builder.finish()
    with ws.runner() as runner:
        jobs = runner.run_until_idle()
    assert all(j.state == "success" for j in jobs), [(j.pipeline, j.reason) for j in jobs]

    clips = {
        f.path.rsplit("/", 1)[0]: ClipVerdictRecord.model_validate_json(ws.pfs.get_file("clips", "master", f.path))
        for f in ws.pfs.walk("clips")
        if f.path.endswith(CLIP_VERDICT_FILE)
    }
    intruder = clips["/yard/intruder.mp4"]
    assert intruder.verdict == "alert"
    assert intruder.deciding_frame is not None and "frame at 7." in intruder.reasons[0]
    assert [f.verdict for f in intruder.frames if f.offset_s in (0.0, 5.0, 10.0)] == ["dismiss"] * 3
    assert intruder.best_frame_file == "best.jpg" and intruder.summary_file == "summary.gif"
    gif = ws.pfs.get_file("clips", "master", "/yard/intruder.mp4/summary.gif")
    assert gif[:6] == b"GIF89a"
    assert clips["/yard/calm.mp4"].verdict == "dismiss"
    assert "partial clip" in " ".join(clips["/yard/partial.mkv"].reasons)

    record = ClipRecord.model_validate_json(ws.pfs.get_file("frames", "master", f"/yard/intruder.mp4/{CLIP_FILE}"))
    assert record.start_source == "commit" and record.frames[0].time == record.start
    verdicts = {v.alarm: v for v in read_verdicts(ws.pfs)}
    for rejected in ("/yard/empty.mp4", "/yard/renamed.mp4"):
        assert verdicts[rejected].verdict == "review", rejected  # never dismissed on doubt
    assert verdicts["/yard/snapshot.png"].verdict == "alert" and verdicts["/yard/snapshot.png"].clip is None
    assert set(clips) == {"/yard/intruder.mp4", "/yard/calm.mp4", "/yard/partial.mkv"}  # snapshots have none
    assert np.isclose(
        (verdicts[intruder.deciding_frame].time - record.start).total_seconds(),
        verdicts[intruder.deciding_frame].clip.offset_s,  # type: ignore[union-attr]
    )
