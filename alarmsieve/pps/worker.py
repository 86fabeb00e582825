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
import re
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
from alarmsieve.pps.code import code_files, runnable_cmd
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
    final: bool = False  # a failure that another attempt would only repeat (TransformError): not retried
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
    code_dir: Path | None = None  # the folder the spec was created from: relative script names resolve there


class TransformError(RuntimeError):
    """The transform did something alarmsieve cannot store or run as asked; the message names it and the fix."""


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
        self._inputs: dict[Path, tuple[DatumFile, tuple[int, int]]] = {}  # laid-out input -> (file, size+mtime)
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
        root = root.resolve()  # links in out/ are resolved to real paths: compare like with like
        self._inputs = {}
        for f in task.files:
            # Subprocess transforms get private copies: foreign code may write to its inputs.
            target = root / f.input / f.path.lstrip("/")
            self.objects.materialize(f.sha256, target, private_copy=self.stage is None)
            self._inputs[target] = (f, _stamp(target))
        return root

    def _collect(self, root: Path) -> list[tuple[str, str, int]]:
        """Every file under ``out/``; a symlink into the datum's inputs is stored as the file it names."""
        outputs: list[tuple[str, str, int]] = []
        out = root / "out"
        for folder, dirs, files in os.walk(out):
            here = Path(folder)
            for name in sorted(files) + sorted(d for d in dirs if (here / d).is_symlink()):
                path = here / name
                dest = "/" + path.relative_to(out).as_posix()
                if path.is_symlink():
                    outputs.extend(self._linked(path, dest, root))
                elif path.is_file():
                    sha256, size = self.objects.put_path(path)
                    outputs.append((dest, sha256, size))
        return sorted(outputs)

    def _linked(
        self, link: Path, dest: str, root: Path, within: frozenset[Path] = frozenset()
    ) -> list[tuple[str, str, int]]:
        """The outputs a symlink in ``out/`` stands for (Pachyderm's zero-copy ``ln -s /pfs/in/x /pfs/out/x``).

        The link may name its target as the command saw it (``/pfs/<input>/…`` inside the private mount,
        or under ``$PFS_ROOT``); the target must be a file or folder of the datum's inputs. A file of the
        inputs keeps its sha256 (the object store already holds it, so nothing is copied or hashed).
        """
        seen = _seen_root()
        shown = f"{seen}/{link.relative_to(root).as_posix()}"
        written = os.readlink(link)
        target = _resolve_in_datum(link, root)
        fix = "copy the file instead (cp, not ln -s), or link to a file of the datum's inputs"
        if target is None or target in within:  # within: the linked folders this link lies in
            raise TransformError(f"{shown} links to {written}, which is a symlink loop; {fix}")
        inputs = {f.input for f, _ in self._inputs.values()}
        inside = target.is_relative_to(root) and target != root and target.relative_to(root).parts[0] in inputs
        if not inside:
            raise TransformError(f"{shown} links to {written}, outside the datum's inputs; {fix}")
        if not target.exists():
            raise TransformError(f"{shown} links to {written}, which does not exist (a dangling link); {fix}")
        if target.is_file():
            return [(dest, *self._input_object(target))]
        outputs = []
        for folder, dirs, files in os.walk(target):
            here = Path(folder)
            for name in sorted(files) + sorted(d for d in dirs if (here / d).is_symlink()):
                path = here / name
                sub = dest + "/" + path.relative_to(target).as_posix()
                if path.is_symlink():
                    outputs.extend(self._linked(path, sub, root, within | {target}))
                elif path.is_file():
                    outputs.append((sub, *self._input_object(path)))
        return outputs

    def _input_object(self, path: Path) -> tuple[str, int]:
        """(sha256, size) of a file of the datum's inputs: the input's own hash while the file is as laid
        out; a file the transform changed or added is stored like any output."""
        known = self._inputs.get(path)
        if known is not None and _stamp(path) == known[1]:
            return known[0].sha256, known[0].size
        return self.objects.put_path(path)

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
        except TransformError as exc:  # the transform's mistake, said in one line: no traceback
            result.reason = str(exc)
            result.final = True
            if self.config.err_cmd:
                result.recovered = self._run_err_cmd(task, handler)
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
        code_dir = self.config.code_dir
        if code_dir is not None:
            cmd = runnable_cmd(cmd, code_dir)
            if "-m" in cmd:  # `python3 -m thumbs` finds the spec folder's module wherever it runs
                env["PYTHONPATH"] = os.pathsep.join(p for p in (str(code_dir), env.get("PYTHONPATH", "")) if p)
        if prefix is not None:
            cmd = [*prefix, "sh", "-c", _MOUNT_AND_RUN, "alarmsieve-pfs", str(root), *cmd]
        return subprocess.run(cmd, input=stdin, cwd=root, env=env, capture_output=True, text=True, check=False)

    @staticmethod
    def _log_streams(proc: Any, handler: _ListHandler) -> None:
        for stream, level in ((proc.stdout, "INFO"), (proc.stderr, "WARNING")):
            if stream.strip():
                handler.lines.append(LogLine(datetime.now(UTC), level, stream.strip()))

    def _run_subprocess(self, task: DatumTask, root: Path, handler: _ListHandler) -> None:
        unmounted = pfs_namespace() is None
        if unmounted:
            named = _literal_pfs(self.config.cmd, self.config.stdin)
            if named:
                raise TransformError(
                    f"this transform names the literal {named} but no private /pfs mount can be made here "
                    f"({pfs_unavailable_reason()}); use $PFS_ROOT/… (e.g. $PFS_ROOT/out) or the input's "
                    "variable instead, or run where the /pfs mount works (docs/troubleshooting.md)"
                )
        host_out = _host_out_listing() if unmounted else {}
        proc = self._spawn(self.config.cmd, self.config.stdin, task, root)
        self._log_streams(proc, handler)
        if proc.returncode == _MOUNT_FAILED:
            raise RuntimeError(f"could not mount the datum at {PFS_MOUNT}: {proc.stderr.strip()}")
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise RuntimeError(f"command {self.config.cmd} exited with code {proc.returncode}: " + " | ".join(tail))
        if unmounted:
            self._check_nothing_went_astray(root, host_out)

    def _check_nothing_went_astray(self, root: Path, before: dict[str, int]) -> None:
        """Without a private mount, output written to the literal /pfs/out lands on the host (or nowhere):
        fail the datum rather than commit an empty success."""
        wrote = sorted(p for p, stamp in _host_out_listing().items() if before.get(p) != stamp)
        unavailable = f"no private /pfs mount can be made here ({pfs_unavailable_reason()})"
        fix = "use $PFS_ROOT/out, or run where the /pfs mount works (docs/troubleshooting.md)"
        if wrote:
            shown = ", ".join(wrote[:3]) + (f" and {len(wrote) - 3} more" if len(wrote) > 3 else "")
            raise TransformError(
                f"this transform wrote {shown} to the machine's own {PFS_MOUNT}/out, not to the datum's output: "
                f"{unavailable}; {fix}"
            )
        if any(True for _ in (root / "out").iterdir()):
            return
        scripts = code_files(self.config.cmd, self.config.stdin, self.config.code_dir)
        for script in scripts:
            try:
                named = _literal_pfs([script.read_text(errors="replace")], [])
            except OSError:
                continue
            if named:
                raise TransformError(
                    f"this transform wrote no output, and {script} names the literal {named}, but {unavailable}; "
                    f"read the inputs from $PFS_ROOT/<input> and {fix}"
                )


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _seen_root() -> str:
    """How the command saw the datum's root: the literal /pfs in a private mount, else $PFS_ROOT."""
    return PFS_MOUNT if pfs_namespace() is not None else "$PFS_ROOT"


_MAX_LINK_HOPS = 40  # as the kernel's MAXSYMLINKS: more is a loop


def _resolve_in_datum(link: Path, root: Path) -> Path | None:
    """Where ``link`` points, read as the command saw it: an absolute target under the literal ``/pfs``
    is the datum's ``root`` (the command may have run in a private mount at /pfs). None for a loop."""
    pending = list(link.parts[1:])
    current = Path("/")
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            current = current.parent
            continue
        candidate = current / part
        if not candidate.is_symlink():
            current = candidate
            continue
        hops += 1
        if hops > _MAX_LINK_HOPS:
            return None
        target = os.readlink(candidate)
        if target == PFS_MOUNT or target.startswith(PFS_MOUNT + "/"):
            target = str(root) + target[len(PFS_MOUNT) :]
        if target.startswith("/"):
            current = Path("/")
            pending = list(Path(target).parts[1:]) + pending
        else:
            pending = list(Path(target).parts) + pending
    return current


# the literal /pfs as a path (not part of a longer name such as /data/pfs or /pfsx)
_LITERAL_PFS = re.compile(r"(?<![\w.$/-])/pfs(?:/[^\s'\";|&)]*)?(?![\w.-])")


def _literal_pfs(cmd: list[str], stdin: list[str]) -> str:
    """The first literal /pfs path the command text names, or ""."""
    for text in [*cmd, *stdin]:
        found = _LITERAL_PFS.search(text)
        if found:
            return found.group(0)
    return ""


def _host_out_listing(limit: int = 10000) -> dict[str, int]:
    """path -> mtime of the files under the machine's own /pfs/out (normally absent: {})."""
    listing: dict[str, int] = {}
    host_out = Path(PFS_MOUNT) / "out"
    if not host_out.is_dir():
        return listing
    for folder, _dirs, files in os.walk(host_out):
        for name in files:
            path = Path(folder) / name
            with contextlib.suppress(OSError):
                listing[str(path)] = path.lstat().st_mtime_ns
            if len(listing) >= limit:
                return listing
    return listing


# ---- a private /pfs for foreign commands -----------------------------------------------------------------

PFS_MOUNT = "/pfs"
_MOUNT_FAILED = 97
# $1 is the datum's scratch folder; the rest is the command. Runs inside the new mount namespace.
_MOUNT_AND_RUN = f'mount --bind "$1" {PFS_MOUNT} || exit {_MOUNT_FAILED}; shift; cd {PFS_MOUNT} && exec "$@"'
_namespace_probe: list[list[str] | None] = []
_probe_errors: list[str] = []  # what unshare said, for pfs_unavailable_reason


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


def pfs_unavailable_reason() -> str:
    """Why commands cannot get a private /pfs here, in words (for the error that names the fix)."""
    setting = os.environ.get("ALARMSIEVE_PFS_MOUNT", "auto")
    if setting.lower() in ("off", "0", "no", "false"):
        return f"ALARMSIEVE_PFS_MOUNT={setting}"
    if not Path(PFS_MOUNT).is_dir():
        return f"no {PFS_MOUNT} mount point: the machine's setup must run `mkdir {PFS_MOUNT}` as root"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    if pfs_namespace() is None:
        detail = f" ({_probe_errors[-1]})" if _probe_errors else ""
        return f"unshare cannot make a mount namespace{detail}: needs root or unprivileged user namespaces"
    return "the mount works"


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
        except (OSError, subprocess.TimeoutExpired) as exc:
            _probe_errors.append(str(exc))
            continue
        if probe.returncode == 0:
            return prefix
        said = probe.stderr.decode(errors="replace").strip().splitlines()
        _probe_errors.append(said[-1] if said else f"exit code {probe.returncode}")
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
