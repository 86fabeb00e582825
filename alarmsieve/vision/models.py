"""Detector model files: the catalogue, where to find them, and a verified download.

The model is never fetched implicitly: a pipeline worker must run the exact bytes the operator
provisioned, so downloading only happens when the caller asks for it, and every file taken from a
shared folder or the cache must match the catalogue's sha256.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

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

LABEL_SETS: dict[str, tuple[str, ...]] = {"coco80": COCO_LABELS}


class ModelEntry(BaseModel):
    """One downloadable model, pinned by content hash so that every worker runs the same bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    filename: str
    url: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(gt=0)
    input_size: int = Field(default=416, gt=0)
    labels: Literal["coco80"] = "coco80"
    licence: str
    source: str

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
