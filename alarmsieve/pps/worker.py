"""A worker process: holds one pipeline's stage in memory and processes the datums it is handed.

Built-in stages (``alarmsieve stage NAME``) run in the worker's own interpreter, so the model is
loaded once; any other ``transform.cmd`` runs as a subprocess per datum with Pachyderm's layout and
environment. The worker lays each datum out in a private scratch folder, stores what the stage wrote
under ``out/`` in the object store, and sends back the list of output files: a worker killed mid-datum
therefore leaves nothing behind but orphan objects, and the datum is simply run again.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from alarmsieve.pfs.objects import open_object_store
from alarmsieve.stages.base import DatumContext, RepoSnapshot, SnapshotMemo, Stage, StageServices
from alarmsieve.stages.registry import build_stage, builtin_stage_of


@dataclass(frozen=True)
class DatumFile:
    input: str
    repo: str
    path: str
    sha256: str
    size: int


@dataclass
class DatumTask:
    job_id: str
    datum_id: str
    files: list[DatumFile]
    input_commit_times: dict[str, datetime]
    attempt: int = 1


@dataclass
class LogLine:
    ts: datetime
    level: str
    message: str


@dataclass
class DatumResult:
    job_id: str
    datum_id: str
    worker: str
    ok: bool
    outputs: list[tuple[str, str, int]] = field(default_factory=list)  # (path, sha256, size)
    recovered: bool = False  # the stage failed but err_cmd succeeded (Pachyderm's "recovered" datum)
    reason: str = ""
    traceback: str = ""
    seconds: float = 0.0
    logs: list[LogLine] = field(default_factory=list)


@dataclass
class WorkerConfig:
    worker_id: str
    pipeline: str
    pipeline_version: str
    cmd: list[str]
    stdin: list[str]
    env: dict[str, str]
    scratch: Path
    object_store: str
    catalog_url: str
    workspace: Path
    model_dir: Path | None
    model_cache: Path | None
    err_cmd: list[str] = field(default_factory=list)
    err_stdin: list[str] = field(default_factory=list)


@dataclass
class WorkerHello:
    worker: str
    pid: int
    identity: dict[str, str]
    error: str = ""


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[LogLine] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        self.lines.append(LogLine(datetime.fromtimestamp(record.created, UTC), record.levelname, text))


def _repo_readers(config: WorkerConfig) -> tuple[Any, Any]:
    """(read_repo, read_files) for StageServices: a whole repo head, or the files under one folder."""
    from alarmsieve.pfs.api import Pfs

    pfs = Pfs(config.catalog_url, open_object_store(config.object_store))
    memo = SnapshotMemo()

    def read_repo(repo: str, branch: str) -> RepoSnapshot:
        head = pfs.head(repo, branch)
        head_id = head.id if head is not None else None
        return memo.get(
            repo,
            branch,
            head_id,
            lambda: {info.path: pfs.objects.get_bytes(info.sha256 or "") for info in pfs.walk(repo, head_id or "")},
        )

    def read_files(repo: str, branch: str, prefix: str, suffix: str) -> RepoSnapshot:
        head = pfs.head(repo, branch)
        if head is None:
            return RepoSnapshot(None, {})
        wanted = [i for i in pfs.walk(repo, head.id, prefix) if i.path.endswith(suffix)]
        return RepoSnapshot(head.id, {i.path: pfs.objects.get_bytes(i.sha256 or "") for i in wanted})

    return read_repo, read_files


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.objects = open_object_store(config.object_store)
        self.stage: Stage | None = None
        builtin = builtin_stage_of(config.cmd)
        if builtin is not None:
            read_repo, read_files = _repo_readers(config)
            services = StageServices(
                workspace=config.workspace,
                catalog_url=config.catalog_url,
                model_dir=config.model_dir,
                model_cache=config.model_cache,
                read_repo=read_repo,
                read_files=read_files,
            )
            name, args = builtin
            self.stage = build_stage(name, args, services)

    def identity(self) -> dict[str, str]:
        if self.stage is not None:
            return self.stage.identity()
        return {"cmd": " ".join(self.config.cmd)}

    def _layout(self, task: DatumTask) -> Path:
        root = self.config.scratch / "pfs"
        shutil.rmtree(self.config.scratch, ignore_errors=True)
        (root / "out").mkdir(parents=True)
        for f in task.files:
            # Subprocess transforms get private copies: foreign code may write to its inputs.
            self.objects.materialize(f.sha256, root / f.input / f.path.lstrip("/"), private_copy=self.stage is None)
        return root

    def _collect(self, root: Path) -> list[tuple[str, str, int]]:
        outputs = []
        out = root / "out"
        for path in sorted(out.rglob("*")):
            if path.is_file() and not path.is_symlink():
                sha256, size = self.objects.put_path(path)
                outputs.append(("/" + path.relative_to(out).as_posix(), sha256, size))
        return outputs

    def run(self, task: DatumTask) -> DatumResult:
        started = time.perf_counter()
        handler = _ListHandler()
        logger = logging.getLogger(f"alarmsieve.stage.{self.config.pipeline}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        result = DatumResult(task.job_id, task.datum_id, self.config.worker_id, ok=False)
        stdout = io.StringIO()
        try:
            root = self._layout(task)
            ctx = DatumContext(
                pfs=root,
                pipeline=self.config.pipeline,
                job_id=task.job_id,
                datum_id=task.datum_id,
                pipeline_version=self.config.pipeline_version,
                input_commit_times=task.input_commit_times,
                log=logger,
            )
            if self.stage is not None:
                with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stdout):
                    self.stage.process(ctx)
            else:
                self._run_subprocess(task, root, handler)
            result.outputs = self._collect(root)
            result.ok = True
        except Exception as exc:
            result.reason = f"{type(exc).__name__}: {exc}"
            result.traceback = traceback.format_exc()
            if self.config.err_cmd:
                result.recovered = self._run_err_cmd(task, handler)
        finally:
            logger.removeHandler(handler)
        printed = stdout.getvalue().strip()
        if printed:
            handler.lines.append(LogLine(datetime.now(UTC), "INFO", printed))
        result.logs = handler.lines
        result.seconds = time.perf_counter() - started
        return result

    def _run_err_cmd(self, task: DatumTask, handler: _ListHandler) -> bool:
        """Pachyderm's err_cmd: run on the same datum after a failure; exit 0 means "recovered"."""
        root = self.config.scratch / "pfs"
        try:
            proc = self._spawn(self.config.err_cmd, self.config.err_stdin, task, root)
        except OSError as exc:
            handler.lines.append(LogLine(datetime.now(UTC), "ERROR", f"err_cmd could not run: {exc}"))
            return False
        self._log_streams(proc, handler)
        handler.lines.append(
            LogLine(
                datetime.now(UTC),
                "INFO" if proc.returncode == 0 else "ERROR",
                f"err_cmd {self.config.err_cmd} exited with code {proc.returncode}"
                + ("; datum recovered" if proc.returncode == 0 else ""),
            )
        )
        return proc.returncode == 0

    def _spawn(self, cmd: list[str], stdin_lines: list[str], task: DatumTask, root: Path) -> Any:
        """Run a foreign command on the datum, at ``/pfs`` in a private mount namespace when one is available."""
        prefix = pfs_namespace()
        seen = Path(PFS_MOUNT) if prefix is not None else root  # where the command sees the datum
        env = dict(os.environ)
        env.update(self.config.env)
        env.update(
            {
                "PACH_JOB_ID": task.job_id,
                "PACH_DATUM_ID": task.datum_id,
                "PPS_PIPELINE_NAME": self.config.pipeline,
                "PFS_ROOT": str(seen),
            }
        )
        for f in task.files:
            env.setdefault(f.input, str(seen / f.input / f.path.lstrip("/")))
        stdin = "\n".join(stdin_lines) + "\n" if stdin_lines else None
        if prefix is not None:
            cmd = [*prefix, "sh", "-c", _MOUNT_AND_RUN, "alarmsieve-pfs", str(root), *cmd]
        return subprocess.run(cmd, input=stdin, cwd=root, env=env, capture_output=True, text=True, check=False)

    @staticmethod
    def _log_streams(proc: Any, handler: _ListHandler) -> None:
        for stream, level in ((proc.stdout, "INFO"), (proc.stderr, "WARNING")):
            if stream.strip():
                handler.lines.append(LogLine(datetime.now(UTC), level, stream.strip()))

    def _run_subprocess(self, task: DatumTask, root: Path, handler: _ListHandler) -> None:
        proc = self._spawn(self.config.cmd, self.config.stdin, task, root)
        self._log_streams(proc, handler)
        if proc.returncode == _MOUNT_FAILED:
            raise RuntimeError(f"could not mount the datum at {PFS_MOUNT}: {proc.stderr.strip()}")
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise RuntimeError(f"command {self.config.cmd} exited with code {proc.returncode}: " + " | ".join(tail))


# ---- a private /pfs for foreign commands -----------------------------------------------------------------

PFS_MOUNT = "/pfs"
_MOUNT_FAILED = 97
# $1 is the datum's scratch folder; the rest is the command. Runs inside the new mount namespace.
_MOUNT_AND_RUN = f'mount --bind "$1" {PFS_MOUNT} || exit {_MOUNT_FAILED}; shift; cd {PFS_MOUNT} && exec "$@"'
_namespace_probe: list[list[str] | None] = []


def pfs_namespace() -> list[str] | None:
    """The ``unshare`` prefix that gives a command a private mount namespace with the datum at ``/pfs``.

    Pachyderm code reads ``/pfs/<input>`` and writes ``/pfs/out``; with this, such code runs unchanged.
    Needs the empty mount point ``/pfs`` (made once by the machine's setup, as root: ``mkdir /pfs``) and
    ``unshare`` (util-linux) allowed to make a mount namespace (root, or unprivileged user namespaces).
    Without them, or with ``ALARMSIEVE_PFS_MOUNT=off``, commands get ``$PFS_ROOT`` (a scratch folder).
    Whether ``unshare`` works is probed once per worker process; the mount point is checked every time.
    """
    if os.environ.get("ALARMSIEVE_PFS_MOUNT", "auto").lower() in ("off", "0", "no", "false"):
        return None
    if not Path(PFS_MOUNT).is_dir():
        return None
    if not _namespace_probe:
        _namespace_probe.append(_probe_namespace())
    return _namespace_probe[0]


def _probe_namespace() -> list[str] | None:
    if not Path(PFS_MOUNT).is_dir() or shutil.which("unshare") is None:
        return None
    for prefix in (
        ["unshare", "--mount", "--propagation", "private"],
        ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"],
    ):
        try:
            probe = subprocess.run(
                [*prefix, "sh", "-c", _MOUNT_AND_RUN, "probe", "/", "true"], capture_output=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return prefix
    return None


def worker_main(conn: Connection, config: WorkerConfig) -> None:
    """Entry point of a worker process: build the stage once, then serve datums until told to stop."""
    try:
        worker = Worker(config)
    except Exception as exc:
        conn.send(WorkerHello(config.worker_id, os.getpid(), {}, error=f"{type(exc).__name__}: {exc}"))
        return
    conn.send(WorkerHello(config.worker_id, os.getpid(), worker.identity()))
    while True:
        try:
            task = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if task is None:
            return
        for one in task if isinstance(task, list) else [task]:  # a batch: one result per datum, as each ends
            conn.send(worker.run(one))
