"""The HTTP ingest API on a real uvicorn server on 127.0.0.1, with the real pipeline running in-process."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from alarmsieve.api.app import create_app
from alarmsieve.api.ingest import IngestLimits
from alarmsieve.api.server import PipelineLoop, ThreadedServer
from alarmsieve.api.tokens import TokenError, TokenStore
from alarmsieve.config import Settings
from alarmsieve.workspace import Workspace, WorkspaceError
from tests.conftest import PROJECT, run_cli


class Api:
    def __init__(self, ws: Workspace, server: ThreadedServer, loop: PipelineLoop | None) -> None:
        self.ws = ws
        self.server = server
        self.loop = loop
        self.url = server.url
        store = TokenStore(ws.catalog_url)
        _, self.operator = store.create("alice", "operator")
        _, self.cam1 = store.create("front door", "camera", "cam-1")
        self.store = store

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


@contextlib.contextmanager
def serve_api(ws: Workspace, *, runner: bool, limits: IngestLimits | None = None) -> Iterator[Api]:
    """A real server on 127.0.0.1; with ``runner`` the pipeline runs in-process (like ``serve --http``)."""
    loop = PipelineLoop(ws, interval=5.0) if runner else None
    app = create_app(ws, loop=loop, limits=limits)
    if loop is not None:
        loop.start()
    try:
        with ThreadedServer(app) as server:
            yield Api(ws, server, loop)
    finally:
        if loop is not None:
            loop.stop()


def module_workspace(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Workspace:
    home = tmp_path_factory.mktemp("api")
    ws = Workspace(Settings(home=home / "ws", model_dir=model_dir, model_cache=home / "cache"), must_exist=False)
    ws.init(pipelines_dir=PROJECT / "pipelines")
    return ws


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Api]:
    """One warm server + runner for the module's pipeline tests (workers start once)."""
    with serve_api(module_workspace(tmp_path_factory, model_dir), runner=True) as served:
        yield served


@pytest.fixture
def api_only(make_workspace: Callable[..., Workspace]) -> Iterator[Api]:
    """The API without a runner (as when another process runs the pipeline), with small limits."""
    limits = IngestLimits(max_bytes=2_000_000, max_pixels=4_000_000, rate_per_minute=6)
    with serve_api(make_workspace(), runner=False, limits=limits) as served:
        yield served


def photo(shared: Path, name: str) -> bytes:
    return (shared / "images" / name).read_bytes()


def post(client: httpx.Client, camera: str, data: bytes, name: str = "snap.jpg", **fields: str) -> httpx.Response:
    return client.post("/api/v1/alarms", data={"camera": camera, **fields}, files={"file": (name, data)})


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), 0).save(buf, "PNG")
    return buf.getvalue()


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    return body


def test_post_then_long_poll_returns_the_verdict(api: Api, shared_dir: Path) -> None:
    with api.client(api.cam1) as c:
        r = post(c, "cam-1", photo(shared_dir, "coral/grace_hopper.bmp"), time="2026-11-27T10:30:00Z", site="hq")
        assert r.status_code == 202, r.text
        accepted = r.json()
        assert accepted["id"] == accepted["path"].lstrip("/")
        assert accepted["id"].startswith("cam-1/20261127_103000_") and accepted["id"].endswith(".bmp")
        assert accepted["duplicate"] is False
        # the alarm is in images@master at its id
        assert api.ws.pfs.get_file("images", "master", accepted["path"]) == photo(shared_dir, "coral/grace_hopper.bmp")

        status = c.get(f"/api/v1/alarms/{accepted['id']}", params={"wait": "30s"}).json()
        assert status["state"] == "done", status
        assert status["verdict"]["verdict"] == "alert"
        assert any(d["label"] == "person" and d["kept"] for d in status["verdict"]["detections"])
        assert status["verdict"]["model"]["sha256"]
        assert {s["stage"]: s["done"] for s in status["stages"]}["assess"] is True

        # the same alarm again: same id, no second commit
        again = post(c, "cam-1", photo(shared_dir, "coral/grace_hopper.bmp"), time="2026-11-27T10:30:00Z")
        assert again.status_code == 202 and again.json()["id"] == accepted["id"] and again.json()["duplicate"]
        assert again.json()["commit"] == accepted["commit"]

    with api.client(api.operator) as op:
        verdicts = op.get("/api/v1/verdicts", params={"device": "cam-1"}).json()
        assert [v["input_path"] for v in verdicts] == [accepted["path"]]
        # the API mirrors `alarmsieve verdicts --json`
        cli = run_cli("verdicts", "--json", home=api.ws.home)
        assert cli.returncode == 0, cli.stderr
        assert [json.loads(line) for line in cli.stdout.splitlines()] == verdicts

        status = op.get("/api/v1/status").json()
        assert status["runner"] == {
            "in_process": True,
            "alive": True,
            "error": None,
            "worker_restarts": status["runner"]["worker_restarts"],
        }
        assert {p["name"] for p in status["pipelines"]} >= {"validate", "detect", "assess", "notify"}
        assert status["alarms_received_over_http"] == 1

        metrics = op.get("/metrics").text
        assert 'alarmsieve_alarms_received_total{camera="cam-1"} 1.0' in metrics
        assert 'alarmsieve_verdicts_total{camera="cam-1",verdict="alert"} 1.0' in metrics
        assert "alarmsieve_detector_latency_seconds_count 1.0" in metrics
        assert 'alarmsieve_end_to_end_latency_seconds_count{until="verdict"} 1.0' in metrics
        assert 'alarmsieve_datum_queue_depth{pipeline="detect"} 0.0' in metrics
        assert "alarmsieve_worker_restarts" in metrics


def test_put_snapshot_for_simple_cameras_and_feedback(api: Api, shared_dir: Path) -> None:
    data = photo(shared_dir, "coral/cat_720p.jpg")
    with api.client(api.cam1) as c:
        r = c.put("/api/v1/cameras/cam-1/snapshot", content=data, headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 202, r.text
        alarm_id = r.json()["id"]
        assert alarm_id.startswith("cam-1/") and alarm_id.endswith(".jpg")
        done = c.get(f"/api/v1/alarms/{alarm_id}?wait=30s").json()
        assert done["state"] == "done" and done["verdict"]["verdict"] in ("dismiss", "review")
        # a camera token may not give feedback
        assert c.post("/api/v1/feedback", json={"alarm_id": alarm_id, "label": "missed_threat"}).status_code == 403

    with api.client(api.operator) as op:
        r = op.post("/api/v1/feedback", json={"alarm_id": alarm_id, "label": "missed_threat", "note": "a person hides"})
        assert r.status_code == 201, r.text
        record = json.loads(api.ws.pfs.get_file("feedback", "master", f"/{alarm_id}/label.json"))
        assert record["label"] == "missed_threat" and record["expected_verdict"] == "alert"
        assert record["operator"] == "alice" and record["verdict_given"] == done["verdict"]["verdict"]
        assert api.ws.pfs.get_file("feedback", "master", f"/{alarm_id}/image.jpg") == data
        missing = op.post("/api/v1/feedback", json={"alarm_id": "cam-1/nope.jpg", "label": "false_alarm"})
        assert missing.status_code == 404 and error_of(missing)["error"] == "not_found"


def test_auth_camera_scope_and_revocation(api_only: Api, shared_dir: Path) -> None:
    api = api_only
    data = photo(shared_dir, "coral/bird.bmp")
    with api.client() as anon:
        r = post(anon, "cam-1", data)
        assert r.status_code == 401 and error_of(r)["error"] == "missing_token"
        assert anon.get("/api/v1/status").status_code == 401
        assert anon.get("/api/v1/openapi.json").status_code == 200
    with api.client("ast_000000000000_" + "x" * 43) as bad:
        assert error_of(post(bad, "cam-1", data))["error"] == "invalid_token"
    with api.client(api.cam1) as cam:
        r = post(cam, "cam-2", data)
        assert r.status_code == 403 and error_of(r)["error"] == "camera_forbidden"
        assert "cam-1" in r.json()["detail"] and "cam-2" in r.json()["detail"]
        assert cam.put("/api/v1/cameras/cam-2/snapshot", content=data).status_code == 403
        assert cam.get("/api/v1/status").status_code == 403
        assert cam.get("/api/v1/alarms/cam-2/x.jpg").status_code == 403
    with api.client(api.operator) as op:
        assert post(op, "cam-2", data).status_code == 202  # an operator may post for any camera
    token_id = api.cam1.split("_")[1]
    out = run_cli("token", "revoke", token_id, home=api.ws.home)
    assert out.returncode == 0, out.stderr
    with api.client(api.cam1) as cam:
        assert error_of(post(cam, "cam-1", data))["error"] == "invalid_token"


def test_limits_and_clear_errors(api_only: Api, shared_dir: Path) -> None:
    api = api_only
    with api.client(api.operator) as c:
        too_big = post(c, "cam-1", b"\xff\xd8" + b"\0" * 2_100_000)
        assert too_big.status_code == 413 and error_of(too_big)["error"] == "too_large"
        pixels = post(c, "cam-1", png(2100, 2000), name="big.png")
        assert pixels.status_code == 413 and error_of(pixels)["error"] == "too_many_pixels"
        assert "2100x2000" in pixels.json()["detail"]
        clip = post(c, "cam-1", b"\x00\x00\x00\x20ftypisom" + b"\0" * 100, name="clip.mp4")
        assert clip.status_code == 415 and error_of(clip)["error"] == "video_not_supported"
        assert "videos" in clip.json()["detail"]
        text = post(c, "cam-1", b"hello, not an image", name="x.txt")
        assert text.status_code == 415 and error_of(text)["error"] == "unsupported_media_type"
        bad_camera = post(c, "../etc", png(100, 100))
        assert bad_camera.status_code == 422 and error_of(bad_camera)["error"] == "bad_camera"
        bad_meta = post(c, "cam-1", png(100, 100), metadata="[1, 2]")
        assert bad_meta.status_code == 422 and error_of(bad_meta)["error"] == "bad_metadata"
        missing = c.post("/api/v1/alarms", data={"camera": "cam-1"})
        assert missing.status_code == 422 and "file" in error_of(missing)["detail"]
        assert error_of(c.get("/api/v1/alarms/cam-1/never.jpg"))["error"] == "not_found"
        assert error_of(c.get("/api/v1/alarms/cam-1/never.jpg", params={"wait": "soon"}))["error"] == "bad_wait"
        assert error_of(c.get("/api/v1/verdicts", params={"since": "yesterday"}))["error"] == "bad_since"
        rejected = c.get("/metrics").text
        assert 'alarmsieve_alarms_rejected_total{reason="video_not_supported"} 1.0' in rejected

    # rate limit: 6 a minute per token (this fixture), then 429 with Retry-After
    with api.client(api.cam1) as cam:
        codes = [post(cam, "cam-1", png(80, 80 + i), name="s.png").status_code for i in range(7)]
        assert codes == [202] * 6 + [429]
        limited = post(cam, "cam-1", png(80, 99), name="s.png")
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        assert error_of(limited)["error"] == "rate_limited"


def test_token_cli(make_workspace: Callable[..., Workspace]) -> None:
    ws = make_workspace()
    out = run_cli("token", "create", "--name", "gate", "--camera", "gate-1", "--json", home=ws.home)
    assert out.returncode == 0, out.stderr
    created = json.loads(out.stdout)
    assert created["kind"] == "camera" and created["camera"] == "gate-1" and created["token"].startswith("ast_")
    # only the hash is stored
    principal = TokenStore(ws.catalog_url).verify(created["token"])
    assert principal is not None and principal.camera == "gate-1"
    listed = run_cli("token", "list", "--json", home=ws.home)
    assert created["token"] not in listed.stdout.decode()
    assert json.loads(listed.stdout)["id"] == created["id"]
    bad = run_cli("token", "create", "--name", "x", "--kind", "camera", home=ws.home)
    assert bad.returncode == 1 and b"--camera" in bad.stderr
    with pytest.raises(TokenError, match="not valid"):
        TokenStore(ws.catalog_url).create("x", "camera", "a/b")
    with pytest.raises(TokenError, match="token list"):
        TokenStore(ws.catalog_url).revoke("abcdef123456")


def test_one_runner_per_workspace(api: Api) -> None:
    """A second `serve --http` on the same workspace fails clearly instead of running a second runner."""
    with pytest.raises(WorkspaceError, match="another runner"):
        PipelineLoop(api.ws).start()
    out = run_cli("serve", "--http", "--once", home=api.ws.home)
    assert out.returncode == 2 and b"--once and --http" in out.stderr
