"""Shared fixtures: the real photos and model in ../shared, and embedded workspaces in tmp folders."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from alarmsieve.config import Settings
from alarmsieve.workspace import Workspace

PROJECT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ALARMSIEVE_SHARED") or PROJECT.parent / "shared")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    """In CI (CI=true) every dependency is there (../shared, the model, Mosquitto, PostgreSQL, Chromium,
    root for the /pfs namespace): a skip there would hide a failure, so it is reported as one."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where nothing may be missing: {report.longrepr}"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "images" / "labels.csv").is_file():
        pytest.skip(f"../shared (real photos and labels) not found at {SHARED}; set ALARMSIEVE_SHARED")
    return SHARED


@pytest.fixture(scope="session")
def model_dir() -> Path:
    folder = Path(os.environ.get("ALARMSIEVE_MODEL_DIR") or SHARED / "models")
    if not (folder / "yolox_nano.onnx").is_file():
        pytest.skip(f"detector model yolox_nano.onnx not found in {folder}; set ALARMSIEVE_MODEL_DIR")
    return folder


@pytest.fixture
def make_workspace(tmp_path: Path, model_dir: Path) -> Callable[..., Workspace]:
    def make(name: str = "ws", init: bool = True) -> Workspace:
        ws = Workspace(
            Settings(home=tmp_path / name, model_dir=model_dir, model_cache=tmp_path / "cache"), must_exist=False
        )
        if init:
            ws.init(pipelines_dir=PROJECT / "pipelines")
        return ws

    return make


def run_cli(
    *args: str, home: Path, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the real ``alarmsieve`` command line in a child process."""
    full_env = {**os.environ, "ALARMSIEVE_HOME": str(home), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "alarmsieve", *args],
        input=stdin,
        capture_output=True,
        env=full_env,
        cwd=PROJECT,
        timeout=600,
        check=False,
    )


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    """A bare workspace (no default pipelines) that the CLI also opens; the operations tests use it."""
    from tests.helpers_pps import new_workspace

    w = new_workspace(tmp_path / "ws")
    (w.home / "workspace.txt").write_text("test workspace\n")  # so the CLI opens it
    return w
