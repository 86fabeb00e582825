"""``alarmsieve tune``: thresholds that reach a target recall on a camera's labelled alarms, and their cost.

For each threat label, with ``n`` labelled threats on the camera(s):

- the alert threshold is the highest 0.01 step that still alerts on ``ceil(target_recall * n)`` of them;
- the review threshold is the highest 0.01 step at or below it that sends every threat the detector
  saw at all (``review_recall``, default all of them) to a person, never below the detector's floor;
- the cost is what those thresholds do to the calm alarms of the same camera(s): suppression (calm
  alarms dismissed), alerts and reviews on calm alarms, each with its 95 % Wilson interval, next to
  the same figures under the rules in force.

A threat the detector never found (no box of its label above the detect stage's score threshold)
cannot be reached by any threshold: the proposal says so, with how many, and how to get them back
(tiling, a lower ``detect --score-threshold``).
"""

from __future__ import annotations

import csv
import fnmatch
import math
import re
from pathlib import Path

import yaml
from pydantic import BaseModel

from alarmsieve.errors import AlarmsieveError
from alarmsieve.evaluate import ImageOutcome, LabelledImage, label_score
from alarmsieve.quality.stats import Proportion, proportion
from alarmsieve.rules import DEFAULT_RULES_YAML, load_rules
from alarmsieve.vision.models import COCO_LABELS

DETECTOR_FLOOR = 0.25  # the detect stage's default --score-threshold: nothing below it is ever seen


class TuneError(AlarmsieveError):
    pass


class Operating(BaseModel):
    """One set of thresholds and what it gives on the labelled alarms."""

    alert_threshold: float
    review_threshold: float
    recall_alert: Proportion  # threats alerted
    recall_person: Proportion  # threats alerted or sent to review: reach a person
    suppression: Proportion  # calm alarms dismissed
    alerts_on_calm: int
    reviews_on_calm: int


class LabelProposal(BaseModel):
    label: str
    threats: int
    calm: int
    never_detected: int  # threats with no box of this label at all: no threshold reaches them
    reachable_recall: float | None
    target_reached: bool
    current: Operating
    proposed: Operating
    note: str = ""


class TuneReport(BaseModel):
    target: str
    cameras: list[str]
    target_recall: float
    review_recall: float
    alarms: int
    labels: list[LabelProposal]
    rules_yaml: str


def match_cameras(target: str, cameras: list[str]) -> list[str]:
    """A camera id, a comma-separated list, a shell pattern (``north-*``) or ``all``/``*`` for the whole site."""
    if target in ("all", "*"):
        return sorted(cameras)
    out: set[str] = set()
    for part in (p.strip() for p in target.split(",") if p.strip()):
        out.update(c for c in cameras if fnmatch.fnmatchcase(c, part))
    return sorted(out)


def load_feedback(path: Path) -> list[LabelledImage]:
    """Operator feedback: a CSV ``file,objects`` where ``file`` is an alarm path (``/cam-1/0001.jpg``)."""
    if not path.is_file():
        raise TuneError(f"--labels {path}: not a file; give a CSV with the columns 'file' and 'objects'")
    out = []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "file" not in reader.fieldnames or "objects" not in reader.fieldnames:
            raise TuneError(f"--labels {path}: a CSV needs the columns 'file' and 'objects'")
        for line, row in enumerate(reader, start=2):
            file = (row["file"] or "").strip().lstrip("/")
            if file.count("/") < 1:
                raise TuneError(f"--labels {path} line {line}: {file!r} is not an alarm path like /cam-1/0001.jpg")
            objects = [o for o in re.split(r"[;|\s]+", (row["objects"] or "").strip()) if o]
            out.append(LabelledImage(file=file, objects=objects))
    if not out:
        raise TuneError(f"--labels {path}: no rows")
    return out


def _floor2(x: float) -> float:
    return math.floor(x * 100 + 1e-9) / 100


def _operate(
    threats: list[float | None], calm: list[tuple[float | None, bool]], alert: float, review: float
) -> Operating:
    def at(score: float | None, t: float) -> bool:
        return score is not None and score >= t

    return Operating(
        alert_threshold=round(alert, 4),
        review_threshold=round(review, 4),
        recall_alert=proportion(sum(at(s, alert) for s in threats), len(threats)),
        recall_person=proportion(sum(at(s, review) for s in threats), len(threats)),
        suppression=proportion(sum(ok and not at(s, review) for s, ok in calm), len(calm)),
        alerts_on_calm=sum(at(s, alert) for s, _ in calm),
        reviews_on_calm=sum((at(s, review) and not at(s, alert)) or not ok for s, ok in calm),
    )


def propose(
    outcomes: list[ImageOutcome],
    labels: list[str],
    *,
    target_recall: float = 1.0,
    review_recall: float = 1.0,
    current: dict[str, tuple[float, float]],
    floor: float = DETECTOR_FLOOR,
) -> list[LabelProposal]:
    if not 0.0 < target_recall <= 1.0 or not 0.0 < review_recall <= 1.0:
        raise TuneError("--target-recall and --review-recall must be within (0, 1]")
    proposals = []
    for label in labels:
        threat_scores = [label_score(o, label) for o in outcomes if label in o.objects]
        calm = [(label_score(o, label), o.status == "ok") for o in outcomes if not any(x in labels for x in o.objects)]
        n = len(threat_scores)
        cur_alert, cur_review = current[label]
        seen = sorted((s for s in threat_scores if s is not None), reverse=True)
        never = n - len(seen)
        note = ""
        if n == 0:
            alert = review = cur_alert
            reached = False
            note = f"no labelled {label} alarms on these cameras: nothing to tune, the rules in force are kept"
            review = cur_review
        else:
            need = math.ceil(target_recall * n - 1e-9)
            reached = need <= len(seen)
            if reached:
                alert = max(floor, _floor2(seen[need - 1]))
            else:
                alert = floor
                note = (
                    f"target recall {target_recall:.2f} is out of reach: {never} of {n} {label} alarms have no "
                    f"{label} box above the detector's floor {floor:.2f}; try detect --tiling on, or a lower "
                    "detect --score-threshold"
                )
            need_r = math.ceil(review_recall * n - 1e-9)
            review = max(floor, _floor2(seen[min(need_r, len(seen)) - 1])) if seen else floor
            review = min(review, alert)
        proposals.append(
            LabelProposal(
                label=label,
                threats=n,
                calm=len(calm),
                never_detected=never,
                reachable_recall=round(len(seen) / n, 6) if n else None,
                target_reached=reached,
                current=_operate(threat_scores, calm, cur_alert, cur_review),
                proposed=_operate(threat_scores, calm, alert, review),
                note=note,
            )
        )
    return proposals


def current_thresholds(rules_files: dict[str, bytes], camera: str, labels: list[str]) -> dict[str, tuple[float, float]]:
    rules = load_rules(rules_files, known_labels=COCO_LABELS)
    eff = rules.for_camera(camera)
    out = {}
    for label in labels:
        p = eff.policy(label)
        out[label] = (p.min_score, p.review_min_score if p.severity == "alert" else p.min_score)
    return out


def rules_yaml(cameras: list[str], proposals: list[LabelProposal], note: str) -> str:
    """A rules file with one override per camera; commit it to the rules repo (a camera may be in one file only)."""
    body = {
        "cameras": {
            camera: {
                "labels": {
                    p.label: {
                        "severity": "alert",
                        "min_score": p.proposed.alert_threshold,
                        "review_min_score": p.proposed.review_threshold,
                    }
                    for p in proposals
                    if p.threats
                }
            }
            for camera in cameras
        }
    }
    header = "".join(f"# {line}\n" for line in note.splitlines())
    return header + yaml.safe_dump(body, sort_keys=False)


def check_rules_yaml(text: str, base_files: dict[str, bytes]) -> None:
    """The proposed file must load together with the rules in force (unknown fields, clashes)."""
    files = {**base_files, "/tuned.yaml": text.encode()}
    load_rules(files, known_labels=COCO_LABELS)


def default_rules_files() -> dict[str, bytes]:
    return {"/default.yaml": DEFAULT_RULES_YAML.encode()}
