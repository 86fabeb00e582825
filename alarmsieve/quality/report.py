"""The eval report as one self-contained HTML file: figures with Wilson intervals, the recall vs
suppression curve over alert thresholds (inline SVG), and annotated thumbnails of every miss, every
false alarm and every review on a calm image."""

from __future__ import annotations

import base64
from pathlib import Path

import cv2
import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape

from alarmsieve.evaluate import CurvePoint, EvalReport, ImageOutcome
from alarmsieve.vision.annotate import annotate, encode_jpeg
from alarmsieve.vision.detector import Detection

THUMB_SIDE = 320
_W, _H, _PAD = 520, 360, 48


def thumbnail(path: Path, outcome: ImageOutcome, threat_labels: list[str], side: int = THUMB_SIDE) -> str | None:
    """A data: URI of the photo with its detections drawn (threat labels in red), at most ``side`` px."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        return None
    boxes = [Detection(label=b.label, class_id=0, score=b.score, box=b.box) for b in outcome.boxes]
    drawn = annotate(image, boxes, highlight=set(threat_labels))
    h, w = drawn.shape[:2]
    r = min(1.0, side / max(h, w))
    if r < 1.0:
        drawn = cv2.resize(drawn, (max(1, round(w * r)), max(1, round(h * r))), interpolation=cv2.INTER_AREA)
    return "data:image/jpeg;base64," + base64.b64encode(encode_jpeg(np.ascontiguousarray(drawn), 80)).decode()


def curve_svg(points: list[CurvePoint], operating: tuple[float, float] | None = None) -> str:
    """Recall (y) against suppression (x) as the alert threshold moves; each point is labelled with it."""
    usable = [p for p in points if p.recall is not None and p.suppression is not None]

    def xy(suppression: float, recall: float) -> tuple[float, float]:
        return (_PAD + suppression * (_W - 2 * _PAD), _H - _PAD - recall * (_H - 2 * _PAD))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" '
        'role="img" aria-label="recall against suppression over alert thresholds">',
        f'<rect x="{_PAD}" y="{_PAD}" width="{_W - 2 * _PAD}" height="{_H - 2 * _PAD}" fill="#fafafa" stroke="#999"/>',
    ]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x, _ = xy(tick, 0)
        _, y = xy(0, tick)
        parts.append(f'<line x1="{x:.1f}" y1="{_PAD}" x2="{x:.1f}" y2="{_H - _PAD}" stroke="#e3e3e3"/>')
        parts.append(f'<line x1="{_PAD}" y1="{y:.1f}" x2="{_W - _PAD}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        parts.append(f'<text x="{x:.1f}" y="{_H - _PAD + 16}" font-size="11" text-anchor="middle">{tick:.2f}</text>')
        parts.append(f'<text x="{_PAD - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{tick:.2f}</text>')
    parts.append(
        f'<text x="{_W / 2}" y="{_H - 10}" font-size="12" text-anchor="middle">'
        "suppression (calm images dismissed)</text>"
    )
    parts.append(
        f'<text x="14" y="{_H / 2}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 14 {_H / 2})">recall (threats alerted)</text>'
    )
    if usable:
        path = " ".join(
            f"{'M' if i == 0 else 'L'}{xy(p.suppression, p.recall)[0]:.1f},{xy(p.suppression, p.recall)[1]:.1f}"  # type: ignore[arg-type]
            for i, p in enumerate(usable)
        )
        parts.append(f'<path d="{path}" fill="none" stroke="#1f6feb" stroke-width="2"/>')
        for i, p in enumerate(usable):
            x, y = xy(p.suppression, p.recall)  # type: ignore[arg-type]
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="#1f6feb"><title>threshold {p.threshold:.3f}: '
                f"recall {p.recall:.3f}, suppression {p.suppression:.3f}</title></circle>"
            )
            if i % 4 == 0:
                parts.append(
                    f'<text x="{x + 5:.1f}" y="{y - 5:.1f}" font-size="10" fill="#555">{p.threshold:.2f}</text>'
                )
    if operating is not None:
        x, y = xy(*operating)
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="none" stroke="#d1242f" stroke-width="2">'
            "<title>the rules as run (with the review band)</title></circle>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


def render_html(report: EvalReport, images: Path, *, title: str = "alarmsieve eval") -> str:
    env = Environment(loader=PackageLoader("alarmsieve.quality", "templates"), autoescape=select_autoescape())
    operating = None
    alerted = report.alerted or report.recall  # the curve is alert-only: place the rules on it the same way
    supp = report.suppression_detail
    if alerted and alerted.rate is not None and supp and supp.rate is not None:
        operating = (supp.rate, alerted.rate)

    def cards(outcomes: list[ImageOutcome]) -> list[dict]:
        return [{"o": o, "src": thumbnail(images / o.file, o, report.threat_labels)} for o in outcomes]

    calm_reviews = [o for o in report.outcomes if not o.threat and o.verdict == "review"]
    return env.get_template("eval_report.html.j2").render(
        title=title,
        report=report,
        svg=curve_svg(report.curve, operating),
        misses=cards(report.misses),
        false_alarms=cards(report.false_alarms),
        calm_reviews=cards(calm_reviews),
        threat_reviews=cards(report.reviewed_threats),
    )


def write_html(report: EvalReport, images: Path, out: Path, *, title: str = "alarmsieve eval") -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(report, images, title=title), encoding="utf-8")
    return out
