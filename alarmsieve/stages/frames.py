"""Stage ``frames``: turn each video clip into the frames worth judging.

Input: ``videos`` repo, ``<camera>/<clip>``. Output per clip: ``<camera>/<clip>/clip.json`` (how the
clip was read, its start time, which frames were kept and why) and one JPEG per kept frame,
``<camera>/<clip>/t0007.200s.jpg``. The frames then go through validate → detect → assess like
snapshots. A file that is not a usable clip is recorded as rejected with its reason.
"""

from __future__ import annotations

import argparse
import hashlib
from datetime import UTC, datetime, timedelta

import cv2

from alarmsieve.stages.alarms import write_record
from alarmsieve.stages.base import DatumContext, Stage, StageServices, StageUsageError
from alarmsieve.stages.records import CLIP_FILE, ClipFrame, ClipRecord
from alarmsieve.vision.video import VideoRejected, clip_start, sample_clip


def frame_name(offset_s: float) -> str:
    return f"t{offset_s:08.3f}s.jpg"


class FramesStage(Stage):
    name = "frames"

    def __init__(self, args: list[str], services: StageServices) -> None:
        super().__init__(args, services)
        parser = argparse.ArgumentParser(prog="alarmsieve stage frames", exit_on_error=False)
        parser.add_argument("--every", type=float, default=5.0, help="seconds between regular samples")
        parser.add_argument("--max-duration", type=float, default=600.0, help="seconds of a clip read at most")
        parser.add_argument("--motion-peaks", type=int, default=3, help="frames kept at motion peaks")
        parser.add_argument("--min-motion", type=float, default=4.0, help="mean grey-level change that is motion")
        parser.add_argument("--jpeg-quality", type=int, default=92)
        try:
            self.opts = parser.parse_args(args)
        except (argparse.ArgumentError, SystemExit) as exc:
            raise StageUsageError(f"frames: bad arguments {args}: {exc}") from exc
        if self.opts.every <= 0 or self.opts.max_duration <= 0:
            raise StageUsageError("frames: --every and --max-duration must be positive seconds")

    def process(self, ctx: DatumContext) -> None:
        for root in ctx.inputs():
            commit_time = ctx.input_commit_times.get(root.name) or datetime.now(UTC)
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                rel = path.relative_to(root).as_posix()
                parts = rel.split("/")
                data = path.read_bytes()
                base = {
                    "clip": "/" + rel,
                    "camera": parts[0] if len(parts) > 1 else "unknown",
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "size_bytes": len(data),
                }
                try:
                    sample = sample_clip(
                        path,
                        every_s=self.opts.every,
                        max_duration_s=self.opts.max_duration,
                        motion_peaks=self.opts.motion_peaks,
                        min_motion=self.opts.min_motion,
                    )
                except VideoRejected as rejected:
                    ctx.log.warning("clip %s rejected: %s", base["clip"], rejected)
                    record = ClipRecord(
                        **base,
                        status="rejected",
                        reason_code=rejected.code,
                        reason=rejected.message,
                        start=commit_time,
                        start_source="commit",
                    )
                    write_record(ctx, rel, CLIP_FILE, record)
                    continue
                start, source = clip_start(sample, path.name, commit_time)
                frames = []
                for frame in sample.frames:
                    name = frame_name(frame.offset_s)
                    ok, jpeg = cv2.imencode(".jpg", frame.bgr, [cv2.IMWRITE_JPEG_QUALITY, self.opts.jpeg_quality])
                    if not ok:
                        continue
                    (ctx.out / rel).mkdir(parents=True, exist_ok=True)
                    (ctx.out / rel / name).write_bytes(jpeg.tobytes())
                    frames.append(
                        ClipFrame(
                            file=name,
                            offset_s=frame.offset_s,
                            time=start + timedelta(seconds=frame.offset_s),
                            reasons=frame.reasons,
                            motion=round(frame.motion, 2),
                        )
                    )
                record = ClipRecord(
                    **base,
                    status="ok",
                    start=start,
                    start_source=source,  # type: ignore[arg-type]
                    codec=sample.codec,
                    width=sample.width,
                    height=sample.height,
                    fps=sample.fps,
                    duration_s=sample.duration_s,
                    frames_decoded=sample.frames_decoded,
                    partial=sample.partial,
                    capped=sample.capped,
                    frames=frames,
                )
                write_record(ctx, rel, CLIP_FILE, record)
                ctx.log.info(
                    "clip %s: %.1fs %s %sx%s, kept %d frames (%s)%s%s",
                    record.clip,
                    record.duration_s,
                    record.codec,
                    record.width,
                    record.height,
                    len(frames),
                    ", ".join(f"{f.offset_s:.1f}s {'+'.join(f.reasons)}" for f in frames),
                    f"; partial: {record.partial}" if record.partial else "",
                    "; capped" if record.capped else "",
                )
