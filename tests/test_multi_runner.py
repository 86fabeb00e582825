"""Several `alarmsieve run` processes on one PostgreSQL catalog and one S3 store share a job.

Real runner subprocesses, the PostgreSQL server on 127.0.0.1:5432 and a moto S3 server on loopback: the
job is planned once, both runners' workers process its datums (claimed in chunks under leases), and a
runner killed with SIGKILL mid-job leaves leases that expire and are taken over, so every datum is
recorded exactly once and the output commit, made once, has one file per input.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, select, text

from alarmsieve.config import Settings
from alarmsieve.pfs.tables import CommitRow
from alarmsieve.pps.runner import Runner
from alarmsieve.pps.spec import parse_spec
from alarmsieve.pps.tables import DatumClaimRow, DatumRow, JobRow
from alarmsieve.verdicts import read_verdicts
from alarmsieve.workspace import Workspace
from tests.conftest import PROJECT
from tests.test_backends import pg_url, s3_endpoint, s3_env  # noqa: F401  (fixtures)

FILES = 500
LEASE_SECONDS = "2"
# A foreign command per datum (a process each, a few ms of work): slow enough that both runners are up
# and working before the job ends, cheap enough for the test suite.
COPY_SPEC: dict[str, Any] = {
    "pipeline": {"name": "copy"},
    "input": {"pfs": {"name": "files", "repo": "files", "glob": "/d/*"}},
    "transform": {"cmd": ["alarmsieve", "stage", "noop"]},
    "parallelismSpec": {"constant": 2},
}


def _runner(tmp_path: Path, name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """One `alarmsieve run` with its own home (scratch, lock) on the shared catalog and store."""
    return subprocess.Popen(
        [sys.executable, "-m", "alarmsieve", "run", "--json"],
        env={**os.environ, **env, "ALARMSIEVE_HOME": str(tmp_path / name)},
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: killing it kills its workers too
    )


def _parent_pid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _pool_of(worker: str) -> str:
    """A worker id is <pipeline>-v<version>-w<index>-<pool id>[-r<restart>]: the pool is one runner's."""
    return worker.split("-")[3]


def test_two_runners_share_one_job_and_survive_one_killed(pg_url: str, s3_env: str, tmp_path: Path) -> None:  # noqa: F811
    env = {
        "ALARMSIEVE_CATALOG_URL": pg_url,
        "ALARMSIEVE_OBJECT_STORE": f"s3://{s3_env}/ws",
        "ALARMSIEVE_LEASE_SECONDS": LEASE_SECONDS,
        "ALARMSIEVE_PFS_MOUNT": "off",
    }
    ws = Workspace(
        Settings(home=tmp_path / "setup", catalog_url=pg_url, object_store=env["ALARMSIEVE_OBJECT_STORE"]),
        must_exist=False,
    )
    ws.pfs.create_repo("files")
    ws.pps.create_pipeline(parse_spec(COPY_SPEC, source="test spec"))
    bodies = [f"frame {i}\n".encode() for i in range(FILES)]
    with ThreadPoolExecutor(8) as threads:  # upload in parallel: one S3 round trip at a time is slow
        shas = list(threads.map(ws.pfs.objects.put_bytes, bodies))
    builder = ws.pfs.start_commit("files")
    for i, (sha, body) in enumerate(zip(shas, bodies, strict=True)):
        builder.put_object(f"/d/f{i:03d}", sha, len(body))
    builder.finish()

    survivor = _runner(tmp_path, "a", env)
    victim = _runner(tmp_path, "b", env)
    engine = create_engine(pg_url)
    try:
        # Wait until both runners have recorded datums of the job, then SIGKILL one of them mid-job.
        victim_pool = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not victim_pool:
            time.sleep(0.2)
            with engine.connect() as conn:
                workers = dict(conn.execute(text("select worker_id, pid from pps_workers")).all())
                per_pool = dict(
                    conn.execute(text("select split_part(worker, '-', 4), count(*) from pps_datums group by 1")).all()
                )
            mine = {_pool_of(w) for w, pid in workers.items() if _parent_pid(pid) == victim.pid}
            # kill once both have worked and about half the job is done, so most of it runs on both
            if len(per_pool) == 2 and min(per_pool.values()) >= 10 and sum(per_pool.values()) >= FILES // 2 and mine:
                victim_pool = mine.pop()
            assert survivor.poll() is None and victim.poll() is None, "a runner ended before both worked"
        assert victim_pool, f"both runners never recorded datums of the job: {per_pool}"
        assert sum(per_pool.values()) < FILES, "the job ended before a runner could be killed"
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(30)
        out, err = survivor.communicate(timeout=180)
    finally:
        for proc in (survivor, victim):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
    assert survivor.returncode == 0, err.decode()[-3000:]
    [job] = [json.loads(line) for line in out.decode().splitlines()]
    assert (job["state"], job["processed"], job["failed"]) == ("success", FILES, 0)

    with engine.connect() as conn:
        rows = conn.execute(
            text("select datum_id, worker, state from pps_datums where job_id = :j"), {"j": job["id"]}
        ).all()
        commits = conn.execute(text("select count(*) from pfs_commits where job_id = :j"), {"j": job["id"]}).scalar()
        claims_left = conn.execute(text("select count(*) from pps_datum_claims")).scalar()
        processed = conn.execute(text("select count(*) from pps_processed_datums where state = 'success'")).scalar()
    engine.dispose()
    # every datum recorded exactly once (one row per datum, all successful), by both runners together
    assert len(rows) == len({r.datum_id for r in rows}) == FILES
    assert {r.state for r in rows} == {"success"}
    pools = {_pool_of(r.worker) for r in rows}
    assert len(pools) == 2 and victim_pool in pools
    assert commits == 1 and claims_left == 0 and processed == FILES

    # the output commit, made once, holds exactly one file per input with its content
    files = {f.path: f for f in ws.pfs.walk("copy")}
    assert sorted(files) == [f"/d/f{i:03d}" for i in range(FILES)]
    assert ws.pfs.get_file("copy", "master", "/d/f123") == b"frame 123\n"
    assert {ws.pps.inspect_job(job["id"]).output_commit} == {ws.pfs.head("copy").id}  # type: ignore[union-attr]


def _noop_workspace(home: Path, files: int, **settings: Any) -> Workspace:
    ws = Workspace(Settings(home=home, **settings), must_exist=False)
    ws.pfs.create_repo("files")
    ws.pps.create_pipeline(parse_spec({**COPY_SPEC, "parallelismSpec": {"constant": 1}}, source="test spec"))
    builder = ws.pfs.start_commit("files")
    for i in range(files):
        builder.put_bytes(f"/d/f{i:03d}", f"frame {i}\n".encode())
    builder.finish()
    return ws


def test_a_shared_runner_on_sqlite_plans_incrementally_like_a_single_one(tmp_path: Path) -> None:
    ws = _noop_workspace(tmp_path / "ws", 30, catalog_url=None, object_store=None)
    paths = ws.runtime_paths()
    paths.runners = "shared"
    with Runner(ws.pfs, ws.pps, paths) as runner:
        assert runner.shared
        [job] = runner.run_until_idle()
        assert (job.state, job.processed, job.skipped) == ("success", 30, 0)
        builder = ws.pfs.start_commit("files")
        builder.delete("/d/f000")
        builder.delete("/d/f001")
        builder.put_bytes("/d/f002", b"changed\n")
        builder.put_bytes("/d/new", b"new\n")
        builder.finish()
        [job] = runner.run_until_idle()
        assert (job.state, job.processed, job.skipped, job.removed) == ("success", 2, 27, 2)
        assert runner.run_until_idle() == []
    out = {f.path for f in ws.pfs.walk("copy")}
    assert out == {f"/d/f{i:03d}" for i in range(2, 30)} | {"/d/new"}
    assert ws.pfs.get_file("copy", "master", "/d/f002") == b"changed\n"
    with ws.pfs.session() as s:
        assert s.scalar(select(func.count()).select_from(DatumClaimRow)) == 0
        assert all(s.scalars(select(JobRow.shared_plan)))


def test_two_runner_processes_share_a_sqlite_catalog(tmp_path: Path) -> None:
    catalog = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    objects = str(tmp_path / "objects")
    ws = _noop_workspace(tmp_path / "setup", 200, catalog_url=catalog, object_store=objects)
    env = {"ALARMSIEVE_CATALOG_URL": catalog, "ALARMSIEVE_OBJECT_STORE": objects, "ALARMSIEVE_RUNNERS": "shared"}
    runners = [_runner(tmp_path, name, env) for name in ("a", "b")]
    outputs = [proc.communicate(timeout=300) for proc in runners]
    for proc, (_out, err) in zip(runners, outputs, strict=True):
        assert proc.returncode == 0, err.decode()[-3000:]
    jobs = {json.loads(line)["id"] for out, _ in outputs for line in out.decode().splitlines()}
    assert len(jobs) == 1  # one job, planned once, whichever runner reports it
    [job_id] = jobs
    with ws.pfs.session() as s:
        datums = list(s.scalars(select(DatumRow.datum_id).where(DatumRow.job_id == job_id)))
        commits = s.scalar(select(func.count()).select_from(CommitRow).where(CommitRow.job_id == job_id))
    assert len(datums) == len(set(datums)) == 200 and commits == 1
    assert len(list(ws.pfs.walk("copy"))) == 200


def test_two_runners_run_the_default_pipelines_and_notify_each_alarm_once(
    pg_url: str,  # noqa: F811
    s3_env: str,  # noqa: F811
    tmp_path: Path,
    shared_dir: Path,
    model_dir: Path,
) -> None:
    env = {
        "ALARMSIEVE_CATALOG_URL": pg_url,
        "ALARMSIEVE_OBJECT_STORE": f"s3://{s3_env}/ws",
        "ALARMSIEVE_MODEL_DIR": str(model_dir),
    }
    ws = Workspace(
        Settings(home=tmp_path / "setup", catalog_url=pg_url, object_store=env["ALARMSIEVE_OBJECT_STORE"]),
        must_exist=False,
    )
    ws.init(pipelines_dir=PROJECT / "pipelines")
    photos = shared_dir / "images"
    builder = ws.pfs.start_commit("images")
    for name in ("skimage/astronaut.png", "coral/pets.jpg", "skimage/gravel.png", "skimage/coffee.png"):
        builder.put_local_file(f"/gate/{Path(name).name}", photos / name)
    builder.finish()
    runners = [_runner(tmp_path, name, env) for name in ("a", "b")]
    outputs = [proc.communicate(timeout=300) for proc in runners]
    for proc, (_out, err) in zip(runners, outputs, strict=True):
        assert proc.returncode == 0, err.decode()[-3000:]
    verdicts = {v.alarm: v.verdict for v in read_verdicts(ws.pfs)}
    assert verdicts["/gate/astronaut.png"] == "alert" and verdicts["/gate/pets.jpg"] == "dismiss"
    alerts = sum(1 for v in verdicts.values() if v == "alert")
    # each runner delivers to the outbox of its own home; the ledger in the catalog sends each alarm once
    sent = list((tmp_path / "a" / "outbox").glob("*.eml")) + list((tmp_path / "b" / "outbox").glob("*.eml"))
    assert len(sent) == alerts
    with ws.pfs.session() as s:
        for pipeline in ("validate", "detect", "assess", "notify"):
            jobs = list(s.scalars(select(JobRow).where(JobRow.pipeline == pipeline)))
            assert [(j.state, j.processed) for j in jobs] == [("success", 4)], pipeline
