"""Stage ``clips``: one verdict per video clip, from the verdicts of its frames.

Input: ``assess`` repo, one ``<camera>/<clip>`` folder per datum. A clip is ``alert`` when a frame
alerts (with ``--min-frames K``, only when an alert label is kept in at least K frames, which drops
one-frame flickers; a lone alerting frame then gives ``review``, never ``dismiss``), else ``review``
when a frame is reviewed, else ``dismiss``. A partial or capped clip says so in its reasons. Output:
``clip-verdict.json``, ``best.jpg`` (the annotated frame that decided) and ``summary.gif`` (the
annotated frames in time order). Snapshots (verdicts without a clip) pass without output.
"""

from __future__ import annotations

import argparse
import io
import shutil
from collections import defaultdict
from pathlib import Path

from PIL import Image

from alarmsieve.stages.alarms import alarm_folders, read_record, write_record
from alarmsieve.stages.base import DatumContext, Stage, StageServices, StageUsageError
from alarmsieve.stages.records import (
    CLIP_VERDICT_FILE,
    VERDICT_FILE,
    ClipFrameVerdict,
    ClipVerdictRecord,
    VerdictRecord,
)

BEST_FILE = "best.jpg"
SUMMARY_FILE = "summary.gif"
SEVERITY = {"alert": 2, "review": 1, "dismiss": 0}


def _top(record: VerdictRecord) -> tuple[float, str]:
    kept = [d for d in record.detections if d.kept]
    best = max(kept, key=lambda d: d.score, default=None)
    return (best.score, f"{best.label} {best.score:.2f}") if best else (0.0, "")


class ClipsStage(Stage):
    name = "clips"
    code_version = "3"  # 2: the clip verdict carries the clip sha256 and the deciding frame's boxes; 3: time zone

    def __init__(self, args: list[str], services: StageServices) -> None:
        super().__init__(args, services)
        parser = argparse.ArgumentParser(prog="alarmsieve stage clips", exit_on_error=False)
        parser.add_argument("--min-frames", type=int, default=1, help="frames an alert label must be seen in")
        parser.add_argument("--summary-width", type=int, default=320)
        parser.add_argument("--summary-ms", type=int, default=700, help="milliseconds per summary frame")
        try:
            self.opts = parser.parse_args(args)
        except (argparse.ArgumentError, SystemExit) as exc:
            raise StageUsageError(f"clips: bad arguments {args}: {exc}") from exc
        if self.opts.min_frames < 1:
            raise StageUsageError("clips: --min-frames must be at least 1")

    def process(self, ctx: DatumContext) -> None:
        by_clip: dict[str, list[tuple[Path, VerdictRecord]]] = defaultdict(list)
        clip_root: dict[str, tuple[Path, str]] = {}
        for folder, _rel in alarm_folders(ctx, VERDICT_FILE):
            record = read_record(folder / VERDICT_FILE, VerdictRecord)
            if record.clip is None:
                continue
            by_clip[record.clip.clip].append((folder, record))
            clip_rel = record.clip.clip.lstrip("/")
            clip_root[record.clip.clip] = (folder.parents[0], clip_rel)
        for clip, frames in sorted(by_clip.items()):
            frames.sort(key=lambda item: item[1].clip.offset_s if item[1].clip else 0.0)
            folder, rel = clip_root[clip]
            verdict = self.judge(clip, frames)
            out = ctx.out / rel
            out.mkdir(parents=True, exist_ok=True)
            if verdict.deciding_frame:
                decider = next(f for f, r in frames if r.alarm == verdict.deciding_frame)
                annotated = next((r.annotated_file for f, r in frames if r.alarm == verdict.deciding_frame), None)
                if annotated and (decider / annotated).is_file():
                    shutil.copyfile(decider / annotated, out / BEST_FILE)
                    verdict.best_frame_file = BEST_FILE
            gif = self.summary([f / r.annotated_file for f, r in frames if r.annotated_file])
            if gif:
                (out / SUMMARY_FILE).write_bytes(gif)
                verdict.summary_file = SUMMARY_FILE
            write_record(ctx, rel, CLIP_VERDICT_FILE, verdict)
            ctx.log.info("clip %s: %s: %s", clip, verdict.verdict, verdict.reasons[0])

    def judge(self, clip: str, frames: list[tuple[Path, VerdictRecord]]) -> ClipVerdictRecord:
        records = [r for _, r in frames]
        first = records[0]
        assert first.clip is not None
        alert_labels: dict[str, int] = defaultdict(int)
        for r in records:
            for label in {d.label for d in r.detections if d.kept and d.severity == "alert"}:
                alert_labels[label] += 1
        confirmed = {label for label, n in alert_labels.items() if n >= self.opts.min_frames}
        alerting = [r for r in records if r.verdict == "alert"]
        reasons: list[str] = []
        if alerting and confirmed:
            verdict = "alert"
            decider = max(alerting, key=lambda r: _top(r)[0])
            reasons.append(
                f"frame at {decider.clip.offset_s:.1f}s alerts: {decider.reasons[0]}"  # type: ignore[union-attr]
            )
            if self.opts.min_frames > 1:
                reasons.append(f"{', '.join(sorted(confirmed))} seen in at least {self.opts.min_frames} frames")
        elif alerting:
            verdict = "review"
            decider = max(alerting, key=lambda r: _top(r)[0])
            counts = ", ".join(f"{label} in {n} frame(s)" for label, n in sorted(alert_labels.items()))
            reasons.append(f"an alert label was seen in fewer than {self.opts.min_frames} frames ({counts}): review")
        else:
            reviewing = [r for r in records if r.verdict == "review"]
            if reviewing:
                verdict, decider = "review", reviewing[0]
                reasons.append(f"frame at {decider.clip.offset_s:.1f}s needs review: {decider.reasons[0]}")  # type: ignore[union-attr]
            else:
                verdict, decider = "dismiss", None
                reasons.append(f"no threat in {len(records)} frames")
        if first.clip.partial:
            reasons.append(f"partial clip: {first.clip.partial}")
        if first.clip.capped:
            reasons.append("clip capped at the maximum duration: the rest was not read")
        source = decider or first  # rules and model of the frame that decided (all frames share them as a rule)
        return ClipVerdictRecord(
            clip=clip,
            camera=first.camera,
            time=min(r.time for r in records),
            timezone=source.timezone,  # the camera's zone (e-mails and listings show local time)
            verdict=verdict,  # type: ignore[arg-type]
            reasons=reasons,
            deciding_frame=decider.alarm if decider else None,
            best_frame_file=None,
            summary_file=None,
            frames=[
                ClipFrameVerdict(
                    alarm=r.alarm,
                    offset_s=r.clip.offset_s if r.clip else 0.0,
                    verdict=r.verdict,
                    reasons=r.reasons,
                    top=_top(r)[1],
                )
                for r in records
            ],
            partial=first.clip.partial,
            capped=first.clip.capped,
            clip_sha256=first.clip.sha256,
            detections=decider.detections if decider else [],
            rules_commit=source.rules_commit,
            model=source.model,
        )

    def summary(self, images: list[Path]) -> bytes | None:
        frames = []
        for path in images:
            if path.is_file():
                image = Image.open(path).convert("RGB")
                height = max(1, round(image.height * self.opts.summary_width / image.width))
                frames.append(image.resize((self.opts.summary_width, height)))
        if not frames:
            return None
        buffer = io.BytesIO()
        frames[0].save(
            buffer, format="GIF", save_all=True, append_images=frames[1:], duration=self.opts.summary_ms, loop=0
        )
        return buffer.getvalue()
