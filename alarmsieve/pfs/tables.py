"""PFS tables: repos, branches, commits, provenance and versioned file entries.

File history is stored MVCC-style per (repo, branch): a row is a file version that is live from the
commit sequence number ``added_seq`` up to (not including) ``removed_seq``. A commit therefore writes
only what changed, a tree at any commit is one indexed query, and a diff between two commits reads
only the rows that changed between them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from alarmsieve.pfs.db import Base


class RepoRow(Base):
    __tablename__ = "pfs_repos"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    origin: Mapped[str] = mapped_column(String(16), default="user")  # user | pipeline
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class BranchRow(Base):
    __tablename__ = "pfs_branches"
    repo_id: Mapped[int] = mapped_column(ForeignKey("pfs_repos.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    head_commit_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    head_seq: Mapped[int] = mapped_column(Integer, default=0)


class CommitRow(Base):
    __tablename__ = "pfs_commits"
    __table_args__ = (UniqueConstraint("repo_id", "branch", "seq"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    repo_id: Mapped[int] = mapped_column(ForeignKey("pfs_repos.id", ondelete="CASCADE"), index=True)
    branch: Mapped[str] = mapped_column(String(63))
    seq: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    origin: Mapped[str] = mapped_column(String(16), default="user")  # user | auto (made by a pipeline)
    description: Mapped[str] = mapped_column(Text, default="")
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    pipeline_version: Mapped[str | None] = mapped_column(String(80), nullable=True)
    files_added: Mapped[int] = mapped_column(Integer, default=0)
    files_removed: Mapped[int] = mapped_column(Integer, default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ProvenanceRow(Base):
    __tablename__ = "pfs_provenance"
    commit_id: Mapped[str] = mapped_column(ForeignKey("pfs_commits.id", ondelete="CASCADE"), primary_key=True)
    upstream_commit_id: Mapped[str] = mapped_column(String(32), primary_key=True, index=True)


class FileRow(Base):
    __tablename__ = "pfs_files"
    __table_args__ = (
        Index("ix_pfs_files_live", "repo_id", "branch", "path", "removed_seq"),
        Index("ix_pfs_files_added", "repo_id", "branch", "added_seq"),
        Index("ix_pfs_files_removed", "repo_id", "branch", "removed_seq"),
    )
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    repo_id: Mapped[int] = mapped_column(ForeignKey("pfs_repos.id", ondelete="CASCADE"))
    branch: Mapped[str] = mapped_column(String(63))
    path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    # opaque owner tag (pps puts the datum id here) so two writers of one path can be named
    tag: Mapped[str | None] = mapped_column(String(64), nullable=True)
    added_seq: Mapped[int] = mapped_column(Integer)
    removed_seq: Mapped[int | None] = mapped_column(Integer, nullable=True)
