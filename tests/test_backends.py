"""Beyond one machine: the S3 object store (a real moto server on loopback) and the PostgreSQL catalog."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from alarmsieve.config import Settings
from alarmsieve.pfs.db import dispose_engines
from alarmsieve.pfs.objects import LocalObjectStore, ObjectNotFoundError, ObjectStore, open_object_store
from alarmsieve.verdicts import read_verdicts
from alarmsieve.workspace import Workspace
from tests.conftest import PROJECT

MAIN = ("validate", "detect", "assess", "notify")
PG_ADMIN_URL = os.environ.get("ALARMSIEVE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Credentials and endpoint in the environment (worker processes inherit them); a fresh bucket."""
    import boto3

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "ALARMSIEVE_S3_ENDPOINT_URL": s3_endpoint,
    }.items():
        monkeypatch.setenv(key, value)
    bucket = f"alarms-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database on 127.0.0.1:5432, dropped afterwards."""
    name = f"alarmsieve_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # the service is started by .ci/run; say clearly when it is not there
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is not usable ({exc}); start it (see .ci/run)")
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    dispose_engines()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects")
    bucket = request.getfixturevalue("s3_env")
    return open_object_store(f"s3://{bucket}/objects")


def test_object_store_contract(store: ObjectStore, tmp_path: Path) -> None:
    sha = store.put_bytes(b"camera frame")
    assert store.put_bytes(b"camera frame") == sha  # content-addressed: stored once, same name
    assert store.exists(sha) and store.get_bytes(sha) == b"camera frame"
    big = tmp_path / "clip.bin"
    big.write_bytes(os.urandom(20 * 1024 * 1024))  # above the 16 MiB multipart threshold
    big_sha, size = store.put_path(big)
    assert size == 20 * 1024 * 1024
    dest = tmp_path / "out" / "clip.bin"
    store.materialize(big_sha, dest, private_copy=True)
    assert dest.read_bytes() == big.read_bytes()
    with big.open("rb") as handle:
        assert store.put_stream(handle) == (big_sha, size)
    missing = "0" * 64
    assert not store.exists(missing)
    with pytest.raises(ObjectNotFoundError, match=missing):
        store.get_bytes(missing)
    with pytest.raises(ObjectNotFoundError):
        store.materialize(missing, tmp_path / "nope")


def test_a_bad_object_store_url_says_what_to_write() -> None:
    with pytest.raises(ValueError, match=r"s3://BUCKET\[/PREFIX\]"):
        open_object_store("s3://")


def test_pipeline_on_postgresql_catalog_and_s3_store(
    pg_url: str, s3_env: str, tmp_path: Path, shared_dir: Path, model_dir: Path
) -> None:
    import boto3

    settings = Settings(home=tmp_path / "ws", catalog_url=pg_url, object_store=f"s3://{s3_env}/ws", model_dir=model_dir)
    ws = Workspace(settings, must_exist=False)
    ws.init(pipelines_dir=PROJECT / "pipelines")
    photos = shared_dir / "images"
    builder = ws.pfs.start_commit("images")
    for name in ("skimage/astronaut.png", "coral/pets.jpg", "skimage/gravel.png"):
        builder.put_local_file(f"/gate/{Path(name).name}", photos / name)
    builder.finish()
    with ws.runner() as runner:
        jobs = {j.pipeline: (j.state, j.processed) for j in runner.run_until_idle()}
        assert {p: jobs[p] for p in MAIN} == {p: ("success", 3) for p in MAIN}
        builder = ws.pfs.start_commit("images")
        builder.delete("/gate/gravel.png")
        builder.finish()
        removed = {j.pipeline: j.removed for j in runner.run_until_idle()}
        assert {p: removed[p] for p in MAIN} == {p: 1 for p in MAIN}
    verdicts = {v.alarm: v.verdict for v in read_verdicts(ws.pfs)}
    assert verdicts == {"/gate/astronaut.png": "alert", "/gate/pets.jpg": "dismiss"}
    assert len(list(ws.outbox.glob("*.eml"))) == 1
    assert not (tmp_path / "ws" / "objects").exists()  # every body went to the bucket
    listed = boto3.client("s3", endpoint_url=os.environ["ALARMSIEVE_S3_ENDPOINT_URL"]).list_objects_v2(
        Bucket=s3_env, Prefix="ws/"
    )
    assert listed["KeyCount"] >= 3 * 4  # photo, records and annotated images
    with create_engine(pg_url).connect() as conn:
        done = "select count(*) from pps_jobs where state = 'success' and pipeline in " + str(MAIN)
        assert conn.execute(text(done)).scalar() == 8
        # the catalog is PostgreSQL, so the runner shared its jobs through datum claims; none is left over
        assert conn.execute(text("select count(*) from pps_jobs where shared_plan = ''")).scalar() == 0
        assert conn.execute(text("select count(*) from pps_datum_claims")).scalar() == 0


def test_ingest_commits_what_cameras_upload_to_a_bucket(s3_env: str, tmp_path: Path, shared_dir: Path) -> None:
    import boto3

    from tests.conftest import run_cli

    client = boto3.client("s3", endpoint_url=os.environ["ALARMSIEVE_S3_ENDPOINT_URL"])
    photos = shared_dir / "images"
    client.put_object(Bucket=s3_env, Key="incoming/cam-7/a.png", Body=(photos / "skimage/astronaut.png").read_bytes())
    client.put_object(Bucket=s3_env, Key="incoming/cam-8/b.jpg", Body=(photos / "coral/owl.jpg").read_bytes())
    client.put_object(Bucket=s3_env, Key="incoming/loose.jpg", Body=b"not under a camera")
    home = tmp_path / "ws"
    assert run_cli("init", home=home).returncode == 0
    first = run_cli("ingest", f"s3://{s3_env}/incoming", home=home)
    assert first.returncode == 0, first.stderr.decode()
    assert b"2 new file(s)" in first.stdout and b"loose.jpg: not under a camera folder" in first.stderr
    again = run_cli("ingest", f"s3://{s3_env}/incoming", home=home)
    assert b"nothing new" in again.stdout and b"2 unchanged" in again.stdout
    client.put_object(Bucket=s3_env, Key="incoming/cam-7/a.png", Body=(photos / "coral/squat.bmp").read_bytes())
    changed = run_cli("ingest", f"s3://{s3_env}/incoming", home=home)
    assert b"1 new file(s)" in changed.stdout and b"1 new, 1 unchanged" in changed.stdout
    ws = Workspace(Settings(home=home))
    assert ws.pfs.get_file("images", "master", "/cam-7/a.png") == (photos / "coral/squat.bmp").read_bytes()
    assert len(ws.pfs.list_commits("images")) == 2
    bad = run_cli("ingest", "http://example/x", home=home)
    assert bad.returncode == 2 and b"s3://BUCKET/PREFIX" in bad.stderr


def test_watching_a_bucket_reads_only_objects_whose_etag_moved(s3_env: str, tmp_path: Path, shared_dir: Path) -> None:
    import boto3

    from alarmsieve.ingest import IngestMemo, ingest_prefix

    client = boto3.client("s3", endpoint_url=os.environ["ALARMSIEVE_S3_ENDPOINT_URL"])
    downloads: list[str] = []
    client.meta.events.register(
        "before-parameter-build.s3.GetObject", lambda params, **_: downloads.append(params["Key"])
    )
    photos = shared_dir / "images" / "coral"
    client.put_object(Bucket=s3_env, Key="in/cam-1/a.jpg", Body=(photos / "owl.jpg").read_bytes())
    client.put_object(Bucket=s3_env, Key="in/cam-1/b.jpg", Body=(photos / "parrot.jpg").read_bytes())
    ws = Workspace(Settings(home=tmp_path / "ws"), must_exist=False)
    ws.pfs.create_repo("images")
    memo = IngestMemo()
    first = ingest_prefix(ws.pfs, f"s3://{s3_env}/in", memo=memo, client=client)
    assert (len(first.added), sorted(downloads)) == (2, ["in/cam-1/a.jpg", "in/cam-1/b.jpg"])
    downloads.clear()
    again = ingest_prefix(ws.pfs, f"s3://{s3_env}/in", memo=memo, client=client)
    assert (again.unchanged, again.commits, downloads) == (2, {}, [])  # listed, nothing read
    client.put_object(Bucket=s3_env, Key="in/cam-1/b.jpg", Body=(photos / "pets.jpg").read_bytes())
    changed = ingest_prefix(ws.pfs, f"s3://{s3_env}/in", memo=memo, client=client)
    assert (changed.added, changed.unchanged, downloads) == (["/cam-1/b.jpg"], 1, ["in/cam-1/b.jpg"])
    assert ws.pfs.get_file("images", "master", "/cam-1/b.jpg") == (photos / "pets.jpg").read_bytes()
    downloads.clear()
    fresh = ingest_prefix(ws.pfs, f"s3://{s3_env}/in", memo=IngestMemo(), client=client)
    assert (fresh.unchanged, len(downloads)) == (2, 2)  # a new watcher reads each object once


def test_put_file_reads_objects_and_prefixes_from_s3(s3_env: str, tmp_path: Path) -> None:
    import boto3

    from tests.conftest import run_cli

    client = boto3.client("s3", endpoint_url=os.environ["ALARMSIEVE_S3_ENDPOINT_URL"])
    objects = {
        "incoming/cam-1/a.jpg": b"a" * 10,
        "incoming/cam-1/b.jpg": b"b" * 20,
        "incoming/cam-2/c.jpg": b"c" * 30,
        "incoming-old/cam-9/x.jpg": b"not under incoming/",
        "incoming/empty/": b"",  # a console's folder marker: no data, not a file
    }
    for key, body in objects.items():
        client.put_object(Bucket=s3_env, Key=key, Body=body)
    home = tmp_path / "ws"
    Workspace(Settings(home=home, catalog_url=None, object_store=None), must_exist=False).init(PROJECT / "pipelines")
    put = run_cli("put", "file", "images@master:/cam-1/a.jpg", "-f", f"s3://{s3_env}/incoming/cam-1/a.jpg", home=home)
    assert put.returncode == 0, put.stderr.decode()
    put = run_cli("put", "file", "images@master:/up", "-r", f"s3://{s3_env}/incoming", home=home)
    assert put.returncode == 0, put.stderr.decode()
    assert "3 file(s) put" in put.stdout.decode()
    ws = Workspace(Settings(home=home, catalog_url=None, object_store=None))
    files = {f.path: ws.pfs.get_file("images", "master", f.path) for f in ws.pfs.walk("images")}
    assert files == {
        "/cam-1/a.jpg": b"a" * 10,
        "/up/cam-1/a.jpg": b"a" * 10,
        "/up/cam-1/b.jpg": b"b" * 20,
        "/up/cam-2/c.jpg": b"c" * 30,
    }
    missing = run_cli("put", "file", "images@master:/x.jpg", "-f", f"s3://{s3_env}/incoming/nope.jpg", home=home)
    assert missing.returncode == 2 and "no such object" in missing.stderr.decode()
    empty = run_cli("put", "file", "images@master:/x", "-r", f"s3://{s3_env}/nothing-here/", home=home)
    assert empty.returncode == 2 and "no objects under this prefix" in empty.stderr.decode()
