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
# Below this size a PUT costs no more than the HEAD that would avoid it: small objects are put directly
# (same content, same key, so a repeated PUT changes nothing) — one request per object instead of two.
SMALL_OBJECT = 1024 * 1024


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
        if len(data) < SMALL_OBJECT or not self.exists(sha256):
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
        if size < SMALL_OBJECT:
            self.client.put_object(Bucket=self.bucket, Key=self._key(sha256), Body=path.read_bytes())
        elif not self.exists(sha256):
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
            # One streamed GET (a datum's files are mostly small: the transfer manager's HEAD and thread
            # pool would double the requests); written beside dest and renamed, so dest is whole or absent.
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(sha256))["Body"]
        except ClientError as exc:
            raise ObjectNotFoundError(f"object {sha256} is missing from {self.url}: {exc}") from exc
        partial = dest.with_name(f".{dest.name}.part")
        with open(partial, "wb") as handle:
            for chunk in body.iter_chunks(CHUNK):
                handle.write(chunk)
        partial.replace(dest)


# ---- reading plain S3 objects (not content-addressed): `put file -f s3://…` and `-r s3://…/` ------------


class S3SourceError(ValueError):
    """An ``s3://`` source that cannot be read; the message says which and what to do."""


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key/or/prefix`` → (bucket, key); the key may be empty (the whole bucket)."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise S3SourceError(f"{url!r}: expected s3://BUCKET/KEY (a file) or s3://BUCKET/PREFIX/ (a folder)")
    return parsed.netloc, parsed.path.lstrip("/")


def s3_client(endpoint_url: str | None = None) -> Any:
    """A boto3 client with the standard credential chain, retries, and ``ALARMSIEVE_S3_ENDPOINT_URL``."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise S3SourceError("reading s3:// sources needs boto3: pip install 'alarmsieve[s3]'") from exc
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url or os.environ.get("ALARMSIEVE_S3_ENDPOINT_URL") or None,
        region_name=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        config=Config(retries={"max_attempts": 8, "mode": "standard"}),
    )


def _source_error(url: str, exc: Exception) -> S3SourceError:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
    if code in ("404", "NoSuchKey", "NotFound"):
        return S3SourceError(f"{url}: no such object; check the key (`aws s3 ls` lists a prefix)")
    if code == "NoSuchBucket":
        return S3SourceError(f"{url}: the bucket does not exist")
    if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return S3SourceError(f"{url}: access denied ({code}); check the AWS credentials and the bucket policy")
    return S3SourceError(f"{url}: cannot be read ({code}: {exc})")


def open_s3_object(client: Any, url: str) -> BinaryIO:
    """A stream of one object's body (read in chunks; nothing is loaded whole)."""
    bucket, key = parse_s3_url(url)
    if not key or key.endswith("/"):
        raise S3SourceError(f"{url}: names a folder; use -r {url} to put every object under it")
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"]
    except Exception as exc:
        raise _source_error(url, exc) from exc


def list_s3_prefix(client: Any, url: str) -> list[tuple[str, str]]:
    """Every object under ``s3://bucket/prefix/``, as (path relative to the prefix, key), sorted."""
    bucket, prefix = parse_s3_url(url)
    if prefix and not prefix.endswith("/"):
        prefix += "/"  # a prefix is a folder: `incoming` must not also match `incoming-old/…`
    found = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                if not key.endswith("/"):  # folder markers made by consoles hold no data
                    found.append((key[len(prefix) :], key))
    except Exception as exc:
        raise _source_error(url, exc) from exc
    if not found:
        raise S3SourceError(f"{url}: no objects under this prefix")
    return sorted(found)
