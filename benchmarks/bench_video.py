"""Video sampling speed: a 60 s 1080p H.264 clip, frames/s decoded and the real-time factor."""

from __future__ import annotations

import time
from typing import Any

from benchmarks.common import SharedData, Target, at_least, say, temp_folder

SECONDS = 60
FPS = 30


def _make_clip(path: Any, shared: SharedData) -> None:
    import av
    import cv2
    import numpy as np

    photo = shared.root / "images" / "coral" / "traffic_0001.bmp"
    base = (
        cv2.resize(cv2.imread(str(photo)), (1920, 1080)) if photo.is_file() else np.full((1080, 1920, 3), 90, np.uint8)
    )
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        stream.codec_context.gop_size = FPS
        stream.options = {"preset": "ultrafast"}
        patch = base[400:600, 800:1000].copy()
        # one second of a car-sized patch drifting across the scene, converted once and cycled
        cycle = []
        for i in range(FPS):
            frame = base.copy()
            frame[700:900, 200 + i * 40 : 400 + i * 40] = patch
            cycle.append(av.VideoFrame.from_ndarray(frame, format="bgr24").reformat(format="yuv420p"))
        for i in range(SECONDS * FPS):
            frame = cycle[i % FPS]
            frame.pts = None
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _decode_and_scan(path: Any) -> tuple[float, float]:
    """(seconds of the whole decoding loop, seconds of it spent in the motion scan: thumbnail + difference).

    The scan is timed inside the loop, frame by frame, so the figure does not depend on subtracting two
    runs on a busy machine.
    """
    import av
    import numpy as np

    from alarmsieve.vision.video import _luma_thumb

    scan = 0.0
    previous = None
    started = time.perf_counter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            t0 = time.perf_counter()
            thumb = _luma_thumb(frame)
            if previous is not None:
                float(np.mean(np.abs(thumb - previous)))
            previous = thumb
            scan += time.perf_counter() - t0
    return time.perf_counter() - started, scan


def run(shared: SharedData) -> tuple[dict[str, Any], list[Target]]:
    from alarmsieve.vision.video import sample_clip

    say(f"== video: {SECONDS} s 1080p H.264 clip at {FPS} fps, default sampling (every 5 s + 3 motion peaks) ==")
    with temp_folder("alarmsieve-bench-video-") as tmp:
        clip = tmp / "clip.mp4"
        started = time.perf_counter()
        _make_clip(clip, shared)
        say(f"clip made in {time.perf_counter() - started:.1f} s ({clip.stat().st_size / 1e6:.1f} MB)")
        runs = []
        for _ in range(2):
            started = time.perf_counter()
            sample = sample_clip(clip)
            runs.append(time.perf_counter() - started)
        best = min(runs)
        loop, scan = min(_decode_and_scan(clip) for _ in range(2))
    fps = sample.frames_decoded / best
    factor = SECONDS / best
    say(
        f"sampled {len(sample.frames)} frames from {sample.frames_decoded} decoded in {best:.2f} s (best of 2): "
        f"{fps:.0f} frames/s, {factor:.1f}x real time (motion scan on every frame at 160 px wide)"
    )
    say(
        f"motion scan (luma thumbnail ~160 px + frame difference, every frame): {scan:.2f} s of a {loop:.2f} s "
        f"decoding loop ({scan / loop:.0%}, {scan / sample.frames_decoded * 1000:.3f} ms per frame)"
    )
    figures = {
        "seconds": round(best, 3),
        "frames_decoded": sample.frames_decoded,
        "frames_kept": len(sample.frames),
        "decoded_fps": round(fps, 1),
        "realtime_factor": round(factor, 1),
        "motion_scan_seconds": round(scan, 3),
        "motion_scan_share_of_decoding": round(scan / loop, 3),
        "motion_scan_ms_per_frame": round(scan / sample.frames_decoded * 1000, 4),
    }
    return figures, [
        at_least("video real-time factor, 60 s 1080p H.264 (decode + motion scan + samples)", factor, 20, "x")
    ]
