"""S3-compatible object store (AWS S3, MinIO, Ceph, moto …) with the same content addressing.

Objects live at ``s3://bucket/prefix/ab/cd/<sha256>``, exactly as in the local backend. boto3 does
the work that a hand-written client would get wrong: the standard credential chain, retries with
backoff (``standard`` mode), and multipart upload for large files (``upload_file``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlparse

from alarmsieve.pfs.objects import CHUNK, ObjectNotFoundError, ObjectStore

MULTIPART_THRESHOLD = 16 * 1024 * 1024


class S3ObjectStore(ObjectStore):
    def __init__(self, url: str, *, endpoint_url: str | None = None, region: str | None = None) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"object store {url!r}: expected s3://BUCKET[/PREFIX]")
        self.url = url
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        endpoint_url = endpoint_url or os.environ.get("ALARMSIEVE_S3_ENDPOINT_URL") or None
        self.client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            config=Config(retries={"max_attempts": 8, "mode": "standard"}),
        )
        self.transfer = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD)

    def _key(self, sha256: str) -> str:
        name = f"{sha256[:2]}/{sha256[2:4]}/{sha256}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def exists(self, sha256: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(sha256))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def put_bytes(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        if not self.exists(sha256):
            self.client.put_object(Bucket=self.bucket, Key=self._key(sha256), Body=data)
        return sha256

    def put_path(self, path: Path) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
        sha256 = digest.hexdigest()
        if not self.exists(sha256):
            self.client.upload_file(str(path), self.bucket, self._key(sha256), Config=self.transfer)
        return sha256, size

    def put_stream(self, stream: BinaryIO) -> tuple[str, int]:
        # The key is the content hash, so the stream is spooled to a temporary file first.
        with tempfile.NamedTemporaryFile(prefix="alarmsieve-s3-") as spool:
            while chunk := stream.read(CHUNK):
                spool.write(chunk)
            spool.flush()
            return self.put_path(Path(spool.name))

    def get_bytes(self, sha256: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(sha256))["Body"].read()
        except self.client.exceptions.NoSuchKey as exc:
            raise ObjectNotFoundError(f"object {sha256} is missing from {self.url}") from exc

    def materialize(self, sha256: str, dest: Path, *, private_copy: bool = False) -> None:
        from botocore.exceptions import ClientError

        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(self.bucket, self._key(sha256), str(dest), Config=self.transfer)
        except ClientError as exc:
            raise ObjectNotFoundError(f"object {sha256} is missing from {self.url}: {exc}") from exc
