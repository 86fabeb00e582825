"""The stage contract, Pachyderm's: read ``<pfs>/<input name>/<path>``, write ``<pfs>/out/<path>``.

A stage is built once per worker (so it can hold a model in memory) and then handed datums one
after another. It knows nothing of SQL or object stores: what it may need from outside (another
repo's files, the notification ledger's database) comes through :class:`StageServices`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import ClassVar


class StageUsageError(ValueError):
    """Bad stage arguments in a pipeline's ``transform.cmd``."""


@dataclass(frozen=True)
class RepoSnapshot:
    commit_id: str | None
    files: dict[str, bytes]


class SnapshotMemo:
    """The last snapshot read of each repo branch: commits are immutable, so an unchanged head is not read again.

    Stages read a small repo (rules, notification config) at the start of every job; with this a job
    on the same rules costs one head lookup instead of a walk and a read of every file.
    """

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], RepoSnapshot] = {}

    def get(self, repo: str, branch: str, head: str | None, read: Callable[[], dict[str, bytes]]) -> RepoSnapshot:
        if head is None:
            return RepoSnapshot(None, {})
        known = self._last.get((repo, branch))
        if known is None or known.commit_id != head:
            known = self._last[(repo, branch)] = RepoSnapshot(head, read())
        return known


@dataclass
class StageServices:
    """What the embedded runtime offers a stage; every field is optional under a real Pachyderm."""

    workspace: Path | None = None
    catalog_url: str | None = None
    model_dir: Path | None = None
    model_cache: Path | None = None
    read_repo: Callable[[str, str], RepoSnapshot] | None = None
    # (repo, branch, prefix, suffix): the files under a folder whose names end with suffix (assess: bursts)
    read_files: Callable[[str, str, str, str], RepoSnapshot] | None = None


@dataclass
class DatumContext:
    pfs: Path
    pipeline: str = ""
    job_id: str = ""
    datum_id: str = ""
    pipeline_version: str = ""
    # commit time of each input's commit, the fallback time of an alarm without EXIF or file-name time
    input_commit_times: dict[str, datetime] = field(default_factory=dict)
    log: logging.Logger | logging.LoggerAdapter = field(default_factory=lambda: logging.getLogger("alarmsieve.stage"))

    @property
    def out(self) -> Path:
        return self.pfs / "out"

    def inputs(self) -> list[Path]:
        """The input folders of this datum (every folder under ``<pfs>`` except ``out``)."""
        return sorted(p for p in self.pfs.iterdir() if p.is_dir() and p.name != "out")


class Stage(ABC):
    name: ClassVar[str]
    # Bump when the stage's behaviour changes: it is part of the pipeline version.
    code_version: ClassVar[str] = "1"

    def __init__(self, args: Sequence[str], services: StageServices) -> None:
        self.args = list(args)
        self.services = services

    def identity(self) -> dict[str, str]:
        """What makes this stage's output what it is (code version, model sha256)."""
        return {"stage": self.name, "code_version": self.code_version}

    @abstractmethod
    def process(self, ctx: DatumContext) -> None: ...


def fault_point(name: str) -> None:
    """Crash-test hook: SIGKILL this process once at the point named by ``ALARMSIEVE_FAULT``.

    The tests use it to kill a worker at an exact place (e.g. between "pending" and "sent"), which a
    timer-based kill cannot hit reliably. A marker file in ``ALARMSIEVE_FAULT_DIR`` makes it fire once.
    """
    import os
    import signal

    if os.environ.get("ALARMSIEVE_FAULT") != name:
        return
    marker = Path(os.environ.get("ALARMSIEVE_FAULT_DIR", ".")) / f"fault-{name}.fired"
    try:  # O_EXCL: of several workers reaching the point at once, exactly one fires
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
