"""Frames worth judging from a video clip: the first, one every N seconds, and the motion peaks.

One decoding pass (PyAV, FFmpeg's decoders, threaded) serves both the motion scan and the samples:
every frame is reduced to a small grayscale thumbnail for cheap frame differencing, and only the
frames kept are converted at full resolution. Motion peaks catch an intruder who crosses the view
between two regular samples. A clip that breaks mid-way keeps the frames decoded so far and is
marked partial; a clip longer than the cap is cut there and marked capped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

THUMB_WIDTH = 160


class VideoRejected(Exception):
    """A file that is not a usable clip; ``code`` for machines, ``message`` for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"


@dataclass
class SampledFrame:
    offset_s: float
    reasons: list[str]  # first | interval | motion
    bgr: np.ndarray
    motion: float = 0.0


@dataclass
class ClipSample:
    codec: str
    width: int
    height: int
    fps: float
    duration_s: float  # decoded duration (up to the cap or the break)
    container_start: datetime | None
    frames_decoded: int
    frames: list[SampledFrame] = field(default_factory=list)
    partial: str = ""  # why decoding stopped early, "" when the whole clip was read
    capped: bool = False


def _creation_time(container: object) -> datetime | None:
    text = (getattr(container, "metadata", None) or {}).get("creation_time")
    if not text:
        return None
    try:
        when = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.year < 2000:  # muxers write 1970/1904 when the camera set nothing
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def sample_clip(
    path: Path,
    *,
    every_s: float = 5.0,
    max_duration_s: float = 600.0,
    motion_peaks: int = 3,
    min_motion: float = 4.0,
    min_gap_s: float = 1.0,
) -> ClipSample:
    """Decode ``path`` once; keep the first frame, one per ``every_s`` and up to ``motion_peaks`` peaks."""
    import av

    if path.stat().st_size == 0:
        raise VideoRejected("empty", "the clip is empty (0 bytes); check the camera's upload settings")
    try:
        container = av.open(str(path))
    except (av.error.InvalidDataError, av.error.FFmpegError, ValueError) as exc:
        raise VideoRejected("not_a_video", f"not a video container FFmpeg can read ({exc})") from exc
    with container:
        if container.format.name == "image2" or container.format.name.endswith("_pipe"):
            raise VideoRejected(
                "not_a_video",
                f"this is a still image ({container.format.name}), not a clip; put snapshots in the images repo",
            )
        if not container.streams.video:
            raise VideoRejected("no_video_stream", "the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        # guessed_rate is FFmpeg's r_frame_rate, read from the frame timestamps: None when they do not
        # advance (a 0 fps stream), even where the average rate is then made up from the track length
        rate = float(stream.guessed_rate or 0)
        if rate <= 0:
            raise VideoRejected(
                "zero_fps",
                "the video stream has no frame rate (0 fps: its frame timestamps do not advance); "
                "re-encode the clip with a frame rate, e.g. ffmpeg -i in.mp4 -r 10 out.mp4",
            )
        sample = ClipSample(
            codec=stream.codec_context.name,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=round(float(stream.average_rate or rate), 3),  # the mean rate: r_frame_rate overstates VFR
            duration_s=0.0,
            container_start=_creation_time(container),
            frames_decoded=0,
        )
        time_base = float(stream.time_base) if stream.time_base else 1.0 / rate
        first_pts: float | None = None
        previous: np.ndarray | None = None
        next_sample = 0.0
        kept: dict[float, SampledFrame] = {}
        # candidate peaks: (motion, offset, frame) — full-resolution copies only for the best few
        peaks: list[tuple[float, float, np.ndarray]] = []
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                seconds = frame.pts * time_base
                first_pts = seconds if first_pts is None else first_pts
                offset = round(seconds - first_pts, 3)
                if offset > max_duration_s:
                    sample.capped = True
                    break
                sample.frames_decoded += 1
                sample.duration_s = max(sample.duration_s, offset)  # timestamps may step back
                thumb = _luma_thumb(frame)
                motion = float(np.mean(np.abs(thumb - previous))) if previous is not None else 0.0
                previous = thumb
                if offset >= next_sample:
                    reason = "first" if not kept else "interval"
                    kept[offset] = SampledFrame(offset, [reason], frame.to_ndarray(format="bgr24"), motion)
                    next_sample = offset + every_s
                elif motion >= min_motion:
                    peaks.append((motion, offset, frame.to_ndarray(format="bgr24")))
                    peaks.sort(key=lambda p: -p[0])
                    del peaks[motion_peaks * 4 :]  # bounded memory on long clips
        except (av.error.InvalidDataError, av.error.FFmpegError, EOFError) as exc:
            sample.partial = f"decoding stopped at {sample.duration_s:.1f}s: {exc}"
        if sample.frames_decoded == 0:
            raise VideoRejected("undecodable", sample.partial or "no frame could be decoded from the clip")
        declared = _declared_duration(container, stream)
        if not sample.partial and not sample.capped and declared and sample.duration_s < declared - 0.5 - 2 / rate:
            # FFmpeg stops quietly at the end of a cut file: the container's own duration tells
            sample.partial = f"the clip ends at {sample.duration_s:.1f}s of a declared {declared:.1f}s (cut short?)"
        chosen: list[tuple[float, float, np.ndarray]] = []
        for motion, offset, bgr in peaks:  # strongest first, at least min_gap_s from what is kept
            if len(chosen) >= motion_peaks:
                break
            if all(abs(offset - other) >= min_gap_s for other in [*kept, *(c[1] for c in chosen)]):
                chosen.append((motion, offset, bgr))
        for motion, offset, bgr in chosen:
            kept[offset] = SampledFrame(offset, ["motion"], bgr, motion)
        sample.frames = [kept[k] for k in sorted(kept)]
        return sample


def _luma_thumb(frame: object) -> np.ndarray:
    """A ~160-pixel-wide grey thumbnail; from the Y plane directly when the frame is YUV (no conversion)."""
    width, height = frame.width, frame.height  # type: ignore[attr-defined]
    step = max(1, width // THUMB_WIDTH)
    if frame.format.name in ("yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "nv12"):  # type: ignore[attr-defined]
        plane = frame.planes[0]  # type: ignore[attr-defined]
        luma = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:height, :width]
        return luma[::step, ::step].astype(np.int16)
    small = frame.reformat(width=max(1, width // step), height=max(1, height // step), format="gray")  # type: ignore[attr-defined]
    return small.to_ndarray().astype(np.int16)


def _declared_duration(container: object, stream: object) -> float | None:
    duration = getattr(stream, "duration", None)
    time_base = getattr(stream, "time_base", None)
    if duration and time_base:
        return float(duration * time_base)
    total = getattr(container, "duration", None)  # microseconds
    return total / 1_000_000 if total else None


_NAME_TIME = re.compile(r"(20\d\d)[-_]?([01]\d)[-_]?([0-3]\d)[T_ -]?([0-2]\d)[-_:]?([0-5]\d)[-_:]?([0-5]\d)")


def clip_start(sample: ClipSample, name: str, fallback: datetime) -> tuple[datetime, str]:
    """Clip start from container metadata, else from a timestamp in the file name, else ``fallback``."""
    if sample.container_start is not None:
        return sample.container_start, "container"
    match = _NAME_TIME.search(name)
    if match:
        try:
            return datetime(*(int(g) for g in match.groups()), tzinfo=UTC), "filename"  # type: ignore[misc]
        except ValueError:
            pass
    return fallback, "commit"
