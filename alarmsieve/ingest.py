"""Ingest alarms that cameras upload somewhere else: an S3 bucket prefix, or a local folder (FTP drop).

``s3://bucket/incoming/cam-7/0001.jpg`` becomes ``images@master:/cam-7/0001.jpg``. Each pass lists
the prefix and commits, in one atomic commit, every object whose path is not yet in the repo with the
same content (the object's sha256 decides, so a re-upload of a changed image is a new version and a
repeated pass commits nothing). Keys that are not ``<camera>/<file>`` are skipped with a reason. A watcher
keeps an :class:`IngestMemo` across passes, so an object whose ETag and size did not move is not downloaded again.

A folder works the same way (``incoming/cam-7/0001.jpg``), with what an upload folder needs: a file
is taken only once it has not changed for ``settle_s`` seconds (an FTP upload in progress grows), and
hidden files (``.in.0001.jpg``, an FTP server's temporary name) are left alone. Clips (mp4, mov, mkv,
webm, avi) go to ``videos`` and everything else to ``images``, unless a repo is named. With
``remove``, a file is deleted once a commit holds its content, so the folder holds only what is new.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from alarmsieve.errors import AlarmsieveError
from alarmsieve.pfs.api import Pfs, RepoNotFoundError
from alarmsieve.pfs.paths import PathError, normalize_path


class IngestError(AlarmsieveError):
    pass


@dataclass
class IngestResult:
    commit: str | None = None  # the last commit made (S3: the only one)
    added: list[str] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    commits: dict[str, str] = field(default_factory=dict)  # repo -> commit made by this pass
    added_to: dict[str, int] = field(default_factory=dict)  # repo -> files that commit put
    waiting: int = 0  # folder files still being uploaded (changed within settle_s) or hidden
    removed: int = 0  # folder files deleted because a commit holds them (remove=True)


class IngestMemo:
    """What one watcher already read: source (file or object key) -> (fingerprint, sha256).

    The fingerprint is what the source says without being read (a file's size and mtime, an object's
    ETag and size); while it is unchanged the content is taken to be too, as rsync does, and the file
    or object is not read again. A new watcher starts empty and reads each source once.
    """

    def __init__(self) -> None:
        self._seen: dict[str, tuple[tuple[Any, ...], str]] = {}

    def sha256(self, source: str, fingerprint: tuple[Any, ...]) -> str | None:
        known = self._seen.get(source)
        return known[1] if known is not None and known[0] == fingerprint else None

    def remember(self, source: str, fingerprint: tuple[Any, ...], sha256: str) -> None:
        self._seen[source] = (fingerprint, sha256)


def _client(endpoint_url: str | None) -> Any:
    try:
        import boto3
    except ImportError as exc:
        raise IngestError("ingesting from S3 needs boto3: pip install 'alarmsieve[s3]'") from exc
    return boto3.client("s3", endpoint_url=endpoint_url or os.environ.get("ALARMSIEVE_S3_ENDPOINT_URL") or None)


def ingest_prefix(
    pfs: Pfs,
    source: str,
    *,
    repo: str = "images",
    endpoint_url: str | None = None,
    memo: IngestMemo | None = None,
    client: Any = None,
) -> IngestResult:
    """One pass over an S3 prefix; with the same ``memo`` across passes an object is downloaded only
    when its ETag or size moved (a watch pass over an unchanged bucket lists it and reads nothing)."""
    parsed = urlparse(source)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise IngestError(f"{source!r}: give the bucket prefix as s3://BUCKET/PREFIX")
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    client = client if client is not None else _client(endpoint_url)
    memo = memo if memo is not None else IngestMemo()
    result = IngestResult()
    candidates: dict[str, tuple[str, tuple[Any, ...]]] = {}  # path in repo -> (key, fingerprint)
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
                candidates[normalize_path(rel)] = (key, (item.get("ETag"), item.get("Size")))
            except PathError as exc:
                result.skipped.append((key, str(exc)))
    if not candidates:
        return result
    existing = pfs.lookup(repo, "master", candidates) if pfs.head(repo) else {}
    builder = pfs.start_commit(repo, description=f"ingest {source}")
    for path, (key, fingerprint) in sorted(candidates.items()):
        current = existing.get(path)
        source_id = f"s3://{bucket}/{key}"
        if current is not None and memo.sha256(source_id, fingerprint) == current.sha256:
            result.unchanged += 1  # known object, same ETag and size: not downloaded again
            continue
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        sha256 = hashlib.sha256(body).hexdigest()
        memo.remember(source_id, fingerprint, sha256)
        if current is not None and current.sha256 == sha256:
            result.unchanged += 1
            continue
        builder.put_bytes(path, body)
        result.added.append(path)
    if result.added:
        result.commit = builder.finish().id
        result.commits[repo] = result.commit
        result.added_to[repo] = len(result.added)
    return result


CLIP_EXTENSIONS = ("mp4", "mov", "mkv", "webm", "avi")  # what goes to `videos` when no repo is named


def repo_for(path: str, *, images: str = "images", videos: str = "videos") -> str:
    """``videos`` for a clip (by extension), ``images`` for anything else (validate judges what it is)."""
    return videos if path.rsplit(".", 1)[-1].lower() in CLIP_EXTENSIONS else images


@dataclass(frozen=True)
class _Hashed:
    size: int
    mtime_ns: int
    sha256: str


def ingest_folder(
    pfs: Pfs,
    folder: Path,
    *,
    repo: str | None = None,
    settle_s: float = 2.0,
    remove: bool = False,
    memo: IngestMemo | None = None,
    now: float | None = None,
) -> IngestResult:
    """One pass over ``folder``: commit every settled ``<camera>/<file>`` that is new or changed.

    One atomic commit per repo (``images``, ``videos``). A file that cannot be read, or whose repo is
    missing, is skipped with the reason and the rest goes on.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise IngestError(
            f"{folder}: no such folder; give the folder cameras upload to, holding <camera>/<file> "
            "(e.g. incoming/cam-1/0001.jpg)"
        )
    memo = memo if memo is not None else IngestMemo()
    now = time.time() if now is None else now
    result = IngestResult()
    wanted: dict[str, dict[str, tuple[Path, _Hashed]]] = {}  # repo -> path in repo -> (file, what it held)
    for local, rel in _folder_files(folder):
        if any(part.startswith(".") for part in rel.split("/")):
            result.waiting += 1  # an upload's temporary name, or not meant for us
            continue
        if "/" not in rel:
            result.skipped.append((rel, "not under a camera folder: put files in FOLDER/<camera>/<file>"))
            continue
        try:
            path = normalize_path(rel)
            info = local.stat()
        except (PathError, OSError) as exc:
            result.skipped.append((rel, str(exc)))
            continue
        if now - info.st_mtime < settle_s:
            result.waiting += 1  # still being written: the next pass takes it
            continue
        try:
            hashed = _hash(pfs, local, info, memo)
        except OSError as exc:
            result.skipped.append((rel, f"cannot read it: {exc.strerror or exc}"))
            continue
        wanted.setdefault(repo or repo_for(path), {})[path] = (local, hashed)
    done: list[tuple[Path, _Hashed]] = []  # files whose content a commit holds
    for target, files in sorted(wanted.items()):
        try:
            existing = pfs.lookup(target, "master", files) if pfs.head(target) else {}
        except RepoNotFoundError as exc:
            result.skipped += [(path.lstrip("/"), str(exc)) for path in sorted(files)]
            continue
        builder = pfs.start_commit(target, description=f"ingest {folder}")
        added = []
        for path, (local, hashed) in sorted(files.items()):
            current = existing.get(path)
            if current is not None and current.sha256 == hashed.sha256:
                result.unchanged += 1
            else:
                builder.put_object(path, hashed.sha256, hashed.size)
                added.append(path)
            done.append((local, hashed))
        if added:
            result.commit = result.commits[target] = builder.finish().id
            result.added += added
            result.added_to[target] = len(added)
    if remove:
        for local, hashed in done:
            result.removed += _remove_if_unchanged(local, hashed)
    return result


def _folder_files(folder: Path) -> list[tuple[Path, str]]:
    """Every file below ``folder`` (symlinked folders not followed), with its path relative to it, sorted."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        base = Path(root)
        for name in sorted(names):
            local = base / name
            if local.is_file():
                found.append((local, local.relative_to(folder).as_posix()))
    return found


def _hash(pfs: Pfs, local: Path, info: os.stat_result, memo: IngestMemo) -> _Hashed:
    """The file's content in the object store and its sha256; read only when size or mtime moved."""
    fingerprint = (info.st_size, info.st_mtime_ns)
    known = memo.sha256(str(local), fingerprint)
    if known is not None and pfs.objects.exists(known):
        return _Hashed(info.st_size, info.st_mtime_ns, known)
    sha256, size = pfs.objects.put_path(local)  # hashes first, writes only a new object
    memo.remember(str(local), fingerprint, sha256)
    return _Hashed(size, info.st_mtime_ns, sha256)


def _remove_if_unchanged(local: Path, hashed: _Hashed) -> int:
    """Delete an ingested file, unless it changed after it was read (then the next pass takes it)."""
    try:
        info = local.stat()
        if (info.st_size, info.st_mtime_ns) != (hashed.size, hashed.mtime_ns):
            return 0
        local.unlink()
        return 1
    except OSError:
        return 0
