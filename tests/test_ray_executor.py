"""The Ray executor on a real local Ray cluster: same results, retries and supervision as local workers."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

from alarmsieve.config import Settings
from alarmsieve.pps.executor_ray import RayWorkerPool, ray_options
from alarmsieve.pps.worker import DatumFile, DatumResult, DatumTask, WorkerConfig
from alarmsieve.workspace import Workspace

if TYPE_CHECKING:
    from ray._private.node import Node
    from ray.cluster_utils import Cluster

    from alarmsieve.pps.runner import Runner

# loopback only: on Linux Ray otherwise binds the machine's network address (read when ray is imported)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'alarmsieve[ray]'")


def _init_local() -> None:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    _init_local()
    yield
    ray.shutdown()


_TWO_NODE_DIR = ""


@pytest.fixture(scope="module")
def ray_head() -> Iterator[Cluster]:
    """The head of a real multi-node Ray cluster on this machine, every node on 127.0.0.1.

    ``ray start --address`` refuses to add a node when ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (which
    keeps Ray on loopback), so nodes are started the way Ray's own multi-node tests start them
    (``ray.cluster_utils.Cluster``): each is a separate raylet with its own object store and node id.
    The head checks raylet health every 0.5 s, so a killed node is declared dead in about 2 s instead
    of Ray's default 30 s.
    """
    from ray.cluster_utils import Cluster

    global _TWO_NODE_DIR
    restore = ray.is_initialized()
    ray.shutdown()  # a driver talks to one cluster at a time
    _TWO_NODE_DIR = tempfile.mkdtemp(prefix="ray2n-", dir="/tmp")  # short: socket paths stay < 108 bytes
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "node_ip_address": "127.0.0.1",
            "temp_dir": _TWO_NODE_DIR,
            "num_cpus": 1,
            "include_dashboard": False,
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3},
        },
    )
    try:
        # connected before any other node exists, so the driver sits on the head, never on a node we kill
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(_TWO_NODE_DIR, ignore_errors=True)
        if restore:
            _init_local()  # the module's single-node cluster, for any test that follows


@pytest.fixture
def two_node_cluster(ray_head: Cluster) -> Iterator[tuple[Cluster, Node]]:
    """The head plus a fresh second node (its own raylet, 1 CPU and a ``node2`` resource)."""
    cluster = ray_head
    second = cluster.add_node(node_ip_address="127.0.0.1", temp_dir=_TWO_NODE_DIR, num_cpus=1, resources={"node2": 1})
    both = sorted([cluster.head_node.node_id, second.node_id])
    assert _alive_nodes(both) == both  # and any node an earlier test lost is gone
    assert {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} == {"127.0.0.1"}
    yield cluster, second
    if second in cluster.worker_nodes:
        cluster.remove_node(second, allow_graceful=False)


def _kill_node(cluster: Cluster, node: Node) -> None:
    """Lose a node the way a machine is lost: SIGKILL its raylet and every process under it at once.

    ``Cluster.remove_node`` alone kills the raylet, but actor processes notice only a moment later and
    can meanwhile finish datums sent straight to them; a dead machine finishes nothing.
    """
    raylet = node.all_processes["raylet"][0].process.pid
    for child in psutil.Process(raylet).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    cluster.remove_node(node, allow_graceful=False)


def _alive_nodes(expected: list[str], timeout: float = 20.0) -> list[str]:
    """The alive node ids (sorted), once they are ``expected``: the head declares a lost node dead only
    after a few missed health checks."""
    deadline = time.monotonic() + timeout
    while True:
        alive = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        if alive == sorted(expected) or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


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

    # a transform's refusal (a link outside the datum's inputs) is final: not tried datum_tries times
    pool = _pool(ws, tmp_path, ["sh", "-c", 'ln -s /etc/passwd "$PFS_ROOT/out/x"'], size=1, datum_tries=3)
    results = []
    pool.run(_tasks(ws, 1), lambda r, a: results.append((r, a)))
    ((result, attempts),) = results
    assert not result.ok and attempts == 1 and "outside the datum's inputs" in result.reason
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


def test_two_node_cluster_spreads_datums_and_survives_losing_a_node(
    two_node_cluster: tuple[Cluster, Node], tmp_path: Path
) -> None:
    cluster, second = two_node_cluster
    ws = Workspace(Settings(home=tmp_path / "ws"), must_exist=False)
    # each datum takes a moment, so the second node is killed while its actor holds one
    cmd = ["sh", "-c", 'sleep 0.3; for f in "$PFS_ROOT"/data/*; do tr a-z A-Z <"$f" >"$PFS_ROOT/out/${f##*/}"; done']
    pool = _pool(ws, tmp_path, cmd, size=1, datum_tries=3, coefficient=1.0)  # 1.x coefficient: 1 per node
    pool.start()
    head = cluster.head_node.node_id
    assert pool.alive_nodes() == 2 and pool.size == 2
    assert sorted(pool.nodes()) == sorted([head, second.node_id])

    results: dict[str, list[tuple[DatumResult, int, str]]] = {}
    killed: list[str] = []

    def on_result(result: DatumResult, attempts: int) -> None:
        node = pool.actors[int(result.worker.removeprefix("t-w"))].node
        results.setdefault(result.datum_id, []).append((result, attempts, node))
        nodes_seen = {n for got in results.values() for _, _, n in got}
        # kill the second node (SIGKILL, no goodbye) once both nodes have delivered, right after a
        # head-node result: the second node's actor is then in the middle of a datum
        if not killed and len(results) >= 4 and nodes_seen == {head, second.node_id} and node == head:
            _kill_node(cluster, second)
            killed.append(node)

    pool.run(_tasks(ws, 20), on_result)

    assert killed, "the second node was never killed"
    assert _alive_nodes([head]) == [head], ray.nodes()
    # every datum exactly once, with the right output
    assert sorted(results) == sorted(f"d{i}" for i in range(20))
    assert all(len(got) == 1 and got[0][0].ok for got in results.values())
    for i in range(20):
        ((path, sha, _size),) = results[f"d{i}"][0][0].outputs
        assert path == f"/f{i}.txt" and ws.pfs.objects.get_bytes(sha) == f"DATUM {i}".encode()
    # both nodes did work; the datum lost with the node was tried again, on the head
    assert {node for got in results.values() for _, _, node in got} == {head, second.node_id}
    assert sorted(got[0][1] for got in results.values()) == [1] * 19 + [2]
    assert pool.restarts == 1 and pool.nodes() == [head, head]
    pool.close()


def test_default_pipelines_on_two_nodes_lose_a_node_mid_job(
    two_node_cluster: tuple[Cluster, Node], tmp_path: Path, shared_dir: Path, model_dir: Path
) -> None:
    from alarmsieve.notify.ledger import NotificationLedger
    from alarmsieve.verdicts import read_verdicts
    from tests.conftest import PROJECT

    cluster, second = two_node_cluster
    ws = Workspace(Settings(home=tmp_path / "ws", model_dir=model_dir, executor="ray"), must_exist=False)
    ws.init(pipelines_dir=PROJECT / "pipelines")
    photos = sorted((shared_dir / "images/skimage").glob("*.png"))[:8]
    builder = ws.pfs.start_commit("images")
    for photo in photos:
        builder.put_local_file(f"/gate/{photo.name}", photo)
    builder.finish()

    runner_box: list[Runner] = []
    spread: dict[str, str] = {}  # detect worker → its node, when the second node was killed

    class KillSecondNodeMidDetect:
        """Kills the second node at the first detect result: the job has datums left, and the second
        node's detect actor holds one (or is about to be sent one)."""

        def job_started(self, pipeline: str, job_id: str, to_run: int) -> None:
            pass

        def datum_done(self, pipeline: str, ok: bool) -> None:
            if pipeline != "detect" or spread:
                return
            (pool,) = [p for p in runner_box[0].pools.values() if p.actors[0].config.pipeline == "detect"]  # type: ignore[attr-defined]
            spread.update({a.config.worker_id: a.node for a in pool.actors})
            _kill_node(cluster, second)

        def job_finished(self, job: object) -> None:
            pass

    with ws.runner(progress=KillSecondNodeMidDetect()) as runner:
        runner_box.append(runner)
        jobs = runner.run_until_idle()
        (detect_pool,) = [p for p in runner.pools.values() if p.actors[0].config.pipeline == "detect"]  # type: ignore[attr-defined]
        after = detect_pool.nodes()  # type: ignore[attr-defined]
    head = cluster.head_node.node_id
    # the detect actors were one per node when the second node died
    assert sorted(spread.values()) == sorted([head, second.node_id])
    assert _alive_nodes([head]) == [head], ray.nodes()
    assert after == [head, head]  # the lost actor was replaced on the surviving node
    n = len(photos)
    assert [(j.pipeline, j.state, j.processed) for j in jobs] == [
        (p, "success", n) for p in ("validate", "detect", "assess", "clips", "notify")
    ]
    for job in jobs:  # every datum exactly once
        datums = ws.pps.list_datums(job.pipeline, job.id)
        assert len(datums) == len({d.datum_id for d in datums}) == n
    detect = ws.pps.list_datums("detect", jobs[1].id)
    (lost,) = [d for d in detect if d.attempts == 2]  # the datum lost with the node, done on the head
    assert all(d.attempts == 1 for d in detect if d is not lost)
    (lost_worker,) = [w for w, node in spread.items() if node == second.node_id]
    retry_lines = [line.message for line in ws.pps.logs(pipeline="detect", job=jobs[1].id, datum=lost.datum_id)]
    assert any(f"ray actor {lost_worker} died" in line for line in retry_lines), retry_lines
    # every alarm notified exactly once
    alerts = {v.alarm for v in read_verdicts(ws.pfs) if v.verdict == "alert"}
    assert "/gate/astronaut.png" in alerts
    assert len(list(ws.outbox.glob("*.eml"))) == len(alerts)
    sent = [r for r in NotificationLedger(ws.catalog_url).list() if r.state == "sent"]
    assert len(sent) == len({r.key for r in sent}) == len(alerts)
