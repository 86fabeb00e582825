"""The Ray executor on a real local Ray cluster: same results, retries and supervision as local workers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from alarmsieve.config import Settings
from alarmsieve.pps.executor_ray import RayWorkerPool, ray_options
from alarmsieve.pps.worker import DatumFile, DatumResult, DatumTask, WorkerConfig
from alarmsieve.workspace import Workspace

# loopback only: on Linux Ray otherwise binds the machine's network address (read when ray is imported)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'alarmsieve[ray]'")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    yield
    ray.shutdown()


def _pool(ws: Workspace, tmp_path: Path, cmd: list[str], size: int = 2, **kwargs: object) -> RayWorkerPool:
    def make_config(index: int) -> WorkerConfig:
        return WorkerConfig(
            worker_id=f"t-w{index}",
            pipeline="t",
            pipeline_version="t@v1",
            cmd=cmd,
            stdin=[],
            env={},
            scratch=tmp_path / "scratch" / f"w{index}-{os.getpid()}",
            object_store=ws.settings.resolved_object_store,
            catalog_url=ws.catalog_url,
            workspace=ws.home,
            model_dir=None,
            model_cache=None,
        )

    return RayWorkerPool(make_config, size, **kwargs)  # type: ignore[arg-type]


def _tasks(ws: Workspace, n: int) -> list[DatumTask]:
    tasks = []
    for i in range(n):
        sha = ws.pfs.objects.put_bytes(f"datum {i}".encode())
        tasks.append(DatumTask("job", f"d{i}", [DatumFile("data", "data", f"/f{i}.txt", sha, 7)], {}))
    return tasks


def test_ray_actors_process_every_datum_once_and_survive_a_killed_actor(ray_cluster: None, tmp_path: Path) -> None:
    ws = Workspace(Settings(home=tmp_path / "ws"), must_exist=False)
    marker = tmp_path / "killed-once"
    # the one datum that creates the marker (O_EXCL: two actors racing cannot both win) SIGKILLs its
    # own actor process, mid-datum
    script = (
        "import os, pathlib, signal\n"
        "root = pathlib.Path(os.environ['PFS_ROOT'])\n"
        "try:\n"
        f"    os.close(os.open({str(marker)!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY))\n"
        "    os.kill(os.getppid(), signal.SIGKILL)\n"
        "except FileExistsError:\n"
        "    pass\n"
        "for f in (root / 'data').iterdir():\n"
        "    (root / 'out' / f.name).write_text(f.read_text().upper())\n"
    )
    pool = _pool(ws, tmp_path, ["python3", "-c", script], datum_tries=3)
    results: dict[str, tuple[DatumResult, int]] = {}
    pool.run(_tasks(ws, 6), lambda r, attempts: results.__setitem__(r.datum_id, (r, attempts)))
    assert marker.exists() and pool.restarts == 1
    assert sorted(results) == [f"d{i}" for i in range(6)]
    assert all(r.ok for r, _ in results.values())
    assert sorted(attempts for _, attempts in results.values()) == [1, 1, 1, 1, 1, 2]
    for i in range(6):
        ((path, sha, _size),) = results[f"d{i}"][0].outputs
        assert path == f"/f{i}.txt" and ws.pfs.objects.get_bytes(sha) == f"DATUM {i}".encode()
    pool.close()


def test_ray_pool_retries_failures_and_times_out_hung_datums(ray_cluster: None, tmp_path: Path) -> None:
    ws = Workspace(Settings(home=tmp_path / "ws"), must_exist=False)
    pool = _pool(ws, tmp_path, ["sh", "-c", "echo broken >&2; exit 4"], size=1, datum_tries=2)
    results: list[tuple[DatumResult, int]] = []
    pool.run(_tasks(ws, 1), lambda r, a: results.append((r, a)))
    ((result, attempts),) = results
    assert not result.ok and attempts == 2 and "exited with code 4" in result.reason and "broken" in result.reason
    pool.close()

    pool = _pool(ws, tmp_path, ["sleep", "30"], size=1, datum_tries=1, datum_timeout=1.0)
    results = []
    pool.run(_tasks(ws, 1), lambda r, a: results.append((r, a)))
    assert not results[0][0].ok and "datum_timeout" in results[0][0].reason and pool.restarts == 1
    pool.close()


def test_resource_requests_map_to_ray_options() -> None:
    assert ray_options({"cpu": 0.5, "memory": "512Mi", "gpu": {"type": "nvidia.com/gpu", "number": 1}}) == {
        "max_restarts": 0,
        "max_task_retries": 0,
        "scheduling_strategy": "SPREAD",
        "num_cpus": 0.5,
        "memory": 512 * 1024 * 1024,
        "num_gpus": 1.0,
    }
    assert ray_options(None) == {"max_restarts": 0, "max_task_retries": 0, "scheduling_strategy": "SPREAD"}


def test_default_pipelines_run_on_ray_actors(
    ray_cluster: None, tmp_path: Path, shared_dir: Path, model_dir: Path
) -> None:
    from alarmsieve.verdicts import read_verdicts
    from tests.conftest import PROJECT

    ws = Workspace(Settings(home=tmp_path / "ws", model_dir=model_dir, executor="ray"), must_exist=False)
    ws.init(pipelines_dir=PROJECT / "pipelines")
    builder = ws.pfs.start_commit("images")
    builder.put_local_file("/gate/a.png", shared_dir / "images/skimage/astronaut.png")
    builder.put_local_file("/gate/b.png", shared_dir / "images/skimage/grass.png")
    builder.finish()
    with ws.runner() as runner:
        jobs = runner.run_until_idle()
        assert {type(pool).__name__ for pool in runner.pools.values()} == {"RayWorkerPool"}
    assert [(j.pipeline, j.state, j.processed) for j in jobs] == [
        (p, "success", 2) for p in ("validate", "detect", "assess", "clips", "notify")
    ]
    assert {v.alarm: v.verdict for v in read_verdicts(ws.pfs)} == {"/gate/a.png": "alert", "/gate/b.png": "dismiss"}
    assert len(list(ws.outbox.glob("*.eml"))) == 1
    workers = {d.worker for d in ws.pps.list_datums("detect")}
    assert workers and all(w.startswith("detect-v") for w in workers)
