"""Ingest alarms that cameras upload straight to an S3 bucket prefix into the ``images`` repo.

``s3://bucket/incoming/cam-7/0001.jpg`` becomes ``images@master:/cam-7/0001.jpg``. Each pass lists
the prefix and commits, in one atomic commit, every object whose path is not yet in the repo with the
same content (the object's sha256 decides, so a re-upload of a changed image is a new version and a
repeated pass commits nothing). Keys that are not ``<camera>/<file>`` are skipped with a reason.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from alarmsieve.errors import AlarmsieveError
from alarmsieve.pfs.api import Pfs
from alarmsieve.pfs.paths import PathError, normalize_path


class IngestError(AlarmsieveError):
    pass


@dataclass
class IngestResult:
    commit: str | None = None
    added: list[str] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)


def _client(endpoint_url: str | None) -> Any:
    try:
        import boto3
    except ImportError as exc:
        raise IngestError("ingesting from S3 needs boto3: pip install 'alarmsieve[s3]'") from exc
    return boto3.client("s3", endpoint_url=endpoint_url or os.environ.get("ALARMSIEVE_S3_ENDPOINT_URL") or None)


def ingest_prefix(pfs: Pfs, source: str, *, repo: str = "images", endpoint_url: str | None = None) -> IngestResult:
    parsed = urlparse(source)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise IngestError(f"{source!r}: give the bucket prefix as s3://BUCKET/PREFIX")
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    client = _client(endpoint_url)
    result = IngestResult()
    candidates: dict[str, str] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            rel = key[len(prefix) :]
            if key.endswith("/"):
                continue
            if rel.count("/") < 1:
                result.skipped.append((key, "not under a camera folder: upload as PREFIX/<camera>/<file>"))
                continue
            try:
                candidates[normalize_path(rel)] = key
            except PathError as exc:
                result.skipped.append((key, str(exc)))
    if not candidates:
        return result
    existing = pfs.lookup(repo, "master", candidates) if pfs.head(repo) else {}
    builder = pfs.start_commit(repo, description=f"ingest {source}")
    for path, key in sorted(candidates.items()):
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        current = existing.get(path)
        if current is not None and current.sha256 == hashlib.sha256(body).hexdigest():
            result.unchanged += 1
            continue
        builder.put_bytes(path, body)
        result.added.append(path)
    if result.added:
        result.commit = builder.finish().id
    return result
