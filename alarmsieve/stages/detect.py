"""Stage ``detect``: YOLOX-Nano on every usable alarm image; writes detections and an annotated JPEG.

Input: ``validate`` repo, one alarm folder per datum. The model is loaded once per worker. Tiled
inference (``--tiling auto|on|off``, ``--tile-cameras cam-a,cam-b``; see ``vision.tiling``) adds
overlapping tiles to the whole frame for small, distant people; the default ``auto`` tiles large
frames and frames whose whole-frame pass found a doubtful person (a second look). A detector
error is recorded as ``detector_error`` (judged ``review`` downstream, never dismissed).

Shared detections: the API's fast path (``api.fastpath``) runs this same stage on an alarm the moment
it lands, with ``share_detections`` on; it leaves the boxes in ``<workspace>/cache/detections/`` under
a key of the image bytes, the camera and the stage's identity (code version, model sha256, tiling). The
pipeline's detect worker that meets the same image takes them from there (and removes them) instead of
running the model a second time. Any other stage identity gives another key, so nothing stale is used.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from pydantic import ValidationError

from alarmsieve.stages.alarms import alarm_folders, pass_through, read_record, write_record
from alarmsieve.stages.base import DatumContext, Stage, StageServices, StageUsageError, fault_point
from alarmsieve.stages.records import (
    ANNOTATED_FILE,
    DETECTIONS_FILE,
    META_FILE,
    AlarmMeta,
    BoxRecord,
    DetectionsRecord,
    ModelRef,
)
from alarmsieve.vision.annotate import annotate, encode_jpeg
from alarmsieve.vision.cascade import Cascade, CascadePolicy, Look
from alarmsieve.vision.detector import (
    DEFAULT_SCORE_FLOOR,
    Detection,
    DetectorBackend,
    choose_providers,
    create_detector,
)
from alarmsieve.vision.ensemble import DEFAULT_FUSION_IOU, Ensemble, describe
from alarmsieve.vision.models import CATALOGUE, ResolvedModel, locate_model
from alarmsieve.vision.tiling import TiledDetector, TilingConfig

THREAT_HIGHLIGHT = {"person", "car", "truck", "bus", "motorcycle", "bicycle"}


def _names(value: str) -> list[str]:
    return [n.strip() for n in value.split(",") if n.strip()]


def _looks_text(looks: list[Look]) -> str:
    return ",".join(look.text() for look in looks)


def _parse_looks(value: str) -> list[Look]:
    """``nanodet-m-416/normalised,yolox-nano/inverted`` -> looks; names are checked against the catalogue."""
    looks = []
    for item in _names(value):
        model, _, view = item.partition("/")
        if model not in CATALOGUE:
            raise StageUsageError(
                f"detect: unknown detector {model!r} in a second look {item!r}; known detectors: {', '.join(CATALOGUE)}"
            )
        if view and view not in ("whole", "inverted", "normalised", "slices"):
            raise StageUsageError(
                f"detect: unknown view {view!r} in a second look {item!r}; views: whole, inverted, normalised, slices"
            )
        looks.append(Look(model=model, view=view or "whole"))
    return looks


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"


class DetectStage(Stage):
    name = "detect"

    @staticmethod
    def argument_parser() -> argparse.ArgumentParser:
        """Every option of the stage (``alarmsieve stage detect --help`` prints it)."""
        parser = argparse.ArgumentParser(
            prog="alarmsieve stage detect",
            description="Detect objects in every usable alarm image; write detections.json and annotated.jpg.",
            exit_on_error=False,
        )
        parser.add_argument(
            "--model",
            default="yolox-nano",
            help="catalogue name or path of a YOLOX ONNX file, when --detectors is not given (default: yolox-nano)",
        )
        parser.add_argument(
            "--detectors",
            default=None,
            metavar="NAME[,NAME...]",
            help="catalogue detectors run on every frame and fused into one list of boxes (weighted box fusion); "
            f"known: {', '.join(CATALOGUE)} (default: --model)",
        )
        parser.add_argument(
            "--score-threshold",
            type=float,
            default=0.25,
            help="report boxes scoring at least this (after fusion and tiling; default 0.25)",
        )
        parser.add_argument(
            "--score-floor",
            type=float,
            default=DEFAULT_SCORE_FLOOR,
            help=f"each detector's raw candidates start here; fusion and the tiling doubt see them "
            f"(default {DEFAULT_SCORE_FLOOR})",
        )
        parser.add_argument("--nms-iou", type=float, default=0.45, help="class-aware NMS overlap (default 0.45)")
        parser.add_argument(
            "--fusion-iou",
            type=float,
            default=DEFAULT_FUSION_IOU,
            help=f"boxes of several detectors overlapping this much are one object (default {DEFAULT_FUSION_IOU})",
        )
        parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads per detector (default 1)")
        parser.add_argument(
            "--device", default="auto", help="auto (CUDA when onnxruntime-gpu and a GPU are there), cpu or cuda"
        )
        parser.add_argument(
            "--tiling",
            choices=["auto", "on", "off"],
            default="auto",
            help="whole frame + overlapping tiles: on, off, auto (frames whose longer side >= "
            "--tile-auto-min-side, and frames with a doubtful person: see --tile-doubt-below)",
        )
        parser.add_argument("--tile-cameras", default="", help="comma-separated camera ids always tiled")
        parser.add_argument("--tile-size", type=int, default=None, help="tile side in pixels (default: model input)")
        parser.add_argument("--tile-overlap", type=float, default=0.2, help="overlap of neighbour tiles, 0..0.9")
        parser.add_argument(
            "--tile-max", type=int, default=2, help="at most this many tiles (tiles grow to fit); 0: no cap"
        )
        parser.add_argument(
            "--tile-auto-min-side", type=int, default=1000, help="auto: tile frames this large (default 1000)"
        )
        parser.add_argument(
            "--tile-doubt-below",
            type=float,
            default=0.5,
            help="auto: also tile a frame whose whole-frame pass found a --tile-doubt-labels object under this "
            "score (0: never)",
        )
        parser.add_argument(
            "--tile-doubt-from",
            type=float,
            default=0.25,
            help="auto: ... and at least this score; raw candidates, whatever --score-threshold (default 0.25)",
        )
        parser.add_argument("--tile-doubt-labels", default="person", help="comma-separated labels worth a closer look")
        parser.add_argument(
            "--cascade",
            choices=["on", "off"],
            default="on",
            help="on (default): --model first, second looks only on doubt (grey, dark, small or large frames, "
            "doubtful candidates; see vision.cascade); off: --model or --detectors on every frame, with --tiling",
        )
        parser.add_argument(
            "--second-look-mono",
            default=None,
            metavar="MODEL[/VIEW],...",
            help="cascade: second looks at grey frames (infrared, thermal, low light); views: whole, inverted, "
            "normalised, slices (default: " + _looks_text(CascadePolicy().mono) + ")",
        )
        parser.add_argument(
            "--second-look-colour",
            default=None,
            metavar="MODEL[/VIEW],...",
            help="cascade: second looks at doubtful colour frames (default: "
            + _looks_text(CascadePolicy().colour)
            + ")",
        )
        parser.add_argument(
            "--confident",
            type=float,
            default=CascadePolicy().confident,
            help="cascade: a first-pass person at or above this needs no second look (default 0.5)",
        )
        parser.add_argument(
            "--doubt-floor",
            type=float,
            default=CascadePolicy().doubt_floor,
            help="cascade: a raw first-pass candidate at or above this makes a colour frame doubtful (default 0.15)",
        )
        return parser

    def __init__(self, args: list[str], services: StageServices) -> None:
        super().__init__(args, services)
        if "-h" in args or "--help" in args:
            raise StageUsageError("detect: --help is not a pipeline argument; run `alarmsieve stage detect --help`")
        try:
            opts = self.argument_parser().parse_args(args)
        except (argparse.ArgumentError, SystemExit) as exc:
            raise StageUsageError(f"detect: bad arguments {args}: {exc}") from exc
        cv2.setNumThreads(1)  # one worker per core: no oversubscription
        names = self._detector_names(opts)
        try:
            providers = choose_providers(opts.device)

            def load(name: str) -> DetectorBackend:
                return create_detector(
                    "onnx",
                    model=self._locate(name, opts.model, services),
                    score_floor=opts.score_floor,
                    nms_iou=opts.nms_iou,
                    threads=opts.threads,
                    providers=providers,
                )

            backends = [load(name) for name in names]
            self.detector = Ensemble(backends, fusion_iou=opts.fusion_iou)
            self.cascade = self._cascade(opts, names, backends, load)
            self.tiling = TilingConfig(
                mode=opts.tiling,
                cameras=opts.tile_cameras.split(","),
                tile_size=opts.tile_size,
                overlap=opts.tile_overlap,
                max_tiles=opts.tile_max or None,
                auto_min_side=opts.tile_auto_min_side,
                nms_iou=opts.nms_iou,
                doubt_labels=opts.tile_doubt_labels.split(","),
                doubt_below=opts.tile_doubt_below,
                doubt_from=opts.tile_doubt_from,
            )
            self.tiled = TiledDetector(self.detector, self.tiling, score_threshold=opts.score_threshold)
            # the cascade's first pass for --tiling on / --tile-cameras: tiled, raw candidates
            self.tiled_raw = TiledDetector(self.detector, self.tiling.model_copy(update={"mode": "on"}))
        except ValidationError as exc:
            raise StageUsageError(f"detect: bad tiling arguments {args}: {exc}") from exc
        except StageUsageError:
            raise  # already one line naming the option
        except ValueError as exc:
            raise StageUsageError(f"detect: {exc}") from exc
        self.model_refs = [ModelRef(name=n, sha256=sha) for n, sha in self.detector.models]
        if self.cascade is not None:
            self.model_refs = [
                ModelRef(name=name, sha256=backend.model_sha256) for name, backend in self.cascade.backends.items()
            ]
        self.score_threshold = opts.score_threshold
        self.model_ref = self.model_refs[0]  # DetectionsRecord.model: the first (the only one, by default)
        self.share_detections = False  # the API's fast path: leave the boxes for the pipeline's worker
        self._shared_dir = services.workspace / "cache" / "detections" if services.workspace else None
        self._prune_shared()

    def _cascade(
        self,
        opts: argparse.Namespace,
        names: list[str],
        backends: list[DetectorBackend],
        load: Callable[[str], DetectorBackend],
    ) -> Cascade | None:
        """The cascade, with its own first pass (``--model``, tiled as ``--tiling on``/``--tile-cameras`` ask)
        and one backend per model its second looks name; None with ``--cascade off`` or ``--detectors``."""
        if opts.cascade == "off" or opts.detectors is not None:
            return None
        defaults = CascadePolicy()
        try:
            policy = CascadePolicy(
                primary=names[0] if names[0] in CATALOGUE else "custom",
                mono=_parse_looks(opts.second_look_mono) if opts.second_look_mono is not None else defaults.mono,
                colour=_parse_looks(opts.second_look_colour)
                if opts.second_look_colour is not None
                else defaults.colour,
                confident=opts.confident,
                doubt_floor=opts.doubt_floor,
                large_side=opts.tile_auto_min_side,
            )
        except ValidationError as exc:
            raise StageUsageError(f"detect: bad cascade arguments: {_first_error(exc)}") from exc
        loaded: dict[str, DetectorBackend] = {policy.primary: backends[0]}
        for name in policy.models():
            if name not in loaded:
                loaded[name] = load(name)
        calibrations = {name: CATALOGUE[name].calibration for name in loaded if name in CATALOGUE}
        return Cascade(policy, loaded, calibrations)

    @staticmethod
    def _detector_names(opts: argparse.Namespace) -> list[str]:
        if opts.detectors is None:
            return [opts.model]
        if opts.model != "yolox-nano":
            raise StageUsageError("detect: give --detectors or --model, not both (--model is one detector)")
        names = _names(opts.detectors)
        unknown = [n for n in names if n not in CATALOGUE]
        if not names or unknown:
            raise StageUsageError(
                f"detect: unknown detector {unknown[0] if unknown else '(none)'!r} in --detectors; "
                f"known detectors: {', '.join(CATALOGUE)}"
            )
        if len(set(names)) != len(names):
            raise StageUsageError(f"detect: --detectors names a detector twice: {opts.detectors}")
        return names

    @staticmethod
    def _locate(name: str, model_opt: str, services: StageServices) -> ResolvedModel:
        explicit = None if name in CATALOGUE else Path(model_opt)  # --model PATH: a custom YOLOX file
        return locate_model(
            "yolox-nano" if explicit else name,
            explicit_path=explicit,
            model_dir=services.model_dir,
            cache_dir=services.model_cache,
            allow_download=os.environ.get("ALARMSIEVE_OFFLINE", "") not in ("1", "true", "yes"),
        )

    def identity(self) -> dict[str, str]:
        ids = {**super().identity(), "model": self.model_ref.name, "model_sha256": self.model_ref.sha256}
        if self.cascade is not None:
            ids["models"] = ",".join(f"{m.name}@{m.sha256}" for m in self.model_refs)
            ids["cascade"] = self.cascade.policy.model_dump_json(exclude={"primary"})
            if self.tiling.mode == "on" or self.tiling.cameras:  # the first pass is tiled for these
                ids["tiling"] = "on" if self.tiling.mode == "on" else f"cameras {','.join(self.tiling.cameras)}"
            return ids
        if len(self.model_refs) > 1:  # one detector keeps the identity it always had: no new pipeline version
            ids["models"] = ",".join(f"{m.name}@{m.sha256}" for m in self.model_refs)
            ids["fusion"] = f"wbf iou {self.detector.fusion_iou:g}"
        if self.tiling.mode != "off" or self.tiling.cameras:
            t = self.tiling
            ids["tiling"] = t.mode + (f" cameras {','.join(t.cameras)}" if t.cameras else "")
            if t.mode == "auto" and t.doubt_below > 0 and t.doubt_labels:
                ids["tiling"] += f" doubt {','.join(t.doubt_labels)}<{t.doubt_below:g}"
        return ids

    def process(self, ctx: DatumContext) -> None:
        for folder, rel in alarm_folders(ctx, META_FILE):
            meta = read_record(folder / META_FILE, AlarmMeta)
            record, image = self.detect_one(folder, meta, ctx)
            write_record(ctx, rel, META_FILE, meta)
            write_record(ctx, rel, DETECTIONS_FILE, record)
            fault_point("detect:mid_datum")  # crash tests: die with the datum half written
            pass_through(ctx, folder, rel, meta.image_file)
            if image is not None:
                boxes = [_as_detection(b) for b in record.detections]
                (ctx.out / rel / ANNOTATED_FILE).write_bytes(
                    encode_jpeg(annotate(image, boxes, highlight=THREAT_HIGHLIGHT))
                )

    def detect_one(
        self, folder: Path, meta: AlarmMeta, ctx: DatumContext
    ) -> tuple[DetectionsRecord, np.ndarray | None]:
        """The detections record, and the decoded image when there is one to annotate."""
        base = {
            "meta": meta,
            "model": self.model_ref,
            "models": self.model_refs,
            "pipeline_version": ctx.pipeline_version,
        }
        if meta.status == "rejected" or not meta.image_file:
            return DetectionsRecord(**base, status="rejected", reason=meta.reason), None
        image = None
        try:
            image = _read_bgr(folder / meta.image_file)
            shared = self._shared_path(folder / meta.image_file, meta.camera)
            reused = self._take_shared(shared)
            if reused is not None:
                found, elapsed, tiles, why_tiled = reused
                ctx.log.info("alarm %s: detections of the API's provisional run reused", meta.alarm)
            else:
                started = time.perf_counter()
                found, tiles, why_tiled = self.detect_frame(image, meta.camera)
                elapsed = (time.perf_counter() - started) * 1000
                if self.share_detections:
                    self._leave_shared(shared, found, elapsed, tiles, why_tiled)
        except Exception as exc:  # the verdict becomes `review`: a failed detector never dismisses
            ctx.log.exception("detector failed on %s", meta.alarm)
            record = DetectionsRecord(**base, status="detector_error", reason=f"detector failed: {exc}")
            return record, image
        ctx.log.info(
            "alarm %s: %s in %.1f ms%s",
            meta.alarm,
            ", ".join(self._describe(d) for d in found) or "nothing",
            elapsed,
            f" (+{tiles} passes: {why_tiled})" if tiles else "",
        )
        record = DetectionsRecord(
            **base,
            status=meta.status,
            reason=meta.reason,
            detections=[BoxRecord(label=d.label, score=d.score, box=d.box, sources=d.sources) for d in found],
            inference_ms=round(elapsed, 2),
            second_look=why_tiled if self.cascade is not None else "",
        )
        return record, image

    def detect_frame(self, image: np.ndarray, camera: str) -> tuple[list[Detection], int, str]:
        """What this stage reports on one frame: the boxes, the passes beyond the first, and why."""
        if self.cascade is None:
            found = self.tiled.detect(image, camera=camera)
            return found, self.tiled.last_tiles, self.tiled.last_reason
        tiled = self.tiling.mode == "on" or camera in self.tiling.cameras
        first = _CameraTiles(self.tiled_raw, camera) if tiled else None
        result = self.cascade.detect(image, first_pass=first)
        found = [d for d in result.detections if d.score >= self.score_threshold]
        passes = sum(look.passes for look in result.looks) - 1
        why = result.second_look and (
            f"{result.kind.text()}, {result.second_look}: " + ", ".join(x.look for x in result.looks[1:])
        )
        return found, passes, why

    def _describe(self, d: Detection) -> str:
        if self.cascade is not None:
            return f"{d.label} {d.score:.2f}" + (
                " (" + ", ".join(f"{k} {v:.2f}" for k, v in d.sources.items()) + ")" if d.sources else ""
            )
        if len(self.model_refs) == 1:
            return f"{d.label} {d.score:.2f}"
        return describe(d, [m.name for m in self.model_refs])

    def _prune_shared(self, max_age_s: float = 86400.0) -> None:
        """Boxes the pipeline never came for (its version changed meanwhile) go after a day."""
        if self._shared_dir is None or not self._shared_dir.is_dir():
            return
        cutoff = time.time() - max_age_s
        for path in self._shared_dir.glob("*/*"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()

    def _shared_path(self, image_file: Path, camera: str) -> Path | None:
        if self._shared_dir is None or not (self.share_detections or self._shared_dir.is_dir()):
            return None
        key = hashlib.sha256(image_file.read_bytes())
        key.update(json.dumps([camera, self.identity()], sort_keys=True).encode())
        digest = key.hexdigest()
        return self._shared_dir / digest[:2] / f"{digest}.json"

    def _take_shared(self, path: Path | None) -> tuple[list[Detection], float, int, str] | None:
        if path is None:
            return None
        try:
            raw = path.read_bytes()
            path.unlink(missing_ok=True)  # used once: the pipeline's record is the lasting copy
            doc = json.loads(raw)
            found = [_as_detection(BoxRecord.model_validate(b)) for b in doc["boxes"]]
            return found, float(doc["ms"]), int(doc["tiles"]), str(doc["why_tiled"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, ValidationError):  # a torn or foreign file: detect afresh
            return None

    @staticmethod
    def _leave_shared(path: Path | None, found: list[Detection], ms: float, tiles: int, why_tiled: str) -> None:
        if path is None:
            return
        boxes = [BoxRecord(label=d.label, score=d.score, box=d.box, sources=d.sources).model_dump() for d in found]
        doc = {"boxes": boxes, "ms": ms, "tiles": tiles, "why_tiled": why_tiled}
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(f".{os.getpid()}.tmp")
        temp.write_text(json.dumps(doc))
        temp.replace(path)  # whole or not at all, for a worker reading at the same moment


def _read_bgr(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path.name} could not be decoded")
    return image


def _as_detection(box: BoxRecord) -> Detection:
    from alarmsieve.vision.models import COCO_LABELS

    class_id = COCO_LABELS.index(box.label) if box.label in COCO_LABELS else -1
    return Detection(label=box.label, class_id=max(class_id, 0), score=box.score, box=box.box, sources=box.sources)


class _CameraTiles(DetectorBackend):
    """The cascade's first pass for a camera the operator asked to tile: the primary model, tiled."""

    def __init__(self, tiled: TiledDetector, camera: str) -> None:
        self.tiled, self.camera = tiled, camera
        self.model_name, self.model_sha256 = tiled.model_name, tiled.model_sha256

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        return self.tiled.detect(image_bgr, camera=self.camera)
