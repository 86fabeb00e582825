"""Model lookup and download against a real HTTP server on 127.0.0.1 serving the real model file."""

from __future__ import annotations

import functools
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from alarmsieve.vision.models import (
    CATALOGUE,
    COCO_LABELS,
    ModelChecksumError,
    ModelDownloadError,
    ModelEntry,
    ModelNotFoundError,
    download_model,
    locate_model,
    sha256_file,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL_MODEL_DIR = Path(
    os.environ.get("ALARMSIEVE_MODEL_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "models")
)
ENTRY = CATALOGUE["yolox-nano"]


@pytest.fixture(scope="module")
def real_model() -> Path:
    path = REAL_MODEL_DIR / ENTRY.filename
    if not path.is_file():
        pytest.skip(f"real model file {path} is absent: set ALARMSIEVE_MODEL_DIR to the folder holding it")
    return path


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture(scope="module")
def server(real_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Serves /yolox_nano.onnx (the real bytes), /corrupt/... (one byte flipped), /long/... (extra bytes)."""
    root = tmp_path_factory.mktemp("www")
    data = real_model.read_bytes()
    (root / ENTRY.filename).write_bytes(data)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    (root / "corrupt").mkdir()
    (root / "corrupt" / ENTRY.filename).write_bytes(bytes(flipped))
    (root / "long").mkdir()
    (root / "long" / ENTRY.filename).write_bytes(data + b"\0" * 4096)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def closed_port_url() -> str:
    """A URL on a port nothing listens on: any attempt to use it fails."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{ENTRY.filename}"


def dirs(tmp_path: Path) -> tuple[Path, Path]:
    model_dir, cache = tmp_path / "models", tmp_path / "cache"
    model_dir.mkdir()
    return model_dir, cache


def test_download_verifies_and_then_uses_cache(server: str, tmp_path: Path) -> None:
    model_dir, cache = dirs(tmp_path)
    got = locate_model(
        model_dir=model_dir, cache_dir=cache, allow_download=True, url=f"{server}/{ENTRY.filename}", timeout=10
    )
    assert got.source == "download" and got.path == (cache / ENTRY.filename).resolve()
    assert got.sha256 == ENTRY.sha256 == sha256_file(got.path) and got.matches_catalogue
    assert got.path.stat().st_size == ENTRY.size_bytes
    assert sorted(p.name for p in cache.iterdir()) == [ENTRY.filename]  # no temp file left behind

    again = locate_model(model_dir=model_dir, cache_dir=cache)
    assert (again.source, again.path) == ("cache", got.path)
    # Even with downloading allowed, a verified cached file means the (dead) URL is never contacted.
    offline = locate_model(model_dir=model_dir, cache_dir=cache, allow_download=True, url=closed_port_url())
    assert offline.source == "cache"


def test_checksum_failure_leaves_nothing(server: str, tmp_path: Path) -> None:
    model_dir, cache = dirs(tmp_path)
    with pytest.raises(ModelChecksumError) as info:
        locate_model(
            model_dir=model_dir, cache_dir=cache, allow_download=True, url=f"{server}/corrupt/{ENTRY.filename}"
        )
    message = str(info.value)
    assert ENTRY.sha256 in message and "nothing was saved" in message
    assert list(cache.iterdir()) == []

    with pytest.raises(ModelChecksumError, match="larger than the expected"):
        download_model(ENTRY, cache, url=f"{server}/long/{ENTRY.filename}")
    assert list(cache.iterdir()) == []


def test_http_404_is_a_clear_error(server: str, tmp_path: Path) -> None:
    model_dir, cache = dirs(tmp_path)
    url = f"{server}/no/such/{ENTRY.filename}"
    with pytest.raises(ModelDownloadError) as info:
        locate_model(model_dir=model_dir, cache_dir=cache, allow_download=True, url=url)
    message = str(info.value)
    assert "HTTP 404" in message and url in message and str(cache / ENTRY.filename) in message
    assert isinstance(info.value, ModelNotFoundError)  # callers that catch "no model" catch this too
    assert list(cache.iterdir()) == []


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    model_dir, cache = dirs(tmp_path)
    url = closed_port_url()
    with pytest.raises(ModelDownloadError, match="ConnectError") as info:
        locate_model(model_dir=model_dir, cache_dir=cache, allow_download=True, url=url, timeout=5)
    assert url in str(info.value)
    assert list(cache.iterdir()) == []


def test_lookup_order(real_model: Path, tmp_path: Path) -> None:
    model_dir, cache = dirs(tmp_path)
    explicit = tmp_path / "pinned" / "my-model.onnx"
    explicit.parent.mkdir()
    cache.mkdir()
    for target in (explicit, model_dir / ENTRY.filename, cache / ENTRY.filename):
        shutil.copyfile(real_model, target)

    got = locate_model(explicit_path=explicit, model_dir=model_dir, cache_dir=cache)
    assert (got.source, got.path) == ("explicit", explicit.resolve())
    got = locate_model(model_dir=model_dir, cache_dir=cache)
    assert (got.source, got.path) == ("model_dir", (model_dir / ENTRY.filename).resolve())
    (model_dir / ENTRY.filename).unlink()
    got = locate_model(model_dir=model_dir, cache_dir=cache)
    assert (got.source, got.path) == ("cache", (cache / ENTRY.filename).resolve())
    assert got.sha256 == ENTRY.sha256


def test_settings_supply_the_default_folders(real_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir, cache = dirs(tmp_path)
    shutil.copyfile(real_model, model_dir / ENTRY.filename)
    monkeypatch.setenv("ALARMSIEVE_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("ALARMSIEVE_MODEL_CACHE", str(cache))
    got = locate_model()
    assert (got.source, got.path) == ("model_dir", (model_dir / ENTRY.filename).resolve())


def test_explicit_custom_model_is_allowed_and_reported(tmp_path: Path) -> None:
    custom = tmp_path / "custom.onnx"
    custom.write_bytes(b"not the catalogue's bytes")
    got = locate_model(explicit_path=custom, model_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert got.source == "explicit" and got.sha256 == sha256_file(custom) != ENTRY.sha256
    assert not got.matches_catalogue

    missing = tmp_path / "typo.onnx"
    with pytest.raises(ModelNotFoundError, match=r"typo\.onnx given explicitly does not exist"):
        locate_model(explicit_path=missing, model_dir=tmp_path, cache_dir=tmp_path / "cache")


def test_wrong_file_in_model_dir_names_file_and_hashes(tmp_path: Path) -> None:
    model_dir, cache = dirs(tmp_path)
    bad = model_dir / ENTRY.filename
    bad.write_bytes(b"an HTML error page saved as .onnx")
    with pytest.raises(ModelChecksumError) as info:
        locate_model(model_dir=model_dir, cache_dir=cache)
    message = str(info.value)
    assert str(bad) in message and ENTRY.sha256 in message and sha256_file(bad) in message


def test_missing_model_says_where_and_how(tmp_path: Path) -> None:
    model_dir, cache = dirs(tmp_path)
    with pytest.raises(ModelNotFoundError) as info:
        locate_model(model_dir=model_dir, cache_dir=cache)
    message = str(info.value)
    for needle in ("ALARMSIEVE_MODEL_DIR", "--model", ENTRY.url, ENTRY.sha256, str(model_dir / ENTRY.filename)):
        assert needle in message
    assert str(cache / ENTRY.filename) in message
    assert not cache.exists()  # nothing was downloaded or created


def test_unknown_model_name() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'yolo-huge'; known models: .*yolox-nano"):
        locate_model("yolo-huge")


def test_sha256_cache_keys_on_mtime_and_size(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"a" * 100)
    first = sha256_file(path)
    stat = path.stat()
    path.write_bytes(b"b" * 100)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # Same path, size and mtime: the cached hash is returned without reading the file again.
    assert sha256_file(path) == first
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert sha256_file(path) != first
    path.write_bytes(b"c" * 101)
    assert sha256_file(path) != first


def test_catalogue_facts() -> None:
    assert ENTRY.filename == "yolox_nano.onnx" and ENTRY.size_bytes == 3_713_911 and ENTRY.input_size == 416
    assert ENTRY.licence == "Apache-2.0" and ENTRY.labels == "coco80"
    assert ENTRY.url.endswith("c7f9a3c5216c6f8b3e8b35886f863dffa2dc0bf9/models/yolox_nano.onnx")
    with pytest.raises(ValidationError):
        ModelEntry(**ENTRY.model_dump(), mirror="x")
    with pytest.raises(ValidationError):
        ENTRY.size_bytes = 1  # type: ignore[misc]
    assert len(COCO_LABELS) == 80 and COCO_LABELS[0] == "person" and COCO_LABELS[2] == "car"


def test_coco_labels_match_shared_dataset() -> None:
    classes = SHARED / "datasets" / "coco128" / "classes.yaml"
    if not classes.is_file():
        pytest.skip(f"{classes} is absent")
    names = yaml.safe_load(classes.read_text())["names"]
    assert tuple(names[i] for i in range(80)) == COCO_LABELS
