"""``alarmsieve eval``: run the pipeline on a labelled set and count missed threats and suppression.

A threat image is one whose labels include a label the rules alert on (person by default). Definitions
(docs/quality.md):

- a threat is *missed* when it never reaches a person: its verdict is ``dismiss`` (or none was made).
  A ``review`` reaches an operator (never dismiss on doubt), so it is not a miss; *recall* is the share
  of threats that reach a person, and *alerted* the stricter share whose verdict is ``alert``;
- a calm image is *suppressed* only when its verdict is ``dismiss``: a ``review`` costs an operator's
  look as an alert does, so both count as *operator load*, never as suppression.
The run happens in a private temporary workspace: nothing is notified, the user's data is untouched.

Every share comes with its 95 % Wilson interval, overall, per label and per camera; the report also
holds the operator load (alerts and reviews on calm images) and the recall / suppression curve over
alert thresholds (``alarmsieve.quality.report`` renders it as HTML). With YOLO labels the box sizes are
known, so the issue's targets are computed too: recall on threats with a threat box covering at least
``min_threat_area`` of the frame, and suppression on images with no threat label and no vehicle.

A labels CSV may name each frame's ``condition`` (day, thermal, night_ir …) and ``sequence``
(``alarmsieve.quality.labels``): the figures are then also given per condition and per sequence, a
sequence's frames arrive in time order as from a real camera, and per-event recall is computed
(``alarmsieve.quality.events``). Frames whose person label is empty run but are not scored; they are
listed as excluded.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import BaseModel, ValidationError

from alarmsieve.config import Settings
from alarmsieve.quality.events import EventOutcome, find_events
from alarmsieve.quality.labels import LabelledImage, LabelsError, LabelSet, read_labels_csv
from alarmsieve.quality.stats import Proportion, proportion
from alarmsieve.rules import DEFAULT_RULES_YAML, load_rules
from alarmsieve.stages.records import DETECTIONS_FILE, DetectionsRecord, VerdictRecord
from alarmsieve.verdicts import read_verdicts
from alarmsieve.vision.models import COCO_LABELS

if TYPE_CHECKING:
    from alarmsieve.workspace import Workspace

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
EVAL_PIPELINES = ("validate", "detect", "assess")


class EvalError(ValueError):
    pass


VEHICLE_LABELS = ("bicycle", "car", "motorcycle", "bus", "truck")
CURVE_THRESHOLDS = tuple(round(0.25 + 0.025 * i, 3) for i in range(30))  # 0.25 (the detector's floor) .. 0.975


class OutcomeBox(BaseModel):
    label: str
    score: float
    box: tuple[float, float, float, float]
    kept: bool = True
    too_small: bool = False  # dropped by the rules' min_box_area


def label_score(outcome: ImageOutcome, labels: list[str] | str) -> float | None:
    """Highest score among the outcome's detections of ``labels`` that the rules did not drop for size."""
    wanted = [labels] if isinstance(labels, str) else labels
    scores = [b.score for b in outcome.boxes if b.label in wanted and not b.too_small]
    return max(scores) if scores else None


class ImageOutcome(BaseModel):
    file: str
    objects: list[str]
    threat: bool
    verdict: str
    reasons: list[str]
    detections: list[str]
    camera: str = "eval"
    # highest score of a threat-label detection big enough for the rules (None: none found)
    threat_score: float | None = None
    # the largest threat box in the labels, as a fraction of the frame (None: unknown or no threat)
    threat_area: float | None = None
    status: str = "ok"
    boxes: list[OutcomeBox] = []
    condition: str | None = None
    sequence: str | None = None
    note: str = ""
    detect_ms: float | None = None  # the detect stage's inference time (DetectionsRecord.inference_ms)


REACHES_A_PERSON = ("alert", "review")


class GroupStats(BaseModel):
    """One label's or one camera's figures; ``missed`` (dismissed) and ``alerted`` over threats,
    ``suppression`` over calm images."""

    name: str
    images: int
    threats: int
    calm: int
    alerts: int
    reviews: int
    dismissed: int
    missed: Proportion
    suppression: Proportion
    alerts_on_calm: int
    reviews_on_calm: int
    alerted: Proportion | None = None
    recall: Proportion | None = None  # threats that reach a person (alert or review)
    excluded: int = 0  # frames whose person label is empty: run, not scored
    events: Proportion | None = None  # events (runs of person frames) that reached a person
    events_alerted: Proportion | None = None


class OperatorLoad(BaseModel):
    """What calm images cost a person: each alert and each review is one look."""

    alerts_on_calm: int
    reviews_on_calm: int
    looks: int
    per_100_calm: float | None


class CurvePoint(BaseModel):
    """Alert threshold ``threshold`` (no review band): recall on threats, suppression on calm images."""

    threshold: float
    recall: float | None
    suppression: float | None


class EvalReport(BaseModel):
    images: int
    threat_labels: list[str]
    threats: int
    missed: int
    missed_rate: float
    calm: int
    suppressed: int
    suppression: float
    reviews_on_calm: int
    alerts_on_calm: int
    misses: list[ImageOutcome]
    false_alarms: list[ImageOutcome]
    outcomes: list[ImageOutcome]
    missed_ci: tuple[float, float] | None = None
    suppression_ci: tuple[float, float] | None = None
    recall: Proportion | None = None  # threats that reach a person (alert or review)
    alerted: Proportion | None = None  # threats alerted
    reviewed_threats: list[ImageOutcome] = []  # threats that reached a person through review only
    missed_detail: Proportion | None = None
    suppression_detail: Proportion | None = None
    operator_load: OperatorLoad | None = None
    per_label: list[GroupStats] = []
    per_camera: list[GroupStats] = []
    curve: list[CurvePoint] = []
    # the targets: threats with a threat box >= min_threat_area, and calm images with no vehicle
    min_threat_area: float = 0.005
    large_threat_recall: Proportion | None = None
    large_threat_alerted: Proportion | None = None
    clear_calm_suppression: Proportion | None = None
    detect_args: list[str] = []
    # labels with a condition / sequence column (the cctv-dev set)
    per_condition: list[GroupStats] = []
    per_sequence: list[GroupStats] = []
    events: list[EventOutcome] = []
    event_recall: Proportion | None = None
    event_alerted: Proportion | None = None
    excluded: list[ImageOutcome] = []  # person label empty: run through the pipeline, in no figure
    label_problems: list[str] = []  # rows of the labels left out, one line each
    # detect cost: mean and median DetectionsRecord.inference_ms over the frames that have one
    detect_ms_mean: float | None = None
    detect_ms_median: float | None = None
    detect_ms_frames: int = 0


def _class_names(labels_dir: Path) -> list[str]:
    for folder in [labels_dir, *labels_dir.parents[:3]]:
        for name in ("classes.yaml", "data.yaml", "classes.txt"):
            path = folder / name
            if path.is_file():
                if name.endswith(".txt"):
                    return [line.strip() for line in path.read_text().splitlines() if line.strip()]
                names = yaml.safe_load(path.read_text()).get("names")
                if isinstance(names, dict):
                    return [names[k] for k in sorted(names)]
                if isinstance(names, list):
                    return names
    return list(COCO_LABELS)


def load_label_set(images: Path, labels: Path) -> LabelSet:
    """Labels from a CSV (``alarmsieve.quality.labels``: bad rows become problem lines) or a YOLO folder."""
    if not images.is_dir():
        raise EvalError(f"--images {images}: not a folder")
    if labels.is_file():
        try:
            return read_labels_csv(images, labels)
        except LabelsError as exc:
            raise EvalError(str(exc)) from exc
    if labels.is_dir():
        return LabelSet(items=_yolo_labels(images, labels))
    raise EvalError(f"--labels {labels}: neither a CSV file nor a folder of YOLO label files")


def load_labelled_set(images: Path, labels: Path) -> list[LabelledImage]:
    """Strict: the first bad row of a CSV is an error (sets built by code, e.g. the robustness set)."""
    found = load_label_set(images, labels)
    if found.problems:
        raise EvalError(found.problems[0])
    return found.items


def _yolo_labels(images: Path, labels: Path) -> list[LabelledImage]:
    names = _class_names(labels)
    out = []
    for path in sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        label_file = labels / (path.stem + ".txt")
        objects: set[str] = set()
        areas: dict[str, float] = {}
        if label_file.is_file():
            for number, text in enumerate(label_file.read_text().splitlines(), start=1):
                if not text.strip():
                    continue
                try:
                    fields = text.split()
                    label = names[int(fields[0])]
                    objects.add(label)
                    if len(fields) >= 5:
                        area = float(fields[3]) * float(fields[4])
                        areas[label] = round(max(areas.get(label, 0.0), area), 6)
                except (ValueError, IndexError) as exc:
                    raise EvalError(f"{label_file} line {number}: expected 'class cx cy w h', got {text!r}") from exc
        out.append(LabelledImage(file=path.relative_to(images).as_posix(), objects=sorted(objects), areas=areas))
    if not out:
        raise EvalError(f"--images {images}: no JPEG, PNG, BMP or WebP files found")
    return out


def alert_labels(rules_yaml: str = DEFAULT_RULES_YAML, camera: str = "eval") -> list[str]:
    rules = load_rules({"/default.yaml": rules_yaml.encode()}, known_labels=COCO_LABELS)
    effective = rules.for_camera(camera)
    return sorted(label for label in COCO_LABELS if effective.policy(label).severity == "alert")


def repo_path(file: str) -> str:
    """Where an eval image goes in ``images``: its first folder is the camera, else camera ``eval``."""
    parts = file.split("/")
    return "/" + "/".join(parts) if len(parts) >= 2 else f"/eval/{file}"


def _threat_score(record: VerdictRecord, threat_labels: list[str]) -> float | None:
    """Highest score among threat-label detections the rules did not drop for their size."""
    scores = [d.score for d in record.detections if d.label in threat_labels and "min_box_area" not in d.why]
    return max(scores) if scores else None


def _group(
    name: str,
    outcomes: list[ImageOutcome],
    *,
    excluded: int = 0,
    events: list[EventOutcome] | None = None,
) -> GroupStats:
    threats = [o for o in outcomes if o.threat]
    calm = [o for o in outcomes if not o.threat]
    reached = sum(o.verdict in REACHES_A_PERSON for o in threats)
    return GroupStats(
        name=name,
        images=len(outcomes),
        threats=len(threats),
        calm=len(calm),
        alerts=sum(o.verdict == "alert" for o in outcomes),
        reviews=sum(o.verdict == "review" for o in outcomes),
        dismissed=sum(o.verdict == "dismiss" for o in outcomes),
        missed=proportion(sum(o.verdict not in REACHES_A_PERSON for o in threats), len(threats)),
        suppression=proportion(sum(o.verdict == "dismiss" for o in calm), len(calm)),
        alerts_on_calm=sum(o.verdict == "alert" for o in calm),
        reviews_on_calm=sum(o.verdict == "review" for o in calm),
        alerted=proportion(sum(o.verdict == "alert" for o in threats), len(threats)),
        recall=proportion(reached, len(threats)),
        excluded=excluded,
        events=proportion(sum(e.reached for e in events), len(events)) if events is not None else None,
        events_alerted=proportion(sum(e.alerted for e in events), len(events)) if events is not None else None,
    )


def _groups_by(
    key: str, outcomes: list[ImageOutcome], excluded: list[ImageOutcome], events: list[EventOutcome]
) -> list[GroupStats]:
    """One GroupStats per value of ``key`` (condition or sequence) among scored and excluded frames."""
    names = sorted({getattr(o, key) for o in [*outcomes, *excluded] if getattr(o, key) is not None})
    with_events = any(o.sequence is not None for o in outcomes)
    return [
        _group(
            name,
            [o for o in outcomes if getattr(o, key) == name],
            excluded=sum(getattr(o, key) == name for o in excluded),
            events=[e for e in events if getattr(e, key) == name] if with_events else None,
        )
        for name in names
    ]


def _outcome(
    item: LabelledImage, record: VerdictRecord | None, threat_labels: list[str], detect_ms: float | None
) -> ImageOutcome:
    threat = any(o in threat_labels for o in item.objects)
    areas = [item.areas[label] for label in threat_labels if label in item.areas]
    return ImageOutcome(
        file=item.file,
        objects=item.objects,
        threat=threat,
        verdict=record.verdict if record else "missing",
        reasons=record.reasons if record else ["no verdict was produced"],
        detections=[f"{d.label} {d.score:.2f}" for d in record.detections] if record else [],
        camera=repo_path(item.file).split("/")[1],
        threat_score=_threat_score(record, threat_labels) if record else None,
        threat_area=max(areas) if threat and areas else None,
        status=record.status if record else "missing",
        boxes=[
            OutcomeBox(label=d.label, score=d.score, box=d.box, kept=d.kept, too_small="min_box_area" in d.why)
            for d in record.detections
        ]
        if record
        else [],
        condition=item.condition,
        sequence=item.sequence,
        note=item.note,
        detect_ms=detect_ms,
    )


def curve(outcomes: list[ImageOutcome], thresholds: tuple[float, ...] = CURVE_THRESHOLDS) -> list[CurvePoint]:
    """Recall and suppression if threat labels alerted at each threshold with no review band; an image
    the detector could not judge (rejected, uniform, error) is never suppressed."""
    threats = [o for o in outcomes if o.threat]
    calm = [o for o in outcomes if not o.threat]
    points = []
    for t in thresholds:
        caught = sum(1 for o in threats if o.threat_score is not None and o.threat_score >= t)
        quiet = sum(1 for o in calm if o.status == "ok" and (o.threat_score is None or o.threat_score < t))
        points.append(
            CurvePoint(
                threshold=t,
                recall=round(caught / len(threats), 6) if threats else None,
                suppression=round(quiet / len(calm), 6) if calm else None,
            )
        )
    return points


def score(
    items: list[LabelledImage],
    verdicts: dict[str, VerdictRecord],
    threat_labels: list[str],
    *,
    min_threat_area: float = 0.005,
    detect_ms: dict[str, float] | None = None,
) -> EvalReport:
    """Score the verdicts of ``items``; an item whose person label is empty is listed as excluded only."""
    timings = detect_ms or {}
    every = [_outcome(i, verdicts.get(repo_path(i.file)), threat_labels, timings.get(repo_path(i.file))) for i in items]
    outcomes = [o for o, item in zip(every, items, strict=True) if item.labelled]
    excluded = [o for o, item in zip(every, items, strict=True) if not item.labelled]
    events = find_events(outcomes)
    times = [o.detect_ms for o in every if o.detect_ms is not None]
    threats = [o for o in outcomes if o.threat]
    calm = [o for o in outcomes if not o.threat]
    misses = [o for o in threats if o.verdict not in REACHES_A_PERSON]
    suppressed = [o for o in calm if o.verdict == "dismiss"]
    missed_p = proportion(len(misses), len(threats))
    supp_p = proportion(len(suppressed), len(calm))
    alerts_on_calm = sum(1 for o in calm if o.verdict == "alert")
    reviews_on_calm = sum(1 for o in calm if o.verdict == "review")
    labels = sorted({label for o in outcomes for label in o.objects})
    cameras = sorted({o.camera for o in outcomes})
    # the targets: threats large enough to be seen (unknown size counts), calm images with no vehicle either
    large = [o for o in threats if o.threat_area is None or o.threat_area >= min_threat_area]
    clear = [o for o in calm if not any(label in VEHICLE_LABELS for label in o.objects)]
    return EvalReport(
        images=len(outcomes),
        threat_labels=threat_labels,
        threats=len(threats),
        missed=len(misses),
        missed_rate=len(misses) / len(threats) if threats else 0.0,
        calm=len(calm),
        suppressed=len(suppressed),
        suppression=len(suppressed) / len(calm) if calm else 0.0,
        reviews_on_calm=reviews_on_calm,
        alerts_on_calm=alerts_on_calm,
        misses=misses,
        false_alarms=[o for o in calm if o.verdict == "alert"],
        outcomes=outcomes,
        missed_ci=(missed_p.low, missed_p.high) if missed_p.low is not None and missed_p.high is not None else None,
        suppression_ci=(supp_p.low, supp_p.high) if supp_p.low is not None and supp_p.high is not None else None,
        recall=proportion(len(threats) - len(misses), len(threats)),
        alerted=proportion(sum(o.verdict == "alert" for o in threats), len(threats)),
        reviewed_threats=[o for o in threats if o.verdict == "review"],
        missed_detail=missed_p,
        suppression_detail=supp_p,
        operator_load=OperatorLoad(
            alerts_on_calm=alerts_on_calm,
            reviews_on_calm=reviews_on_calm,
            looks=alerts_on_calm + reviews_on_calm,
            per_100_calm=round(100 * (alerts_on_calm + reviews_on_calm) / len(calm), 2) if calm else None,
        ),
        per_label=[_group(label, [o for o in outcomes if label in o.objects]) for label in labels],
        per_camera=[_group(camera, [o for o in outcomes if o.camera == camera]) for camera in cameras],
        curve=curve(outcomes),
        min_threat_area=min_threat_area,
        large_threat_recall=proportion(sum(o.verdict in REACHES_A_PERSON for o in large), len(large)),
        large_threat_alerted=proportion(sum(o.verdict == "alert" for o in large), len(large)),
        clear_calm_suppression=proportion(sum(o.verdict == "dismiss" for o in clear), len(clear)),
        per_condition=_groups_by("condition", outcomes, excluded, events),
        per_sequence=_groups_by("sequence", outcomes, excluded, events),
        events=events,
        event_recall=proportion(sum(e.reached for e in events), len(events)) if events else None,
        event_alerted=proportion(sum(e.alerted for e in events), len(events)) if events else None,
        excluded=excluded,
        detect_ms_mean=round(statistics.fmean(times), 2) if times else None,
        detect_ms_median=round(statistics.median(times), 2) if times else None,
        detect_ms_frames=len(times),
    )


def run_eval(
    images: Path,
    labels: Path,
    *,
    base: Settings,
    threat_labels: list[str] | None = None,
    progress: object | None = None,
    pipelines_dir: Path | None = None,
    on_workspace: Callable[[Path], None] | None = None,
    detect_args: list[str] | None = None,
    min_threat_area: float = 0.005,
    items: list[LabelledImage] | None = None,
    label_set: LabelSet | None = None,
) -> EvalReport:
    """Run validate, detect and assess on the set in a private workspace and score the verdicts.

    ``detect_args`` are appended to the detect stage's command (e.g. ``["--tiling", "on"]``); ``items``
    or ``label_set`` (read beforehand, with its problem lines) replace the labels read from ``labels``.
    Frames of a sequence arrive in time order (every sequence's n-th frame in the n-th commit, the
    pipelines run after each), so each is judged, as from a live camera, knowing only its camera's
    earlier frames (bursts)."""
    from alarmsieve.pps.spec import load_spec_file
    from alarmsieve.workspace import Workspace, default_pipelines_dir

    if label_set is None:
        label_set = LabelSet(items=items) if items is not None else load_label_set(images, labels)
    items = label_set.items
    threat_labels = threat_labels or alert_labels()
    with tempfile.TemporaryDirectory(prefix="alarmsieve-eval-") as tmp:
        settings = base.model_copy(update={"home": Path(tmp), "catalog_url": None, "object_store": None})
        ws = Workspace(settings, must_exist=False)
        folder = pipelines_dir or default_pipelines_dir()
        specs_dir = Path(tmp) / "pipelines"
        specs_dir.mkdir()
        names = list(EVAL_PIPELINES)
        for name in names:  # and the pipelines they read from (validate also reads video frames)
            spec = folder / f"{name}.json"
            if not spec.is_file():
                raise EvalError(f"eval needs the {name} pipeline spec at {spec}")
            for repo in load_spec_file(spec).input_repos():
                if repo not in names and (folder / f"{repo}.json").is_file():
                    names.append(repo)
        for name in names:
            spec = folder / f"{name}.json"
            if name == "detect" and detect_args:
                data = json.loads(spec.read_text())
                data["transform"]["cmd"] = [*data["transform"]["cmd"], *detect_args]
                (specs_dir / spec.name).write_text(json.dumps(data, indent=2))
                load_spec_file(specs_dir / spec.name)
            else:
                (specs_dir / spec.name).write_bytes(spec.read_bytes())
        ws.init(pipelines_dir=specs_dir)
        with ws.runner(progress) as runner:  # type: ignore[arg-type]
            for number, batch in enumerate(arrival_batches(items)):
                builder = ws.pfs.start_commit("images", description=f"eval set {images} (arrival {number})")
                for item in batch:
                    builder.put_local_file(repo_path(item.file), images / item.file)
                builder.finish()
                if number == 0 and on_workspace:
                    on_workspace(Path(tmp))
                runner.run_until_idle()
        verdicts = {v.alarm: v for v in read_verdicts(ws.pfs)}
        report = score(items, verdicts, threat_labels, min_threat_area=min_threat_area, detect_ms=detect_times(ws))
        report.detect_args = list(detect_args or [])
        report.label_problems = list(label_set.problems)
        return report


def arrival_batches(items: list[LabelledImage]) -> list[list[LabelledImage]]:
    """Single frames all at once with each sequence's first frame; then each sequence's n-th frame
    (file names are times) in the n-th batch."""
    batches: list[list[LabelledImage]] = [[i for i in items if i.sequence is None]]
    by_sequence: dict[str, list[LabelledImage]] = {}
    for item in items:
        if item.sequence is not None:
            by_sequence.setdefault(item.sequence, []).append(item)
    for frames in by_sequence.values():
        for rank, item in enumerate(sorted(frames, key=lambda i: i.file)):
            if rank >= len(batches):
                batches.append([])
            batches[rank].append(item)
    return [b for b in batches if b]


def detect_times(ws: Workspace) -> dict[str, float]:
    """Alarm path -> the detect stage's ``inference_ms``, from every detections record that has one."""
    pfs = ws.pfs
    if not pfs.repo_exists("detect") or pfs.head("detect") is None:
        return {}
    out: dict[str, float] = {}
    for info in pfs.walk("detect", "master"):
        if not info.path.endswith("/" + DETECTIONS_FILE) or info.sha256 is None:
            continue
        try:
            record = DetectionsRecord.model_validate_json(pfs.objects.get_bytes(info.sha256))
        except ValidationError:  # another detect stage's record: no timing from it
            continue
        if record.inference_ms is not None:
            out[record.meta.alarm] = record.inference_ms
    return out
