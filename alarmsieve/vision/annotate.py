"""Draw detections onto a frame for the notification snapshot, and encode it as JPEG."""

from __future__ import annotations

import cv2
import numpy as np

from alarmsieve.vision.detector import Detection, check_bgr

_RED = (0, 0, 255)  # BGR: the labels the alarm rule cares about
_NEUTRAL = (200, 200, 200)  # light grey: context, not the reason for the alarm
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    b, g, r = background
    return (0, 0, 0) if 0.114 * b + 0.587 * g + 0.299 * r > 140 else (255, 255, 255)


def annotate(image_bgr: np.ndarray, detections: list[Detection], *, highlight: set[str] | None = None) -> np.ndarray:
    """A copy of the frame with each box and a "label 0.87" tag; labels in ``highlight`` are red."""
    check_bgr(image_bgr)
    out = image_bgr.copy()
    h, w = out.shape[:2]
    # Scale strokes with the frame so a 4K snapshot stays readable when shrunk into an e-mail.
    thickness = max(1, round(min(h, w) / 300))
    font_scale = max(0.4, min(h, w) / 1000)
    wanted = highlight or set()
    # Neutral boxes first so a highlighted box is never painted over.
    for det in sorted(detections, key=lambda d: (d.label in wanted, d.score)):
        colour = _RED if det.label in wanted else _NEUTRAL
        x1, y1, x2, y2 = (round(v) for v in det.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness, cv2.LINE_AA)
        text = f"{det.label} {det.score:.2f}"
        (tw, th), base = cv2.getTextSize(text, _FONT, font_scale, max(1, thickness - 1))
        # Tag above the box, or inside its top edge when the box touches the top of the frame.
        top = y1 - th - base - 2 if y1 - th - base - 2 >= 0 else y1
        left = min(max(0, x1), max(0, w - tw - 2))
        cv2.rectangle(out, (left, top), (left + tw + 2, top + th + base + 2), colour, cv2.FILLED)
        cv2.putText(
            out,
            text,
            (left + 1, top + th + 1),
            _FONT,
            font_scale,
            _text_colour(colour),
            max(1, thickness - 1),
            cv2.LINE_AA,
        )
    return out


def encode_jpeg(bgr: np.ndarray, quality: int = 85) -> bytes:
    """JPEG bytes of a BGR frame; quality 85 keeps snapshots small enough for e-mail without visible loss."""
    check_bgr(bgr)
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be within 1..100, got {quality}")
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {bgr.shape} frame as JPEG")
    return buf.tobytes()
