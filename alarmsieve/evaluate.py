"""``alarmsieve eval``: run the pipeline on a labelled set and count missed threats and suppression.

A threat image is one whose labels include a label the rules alert on (person by default). A threat
is *missed* when its verdict is not ``alert``; a calm image is *suppressed* when its verdict is
``dismiss`` (a ``review`` costs an operator's look, so it is counted as load, not as suppression).
The run happens in a private temporary workspace: nothing is notified, the user's data is untouched.
"""

from __future__ import annotations

import csv
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import BaseModel

from alarmsieve.config import Settings
from alarmsieve.rules import DEFAULT_RULES_YAML, load_rules
from alarmsieve.stages.records import VerdictRecord
from alarmsieve.verdicts import read_verdicts
from alarmsieve.vision.models import COCO_LABELS

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
EVAL_PIPELINES = ("validate", "detect", "assess")


class EvalError(ValueError):
    pass


class LabelledImage(BaseModel):
    file: str  # relative to the images folder
    objects: list[str]


class ImageOutcome(BaseModel):
    file: str
    objects: list[str]
    threat: bool
    verdict: str
    reasons: list[str]
    detections: list[str]


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
            if label_file.is_file():
                for number, text in enumerate(label_file.read_text().splitlines(), start=1):
                    if not text.strip():
                        continue
                    try:
                        objects.add(names[int(text.split()[0])])
                    except (ValueError, IndexError) as exc:
                        raise EvalError(
                            f"{label_file} line {number}: expected 'class cx cy w h', got {text!r}"
                        ) from exc
            out.append(LabelledImage(file=path.relative_to(images).as_posix(), objects=sorted(objects)))
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


def score(items: list[LabelledImage], verdicts: dict[str, VerdictRecord], threat_labels: list[str]) -> EvalReport:
    outcomes = []
    for item in items:
        record = verdicts.get(repo_path(item.file))
        threat = any(o in threat_labels for o in item.objects)
        outcomes.append(
            ImageOutcome(
                file=item.file,
                objects=item.objects,
                threat=threat,
                verdict=record.verdict if record else "missing",
                reasons=record.reasons if record else ["no verdict was produced"],
                detections=[f"{d.label} {d.score:.2f}" for d in record.detections] if record else [],
            )
        )
    threats = [o for o in outcomes if o.threat]
    calm = [o for o in outcomes if not o.threat]
    misses = [o for o in threats if o.verdict != "alert"]
    suppressed = [o for o in calm if o.verdict == "dismiss"]
    return EvalReport(
        images=len(outcomes),
        threat_labels=threat_labels,
        threats=len(threats),
        missed=len(misses),
        missed_rate=len(misses) / len(threats) if threats else 0.0,
        calm=len(calm),
        suppressed=len(suppressed),
        suppression=len(suppressed) / len(calm) if calm else 0.0,
        reviews_on_calm=sum(1 for o in calm if o.verdict == "review"),
        alerts_on_calm=sum(1 for o in calm if o.verdict == "alert"),
        misses=misses,
        false_alarms=[o for o in calm if o.verdict == "alert"],
        outcomes=outcomes,
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
) -> EvalReport:
    from alarmsieve.pps.spec import load_spec_file
    from alarmsieve.workspace import Workspace, default_pipelines_dir

    items = load_labelled_set(images, labels)
    threat_labels = threat_labels or alert_labels()
    with tempfile.TemporaryDirectory(prefix="alarmsieve-eval-") as tmp:
        settings = base.model_copy(update={"home": Path(tmp), "catalog_url": None, "object_store": None})
        ws = Workspace(settings, must_exist=False)
        folder = pipelines_dir or default_pipelines_dir()
        specs_dir = Path(tmp) / "pipelines"
        specs_dir.mkdir()
        for name in EVAL_PIPELINES:
            spec = folder / f"{name}.json"
            if not spec.is_file():
                raise EvalError(f"eval needs the {name} pipeline spec at {spec}")
            load_spec_file(spec)
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
        return score(items, verdicts, threat_labels)
