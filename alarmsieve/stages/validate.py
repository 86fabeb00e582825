"""Stage ``validate``: is this alarm image usable, which camera sent it, and when was it taken?

Input: the union of ``images`` (``<camera>/<file>``) and ``frames`` (``<camera>/<clip>/``: ``clip.json``
and the sampled frames, each stamped with the clip's start plus its offset). Output per alarm:
``<camera>/<file>/meta.json`` (a frame: ``<camera>/<clip>/<frame>/meta.json``) and the image itself
(unchanged) when it is usable. A rejected file is recorded with its reason and the
rest of the datum goes on; a uniform frame (covered lens, dead IR) is kept as possible tampering.
"""

from __future__ import annotations

import argparse
import hashlib
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from alarmsieve.stages.alarms import write_record
from alarmsieve.stages.base import DatumContext, Stage, StageServices, StageUsageError
from alarmsieve.stages.records import CLIP_FILE, META_FILE, AlarmMeta, ClipRecord, ClipRef
from alarmsieve.vision.images import ImageLimits, ImageRejected, decode_image, is_uniform

# 2026-11-27T10:30:00, 20261127_103000, 20261127-103000, 2026-11-27_10-30-00 ... (the camera's wall clock);
# with Z or an offset written with a colon right after it (20261127_103000Z, ...T10:30:00+01:00) absolute.
# A bare -0001 after the seconds is a camera's counter more often than an offset: not read as one.
_STAMP = re.compile(
    r"(?<!\d)(?P<y>20\d\d|19\d\d)[-_.]?(?P<mo>[01]\d)[-_.]?(?P<d>[0-3]\d)[T_ -]?"
    r"(?P<h>[0-2]\d)[-_:.]?(?P<mi>[0-5]\d)[-_:.]?(?P<s>[0-5]\d)(?!\d)"
    r"(?P<tz>Z|[+-][01]\d:[0-5]\d(?!\d))?"
)
_EPOCH = re.compile(r"(?<!\d)(1[5-9]\d{8})(?!\d)")  # 10-digit Unix time, 2017..2033


def time_from_filename(name: str) -> datetime | None:
    """A date-time stamp in the name (naive: the camera's wall clock), else Unix seconds (aware, UTC)."""
    match = _STAMP.search(name)
    if match:
        try:
            stamp = datetime(*(int(match[k]) for k in ("y", "mo", "d", "h", "mi", "s")))
        except ValueError:
            return None
        tz = match["tz"]
        if tz == "Z":
            return stamp.replace(tzinfo=UTC)
        if tz:
            delta = timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
            return stamp.replace(tzinfo=timezone(-delta if tz[0] == "-" else delta)).astimezone(UTC)
        return stamp
    epoch = _EPOCH.search(name)
    if epoch:
        return datetime.fromtimestamp(int(epoch[1]), UTC)
    return None


def time_fields(reading: datetime, source: str, upload: datetime | None) -> dict[str, Any]:
    """AlarmMeta's time fields. A naive reading is kept as ``wall_time`` for assess to resolve in the
    camera's zone (validate knows no rules); ``time`` then holds it labelled UTC, as older records did."""
    naive = reading.tzinfo is None
    return {
        "time": reading.replace(tzinfo=UTC) if naive else reading.astimezone(UTC),
        "time_source": source,
        "wall_time": reading if naive else None,
        "upload_time": upload,
    }


class ValidateStage(Stage):
    name = "validate"
    code_version = "3"  # 2: a frame's ClipRef carries the clip's sha256; 3: wall_time, upload_time

    def __init__(self, args: list[str], services: StageServices) -> None:
        super().__init__(args, services)
        parser = argparse.ArgumentParser(prog="alarmsieve stage validate", exit_on_error=False)
        parser.add_argument("--max-bytes", type=int, default=ImageLimits().max_bytes)
        parser.add_argument("--max-pixels", type=int, default=ImageLimits().max_pixels)
        parser.add_argument("--min-side", type=int, default=ImageLimits().min_side)
        parser.add_argument("--uniform-threshold", type=float, default=4.0)
        try:
            opts = parser.parse_args(args)
        except (argparse.ArgumentError, SystemExit) as exc:
            raise StageUsageError(f"validate: bad arguments {args}: {exc}") from exc
        self.limits = ImageLimits(max_bytes=opts.max_bytes, max_pixels=opts.max_pixels, min_side=opts.min_side)
        self.uniform_threshold = opts.uniform_threshold

    def process(self, ctx: DatumContext) -> None:
        for root in ctx.inputs():
            commit_time = ctx.input_commit_times.get(root.name)
            clip_dirs = {record.parent for record in root.rglob(CLIP_FILE)}
            for clip_dir in sorted(clip_dirs):
                self.process_clip(ctx, root, clip_dir, commit_time)
            for path in sorted(p for p in root.rglob("*") if p.is_file() and not clip_dirs & set(p.parents)):
                rel = path.relative_to(root).as_posix()
                meta = self.check(path, rel, commit_time)
                self._write(ctx, rel, path, meta)

    def process_clip(self, ctx: DatumContext, root: Path, clip_dir: Path, commit_time: datetime | None) -> None:
        """Frames of a clip (``frames`` stage output): each frame is an alarm stamped with its clip time."""
        clip = ClipRecord.model_validate_json((clip_dir / CLIP_FILE).read_bytes())
        rel_clip = clip_dir.relative_to(root).as_posix()

        # frames.py stores a file-name start labelled UTC: the camera's wall clock unless the name says Z/offset
        named = time_from_filename(clip.clip.rsplit("/", 1)[-1]) if clip.start_source == "filename" else None
        name_is_wall_clock = clip.start_source == "filename" and (named is None or named.tzinfo is None)

        def clip_time(when: datetime) -> dict[str, Any]:
            if named is not None and named.tzinfo is not None:  # Z or +01:00 in the name: that instant
                when = named + (when - clip.start)
            naive = name_is_wall_clock or when.tzinfo is None
            return time_fields(when.replace(tzinfo=None) if naive else when, clip.start_source, commit_time)

        if clip.status == "rejected":
            meta = AlarmMeta(
                alarm=clip.clip,
                camera=clip.camera,
                **clip_time(clip.start),
                image_file=None,
                sha256=clip.sha256,
                size_bytes=clip.size_bytes,
                status="rejected",
                reason_code=clip.reason_code,
                reason=clip.reason,
            )
            write_record(ctx, rel_clip, META_FILE, meta)
            ctx.log.warning("clip %s: rejected (%s)", clip.clip, clip.reason)
            return
        for frame in clip.frames:
            path = clip_dir / frame.file
            rel = f"{rel_clip}/{frame.file}"
            meta = self.check(path, rel, frame.time).model_copy(
                update={
                    "camera": clip.camera,
                    **clip_time(frame.time),
                    "clip": ClipRef(
                        clip=clip.clip,
                        offset_s=frame.offset_s,
                        reasons=frame.reasons,
                        partial=clip.partial,
                        capped=clip.capped,
                        sha256=clip.sha256,
                    ),
                }
            )
            self._write(ctx, rel, path, meta)

    def _write(self, ctx: DatumContext, rel: str, path: Path, meta: AlarmMeta) -> None:
        write_record(ctx, rel, META_FILE, meta)
        if meta.image_file:
            dest = ctx.out / rel / meta.image_file
            dest.write_bytes(path.read_bytes())
        if meta.status != "ok":
            ctx.log.warning("alarm %s: %s (%s)", meta.alarm, meta.status, meta.reason)
        else:
            ctx.log.info("alarm %s: ok %sx%s %s", meta.alarm, meta.width, meta.height, meta.format)

    def check(self, path: Path, rel: str, commit_time: datetime | None) -> AlarmMeta:
        data = path.read_bytes()
        parts = rel.split("/")
        camera = parts[0] if len(parts) > 1 else "unknown"
        fallback_time = commit_time or datetime.now(UTC)
        common = {
            "alarm": "/" + rel,
            "camera": camera,
            "sha256": hashlib.sha256(data).hexdigest(),
            "size_bytes": len(data),
        }
        name_time = time_from_filename(path.name)
        try:
            image = decode_image(data, self.limits)
        except ImageRejected as rejected:
            return AlarmMeta(
                **common,
                **time_fields(name_time or fallback_time, "filename" if name_time else "commit", commit_time),
                image_file=None,
                status="rejected",
                reason_code=rejected.code,
                reason=rejected.message,
            )
        # EXIF DateTimeOriginal (+ OffsetTimeOriginal when written), else the file name, else the upload
        if image.exif_time is not None:
            when, source = image.exif_time, "exif"
        elif name_time is not None:
            when, source = name_time, "filename"
        else:
            when, source = fallback_time, "commit"
        uniform = is_uniform(image.bgr, self.uniform_threshold)
        return AlarmMeta(
            **common,
            **time_fields(when, source, commit_time),
            image_file=f"image.{image.format.replace('jpeg', 'jpg')}",
            format=image.format,
            width=image.width,
            height=image.height,
            status="uniform" if uniform else "ok",
            reason_code="uniform" if uniform else "",
            reason=(
                "the frame is nearly uniform (covered lens, dead infrared or tampering?); an operator should look"
                if uniform
                else ""
            ),
        )
