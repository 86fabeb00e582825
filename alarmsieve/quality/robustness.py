"""The robustness set: real labelled photos degraded the way camera alarms are, seeded and reproducible.

Each condition is a function of (BGR frame, numpy Generator) -> BGR frame. ``make_robustness_set``
writes ``OUT/<condition>/<source>__<name>.jpg`` for every chosen photo and condition (plus
``original``), ``OUT/labels.csv`` (``file,objects,condition,source``: ``alarmsieve eval`` reads it and
its first folder, the condition, is the camera, so the per-camera figures are the per-condition ones)
and ``OUT/manifest.json``. The same seed and photos give byte-identical files.

Threat photos must stay alerted under every condition; calm photos, and their glare, shadow and noise
variants (the classic false-alarm triggers), must stay dismissed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict

from alarmsieve.errors import AlarmsieveError

Condition = Callable[[np.ndarray, np.random.Generator], np.ndarray]


class RobustnessError(AlarmsieveError):
    pass


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0, 255).astype(np.uint8)


def night(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dark, gamma-crushed, a little blue, with sensor noise (gain turned up)."""
    f = img.astype(np.float32) / 255.0
    f = np.power(f, rng.uniform(1.4, 1.8)) * rng.uniform(0.3, 0.45)
    f[..., 0] *= 1.1  # sodium-free night: slightly blue
    f = f * 255.0 + rng.normal(0.0, rng.uniform(5.0, 9.0), f.shape)
    return _u8(f)


def infrared(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Monochrome, high contrast (CLAHE), with some grain: an IR-illuminated night camera."""
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    clahe = cv2.createCLAHE(clipLimit=float(rng.uniform(2.5, 4.0)), tileGridSize=(8, 8))
    grey = clahe.apply(grey).astype(np.float32)
    grey = grey + rng.normal(0.0, 4.0, grey.shape)
    return cv2.cvtColor(_u8(grey), cv2.COLOR_GRAY2BGR)


def motion_blur(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Linear blur over about 2 % of the frame width, in a random direction."""
    length = max(3, round(img.shape[1] * rng.uniform(0.015, 0.025)) | 1)
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0
    angle = float(rng.uniform(0, 180))
    rot = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), angle, 1.0)
    kernel = cv2.warpAffine(kernel, rot, (length, length))
    kernel /= max(float(kernel.sum()), 1e-6)
    return cv2.filter2D(img, -1, kernel)


def heavy_jpeg(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """JPEG at quality 6..12: blocks and ringing, as from a congested uplink."""
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(6, 13))])
    if not ok:
        raise RobustnessError("OpenCV could not encode a JPEG")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def low_resolution(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Down to a quarter or a third of the size and back up: a sub-stream snapshot."""
    h, w = img.shape[:2]
    r = float(rng.uniform(0.25, 0.34))
    small = cv2.resize(img, (max(8, int(w * r)), max(8, int(h * r))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def rain_snow(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rain streaks (slanted bright lines, slightly blurred) or snow flakes, picked at random."""
    h, w = img.shape[:2]
    layer = np.zeros((h, w), np.float32)
    if rng.random() < 0.6:
        drops = int(h * w / 900)
        angle = math.radians(rng.uniform(70, 110))
        for _ in range(drops):
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            n = float(rng.uniform(0.02, 0.05) * h)
            x2, y2 = int(x + n * math.cos(angle)), int(y + n * math.sin(angle))
            cv2.line(layer, (x, y), (x2, y2), float(rng.uniform(0.5, 0.9)), 1, cv2.LINE_AA)
        layer = cv2.GaussianBlur(layer, (3, 3), 0)
    else:
        for _ in range(int(h * w / 600)):
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            cv2.circle(layer, (x, y), int(rng.integers(1, 4)), float(rng.uniform(0.6, 1.0)), -1, cv2.LINE_AA)
        layer = cv2.GaussianBlur(layer, (3, 3), 0)
    f = img.astype(np.float32) * 0.9
    f = f + (220.0 - f) * layer[..., None]
    return _u8(f)


def headlight_glare(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One or two headlights: bright radial blooms with a horizontal flare streak, clipping to white."""
    h, w = img.shape[:2]
    f = img.astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    glow = np.zeros((h, w), np.float32)
    cy = rng.uniform(0.45, 0.85) * h
    cx = rng.uniform(0.15, 0.85) * w
    lights = [(cx, cy)] if rng.random() < 0.5 else [(cx - 0.06 * w, cy), (cx + 0.06 * w, cy)]
    radius = rng.uniform(0.08, 0.15) * max(h, w)
    for lx, ly in lights:
        d2 = (xx - lx) ** 2 + (yy - ly) ** 2
        glow += np.exp(-d2 / (2 * radius**2))
        glow += 0.5 * np.exp(-((yy - ly) ** 2) / (2 * (0.01 * h) ** 2) - (xx - lx) ** 2 / (2 * (0.4 * w) ** 2))
    glow = np.clip(glow, 0, 1.5)
    tint = np.array([235.0, 245.0, 255.0], np.float32)
    f = f + glow[..., None] * tint * rng.uniform(0.8, 1.1)
    return _u8(f)


def moving_shadows(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A large soft-edged shadow (a tree or a cloud) across the frame: 40..60 % darker under it."""
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.float32)
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
    points = []
    for k in range(int(rng.integers(5, 9))):
        a = 2 * math.pi * k / 8 + rng.uniform(-0.3, 0.3)
        r = rng.uniform(0.25, 0.55) * max(h, w)
        points.append((int(cx + r * math.cos(a)), int(cy + r * math.sin(a))))
    cv2.fillPoly(mask, [np.array(points, np.int32)], 1.0)
    k = max(3, int(0.05 * max(h, w)) | 1)
    mask = cv2.GaussianBlur(mask, (k, k), 0)
    darken = 1.0 - mask * rng.uniform(0.4, 0.6)
    return _u8(img.astype(np.float32) * darken[..., None])


CONDITIONS: dict[str, Condition] = {
    "night": night,
    "infrared": infrared,
    "motion_blur": motion_blur,
    "heavy_jpeg": heavy_jpeg,
    "low_resolution": low_resolution,
    "rain_snow": rain_snow,
    "headlight_glare": headlight_glare,
    "moving_shadows": moving_shadows,
}
ORIGINAL = "original"


class RobustnessSource(BaseModel):
    """A labelled set to draw photos from (``alarmsieve eval`` formats: labels CSV or YOLO folder)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    images: Path
    labels: Path
    limit: int | None = None  # a seeded sample of at most this many photos


class RobustnessItem(BaseModel):
    file: str
    objects: list[str]
    condition: str
    source: str


class RobustnessManifest(BaseModel):
    seed: int
    conditions: list[str]
    threat_labels: list[str]
    min_threat_area: float
    sources: list[RobustnessSource]
    items: list[RobustnessItem]


def _rng(seed: int, condition: str, key: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}/{condition}/{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def choose_photos(source: RobustnessSource, *, seed: int, threat_labels: list[str], min_threat_area: float):
    """The photos of a source: threats whose largest threat box is >= ``min_threat_area`` (when box sizes
    are known) and calm photos; threats too small to be seen are left out. A seeded sample if ``limit``."""
    from alarmsieve.evaluate import load_labelled_set

    items = load_labelled_set(source.images, source.labels)
    chosen = []
    for item in items:
        threat_areas = [item.areas[label] for label in threat_labels if label in item.areas]
        is_threat = any(o in threat_labels for o in item.objects)
        if is_threat and threat_areas and max(threat_areas) < min_threat_area:
            continue
        chosen.append(item)
    if source.limit is not None and len(chosen) > source.limit:
        rng = np.random.default_rng(seed)
        picked = sorted(rng.choice(len(chosen), size=source.limit, replace=False).tolist())
        chosen = [chosen[i] for i in picked]
    return chosen


def make_robustness_set(
    out: Path,
    sources: list[RobustnessSource],
    *,
    seed: int = 0,
    conditions: list[str] | None = None,
    threat_labels: tuple[str, ...] = ("person",),
    min_threat_area: float = 0.005,
    include_original: bool = True,
) -> RobustnessManifest:
    names = list(conditions) if conditions else list(CONDITIONS)
    unknown = [c for c in names if c not in CONDITIONS]
    if unknown:
        raise RobustnessError(f"unknown condition(s) {', '.join(unknown)}; known: {', '.join(CONDITIONS)}")
    if out.exists() and any(out.iterdir()):
        raise RobustnessError(f"{out} is not empty: give a new or empty folder")
    if not sources:
        raise RobustnessError("no source photos: give at least one --images/--labels pair")
    out.mkdir(parents=True, exist_ok=True)
    all_conditions = ([ORIGINAL] if include_original else []) + names
    items: list[RobustnessItem] = []
    for source in sources:
        if "/" in source.name or not source.name:
            raise RobustnessError(f"source name {source.name!r}: must be a non-empty name without '/'")
        photos = choose_photos(source, seed=seed, threat_labels=list(threat_labels), min_threat_area=min_threat_area)
        for photo in photos:
            image = cv2.imread(str(source.images / photo.file), cv2.IMREAD_COLOR)
            if image is None:
                raise RobustnessError(f"{source.images / photo.file}: not an image OpenCV can read")
            stem = f"{source.name}__{Path(photo.file).with_suffix('').as_posix().replace('/', '__')}.jpg"
            for condition in all_conditions:
                frame = image if condition == ORIGINAL else CONDITIONS[condition](image, _rng(seed, condition, stem))
                ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 92])
                if not ok:
                    raise RobustnessError(f"could not encode {condition}/{stem}")
                (out / condition).mkdir(exist_ok=True)
                (out / condition / stem).write_bytes(buf.tobytes())
                items.append(
                    RobustnessItem(
                        file=f"{condition}/{stem}", objects=photo.objects, condition=condition, source=source.name
                    )
                )
    with (out / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "objects", "condition", "source"])
        for item in items:
            writer.writerow([item.file, ";".join(item.objects), item.condition, item.source])
    manifest = RobustnessManifest(
        seed=seed,
        conditions=all_conditions,
        threat_labels=list(threat_labels),
        min_threat_area=min_threat_area,
        sources=sources,
        items=items,
    )
    (out / "manifest.json").write_text(json.dumps(manifest.model_dump(mode="json"), indent=1) + "\n")
    return manifest


def load_manifest(folder: Path) -> RobustnessManifest:
    path = folder / "manifest.json"
    if not path.is_file():
        raise RobustnessError(
            f"{path} not found: make the set first with `alarmsieve quality robustness make {folder}`"
        )
    try:
        return RobustnessManifest.model_validate_json(path.read_text())
    except ValueError as exc:
        raise RobustnessError(f"{path}: not a robustness manifest: {exc}") from exc
