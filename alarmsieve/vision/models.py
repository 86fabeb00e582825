"""Detector model files: the catalogue, where to find them, and a verified download.

The model is never fetched implicitly: a pipeline worker must run the exact bytes the operator
provisioned, so downloading only happens when the caller asks for it, and every file taken from a
shared folder or the cache must match the catalogue's sha256.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import numpy as np

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator

log = logging.getLogger(__name__)

COCO_LABELS: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

LABEL_SETS: dict[str, tuple[str, ...]] = {"coco80": COCO_LABELS, "person": ("person",)}

# How a backend decodes the model's outputs (one module per family in ``vision.backends``):
# yolox: [1, N, 5 + classes] rows per grid cell (cx, cy, log w, log h, objectness, class scores);
# gfl: per stride, class scores + 4 x 8 distance bins (NanoDet, PicoDet without post-processing);
# paddle_nms: PaddleDetection's export with NMS inside ([K, 6] class, score, x1, y1, x2, y2).
DecoderType = Literal["yolox", "gfl", "paddle_nms"]


class Preprocess(BaseModel):
    """How a frame becomes the model's input: the resize, the padding, the channel order and the
    normalisation ``(pixel - mean) / std`` on 0-255 values in the model's channel order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    resize: Literal["letterbox", "letterbox_centre", "stretch"] = "letterbox"  # letterbox: top-left
    pad: int = Field(default=114, ge=0, le=255)
    colour: Literal["bgr", "rgb"] = "bgr"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


IMAGENET_RGB = Preprocess(resize="stretch", colour="rgb", mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))


class Calibration(BaseModel):
    """A monotone piecewise-linear map from a model's raw score to "probability this is a real
    object": the ensemble compares models on this scale. ``points`` are (raw, probability) knots from
    raw 0 to raw 1; the default is the identity. The numbers are fitted on labelled frames."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    points: tuple[tuple[float, float], ...] = ((0.0, 0.0), (1.0, 1.0))

    @model_validator(mode="after")
    def _monotone(self) -> Calibration:
        xs = [x for x, _ in self.points]
        ys = [y for _, y in self.points]
        if len(self.points) < 2 or xs[0] != 0.0 or xs[-1] != 1.0:
            raise ValueError("calibration points must start at raw score 0 and end at raw score 1")
        if any(b <= a for a, b in itertools.pairwise(xs)):
            raise ValueError(f"calibration raw scores must increase strictly, got {xs}")
        if any(b < a for a, b in itertools.pairwise(ys)) or not all(0.0 <= y <= 1.0 for y in ys):
            raise ValueError(f"calibrated scores must lie in [0, 1] and never decrease, got {ys}")
        return self

    def apply(self, raw: float) -> float:
        import numpy as np  # here, not at module import: the CLI reads the catalogue and should start fast

        xs, ys = zip(*self.points, strict=True)
        return float(np.interp(raw, xs, ys))

    def apply_many(self, raw: np.ndarray) -> np.ndarray:
        import numpy as np

        xs, ys = zip(*self.points, strict=True)
        return np.interp(raw, xs, ys)


class ModelEntry(BaseModel):
    """One downloadable model, pinned by content hash so that every worker runs the same bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    filename: str
    url: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(gt=0)
    type: DecoderType = "yolox"
    input_size: int = Field(default=416, gt=0)
    labels: Literal["coco80", "person"] = "coco80"
    preprocess: Preprocess = Preprocess()
    # raw score -> YOLOX-Nano's scale (0.35 review, 0.5 alert with the default rules); NanoDet-m's read off
    # cctv-dev and checked on COCO128, the others provisional (docs/quality.md, "The cascade")
    calibration: Calibration = Calibration()
    licence: str
    source: str
    note: str = ""

    @property
    def label_names(self) -> tuple[str, ...]:
        return LABEL_SETS[self.labels]


CATALOGUE: dict[str, ModelEntry] = {
    "yolox-nano": ModelEntry(
        name="yolox-nano",
        filename="yolox_nano.onnx",
        url=(
            "https://raw.githubusercontent.com/hamacom2004jp/iinfer/"
            "c7f9a3c5216c6f8b3e8b35886f863dffa2dc0bf9/models/yolox_nano.onnx"
        ),
        sha256="d39bee73564e338080378b0ad567fbb40e818b55bbfaf971de82a0267ed16b8a",
        size_bytes=3_713_911,
        input_size=416,
        labels="coco80",
        licence="Apache-2.0",
        source=(
            "Megvii YOLOX-Nano weights, ONNX export in hamacom2004jp/iinfer at commit "
            "c7f9a3c5216c6f8b3e8b35886f863dffa2dc0bf9, path models/yolox_nano.onnx"
        ),
    ),
    "nanodet-m-416": ModelEntry(
        name="nanodet-m-416",
        filename="nanodet_m_416.onnx",
        url=(
            "https://raw.githubusercontent.com/Kazuhito00/MOT-Tracking-by-Detection-Pipeline/"
            "e50a76b8b430b778276e7fd04fd4cafd5d45eab2/Detector/nanodet/model/nanodet_m_416.onnx"
        ),
        sha256="08b62b9ee4a7878e7a64d6ef4faf3074322c033a0252c83a20f41b86c76e8146",
        size_bytes=3_802_805,
        type="gfl",
        input_size=416,
        labels="coco80",
        preprocess=Preprocess(
            resize="letterbox_centre", pad=0, colour="bgr", mean=(103.53, 116.28, 123.675), std=(57.375, 57.12, 58.395)
        ),
        calibration=Calibration(points=((0.0, 0.0), (0.4, 0.35), (0.55, 0.5), (1.0, 1.0))),
        licence="Apache-2.0",
        source=(
            "RangiLyu/nanodet NanoDet-m weights, ONNX export in Kazuhito00/MOT-Tracking-by-Detection-Pipeline "
            "(MIT; Apache-2.0 LICENSE in that folder) at commit e50a76b8b430b778276e7fd04fd4cafd5d45eab2, "
            "path Detector/nanodet/model/nanodet_m_416.onnx"
        ),
    ),
    "picodet-s-416": ModelEntry(
        name="picodet-s-416",
        filename="picodet_s_416_coco_legacy.onnx",
        url=(
            "https://raw.githubusercontent.com/hpc203/picodet-onnxruntime/"
            "dfe4d6cd0a18cd4126ee381e81df8a0b1e6ad97b/coco/picodet_s_416_coco.onnx"
        ),
        sha256="cdab77bdde16e4f76bec734c4e5791801d1739e4c7ec1995e0e110e04300d0c2",
        size_bytes=4_040_573,
        type="gfl",
        input_size=416,
        labels="coco80",
        preprocess=IMAGENET_RGB,
        calibration=Calibration(points=((0.0, 0.0), (0.5, 0.35), (0.65, 0.5), (1.0, 1.0))),
        licence="Apache-2.0",
        source=(
            "PaddleDetection PP-PicoDet-S (2021 release) weights, Paddle2ONNX export in hpc203/picodet-onnxruntime "
            "(no licence file of its own) at commit dfe4d6cd0a18cd4126ee381e81df8a0b1e6ad97b, "
            "path coco/picodet_s_416_coco.onnx"
        ),
    ),
    "picodet-xs-320": ModelEntry(
        name="picodet-xs-320",
        filename="picodet_xs_320_lcnet_postprocessed.onnx",
        url=(
            "https://raw.githubusercontent.com/kk-fenglai/Picodet/"
            "6c5596c5f2eaec194eb1bfc45b03036caff8719d/picodet_xs_320_lcnet_postprocessed.onnx"
        ),
        sha256="3b8e7687122d70b1615734827b19f28e24cde83cb59b4d27845a3566da4b8510",
        size_bytes=2_871_062,
        type="paddle_nms",
        input_size=320,
        labels="coco80",
        preprocess=IMAGENET_RGB,
        calibration=Calibration(points=((0.0, 0.0), (0.5, 0.35), (0.65, 0.5), (1.0, 1.0))),
        licence="Apache-2.0",
        source=(
            "PaddleDetection PP-PicoDet-XS LCNet, PaddleDetection's own export with post-processing, committed in "
            "kk-fenglai/Picodet (no licence file of its own) at commit 6c5596c5f2eaec194eb1bfc45b03036caff8719d"
        ),
        note=(
            "the path inside the repository (its root) was found in a code-search index of that commit, not "
            "fetched here: the sha256 check decides whether a download from this URL is the file"
        ),
    ),
    "person-light-192": ModelEntry(
        name="person-light-192",
        filename="light_person_detector_192.onnx",
        url=(
            "https://raw.githubusercontent.com/Kazuhito00/Person-Detection-using-RaspberryPi-CPU/"
            "fab8c0d1129b391e8aaf0a4e557dd5bb812e749f/model/model.onnx"
        ),
        sha256="4bf5f704cd3bd900645a4303e0934ede13d9fb2135058b38005f4c2886c68576",
        size_bytes=3_616_703,
        type="yolox",
        input_size=192,
        labels="person",
        calibration=Calibration(points=((0.0, 0.0), (0.45, 0.35), (0.6, 0.5), (1.0, 1.0))),
        licence="Apache-2.0",
        source=(
            "Kazuhito00/Person-Detection-using-RaspberryPi-CPU (Apache-2.0) at commit "
            "fab8c0d1129b391e8aaf0a4e557dd5bb812e749f, path model/model.onnx; its training data is not documented"
        ),
    ),
}


class ModelNotFoundError(RuntimeError):
    """No usable model file: the message lists every place tried and how to provide one."""


class ModelDownloadError(ModelNotFoundError):
    """The download was asked for but failed (HTTP error, network error)."""


class ModelChecksumError(RuntimeError):
    """A model file's bytes differ from the catalogue's sha256 or size."""


ModelSource = Literal["explicit", "model_dir", "cache", "download"]


@dataclass(frozen=True)
class ResolvedModel:
    entry: ModelEntry
    path: Path
    sha256: str
    source: ModelSource

    @property
    def matches_catalogue(self) -> bool:
        """False only for an explicitly passed custom model; other sources are verified."""
        return self.sha256 == self.entry.sha256


_CHUNK = 1 << 20
# Hashing 3.7 MB on every stage start adds up; (path, mtime, size) is what tells us the file changed.
_sha_cache: dict[tuple[str, int, int], str] = {}
_sha_lock = threading.Lock()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, cached in-process per (path, mtime, size)."""
    resolved = Path(path).resolve()
    st = resolved.stat()
    key = (str(resolved), st.st_mtime_ns, st.st_size)
    with _sha_lock:
        cached = _sha_cache.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with resolved.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    with _sha_lock:
        _sha_cache[key] = value
    return value


def _catalogue_entry(name: str) -> ModelEntry:
    try:
        return CATALOGUE[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(CATALOGUE))}") from None


def _verify(entry: ModelEntry, path: Path) -> str:
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise ModelChecksumError(
            f"model file {path} does not match the catalogue entry {entry.name!r}: "
            f"expected sha256 {entry.sha256}, got {actual}. Replace it with the file from {entry.url} "
            f"or delete it so that it can be fetched again."
        )
    return actual


def _how_to_get(entry: ModelEntry, cache_dir: Path) -> str:
    return (
        f"To provide it: set ALARMSIEVE_MODEL_DIR to a folder holding {entry.filename}, "
        f"pass --model PATH/TO/{entry.filename}, or allow the download into {cache_dir}. "
        f"The file is {entry.url} ({entry.size_bytes} bytes, sha256 {entry.sha256})."
    )


def locate_model(
    name: str = "yolox-nano",
    *,
    explicit_path: Path | None = None,
    model_dir: Path | None = None,
    cache_dir: Path | None = None,
    allow_download: bool = False,
    url: str | None = None,
    timeout: float = 60.0,
) -> ResolvedModel:
    """Find a model file: explicit path, then model_dir, then the cache, then (if allowed) download.

    ``model_dir`` and ``cache_dir`` default to the settings (``ALARMSIEVE_MODEL_DIR``,
    ``ALARMSIEVE_MODEL_CACHE``). An explicit path may hold a custom model: its sha256 is reported in
    the result instead of being enforced.
    """
    entry = _catalogue_entry(name)
    if model_dir is None or cache_dir is None:
        from alarmsieve.config import load_settings  # late: settings read the environment

        settings = load_settings()
        model_dir = settings.model_dir if model_dir is None else model_dir
        cache_dir = settings.model_cache if cache_dir is None else cache_dir
    cache_dir = Path(cache_dir).expanduser()

    if explicit_path is not None:
        path = Path(explicit_path).expanduser()
        if path.is_dir():
            path = path / entry.filename
        if not path.is_file():
            raise ModelNotFoundError(
                f"model file {path} given explicitly does not exist. " + _how_to_get(entry, cache_dir)
            )
        actual = sha256_file(path)
        if actual != entry.sha256:
            log.warning(
                "using custom model %s (sha256 %s) instead of the catalogue's %s (sha256 %s)",
                path,
                actual,
                entry.name,
                entry.sha256,
            )
        return ResolvedModel(entry, path.resolve(), actual, "explicit")

    tried: list[str] = []
    candidates: list[tuple[Path, ModelSource]] = []
    if model_dir is not None:
        candidates.append((Path(model_dir).expanduser() / entry.filename, "model_dir"))
    else:
        tried.append("no model folder configured (ALARMSIEVE_MODEL_DIR unset)")
    candidates.append((cache_dir / entry.filename, "cache"))
    for path, source in candidates:
        if path.is_file():
            return ResolvedModel(entry, path.resolve(), _verify(entry, path), source)
        tried.append(f"{path} ({source}: not found)")

    if not allow_download:
        raise ModelNotFoundError(
            f"model {entry.name!r} not found; looked at: {'; '.join(tried)}; downloading is not allowed. "
            + _how_to_get(entry, cache_dir)
        )
    try:
        path = download_model(entry, cache_dir, url=url, timeout=timeout)
    except ModelDownloadError as exc:
        raise ModelDownloadError(f"model {entry.name!r} not found (looked at: {'; '.join(tried)}) and {exc}") from exc
    return ResolvedModel(entry, path.resolve(), entry.sha256, "download")


def download_model(entry: ModelEntry, dest_dir: Path, *, url: str | None = None, timeout: float = 60.0) -> Path:
    """Stream ``entry`` into ``dest_dir``; the final name appears only once size and sha256 match."""
    source_url = url or entry.url
    dest_dir = Path(dest_dir).expanduser()
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / entry.filename
    # Same folder as the target so that os.replace is an atomic rename, never a cross-device copy.
    fd, tmp_name = tempfile.mkstemp(dir=dest_dir, prefix=f".{entry.filename}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out:
            try:
                with httpx.stream("GET", source_url, timeout=timeout, follow_redirects=True) as resp:
                    if resp.status_code != 200:
                        raise ModelDownloadError(
                            f"downloading {source_url} failed: HTTP {resp.status_code} "
                            f"{resp.reason_phrase}. Check the URL, or fetch the file by hand into {dest_dir} "
                            f"(sha256 {entry.sha256})."
                        )
                    for chunk in resp.iter_bytes(_CHUNK):
                        size += len(chunk)
                        if size > entry.size_bytes:
                            # Stop early: a wrong file must not fill the disk.
                            raise ModelChecksumError(
                                f"download from {source_url} is larger than the expected "
                                f"{entry.size_bytes} bytes for {entry.name!r}; not the catalogue's file"
                            )
                        digest.update(chunk)
                        out.write(chunk)
            except httpx.HTTPError as exc:
                raise ModelDownloadError(
                    f"downloading {source_url} failed: {type(exc).__name__}: {exc}. Check the network or "
                    f"fetch the file by hand into {dest_dir} (sha256 {entry.sha256})."
                ) from exc
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if size != entry.size_bytes or actual != entry.sha256:
            raise ModelChecksumError(
                f"download from {source_url} does not match the catalogue entry {entry.name!r}: "
                f"expected {entry.size_bytes} bytes with sha256 {entry.sha256}, got {size} bytes with "
                f"sha256 {actual}; nothing was saved"
            )
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("downloaded %s from %s to %s", entry.name, source_url, target)
    return target
