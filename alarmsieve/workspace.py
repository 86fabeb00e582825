"""The embedded workspace: where the catalog, the object store, the outbox and the runner lock live.

It wires the layers together from :class:`~alarmsieve.config.Settings` (``ALARMSIEVE_HOME``,
``ALARMSIEVE_CATALOG_URL``, ``ALARMSIEVE_MODEL_DIR`` …) and knows the default setup: repos
``images`` (snapshots), ``videos`` (clips) and ``rules`` (with the default rules file) and the pipelines in
``pipelines/*.json``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import alarmsieve
from alarmsieve.config import Settings, load_settings
from alarmsieve.migrations import upgrade
from alarmsieve.pfs.api import Pfs
from alarmsieve.pfs.objects import open_object_store
from alarmsieve.pps.api import Pps
from alarmsieve.pps.ops import Operations
from alarmsieve.pps.runner import JobProgress, Runner, RuntimePaths
from alarmsieve.pps.spec import PipelineSpec, load_spec_file
from alarmsieve.stages.base import StageServices
from alarmsieve.stages.registry import build_stage, builtin_stage_of

DEFAULT_REPOS = ("images", "videos", "rules")
RULES_FILE = "/default.yaml"


class WorkspaceError(RuntimeError):
    pass


def default_pipelines_dir() -> Path:
    """``pipelines/`` of the source tree the package runs from, else of the current folder."""
    beside_package = Path(alarmsieve.__file__).resolve().parents[1] / "pipelines"
    return beside_package if beside_package.is_dir() else Path.cwd() / "pipelines"


class Workspace:
    def __init__(self, settings: Settings | None = None, *, must_exist: bool = True) -> None:
        self.settings = settings or load_settings()
        self.home = self.settings.resolved_home
        if must_exist and not (self.home / "workspace.txt").exists() and not self.settings.catalog_url:
            raise WorkspaceError(
                f"no alarmsieve workspace at {self.home}; run `alarmsieve init` first "
                "(or set ALARMSIEVE_HOME to an existing workspace)"
            )
        self.home.mkdir(parents=True, exist_ok=True)
        self.catalog_url = self.settings.resolved_catalog_url
        upgrade(self.catalog_url)
        self.pfs = Pfs(self.catalog_url, open_object_store(self.settings.resolved_object_store))
        self.pps = Pps(self.pfs)
        self.ops = Operations(self.pps)

    @property
    def outbox(self) -> Path:
        return self.home / "outbox"

    def init(self, pipelines_dir: Path | None = None) -> list[str]:
        """Create the default repos, rules file and pipelines; idempotent. Returns what was done."""
        done = []
        (self.home / "workspace.txt").write_text(f"alarmsieve workspace, version {alarmsieve.__version__}\n")
        for repo in DEFAULT_REPOS:
            if not self.pfs.repo_exists(repo):
                self.pfs.create_repo(repo)
                done.append(f"created repo {repo}")
        if self.pfs.head("rules") is None:
            from alarmsieve.rules.schema import DEFAULT_RULES_YAML  # here: most commands never need the rules

            builder = self.pfs.start_commit("rules", description="default rules")
            builder.put_bytes(RULES_FILE, DEFAULT_RULES_YAML.encode())
            builder.finish()
            done.append(f"wrote rules@master:{RULES_FILE}")
        folder = pipelines_dir or default_pipelines_dir()
        if not folder.is_dir():
            raise WorkspaceError(f"pipeline folder {folder} not found; pass --pipelines DIR")
        specs = [load_spec_file(path) for path in sorted(folder.glob("*.json"))]
        existing = set(self.pps.pipeline_names())
        pending = [s for s in specs if s.name not in existing]
        # create in dependency order: a pipeline's input repos must exist first
        while pending:
            ready = [s for s in pending if all(self.pfs.repo_exists(r) for r in s.input_repos())]
            if not ready:
                names = ", ".join(s.name for s in pending)
                raise WorkspaceError(f"pipelines {names} read repos that neither exist nor are pipeline outputs")
            for spec in ready:
                self.pps.create_pipeline(spec)
                done.append(f"created pipeline {spec.name}")
                pending.remove(spec)
        return done

    def stage_identity(self, spec: PipelineSpec) -> dict[str, str] | None:
        """What a worker of ``spec`` would report (stage code version, model sha256), or None if unknown.

        Built-in stages are built here once (the detector loads its model) so that ``update pipeline``
        can tell a changed stage or model from an unchanged one before any worker starts. A stage that
        cannot be built now (model missing) gives None: its workers report it when they start.
        """
        builtin = builtin_stage_of(spec.transform.cmd)
        if builtin is None:
            return {"cmd": " ".join(spec.transform.cmd)}
        services = StageServices(
            workspace=self.home,
            catalog_url=self.catalog_url,
            model_dir=self.settings.model_dir,
            model_cache=self.settings.model_cache,
        )
        try:
            return build_stage(builtin[0], builtin[1], services).identity()
        except Exception:
            return None

    def runtime_paths(self) -> RuntimePaths:
        return RuntimePaths(
            home=self.home,
            object_store=self.settings.resolved_object_store,
            catalog_url=self.catalog_url,
            model_dir=self.settings.model_dir,
            model_cache=self.settings.model_cache,
            executor=self.settings.executor,
            ray_address=self.settings.ray_address,
            runners=self.settings.runners,
            lease_seconds=self.settings.lease_seconds,
        )

    def runner_holder(self) -> str | None:
        """Who holds the runner lock ("pid N"), or None when no runner is up."""
        lock_path = self.home / "runner.lock"
        if not lock_path.exists():
            return None
        with open(lock_path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                return handle.read().strip() or "another process"
            fcntl.flock(handle, fcntl.LOCK_UN)
            return None

    @contextlib.contextmanager
    def runner(self, progress: JobProgress | None = None, *, wait: bool = False) -> Iterator[Runner]:
        """A runner holding the workspace's runner lock (one runner per workspace at a time)."""
        lock_path = self.home / "runner.lock"
        with open(lock_path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError as exc:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise WorkspaceError(
                    f"another runner ({holder}) is processing this workspace; wait for it or stop it"
                ) from exc
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}")
            handle.flush()
            runner = Runner(self.pfs, self.pps, self.runtime_paths(), progress=progress)
            try:
                yield runner
            finally:
                runner.close()
                fcntl.flock(handle, fcntl.LOCK_UN)
