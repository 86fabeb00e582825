"""Turn uploaded bytes into a BGR frame, or reject them with a code a camera integrator can act on.

Camera uploads are untrusted: cheap checks (size, format, declared dimensions) run before any pixel
is decoded, so a hostile or broken file costs a header parse, not gigabytes of memory.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

import cv2
import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

RejectCode = Literal[
    "empty",
    "too_large",
    "not_an_image",
    "unsupported_format",
    "truncated",
    "undecodable",
    "too_small",
    "decompression_bomb",
]
ImageFormat = Literal["jpeg", "png", "bmp", "webp"]

# Pillow's format names; MPO is the multi-picture JPEG many phones and some cameras write.
_PIL_FORMATS: dict[str, ImageFormat] = {
    "JPEG": "jpeg",
    "MPO": "jpeg",
    "PNG": "png",
    "BMP": "bmp",
    "WEBP": "webp",
}
_ACCEPTED = "JPEG, PNG, BMP or WebP"

# Pillow's own bomb check fires inside Image.open for huge declared sizes and surfaces there as
# "cannot identify image file". decode_image checks the declared size itself (limits.max_pixels)
# before any pixel is decoded, with a clear reason, so Pillow's global check is switched off.
Image.MAX_IMAGE_PIXELS = None


class ImageRejected(Exception):
    """Bytes that are not a usable frame; ``code`` is stable for machines, ``message`` is for people."""

    def __init__(self, code: RejectCode, message: str) -> None:
        super().__init__(code, message)  # args stay (code, message) so the exception pickles
        self.code: RejectCode = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"


class ImageLimits(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_bytes: int = Field(default=25 * 1024 * 1024, gt=0, description="largest upload accepted")
    max_pixels: int = Field(default=50_000_000, gt=0, description="largest declared width*height decoded")
    min_side: int = Field(default=64, gt=0, description="smallest width or height worth detecting on")


@dataclass
class DecodedImage:
    bgr: np.ndarray
    width: int
    height: int
    format: ImageFormat
    exif_time: datetime | None


def _sniff_magic(data: bytes) -> str | None:
    """Format from the leading bytes; used only to explain files Pillow could not open."""
    if data.startswith(b"\xff\xd8"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"BM"):
        return "bmp"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"hevc", b"mif1", b"msf1", b"avif", b"avis"):
        return "HEIF/AVIF"
    if data.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL ")):
        return "JPEG XL"
    return None


def _looks_truncated(data: bytes, fmt: str | None, exc: BaseException) -> bool:
    """Whether a decode failure is explained by the file ending early (an interrupted upload)."""
    if "truncated" in str(exc).lower() or isinstance(exc, EOFError):
        return True
    if fmt == "jpeg":
        return not data.rstrip(b"\x00").endswith(b"\xff\xd9")  # no end-of-image marker
    if fmt == "png":
        return b"IEND" not in data[-32:]
    if fmt == "bmp" and len(data) >= 6:
        return struct.unpack_from("<I", data, 2)[0] > len(data)  # declared file size
    if fmt == "webp" and len(data) >= 8:
        return struct.unpack_from("<I", data, 4)[0] + 8 > len(data)  # declared RIFF size
    return False


def _broken(data: bytes, exc: BaseException) -> ImageRejected:
    fmt = _sniff_magic(data)
    name = fmt.upper() if fmt else "image"
    if _looks_truncated(data, fmt, exc):
        return ImageRejected(
            "truncated",
            f"the {name} file ends early ({len(data)} bytes received): the upload was probably cut off; "
            "send the whole file again",
        )
    return ImageRejected(
        "undecodable",
        f"the {name} data is corrupt and cannot be decoded ({exc}); check the camera's encoder or re-export "
        f"the frame as {_ACCEPTED}",
    )


def _unidentified(data: bytes) -> ImageRejected:
    fmt = _sniff_magic(data)
    if fmt in _PIL_FORMATS.values():
        return _broken(data, ValueError(f"{fmt.upper()} header is not valid"))
    if fmt is not None:
        return ImageRejected(
            "unsupported_format", f"{fmt} images are not accepted; send {_ACCEPTED} (set the camera to JPEG)"
        )
    head = data[:16]
    return ImageRejected(
        "not_an_image",
        f"the data is not a recognisable image (starts with {head!r}); send a {_ACCEPTED} file, "
        "not an HTML error page, text or video",
    )


def _parse_exif_datetime(value: object, offset: object, subsec: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    text = value.strip("\x00 ")
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S"):
        try:
            stamp = datetime.strptime(text[:19], fmt)
            break
        except ValueError:
            continue
    else:
        return None  # e.g. the "0000:00:00 00:00:00" of a camera whose clock was never set
    if isinstance(subsec, str) and subsec.strip("\x00 ").isdigit():
        stamp = stamp.replace(microsecond=int(subsec.strip("\x00 ")[:6].ljust(6, "0")))
    if isinstance(offset, str):
        off = offset.strip("\x00 ")
        if len(off) == 6 and off[0] in "+-" and off[3] == ":" and (off[1:3] + off[4:]).isdigit():
            delta = timedelta(hours=int(off[1:3]), minutes=int(off[4:]))
            stamp = stamp.replace(tzinfo=timezone(-delta if off[0] == "-" else delta))
    return stamp


def exif_time(im: Image.Image) -> datetime | None:
    """DateTimeOriginal, else DateTime; naive unless the file records an offset. Bad EXIF gives None."""
    try:
        exif = im.getexif()
        sub = exif.get_ifd(ExifTags.IFD.Exif)
        tag = ExifTags.Base
        return _parse_exif_datetime(
            sub.get(tag.DateTimeOriginal), sub.get(tag.OffsetTimeOriginal), sub.get(tag.SubsecTimeOriginal)
        ) or _parse_exif_datetime(exif.get(tag.DateTime), sub.get(tag.OffsetTime), sub.get(tag.SubsecTime))
    except Exception:
        return None  # EXIF is a hint for the timestamp, never a reason to reject the frame


def _to_bgr(im: Image.Image) -> np.ndarray:
    if im.mode.startswith("I"):  # 16-bit greyscale PNG: scale instead of letting convert() clip at 255
        grey = (np.asarray(im).astype(np.float32) / 257.0).clip(0, 255).astype(np.uint8)
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    if im.mode == "L":
        return cv2.cvtColor(np.asarray(im), cv2.COLOR_GRAY2BGR)
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        # Flatten onto white so transparent areas do not turn into black "objects".
        rgba = im.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        im = flat
    elif im.mode != "RGB":
        im = im.convert("RGB")
    return cv2.cvtColor(np.asarray(im), cv2.COLOR_RGB2BGR)


def decode_image(data: bytes, limits: ImageLimits = ImageLimits()) -> DecodedImage:
    """Validate and decode one uploaded frame to BGR uint8; raises ImageRejected with a code."""
    if not data:
        raise ImageRejected("empty", "the upload is empty (0 bytes); check the camera's upload settings")
    if len(data) > limits.max_bytes:
        raise ImageRejected(
            "too_large",
            f"the upload is {len(data)} bytes, over the limit of {limits.max_bytes}; "
            "lower the camera's resolution or JPEG quality",
        )
    try:
        # Image.open parses only the header; pixels are decoded later by load().
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageRejected(
            "decompression_bomb",
            f"the image declares more pixels than allowed ({exc}); refusing to decode it",
        ) from exc
    except UnidentifiedImageError as exc:
        raise _unidentified(data) from exc
    except Exception as exc:
        raise _broken(data, exc) from exc

    with im:
        fmt = _PIL_FORMATS.get(im.format or "")
        if fmt is None:
            raise ImageRejected(
                "unsupported_format",
                f"{im.format} images are not accepted; send {_ACCEPTED} (set the camera to JPEG)",
            )
        width, height = im.size
        if width * height > limits.max_pixels:
            raise ImageRejected(
                "decompression_bomb",
                f"the image declares {width}x{height} = {width * height} pixels, over the limit of "
                f"{limits.max_pixels}; refusing to decode it. Lower the camera's resolution",
            )
        if min(width, height) < limits.min_side:
            raise ImageRejected(
                "too_small",
                f"the image is {width}x{height}; both sides must be at least {limits.min_side} pixels "
                "to detect anything. Send the full frame, not a thumbnail",
            )
        try:
            im.load()
        except Image.DecompressionBombError as exc:
            raise ImageRejected("decompression_bomb", f"refusing to decode: {exc}") from exc
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, zlib.error...
            raise _broken(data, exc) from exc

        taken = exif_time(im)
        try:
            # Detections and snapshots should match what a person sees, so apply the EXIF rotation.
            upright = ImageOps.exif_transpose(im)
        except Exception:
            upright = im
        bgr = np.ascontiguousarray(_to_bgr(upright))
    return DecodedImage(bgr=bgr, width=bgr.shape[1], height=bgr.shape[0], format=fmt, exif_time=taken)


def uniformity(bgr: np.ndarray) -> float:
    """Std-dev of a grey thumbnail (longest side 64 px): the area averaging drowns sensor noise."""
    grey = bgr if bgr.ndim == 2 else cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    h, w = grey.shape[:2]
    scale = 64 / max(h, w)
    if scale < 1:
        grey = cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return float(grey.std())


def is_uniform(bgr: np.ndarray, threshold: float = 4.0) -> bool:
    """A near-constant frame: covered lens, dead IR illuminator, black video signal."""
    return uniformity(bgr) < threshold
