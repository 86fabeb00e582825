"""Detector backends, one module per decode family, chosen by the catalogue entry's ``type`` (the way
Frigate picks a detector plugin): ``yolox``, ``gfl``, ``paddle_nms``."""

from __future__ import annotations

from collections.abc import Callable

from alarmsieve.vision.backends.base import (
    CPU,
    CUDA,
    DEFAULT_NMS_IOU,
    DEFAULT_SCORE_FLOOR,
    Detection,
    DetectorBackend,
    check_bgr,
    choose_providers,
)
from alarmsieve.vision.backends.gfl import GflBackend
from alarmsieve.vision.backends.paddle import PaddleNmsBackend
from alarmsieve.vision.backends.yolox import YoloxBackend
from alarmsieve.vision.models import ResolvedModel

DECODERS: dict[str, Callable[..., DetectorBackend]] = {
    "yolox": YoloxBackend,
    "gfl": GflBackend,
    "paddle_nms": PaddleNmsBackend,
}


def load_backend(model: ResolvedModel, **options: object) -> DetectorBackend:
    """The backend for ``model``'s decoder type; options (score_floor, nms_iou, threads, providers,
    strip_weights) go to its constructor."""
    try:
        factory = DECODERS[model.entry.type]
    except KeyError:
        raise ValueError(
            f"model {model.entry.name!r} has decoder type {model.entry.type!r}; known types: {', '.join(DECODERS)}"
        ) from None
    return factory(model, **options)


__all__ = [
    "CPU",
    "CUDA",
    "DECODERS",
    "DEFAULT_NMS_IOU",
    "DEFAULT_SCORE_FLOOR",
    "Detection",
    "DetectorBackend",
    "GflBackend",
    "PaddleNmsBackend",
    "YoloxBackend",
    "check_bgr",
    "choose_providers",
    "load_backend",
]
