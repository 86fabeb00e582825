"""The PFS API: repos, commits, branches, files and provenance over a catalog and an object store.

A commit is made by a :class:`CommitBuilder`: file bodies go to the object store first (idempotent,
content-addressed), then one database transaction records the changes and moves the branch head.
A process killed before that transaction leaves no commit and no half-state behind.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from alarmsieve.pfs.db import get_engine
from alarmsieve.pfs.objects import ObjectStore
from alarmsieve.pfs.paths import (
    PathError,
    check_repo_name,
    normalize_path,
    parent_dirs,
    prefix_upper_bound,
)
from alarmsieve.pfs.tables import BranchRow, CommitRow, FileRow, ProvenanceRow, RepoRow


class PfsError(Exception):
    """A PFS request that cannot be done; the message says why and what to do."""


class RepoNotFoundError(PfsError):
    pass


class CommitNotFoundError(PfsError):
    pass


class FileNotFoundInCommitError(PfsError):
    pass


class RepoInfo(BaseModel):
    name: str
    description: str
    origin: str
    created_at: datetime
    head: str | None
    file_count: int
    size_bytes: int


class CommitInfo(BaseModel):
    id: str
    repo: str
    branch: str
    seq: int
    parent: str | None
    origin: str
    description: str
    job_id: str | None
    pipeline_version: str | None
    provenance: list[str]
    files_added: int
    files_removed: int
    size_bytes: int
    created_at: datetime
    finished_at: datetime


class FileInfo(BaseModel):
    path: str
    type: str  # file | dir
    size: int
    sha256: str | None = None
    tag: str | None = None


class FileVersion(BaseModel):
    """One version of one path: written by ``commit`` and live until ``removed_by`` (None: still live)."""

    path: str
    commit: str
    committed_at: datetime
    sha256: str | None
    size: int
    tag: str | None = None
    removed_by: str | None = None
    removed_at: datetime | None = None


class FileChange(BaseModel):
    path: str
    op: str  # added | modified | removed
    old_sha256: str | None = None
    new_sha256: str | None = None
    size: int = 0


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


COMMIT_ID_LENGTH = 32  # uuid4().hex


@dataclass
class _Resolved:
    repo_id: int
    repo: str
    branch: str
    seq: int
    commit_id: str | None


@dataclass
class _Put:
    sha256: str
    size: int
    tag: str | None


@dataclass
class CommitBuilder:
    """Collects the changes of one commit; nothing is visible until :meth:`finish`."""

    pfs: Pfs
    repo: str
    branch: str
    origin: str = "user"
    description: str = ""
    provenance: list[str] = field(default_factory=list)
    job_id: str | None = None
    pipeline_version: str | None = None
    # called inside the commit's own transaction, so that records of other layers (a job's datum
    # index) change atomically with the commit
    on_commit: Callable[[Session, CommitInfo], None] | None = None
    _puts: dict[str, _Put] = field(default_factory=dict)
    _deletes: list[str] = field(default_factory=list)
    finished: CommitInfo | None = None

    def put_bytes(self, path: str, data: bytes, *, tag: str | None = None) -> str:
        sha256 = self.pfs.objects.put_bytes(data)
        self.put_object(path, sha256, len(data), tag=tag)
        return sha256

    def put_stream(self, path: str, stream: BinaryIO, *, tag: str | None = None) -> str:
        sha256, size = self.pfs.objects.put_stream(stream)
        self.put_object(path, sha256, size, tag=tag)
        return sha256

    def put_local_file(self, path: str, local: Path, *, tag: str | None = None) -> str:
        sha256, size = self.pfs.objects.put_path(local)
        self.put_object(path, sha256, size, tag=tag)
        return sha256

    def put_object(self, path: str, sha256: str, size: int, *, tag: str | None = None) -> None:
        path = normalize_path(path)
        if path == "/":
            raise PathError("cannot put a file at the repo root '/'; give a file name, e.g. /cam-1/0001.jpg")
        self._puts[path] = _Put(sha256, size, tag)

    def delete(self, path: str) -> None:
        """Delete a file, or a directory with everything below it."""
        path = normalize_path(path)
        self._puts.pop(path, None)
        self._deletes.append(path)

    def pending_puts(self) -> dict[str, str]:
        """Path -> sha256 of the files this commit will put (for checks before :meth:`finish`)."""
        return {path: put.sha256 for path, put in self._puts.items()}

    def finish(self) -> CommitInfo:
        if self.finished is None:
            self.finished = self.pfs._commit(self)
        return self.finished


class Pfs:
    def __init__(self, catalog_url: str, objects: ObjectStore) -> None:
        self.catalog_url = catalog_url
        self.engine = get_engine(catalog_url)
        self.objects = objects

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # ---- repos -------------------------------------------------------------------------------------
    def create_repo(self, name: str, *, description: str = "", origin: str = "user", exist_ok: bool = False) -> None:
        check_repo_name(name)
        with self.session() as s, s.begin():
            existing = s.scalar(select(RepoRow).where(RepoRow.name == name))
            if existing is not None:
                if exist_ok:
                    return
                raise PfsError(f"repo {name!r} already exists; pick another name or use the existing repo")
            row = RepoRow(name=name, description=description, origin=origin, created_at=_now())
            s.add(row)
            s.flush()
            s.add(BranchRow(repo_id=row.id, name="master", head_commit_id=None, head_seq=0))

    def repo_exists(self, name: str) -> bool:
        with self.session() as s:
            return s.scalar(select(RepoRow.id).where(RepoRow.name == name)) is not None

    def _repo_row(self, s: Session, name: str) -> RepoRow:
        row = s.scalar(select(RepoRow).where(RepoRow.name == name))
        if row is None:
            known = ", ".join(s.scalars(select(RepoRow.name).order_by(RepoRow.name))) or "none yet"
            raise RepoNotFoundError(f"repo {name!r} not found (repos: {known}); create it with `create repo {name}`")
        return row

    def list_repos(self) -> list[RepoInfo]:
        with self.session() as s:
            out = []
            for row in s.scalars(select(RepoRow).order_by(RepoRow.name)):
                branch = s.get(BranchRow, (row.id, "master"))
                seq = branch.head_seq if branch else 0
                count, size = s.execute(
                    select(func.count(FileRow.id), func.coalesce(func.sum(FileRow.size), 0)).where(
                        *self._live(row.id, "master", seq)
                    )
                ).one()
                out.append(
                    RepoInfo(
                        name=row.name,
                        description=row.description,
                        origin=row.origin,
                        created_at=_aware(row.created_at),
                        head=branch.head_commit_id if branch else None,
                        file_count=count,
                        size_bytes=int(size),
                    )
                )
            return out

    def delete_repo(self, name: str) -> None:
        with self.session() as s, s.begin():
            row = self._repo_row(s, name)
            s.query(FileRow).filter(FileRow.repo_id == row.id).delete()
            commit_ids = list(s.scalars(select(CommitRow.id).where(CommitRow.repo_id == row.id)))
            if commit_ids:
                s.query(ProvenanceRow).filter(ProvenanceRow.commit_id.in_(commit_ids)).delete()
            s.query(CommitRow).filter(CommitRow.repo_id == row.id).delete()
            s.query(BranchRow).filter(BranchRow.repo_id == row.id).delete()
            s.delete(row)

    # ---- commits -----------------------------------------------------------------------------------
    def start_commit(
        self,
        repo: str,
        branch: str = "master",
        *,
        origin: str = "user",
        description: str = "",
        provenance: Iterable[str] = (),
        job_id: str | None = None,
        pipeline_version: str | None = None,
    ) -> CommitBuilder:
        if branch != "master":
            raise PfsError(f"branch {branch!r}: only the 'master' branch is supported in this version")
        with self.session() as s:
            self._repo_row(s, repo)
        return CommitBuilder(
            self,
            repo,
            branch,
            origin=origin,
            description=description,
            provenance=list(provenance),
            job_id=job_id,
            pipeline_version=pipeline_version,
        )

    @staticmethod
    def _live(repo_id: int, branch: str, seq: int) -> tuple:
        return (
            FileRow.repo_id == repo_id,
            FileRow.branch == branch,
            # "+ 0" keeps SQLite off the added_seq index: every live row passes this test, so that
            # index would scan the whole repo where the (path, removed_seq) index finds one row.
            (FileRow.added_seq + 0) <= seq,
            or_(FileRow.removed_seq.is_(None), FileRow.removed_seq > seq),
        )

    def _commit(self, b: CommitBuilder) -> CommitInfo:
        with self.session() as s, s.begin():
            repo = self._repo_row(s, b.repo)
            # The write comes first: it takes the lock that serialises the branch's committers (PostgreSQL's
            # row lock, SQLite's write lock). A locking read is not enough on SQLite, where the driver opens
            # the transaction at the first write: two committers could both read the same head first.
            s.execute(
                update(BranchRow)
                .where(BranchRow.repo_id == repo.id, BranchRow.name == b.branch)
                .values(head_seq=BranchRow.head_seq)
            )
            branch = s.scalar(select(BranchRow).where(BranchRow.repo_id == repo.id, BranchRow.name == b.branch))
            if branch is None:
                branch = BranchRow(repo_id=repo.id, name=b.branch, head_commit_id=None, head_seq=0)
                s.add(branch)
                s.flush()
            old_seq = branch.head_seq
            seq = old_seq + 1
            live = self._live(repo.id, b.branch, old_seq)
            removed = 0
            for path in b._deletes:
                if path == "/":
                    cond = ()
                else:
                    cond = (
                        or_(
                            FileRow.path == path,
                            and_(FileRow.path > path + "/", FileRow.path < prefix_upper_bound(path)),
                        ),
                    )
                removed += s.execute(update(FileRow).where(*live, *cond).values(removed_seq=seq)).rowcount or 0
            added = 0
            size = 0
            if b._puts:
                paths = sorted(b._puts)
                current: dict[str, FileRow] = {}
                for chunk_start in range(0, len(paths), 500):
                    chunk = paths[chunk_start : chunk_start + 500]
                    for row in s.scalars(
                        select(FileRow).where(*self._live(repo.id, b.branch, seq), FileRow.path.in_(chunk))
                    ):
                        current[row.path] = row
                self._check_no_file_dir_clash(s, repo.id, b.branch, seq, paths)
                with s.no_autoflush:  # one batched INSERT at the end, not a flush per row
                    for path in paths:
                        put = b._puts[path]
                        existing = current.get(path)
                        if existing is not None:
                            if existing.sha256 == put.sha256 and existing.tag == put.tag:
                                continue
                            existing.removed_seq = seq
                            removed += 1
                        s.add(
                            FileRow(
                                repo_id=repo.id,
                                branch=b.branch,
                                path=path,
                                sha256=put.sha256,
                                size=put.size,
                                tag=put.tag,
                                added_seq=seq,
                                removed_seq=None,
                            )
                        )
                        added += 1
                        size += put.size
            now = _now()
            commit = CommitRow(
                id=uuid.uuid4().hex,
                repo_id=repo.id,
                branch=b.branch,
                seq=seq,
                parent_id=branch.head_commit_id,
                origin=b.origin,
                description=b.description,
                job_id=b.job_id,
                pipeline_version=b.pipeline_version,
                files_added=added,
                files_removed=removed,
                size_bytes=size,
                created_at=now,
                finished_at=now,
            )
            s.add(commit)
            s.flush()
            for upstream in dict.fromkeys(b.provenance):
                s.add(ProvenanceRow(commit_id=commit.id, upstream_commit_id=upstream))
            branch.head_commit_id = commit.id
            branch.head_seq = seq
            s.flush()
            info = self._commit_info(s, commit, b.repo)
            if b.on_commit is not None:
                b.on_commit(s, info)
            return info

    def _check_no_file_dir_clash(self, s: Session, repo_id: int, branch: str, seq: int, paths: list[str]) -> None:
        """Refuse a put whose parent is a file, or whose path is a directory: a few batched queries."""
        live = self._live(repo_id, branch, seq)
        new_set = set(paths)
        parent_of: dict[str, str] = {}
        for path in paths:
            for ancestor in parent_dirs(path):
                parent_of.setdefault(ancestor, path)
        clashing = sorted(new_set & set(parent_of))
        for start in range(0, len(parent_of), 500):
            if clashing:
                break
            chunk = sorted(parent_of)[start : start + 500]
            clashing = list(s.scalars(select(FileRow.path).where(*live, FileRow.path.in_(chunk)).limit(1)))
        if clashing:
            raise PfsError(
                f"cannot put {parent_of[clashing[0]]}: {clashing[0]} is a file, not a directory; delete it first"
            )
        for start in range(0, len(paths), 100):
            chunk = paths[start : start + 100]
            below = s.scalar(
                select(FileRow.path)
                .where(*live, or_(*(and_(FileRow.path > p + "/", FileRow.path < prefix_upper_bound(p)) for p in chunk)))
                .limit(1)
            )
            if below is not None:
                path = next(p for p in chunk if below.startswith(p + "/"))
                raise PfsError(
                    f"cannot put {path}: it is a directory (holds {below}); delete it first or pick another name"
                )

    def _commit_info(self, s: Session, row: CommitRow, repo_name: str) -> CommitInfo:
        provenance = list(s.scalars(select(ProvenanceRow.upstream_commit_id).where(ProvenanceRow.commit_id == row.id)))
        return CommitInfo(
            id=row.id,
            repo=repo_name,
            branch=row.branch,
            seq=row.seq,
            parent=row.parent_id,
            origin=row.origin,
            description=row.description,
            job_id=row.job_id,
            pipeline_version=row.pipeline_version,
            provenance=provenance,
            files_added=row.files_added,
            files_removed=row.files_removed,
            size_bytes=row.size_bytes,
            created_at=_aware(row.created_at),
            finished_at=_aware(row.finished_at),
        )

    def _resolve(self, s: Session, repo: str, ref: str = "master") -> _Resolved:
        if len(ref) == COMMIT_ID_LENGTH:  # a whole commit id, as the runner passes them: one query
            hit = s.execute(
                select(CommitRow.repo_id, CommitRow.branch, CommitRow.seq)
                .join(RepoRow, RepoRow.id == CommitRow.repo_id)
                .where(CommitRow.id == ref, RepoRow.name == repo)
            ).one_or_none()
            if hit is not None:
                return _Resolved(hit.repo_id, repo, hit.branch, hit.seq, ref)
        repo_row = self._repo_row(s, repo)
        branch = s.get(BranchRow, (repo_row.id, ref))
        if branch is not None:
            return _Resolved(repo_row.id, repo, ref, branch.head_seq, branch.head_commit_id)
        if len(ref) >= 6:
            rows = list(
                s.scalars(
                    select(CommitRow).where(CommitRow.repo_id == repo_row.id, CommitRow.id.startswith(ref)).limit(2)
                )
            )
            if len(rows) == 1:
                return _Resolved(repo_row.id, repo, rows[0].branch, rows[0].seq, rows[0].id)
            if len(rows) > 1:
                raise CommitNotFoundError(f"{repo}@{ref}: the prefix matches several commits; give more characters")
        raise CommitNotFoundError(
            f"{repo}@{ref}: no such branch or commit; see `list commit {repo}` for the commit ids"
        )

    def head(self, repo: str, branch: str = "master") -> CommitInfo | None:
        with self.session() as s:
            # One query for the common case (asked before every job of every pipeline); the slow path
            # below names what is missing, or resolves a commit id given as the branch.
            row = s.scalar(
                select(CommitRow)
                .join(BranchRow, BranchRow.head_commit_id == CommitRow.id)
                .join(RepoRow, RepoRow.id == BranchRow.repo_id)
                .where(RepoRow.name == repo, BranchRow.name == branch)
            )
            if row is not None:
                return self._commit_info(s, row, repo)
            r = self._resolve(s, repo, branch)
            if r.commit_id is None:
                return None
            return self._commit_info(s, s.get(CommitRow, r.commit_id), repo)  # type: ignore[arg-type]

    def inspect_commit(self, repo: str, ref: str = "master") -> CommitInfo:
        with self.session() as s:
            r = self._resolve(s, repo, ref)
            if r.commit_id is None:
                raise CommitNotFoundError(f"{repo}@{ref} has no commits yet; put a file first")
            return self._commit_info(s, s.get(CommitRow, r.commit_id), repo)  # type: ignore[arg-type]

    def get_commit(self, commit_id: str) -> CommitInfo:
        with self.session() as s:
            row = s.get(CommitRow, commit_id)
            if row is None:
                raise CommitNotFoundError(f"commit {commit_id} not found")
            repo = s.get(RepoRow, row.repo_id)
            return self._commit_info(s, row, repo.name if repo else "?")

    def list_commits(self, repo: str, *, limit: int | None = None) -> list[CommitInfo]:
        with self.session() as s:
            repo_row = self._repo_row(s, repo)
            q = select(CommitRow).where(CommitRow.repo_id == repo_row.id).order_by(CommitRow.seq.desc())
            if limit:
                q = q.limit(limit)
            return [self._commit_info(s, row, repo) for row in s.scalars(q)]

    def subvenance(self, commit_id: str) -> list[CommitInfo]:
        """Commits made from this one (its direct downstream)."""
        with self.session() as s:
            ids = list(s.scalars(select(ProvenanceRow.commit_id).where(ProvenanceRow.upstream_commit_id == commit_id)))
            out = []
            for cid in ids:
                row = s.get(CommitRow, cid)
                if row is not None:
                    repo = s.get(RepoRow, row.repo_id)
                    out.append(self._commit_info(s, row, repo.name if repo else "?"))
            return out

    # ---- files -------------------------------------------------------------------------------------
    def walk(self, repo: str, ref: str = "master", prefix: str = "/") -> Iterator[FileInfo]:
        """Every file at or below ``prefix``, in path order."""
        prefix = normalize_path(prefix)
        with self.session() as s:
            r = self._resolve(s, repo, ref)
            q = select(FileRow.path, FileRow.size, FileRow.sha256, FileRow.tag).where(
                *self._live(r.repo_id, r.branch, r.seq)
            )
            if prefix != "/":
                q = q.where(
                    # the outer range lets the path index bound the scan; the or_ alone cannot
                    FileRow.path >= prefix,
                    FileRow.path < prefix_upper_bound(prefix),
                    or_(
                        FileRow.path == prefix,
                        and_(FileRow.path > prefix + "/", FileRow.path < prefix_upper_bound(prefix)),
                    ),
                )
            for path, size, sha256, tag in s.execute(q.order_by(FileRow.path)):
                yield FileInfo(path=path, type="file", size=size, sha256=sha256, tag=tag)

    def walk_many(self, repo: str, ref: str, prefixes: Iterable[str]) -> Iterator[FileInfo]:
        """Every file at or below any of ``prefixes`` (each file once), in one session.

        One index range scan per prefix: an OR of ranges in one statement would make SQLite scan the
        whole repo, and planning must cost what changed, not what the repo holds.
        """
        wanted = sorted({normalize_path(p) for p in prefixes})
        if "/" in wanted:
            yield from self.walk(repo, ref)
            return
        seen: set[str] = set()
        with self.session() as s:
            r = self._resolve(s, repo, ref)
            live = self._live(r.repo_id, r.branch, r.seq)
            for prefix in wanted:
                q = select(FileRow.path, FileRow.size, FileRow.sha256, FileRow.tag).where(
                    *live,
                    FileRow.path >= prefix,
                    FileRow.path < prefix_upper_bound(prefix),
                    or_(FileRow.path == prefix, FileRow.path > prefix + "/"),
                )
                for path, size, sha256, tag in s.execute(q):
                    if path not in seen:
                        seen.add(path)
                        yield FileInfo(path=path, type="file", size=size, sha256=sha256, tag=tag)

    def list_files(self, repo: str, ref: str = "master", path: str = "/") -> list[FileInfo]:
        """Direct children of a directory (or the file itself), like ``pachctl list file``."""
        path = normalize_path(path)
        children: dict[str, FileInfo] = {}
        base = "" if path == "/" else path
        for info in self.walk(repo, ref, path):
            if info.path == path:
                return [info]
            rest = info.path[len(base) + 1 :]
            name, sep, _ = rest.partition("/")
            child = f"{base}/{name}"
            if sep:
                entry = children.setdefault(child, FileInfo(path=child, type="dir", size=0))
                entry.size += info.size
            else:
                children[child] = info
        if not children and path != "/":
            raise FileNotFoundInCommitError(f"{repo}@{ref}:{path} not found")
        return list(children.values())

    def lookup(self, repo: str, ref: str, paths: Iterable[str]) -> dict[str, FileInfo]:
        """Those of ``paths`` that are live files at ``ref``."""
        wanted = sorted({normalize_path(p) for p in paths})
        out: dict[str, FileInfo] = {}
        with self.session() as s:
            r = self._resolve(s, repo, ref)
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                q = select(FileRow.path, FileRow.size, FileRow.sha256, FileRow.tag).where(
                    *self._live(r.repo_id, r.branch, r.seq), FileRow.path.in_(chunk)
                )
                for path, size, sha256, tag in s.execute(q):
                    out[path] = FileInfo(path=path, type="file", size=size, sha256=sha256, tag=tag)
        return out

    def file_versions(self, repo: str, path: str, branch: str = "master") -> list[FileVersion]:
        """Every version of one file path on a branch, oldest first (read-only; one indexed query).

        A version is a ``pfs_files`` row: live from its commit (``added_seq``) until the commit that
        replaced or deleted it (``removed_seq``). Rewriting a file with the same bytes can make a new version.
        """
        path = normalize_path(path)
        with self.session() as s:
            r = self._resolve(s, repo, branch)
            # sorted here: an ORDER BY added_seq makes SQLite walk the repo's added_seq index instead of
            # finding the path's few rows by the path index
            rows = sorted(
                s.execute(
                    select(FileRow.sha256, FileRow.size, FileRow.tag, FileRow.added_seq, FileRow.removed_seq).where(
                        FileRow.repo_id == r.repo_id, FileRow.branch == r.branch, FileRow.path == path
                    )
                ).all(),
                key=lambda row: row.added_seq,
            )
            seqs = {seq for row in rows for seq in (row.added_seq, row.removed_seq) if seq is not None}
            commits = {
                seq: (cid, _aware(created))
                for cid, seq, created in s.execute(
                    select(CommitRow.id, CommitRow.seq, CommitRow.created_at).where(
                        CommitRow.repo_id == r.repo_id, CommitRow.branch == r.branch, CommitRow.seq.in_(seqs)
                    )
                )
            }
        out = []
        for row in rows:
            if row.added_seq not in commits:  # its commit was deleted (`delete commit`): not a version any more
                continue
            added_by, added_at = commits[row.added_seq]
            removed = commits.get(row.removed_seq) if row.removed_seq is not None else None
            out.append(
                FileVersion(
                    path=path,
                    commit=added_by,
                    committed_at=added_at,
                    sha256=row.sha256,
                    size=row.size,
                    tag=row.tag,
                    removed_by=removed[0] if removed else None,
                    removed_at=removed[1] if removed else None,
                )
            )
        return out

    def get_file(self, repo: str, ref: str, path: str) -> bytes:
        path = normalize_path(path)
        found = self.lookup(repo, ref, [path]).get(path)
        if found is None or found.sha256 is None:
            raise FileNotFoundInCommitError(f"{repo}@{ref}:{path} is not a file; see `list file {repo}@{ref}:{path}`")
        return self.objects.get_bytes(found.sha256)

    def diff(self, repo: str, from_ref: str | None, to_ref: str = "master") -> list[FileChange]:
        """File changes between two commits of one branch (``from_ref`` None: from the empty repo)."""
        with self.session() as s:
            new = self._resolve(s, repo, to_ref)
            old_seq = 0
            if from_ref is not None:
                old = self._resolve(s, repo, from_ref)
                old_seq = old.seq
            lo, hi = sorted((old_seq, new.seq))
            rows = s.execute(
                select(FileRow.path, FileRow.sha256, FileRow.size, FileRow.added_seq, FileRow.removed_seq).where(
                    FileRow.repo_id == new.repo_id,
                    FileRow.branch == new.branch,
                    or_(
                        and_(FileRow.added_seq > lo, FileRow.added_seq <= hi),
                        and_(FileRow.removed_seq > lo, FileRow.removed_seq <= hi),
                    ),
                )
            ).all()

        def alive(added: int, removed: int | None, at: int) -> bool:
            return added <= at and (removed is None or removed > at)

        before: dict[str, tuple[str, int]] = {}
        after: dict[str, tuple[str, int]] = {}
        for path, sha256, size, added, removed in rows:
            if alive(added, removed, old_seq):
                before[path] = (sha256, size)
            if alive(added, removed, new.seq):
                after[path] = (sha256, size)
        changes = []
        for path in sorted(set(before) | set(after)):
            b, a = before.get(path), after.get(path)
            if b and a:
                if b[0] != a[0]:
                    changes.append(FileChange(path=path, op="modified", old_sha256=b[0], new_sha256=a[0], size=a[1]))
            elif a:
                changes.append(FileChange(path=path, op="added", new_sha256=a[0], size=a[1]))
            elif b:
                changes.append(FileChange(path=path, op="removed", old_sha256=b[0], size=b[1]))
        return changes
