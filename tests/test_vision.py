"""The real YOLOX-Nano detector on real photos from ../shared, frame decoding, and annotation."""

from __future__ import annotations

import csv
import io
import os
import struct
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import ExifTags, Image
from pydantic import ValidationError

from alarmsieve.vision.annotate import annotate, encode_jpeg
from alarmsieve.vision.detector import Detection, DetectorBackend, OnnxYoloxDetector, create_detector
from alarmsieve.vision.images import (
    DecodedImage,
    ImageLimits,
    ImageRejected,
    decode_image,
    is_uniform,
    uniformity,
)
from alarmsieve.vision.models import locate_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODEL_DIR = Path(os.environ.get("ALARMSIEVE_MODEL_DIR", SHARED / "models"))
IMAGES = SHARED / "images"

needs_model = pytest.mark.skipif(
    not (MODEL_DIR / "yolox_nano.onnx").is_file(),
    reason=f"model file {MODEL_DIR / 'yolox_nano.onnx'} is absent (set ALARMSIEVE_MODEL_DIR to its folder)",
)
needs_images = pytest.mark.skipif(
    not (IMAGES / "labels.csv").is_file(), reason=f"real photos are absent: {IMAGES}/labels.csv not found"
)


def read_photo(rel: str) -> bytes:
    return (IMAGES / rel).read_bytes()


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> DetectorBackend:
    if not (MODEL_DIR / "yolox_nano.onnx").is_file():
        pytest.skip(f"model file {MODEL_DIR / 'yolox_nano.onnx'} is absent (set ALARMSIEVE_MODEL_DIR)")
    # model_dir (not explicit_path) so that the catalogue sha256 is enforced on the shared file.
    model = locate_model(model_dir=MODEL_DIR, cache_dir=tmp_path_factory.mktemp("cache"))
    return create_detector("onnx", model=model)


REPORTED = 0.25  # the detect stage's default --score-threshold: what these tests judge


@pytest.fixture(scope="module")
def photo_detections(detector: DetectorBackend) -> dict[str, tuple[DecodedImage, list[Detection]]]:
    """Every photo in labels.csv, decoded the way uploads are and run once through the detector; the
    detections the stage would report (score >= 0.25) out of the raw candidates."""
    if not (IMAGES / "labels.csv").is_file():
        pytest.skip(f"real photos are absent: {IMAGES}/labels.csv not found")
    results = {}
    with (IMAGES / "labels.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            decoded = decode_image(read_photo(row["file"]))
            raw = detector.detect(decoded.bgr)
            results[row["file"]] = (decoded, [d for d in raw if d.score >= REPORTED])
    return results


def best(detections: list[Detection], label: str) -> float:
    return max((d.score for d in detections if d.label == label), default=0.0)


# --- detector on real photos -------------------------------------------------------------------


@pytest.mark.parametrize("photo", ["skimage/astronaut.png", "coral/grace_hopper.bmp", "coral/squat.bmp"])
def test_person_found(photo_detections: dict, photo: str) -> None:
    _, dets = photo_detections[photo]
    assert best(dets, "person") >= 0.5, dets


def test_car_found_in_traffic_frame(photo_detections: dict) -> None:
    _, dets = photo_detections["coral/traffic_0001.bmp"]
    assert best(dets, "car") >= 0.5, dets


@pytest.mark.parametrize(
    "photo",
    [
        "skimage/grass.png",
        "skimage/gravel.png",
        "skimage/brick.png",
        "skimage/coffee.png",
        "coral/sunflower.bmp",
    ],
)
def test_no_person_in_empty_scenes(photo_detections: dict, photo: str) -> None:
    _, dets = photo_detections[photo]
    assert [d for d in dets if d.label == "person"] == []


def test_every_labelled_object_is_found(photo_detections: dict) -> None:
    """labels.csv lists the security-relevant objects of each photo; each must be detected."""
    missed = []
    with (IMAGES / "labels.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            _, dets = photo_detections[row["file"]]
            missed += [(row["file"], obj) for obj in row["objects"].split(";") if obj and best(dets, obj) == 0.0]
    assert missed == []


def test_boxes_are_sorted_clipped_and_above_threshold(photo_detections: dict) -> None:
    for photo, (decoded, dets) in photo_detections.items():
        scores = [d.score for d in dets]
        assert scores == sorted(scores, reverse=True), photo
        for d in dets:
            x1, y1, x2, y2 = d.box
            assert 0 <= x1 < x2 <= decoded.width and 0 <= y1 < y2 <= decoded.height, (photo, d)
            assert d.score >= REPORTED and d.score == round(d.score, 4)
            assert 0 <= d.class_id < 80


def test_boxes_are_in_original_pixels(detector: DetectorBackend, photo_detections: dict) -> None:
    decoded, dets = photo_detections["skimage/astronaut.png"]
    person = next(d for d in dets if d.label == "person")
    x1, y1, x2, y2 = person.box
    assert (x2 - x1) * (y2 - y1) > 0.4 * 512 * 512  # she fills most of the frame
    # Twice the resolution must give twice the coordinates, not letterbox (416) coordinates.
    big = cv2.resize(decoded.bgr, (1024, 1024), interpolation=cv2.INTER_LINEAR)
    big_person = next(d for d in detector.detect(big) if d.label == "person")
    assert np.allclose(np.array(big_person.box), 2 * np.array(person.box), atol=0.03 * 1024)
    # A portrait frame taller than 416: the box extends below row 416.
    _, dets = photo_detections["coral/grace_hopper.bmp"]
    assert next(d for d in dets if d.label == "person").box[3] > 500


@needs_images
@pytest.mark.parametrize("photo", ["skimage/astronaut.png", "coral/squat.bmp"])
def test_decoded_matches_opencv_and_detect_is_deterministic(detector: DetectorBackend, photo: str) -> None:
    decoded = decode_image(read_photo(photo))
    raw = cv2.imread(str(IMAGES / photo), cv2.IMREAD_COLOR)
    assert np.array_equal(decoded.bgr, raw)  # lossless formats: Pillow path == OpenCV path, BGR order
    first = detector.detect(decoded.bgr)
    assert first == detector.detect(raw) == detector.detect(decoded.bgr)


def test_higher_floor_keeps_a_subset(detector: DetectorBackend, photo_detections: dict) -> None:
    model = locate_model(explicit_path=MODEL_DIR / "yolox_nano.onnx")
    strict = OnnxYoloxDetector(model, score_floor=0.8)
    decoded, loose = photo_detections["coral/traffic_0001.bmp"]
    kept = strict.detect(decoded.bgr)
    assert kept and all(d.score >= 0.8 for d in kept)
    assert kept == [d for d in loose if d.score >= 0.8]
    assert strict.model_sha256 == detector.model_sha256 and strict.model_name == "yolox-nano"


def test_detector_rejects_bad_input(detector: DetectorBackend) -> None:
    with pytest.raises(ValueError, match="HxWx3"):
        detector.detect(np.zeros((100, 100), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(np.zeros((100, 100, 3), np.float32))
    assert detector.detect(np.full((480, 640, 3), 114, np.uint8)) == []


def test_create_detector_unknown_kind() -> None:
    with pytest.raises(ValueError, match=r"unknown detector kind 'tensorrt'; known kinds: onnx"):
        create_detector("tensorrt")


def test_detection_model() -> None:
    d = Detection(label="person", class_id=0, score=0.876543, box=(1, 2, 3, 4))
    assert d.score == 0.8765 and d.box == (1.0, 2.0, 3.0, 4.0)
    with pytest.raises(ValidationError):
        Detection(label="person", class_id=0, score=0.5, box=(1, 2, 3, 4), colour="red")
    assert Detection.model_validate_json(d.model_dump_json()) == d


# --- decode_image: every rejection code, from bytes built here ----------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR declaring a size, with no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def pil_bytes(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def rejection(data: bytes, limits: ImageLimits | None = None) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        decode_image(data, limits or ImageLimits())
    exc = info.value
    assert exc.message and exc.code in str(exc)
    return exc


def test_reject_empty_too_large_and_not_an_image() -> None:
    assert rejection(b"").code == "empty"
    exc = rejection(pil_bytes(Image.new("RGB", (100, 100)), "PNG"), ImageLimits(max_bytes=100))
    assert exc.code == "too_large" and "100" in exc.message
    assert rejection(b"alarm at gate 3\nno image attached\n").code == "not_an_image"
    assert rejection(b"<html><body>404 Not Found</body></html>").code == "not_an_image"


def test_reject_unsupported_formats() -> None:
    gif = rejection(pil_bytes(Image.new("RGB", (100, 100), "red"), "GIF"))
    assert gif.code == "unsupported_format" and "GIF" in gif.message and "JPEG" in gif.message
    assert rejection(pil_bytes(Image.new("RGB", (100, 100)), "TIFF")).code == "unsupported_format"
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
    assert rejection(heic).code == "unsupported_format"


def test_reject_decompression_bomb_before_decoding() -> None:
    # 10^10 pixels declared: Pillow's own limit trips while reading the header.
    assert rejection(png_header_only(100_000, 100_000)).code == "decompression_bomb"
    # 64 M pixels: under Pillow's limit, over ours. The file has no pixel data, so had it been decoded
    # the answer would be "truncated": the declared size was checked first.
    exc = rejection(png_header_only(8000, 8000))
    assert exc.code == "decompression_bomb" and "8000x8000" in exc.message
    assert rejection(png_header_only(800, 800), ImageLimits(max_pixels=10_000)).code == "decompression_bomb"


def test_reject_too_small() -> None:
    exc = rejection(pil_bytes(Image.new("RGB", (32, 32), "white"), "PNG"))
    assert exc.code == "too_small" and "32x32" in exc.message
    assert rejection(pil_bytes(Image.new("RGB", (640, 40)), "JPEG")).code == "too_small"


@needs_images
@pytest.mark.parametrize("photo", ["coral/cat_720p.jpg", "skimage/astronaut.png", "coral/bird.bmp"])
def test_reject_truncated_real_files(photo: str) -> None:
    data = read_photo(photo)
    exc = rejection(data[: len(data) // 2])
    assert exc.code == "truncated" and "cut off" in exc.message


@needs_images
def test_reject_truncated_webp_and_header() -> None:
    webp = pil_bytes(Image.open(IMAGES / "coral/pets.jpg"), "WEBP")
    assert decode_image(webp).format == "webp"
    assert rejection(webp[: len(webp) // 2]).code == "truncated"
    assert rejection(read_photo("coral/cat_720p.jpg")[:300]).code == "truncated"


def test_reject_garbage_after_jpeg_marker() -> None:
    noise = np.random.default_rng(7).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    assert rejection(b"\xff\xd8\xff" + noise).code in {"undecodable", "truncated"}
    # With an end-of-image marker the file is complete, so it can only be corrupt.
    assert rejection(b"\xff\xd8\xff" + noise + b"\xff\xd9").code == "undecodable"


def test_rejection_pickles() -> None:
    import pickle

    exc = pickle.loads(pickle.dumps(ImageRejected("empty", "the upload is empty")))
    assert (exc.code, exc.message) == ("empty", "the upload is empty")


# --- decode_image: accepted files -----------------------------------------------------------------


@needs_images
@pytest.mark.parametrize(
    ("fmt", "name", "lossless"),
    [("JPEG", "jpeg", False), ("PNG", "png", True), ("BMP", "bmp", True), ("WEBP", "webp", False)],
)
def test_accepts_supported_formats(fmt: str, name: str, lossless: bool) -> None:
    rgb = Image.open(IMAGES / "skimage/chelsea.png").convert("RGB")
    decoded = decode_image(pil_bytes(rgb, fmt))
    expected = cv2.cvtColor(np.asarray(rgb), cv2.COLOR_RGB2BGR)
    assert (decoded.format, decoded.width, decoded.height) == (name, 451, 300)
    assert decoded.bgr.dtype == np.uint8 and decoded.bgr.shape == (300, 451, 3)
    diff = np.abs(decoded.bgr.astype(int) - expected).mean()
    assert diff == 0 if lossless else diff < 8


@needs_images
def test_grey_palette_alpha_and_16bit_become_bgr() -> None:
    grey = decode_image(read_photo("skimage/brick.png"))  # an L-mode PNG
    assert grey.bgr.shape == (512, 512, 3)
    assert np.array_equal(grey.bgr[..., 0], grey.bgr[..., 2])

    pal = decode_image(
        pil_bytes(Image.new("RGB", (80, 80), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE), "PNG")
    )
    assert tuple(pal.bgr[40, 40]) == (30, 200, 10)

    rgba = Image.new("RGBA", (80, 80), (0, 0, 255, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 40, 80))
    flat = decode_image(pil_bytes(rgba, "PNG")).bgr
    assert tuple(flat[40, 10]) == (0, 0, 255) and tuple(flat[40, 70]) == (255, 255, 255)

    deep = Image.fromarray(np.full((80, 80), 128 * 257, np.uint16))
    assert np.all(decode_image(pil_bytes(deep, "PNG")).bgr == 128)  # scaled, not clipped to 255


def exif_jpeg(ifd0: dict[int, str], exif_ifd: dict[int, str], size: tuple[int, int] = (96, 72)) -> bytes:
    exif = Image.Exif()
    for tag, value in ifd0.items():
        exif[tag] = value
    sub = exif.get_ifd(ExifTags.IFD.Exif)
    sub.update(exif_ifd)
    return pil_bytes(Image.new("RGB", size, "gray"), "JPEG", exif=exif.tobytes())


def test_exif_time() -> None:
    tag = ExifTags.Base
    data = exif_jpeg({tag.DateTime: "2020:01:01 00:00:00"}, {tag.DateTimeOriginal: "2024:03:05 21:14:09"})
    assert decode_image(data).exif_time == datetime(2024, 3, 5, 21, 14, 9)  # naive stays naive
    only_dt = exif_jpeg({tag.DateTime: "2023:12:31 23:59:58"}, {})
    assert decode_image(only_dt).exif_time == datetime(2023, 12, 31, 23, 59, 58)
    with_offset = exif_jpeg(
        {},
        {
            tag.DateTimeOriginal: "2024:03:05 21:14:09",
            tag.OffsetTimeOriginal: "+02:00",
            tag.SubsecTimeOriginal: "25",
        },
    )
    assert decode_image(with_offset).exif_time == datetime(
        2024, 3, 5, 21, 14, 9, 250000, tzinfo=timezone(timedelta(hours=2))
    )
    assert decode_image(exif_jpeg({}, {tag.DateTimeOriginal: "0000:00:00 00:00:00"})).exif_time is None
    assert decode_image(pil_bytes(Image.new("RGB", (96, 72)), "JPEG")).exif_time is None


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # camera held sideways: display rotated 90° clockwise
    data = pil_bytes(Image.new("RGB", (200, 100), "gray"), "JPEG", exif=exif.tobytes())
    decoded = decode_image(data)
    assert (decoded.width, decoded.height) == (100, 200) and decoded.bgr.shape == (200, 100, 3)


# --- uniformity -----------------------------------------------------------------------------------


@needs_images
@pytest.mark.parametrize("photo", ["skimage/grass.png", "skimage/gravel.png", "skimage/brick.png"])
def test_textures_are_not_uniform(photo: str) -> None:
    bgr = decode_image(read_photo(photo)).bgr
    assert not is_uniform(bgr) and uniformity(bgr) > 10


@pytest.mark.parametrize("level", [0, 30, 128])
def test_flat_noisy_frames_are_uniform(level: int) -> None:
    rng = np.random.default_rng(level)
    frame = np.clip(rng.normal(level, 1.0, (720, 1280, 3)), 0, 255).astype(np.uint8)
    assert is_uniform(frame) and uniformity(frame) < 1.5
    assert is_uniform(frame[..., 0])  # greyscale input works too


# --- annotate -------------------------------------------------------------------------------------


@needs_images
def test_annotate_draws_boxes(photo_detections: dict) -> None:
    decoded, dets = photo_detections["skimage/astronaut.png"]
    before = decoded.bgr.copy()
    out = annotate(decoded.bgr, dets, highlight={"person"})
    assert out.shape == decoded.bgr.shape and out.dtype == np.uint8
    assert np.array_equal(decoded.bgr, before)  # the input is left alone
    person = next(d for d in dets if d.label == "person")
    x1, y1, x2, y2 = (round(v) for v in person.box)
    edge = out[(y1 + y2) // 2, x1]  # middle of the box's left side
    assert tuple(edge) == (0, 0, 255)
    assert not np.array_equal(out[y1 - 2 : y1 + 3, x1:x2], decoded.bgr[y1 - 2 : y1 + 3, x1:x2])
    inside = slice(y1 + 40, y2 - 40), slice(x1 + 40, x2 - 40)
    assert np.array_equal(out[inside], decoded.bgr[inside])  # box interior untouched

    neutral = annotate(decoded.bgr, dets)
    assert tuple(neutral[(y1 + y2) // 2, x1]) != (0, 0, 255)
    assert np.array_equal(annotate(decoded.bgr, []), decoded.bgr)


def test_encode_jpeg_round_trip() -> None:
    frame = np.zeros((240, 320, 3), np.uint8)
    frame[:, 160:] = (0, 0, 255)
    data = encode_jpeg(frame, quality=90)
    decoded = decode_image(data)
    assert data[:2] == b"\xff\xd8" and decoded.format == "jpeg" and decoded.bgr.shape == frame.shape
    assert np.abs(decoded.bgr.astype(int) - frame).mean() < 3
    assert len(encode_jpeg(frame, quality=10)) < len(data)
    with pytest.raises(ValueError, match="quality"):
        encode_jpeg(frame, quality=0)


def test_execution_providers_follow_the_device_and_what_onnxruntime_has(detector: DetectorBackend) -> None:
    from alarmsieve.vision.detector import choose_providers

    gpu_build = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    cpu_build = ["AzureExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("auto", gpu_build) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("auto", cpu_build) == ["CPUExecutionProvider"]
    assert choose_providers("cpu", gpu_build) == ["CPUExecutionProvider"]
    assert choose_providers("cuda", gpu_build) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(ValueError, match=r"no CUDA provider.*onnxruntime-gpu"):
        choose_providers("cuda", cpu_build)
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        choose_providers("tpu", cpu_build)
    # this machine: the session really runs on what `auto` chose
    assert isinstance(detector, OnnxYoloxDetector)
    assert detector.providers[0] == choose_providers("auto")[0]


def test_detect_stage_refuses_a_device_it_cannot_use(tmp_path: Path) -> None:
    import onnxruntime as ort

    from alarmsieve.stages.base import StageServices, StageUsageError
    from alarmsieve.stages.detect import DetectStage

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: --device cuda is valid here")
    services = StageServices(model_dir=MODEL_DIR, model_cache=tmp_path)
    with pytest.raises(StageUsageError, match="detect: device cuda: this onnxruntime has no CUDA provider"):
        DetectStage(["--device", "cuda"], services)
