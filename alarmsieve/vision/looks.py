"""What kind of frame a camera sent, and the second looks that help the detectors on it.

Security cameras send frames the detectors were never trained on: grey night infrared, thermal
(white-hot: people are bright blobs, the opposite of the dark silhouettes in photos), image-intensified
low light, and small low-resolution frames where a person is 20-60 px tall. ``frame_kind`` sorts a frame
by cheap pixel statistics; ``normalised`` and ``inverted`` give the detectors a second look at it, and
``upscaled_slices`` cuts a small frame into overlapping slices that are enlarged to the model's input, so
that a small person gets enough pixels (SAHI-style slicing).

The thresholds were read off the cctv-dev set and photos (docs/quality.md): a colour camera's frame has a
mean channel difference of 10 or more, a grey IR / thermal / intensified one under 6.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict

Slice = tuple[int, int, int, int]  # x1, y1, x2, y2 in frame pixels

MONO_CHROMA = 6.0  # mean |R-G| + |G-B| under this: a grey frame (IR, thermal, intensified)
DARK_MEAN = 60.0  # mean luminance under this: a dark frame
LOW_CONTRAST_STD = 32.0  # luminance standard deviation under this: a flat, low-contrast frame


class FrameKind(BaseModel):
    """Pixel statistics of a frame and what they say about it."""

    model_config = ConfigDict(frozen=True)

    tone: Literal["colour", "mono"]
    dark: bool
    low_contrast: bool
    width: int
    height: int
    chroma: float
    mean: float
    std: float

    def text(self) -> str:
        parts = [self.tone]
        if self.dark:
            parts.append("dark")
        if self.low_contrast:
            parts.append("low contrast")
        return " ".join(parts) + f" {self.width}x{self.height}"


def frame_kind(image_bgr: np.ndarray) -> FrameKind:
    """Classify a frame; reads a 4x-subsampled copy (a few hundred microseconds on a 1080p frame)."""
    small = image_bgr[::4, ::4]
    b, g, r = (small[:, :, i].astype(np.int16) for i in range(3))
    chroma = float((np.abs(r - g) + np.abs(g - b)).mean())
    grey = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_BGR2GRAY)
    mean, std = float(grey.mean()), float(grey.std())
    h, w = image_bgr.shape[:2]
    return FrameKind(
        tone="mono" if chroma < MONO_CHROMA else "colour",
        dark=mean < DARK_MEAN,
        low_contrast=std < LOW_CONTRAST_STD,
        width=w,
        height=h,
        chroma=round(chroma, 2),
        mean=round(mean, 2),
        std=round(std, 2),
    )


def normalised(image_bgr: np.ndarray, clip_limit: float = 3.0) -> np.ndarray:
    """Local contrast equalisation (CLAHE) of the luminance: lifts a dark or flat scene's detail."""
    grey = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
    equalised = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(8, 8)).apply(grey)
    return cv2.cvtColor(equalised, cv2.COLOR_GRAY2BGR)


def inverted(image_bgr: np.ndarray) -> np.ndarray:
    """The other polarity: a white-hot thermal person becomes a dark silhouette, as in daylight photos."""
    return cv2.bitwise_not(image_bgr)


def upscaled_slices(width: int, height: int, share: float = 0.6, per_side: int = 2) -> list[Slice]:
    """``per_side`` x ``per_side`` overlapping slices, each ``share`` of the frame's width and height.

    Each slice is fed to the detector at its full input size, so it is enlarged by about 1 / ``share``
    relative to the whole-frame pass; neighbouring slices overlap by ``2 * share - 1`` of a slice
    (0.2 with the defaults), so a person on a seam is whole in at least one slice.
    """
    if width < 1 or height < 1:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    if not 0.5 <= share < 1.0:
        raise ValueError(f"share must be within [0.5, 1), got {share}")
    sw, sh = max(1, int(width * share)), max(1, int(height * share))
    xs = np.linspace(0, width - sw, per_side).round().astype(int)
    ys = np.linspace(0, height - sh, per_side).round().astype(int)
    return [(int(x), int(y), int(x) + sw, int(y) + sh) for y in ys for x in xs]
