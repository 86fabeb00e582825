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
"""

from __future__ import annotations

import csv
import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import BaseModel

from alarmsieve.config import Settings
from alarmsieve.quality.stats import Proportion, proportion
from alarmsieve.rules import DEFAULT_RULES_YAML, load_rules
from alarmsieve.stages.records import VerdictRecord
from alarmsieve.verdicts import read_verdicts
from alarmsieve.vision.models import COCO_LABELS

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
EVAL_PIPELINES = ("validate", "detect", "assess")


class EvalError(ValueError):
    pass


VEHICLE_LABELS = ("bicycle", "car", "motorcycle", "bus", "truck")
CURVE_THRESHOLDS = tuple(round(0.25 + 0.025 * i, 3) for i in range(30))  # 0.25 (the detector's floor) .. 0.975


class LabelledImage(BaseModel):
    file: str  # relative to the images folder
    objects: list[str]
    # largest box per label as a fraction of the frame (YOLO labels only; empty when unknown)
    areas: dict[str, float] = {}


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


def load_labelled_set(images: Path, labels: Path) -> list[LabelledImage]:
    """Labels from a CSV (``file,objects[,note]``; objects split by ``;``, ``|`` or spaces) or a YOLO folder."""
    if not images.is_dir():
        raise EvalError(f"--images {images}: not a folder")
    if labels.is_file():
        out = []
        with labels.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "file" not in reader.fieldnames or "objects" not in reader.fieldnames:
                raise EvalError(f"--labels {labels}: a CSV needs the columns 'file' and 'objects'")
            for line, row in enumerate(reader, start=2):
                file = (row["file"] or "").strip()
                if not (images / file).is_file():
                    raise EvalError(f"--labels {labels} line {line}: {file!r} is not a file under {images}")
                objects = [o for o in re.split(r"[;|\s]+", (row["objects"] or "").strip()) if o]
                out.append(LabelledImage(file=file, objects=objects))
        return out
    if labels.is_dir():
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
                        raise EvalError(
                            f"{label_file} line {number}: expected 'class cx cy w h', got {text!r}"
                        ) from exc
            out.append(LabelledImage(file=path.relative_to(images).as_posix(), objects=sorted(objects), areas=areas))
        if not out:
            raise EvalError(f"--images {images}: no JPEG, PNG, BMP or WebP files found")
        return out
    raise EvalError(f"--labels {labels}: neither a CSV file nor a folder of YOLO label files")


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


def _group(name: str, outcomes: list[ImageOutcome]) -> GroupStats:
    threats = [o for o in outcomes if o.threat]
    calm = [o for o in outcomes if not o.threat]
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
) -> EvalReport:
    outcomes = []
    for item in items:
        record = verdicts.get(repo_path(item.file))
        threat = any(o in threat_labels for o in item.objects)
        areas = [item.areas[label] for label in threat_labels if label in item.areas]
        outcomes.append(
            ImageOutcome(
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
            )
        )
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
) -> EvalReport:
    """Run validate, detect and assess on the set in a private workspace and score the verdicts.

    ``detect_args`` are appended to the detect stage's command (e.g. ``["--tiling", "on"]``); ``items``
    replaces the labels read from ``labels`` (a subset, or a set built in memory)."""
    from alarmsieve.pps.spec import load_spec_file
    from alarmsieve.workspace import Workspace, default_pipelines_dir

    items = items if items is not None else load_labelled_set(images, labels)
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
        builder = ws.pfs.start_commit("images", description=f"eval set {images}")
        for item in items:
            builder.put_local_file(repo_path(item.file), images / item.file)
        builder.finish()
        if on_workspace:
            on_workspace(Path(tmp))
        with ws.runner(progress) as runner:  # type: ignore[arg-type]
            runner.run_until_idle()
        verdicts = {v.alarm: v for v in read_verdicts(ws.pfs)}
        report = score(items, verdicts, threat_labels, min_threat_area=min_threat_area)
        report.detect_args = list(detect_args or [])
        return report
