"""Content-addressed object store: every file body is stored once, named by its sha256.

The local folder backend is the embedded default; an S3 backend implements the same interface later.
Writes go to a temporary name and are renamed into place, so a killed writer never leaves a partial
object under a valid name.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20


class ObjectNotFoundError(KeyError):
    pass


class ObjectStore(ABC):
    @abstractmethod
    def put_bytes(self, data: bytes) -> str:
        """Store ``data``; return its sha256 hex."""

    @abstractmethod
    def put_stream(self, stream: BinaryIO) -> tuple[str, int]:
        """Store a stream's content; return (sha256, size)."""

    @abstractmethod
    def put_path(self, path: Path) -> tuple[str, int]:
        """Store a local file's content; return (sha256, size)."""

    @abstractmethod
    def get_bytes(self, sha256: str) -> bytes: ...

    @abstractmethod
    def exists(self, sha256: str) -> bool: ...

    @abstractmethod
    def materialize(self, sha256: str, dest: Path, *, private_copy: bool = False) -> None:
        """Make ``dest`` hold the object's bytes (a hard link where possible, else a copy)."""


class LocalObjectStore(ObjectStore):
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / "tmp"
        self._tmp.mkdir(exist_ok=True)

    def _path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def _install(self, tmp_path: Path, sha256: str) -> None:
        final = self._path(sha256)
        if final.exists():
            tmp_path.unlink(missing_ok=True)
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp_path, 0o444)  # objects are immutable; read-only guards hard links into datums
        os.replace(tmp_path, final)

    def put_bytes(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        if self._path(sha256).exists():
            return sha256
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        self._install(Path(tmp_name), sha256)
        return sha256

    def put_stream(self, stream: BinaryIO) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as handle:
                while chunk := stream.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    handle.write(chunk)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        sha256 = digest.hexdigest()
        self._install(Path(tmp_name), sha256)
        return sha256, size

    def put_path(self, path: Path) -> tuple[str, int]:
        # Hash first: a file that is already stored (a stage passing an input through) costs one
        # read and no write.
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
        sha256 = digest.hexdigest()
        if self._path(sha256).exists():
            return sha256, size
        with open(path, "rb") as handle:
            return self.put_stream(handle)

    def get_bytes(self, sha256: str) -> bytes:
        try:
            return self._path(sha256).read_bytes()
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(f"object {sha256} is missing from the object store {self.root}") from exc

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).exists()

    def materialize(self, sha256: str, dest: Path, *, private_copy: bool = False) -> None:
        source = self._path(sha256)
        if not source.exists():
            raise ObjectNotFoundError(f"object {sha256} is missing from the object store {self.root}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not private_copy:
            try:
                os.link(source, dest)
                return
            except OSError:
                pass  # other file system: fall back to a copy
        shutil.copyfile(source, dest)


def open_object_store(location: str) -> ObjectStore:
    """``s3://bucket/prefix`` (S3-compatible; endpoint from ALARMSIEVE_S3_ENDPOINT_URL) or a local folder."""
    if location.startswith("s3://"):
        try:
            from alarmsieve.pfs.objects_s3 import S3ObjectStore
        except ImportError as exc:
            raise ValueError(f"object store {location!r} needs boto3: pip install 'alarmsieve[s3]' ({exc})") from exc
        return S3ObjectStore(location)
    return LocalObjectStore(Path(location))
