"""The HTTP ingest API on a real uvicorn server on 127.0.0.1, with the real pipeline running in-process."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from alarmsieve.api.app import create_app
from alarmsieve.api.ingest import IngestError, IngestLimits, sniff
from alarmsieve.api.server import PipelineLoop, ThreadedServer
from alarmsieve.api.tokens import TokenError, TokenStore
from alarmsieve.config import Settings
from alarmsieve.stages.records import CLIP_VERDICT_FILE, VERDICT_FILE, ClipVerdictRecord, VerdictRecord
from alarmsieve.workspace import Workspace, WorkspaceError
from tests.conftest import PROJECT, run_cli
from tests.test_video import write_clip


class Api:
    def __init__(self, ws: Workspace, server: ThreadedServer, loop: PipelineLoop | None, app: Any) -> None:
        self.ws = ws
        self.app = app
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
def serve_api(
    ws: Workspace, *, runner: bool, limits: IngestLimits | None = None, fast_path: bool | None = None
) -> Iterator[Api]:
    """A real server on 127.0.0.1; with ``runner`` the pipeline runs in-process (like ``serve --http``)."""
    loop = PipelineLoop(ws, interval=5.0) if runner else None
    app = create_app(ws, loop=loop, limits=limits, fast_path=fast_path)
    if loop is not None:
        loop.start()
    try:
        with ThreadedServer(app) as server:
            yield Api(ws, server, loop, app)
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
    limits = IngestLimits(max_bytes=2_000_000, max_clip_bytes=3_000_000, max_pixels=4_000_000, rate_per_minute=6)
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
        # a time within clock_skew_max of the upload: the camera's own time stands, in both verdicts
        fired = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
        r = post(c, "cam-1", photo(shared_dir, "coral/grace_hopper.bmp"), time=fired.isoformat(), site="hq")
        assert r.status_code == 202, r.text
        accepted = r.json()
        assert accepted["id"] == accepted["path"].lstrip("/")
        assert accepted["id"].startswith(f"cam-1/{fired:%Y%m%d_%H%M%S}Z_") and accepted["id"].endswith(".bmp")
        assert accepted["duplicate"] is False
        # the alarm is in images@master at its id
        assert api.ws.pfs.get_file("images", "master", accepted["path"]) == photo(shared_dir, "coral/grace_hopper.bmp")

        # first readable: the server's provisional verdict (or the committed one, had the pipeline won)
        first = c.get(f"/api/v1/alarms/{accepted['id']}", params={"wait": "30s"}).json()
        assert first["state"] in ("provisional", "done") and first["verdict"]["verdict"] == "alert", first
        assert first["provisional"]["model_sha256"] == first["verdict"]["model"]["sha256"]
        assert first["provisional"]["rules_commit"] == api.ws.pfs.head("rules").id
        status = c.get(f"/api/v1/alarms/{accepted['id']}", params={"wait": "30s", "final": "true"}).json()
        assert status["state"] == "done", status
        # the provisional verdict is the committed one: the same record, field for field
        assert status["provisional"]["agrees"] is True and status["provisional"]["verdict"] == "alert"
        committed = VerdictRecord.model_validate_json(
            api.ws.pfs.get_file("assess", "master", f"/{accepted['id']}/{VERDICT_FILE}")
        )
        early = api.app.state.api.fast.result(accepted["id"])
        assert early is not None and early.record == committed
        if first["state"] == "provisional":
            assert first["verdict"] == status["verdict"]
        assert status["verdict"]["verdict"] == "alert"
        assert any(d["label"] == "person" and d["kept"] for d in status["verdict"]["detections"])
        assert status["verdict"]["model"]["sha256"]
        assert {s["stage"]: s["done"] for s in status["stages"]}["assess"] is True
        # the detector ran once: the pipeline's detect worker took the provisional run's boxes
        detect_log = [x.message for x in api.ws.pps.logs(pipeline="detect")]
        assert any("detections of the API's provisional run reused" in m for m in detect_log), detect_log
        assert not any(p.is_file() for p in (api.ws.home / "cache" / "detections").glob("*/*"))

        # the same alarm again: same id, no second commit
        again = post(c, "cam-1", photo(shared_dir, "coral/grace_hopper.bmp"), time=fired.isoformat())
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
        # the alert's notification: the notify job may still be running, so wait for it (not a timing check)
        delivered = 'alarmsieve_notification_delivery_seconds_count{channel="outbox"} 1.0'
        deadline = time.monotonic() + 120
        while delivered not in metrics and time.monotonic() < deadline:
            time.sleep(0.2)
            metrics = op.get("/metrics").text
        assert delivered in metrics
        assert 'alarmsieve_datum_queue_depth{pipeline="detect"} 0.0' in metrics
        assert "alarmsieve_worker_restarts" in metrics


def test_put_snapshot_for_simple_cameras_and_feedback(api: Api, shared_dir: Path) -> None:
    data = photo(shared_dir, "coral/cat_720p.jpg")
    with api.client(api.cam1) as c:
        r = c.put("/api/v1/cameras/cam-1/snapshot", content=data, headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 202, r.text
        alarm_id = r.json()["id"]
        assert alarm_id.startswith("cam-1/") and alarm_id.endswith(".jpg")
        done = c.get(f"/api/v1/alarms/{alarm_id}?wait=30s&final=true").json()
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
        too_big = post(c, "cam-1", b"\xff\xd8" + b"\0" * 2_100_000)  # under the clip limit, over the image one
        assert too_big.status_code == 413 and error_of(too_big)["error"] == "too_large"
        assert "image" in too_big.json()["detail"]
        pixels = post(c, "cam-1", png(2100, 2000), name="big.png")
        assert pixels.status_code == 413 and error_of(pixels)["error"] == "too_many_pixels"
        assert "2100x2000" in pixels.json()["detail"]
        clip = post(c, "cam-1", b"\x00\x00\x00\x20ftypisom" + b"\0" * 3_000_000, name="clip.mp4")
        assert clip.status_code == 413 and error_of(clip)["error"] == "too_large"
        assert "clip" in clip.json()["detail"] and "3000000" in clip.json()["detail"]
        ts = post(c, "cam-1", (b"\x47" + b"\0" * 187) * 3, name="cam.ts")
        assert ts.status_code == 415 and "MPEG" in error_of(ts)["detail"]
        text = post(c, "cam-1", b"hello, not an image", name="x.txt")
        assert text.status_code == 415 and error_of(text)["error"] == "unsupported_media_type"
        assert "MP4" in text.json()["detail"]
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
        assert 'alarmsieve_alarms_rejected_total{reason="unsupported_media_type"} 2.0' in rejected

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


def test_sniffing_tells_clip_containers_from_images(tmp_path: Path, shared_dir: Path) -> None:
    for name, codec, expected in (
        ("c.mp4", "libx264", "mp4"),
        ("c.mov", "libx264", "mov"),
        ("c.mkv", "libx264", "mkv"),
        ("c.avi", "mpeg4", "avi"),
    ):
        data = write_clip(tmp_path / name, shared_dir, seconds=1, person=None, codec=codec).read_bytes()
        assert sniff(data) == ("clip", expected), name
    assert sniff(photo(shared_dir, "coral/bird.bmp")) == ("image", "bmp")
    with pytest.raises(IngestError) as heic:  # ISO BMFF holding a still image is no clip
        sniff(b"\x00\x00\x00\x18ftypheic" + b"\0" * 64)
    assert heic.value.status == 415


def test_clip_is_committed_to_videos_and_its_clip_verdict_read_back(api: Api, shared_dir: Path, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "gate.mp4", shared_dir, seconds=3, person=(1.0, 2.0)).read_bytes()
    with api.client(api.cam1) as c:
        r = post(c, "cam-1", clip, name="gate.mp4", time="2026-11-27T11:00:00Z")
        assert r.status_code == 202, r.text
        accepted = r.json()
        assert accepted["kind"] == "clip" and accepted["repo"] == "videos"
        assert accepted["id"].startswith("cam-1/20261127_110000Z_") and accepted["id"].endswith(".mp4")
        assert api.ws.pfs.get_file("videos", "master", accepted["path"]) == clip

        status = c.get(f"/api/v1/alarms/{accepted['id']}", params={"wait": "30s", "final": "true"}).json()
        assert status["kind"] == "clip" and status["state"] == "done", status
        assert status["provisional"] is None  # clips go through the pipeline only
        verdict = status["verdict"]
        assert verdict["kind"] == "clip" and verdict["input_path"] == accepted["path"]
        assert verdict["verdict"] == "alert" and verdict["deciding_frame"].startswith(accepted["path"] + "/")
        assert verdict["frames"] and all(f["clip"]["clip"] == accepted["path"] for f in verdict["frames"])
        assert verdict["model"]["sha256"] and verdict["rules_version"]
        done = {s["stage"]: s["done"] for s in status["stages"]}
        assert all(done[s] for s in ("frames", "validate", "detect", "assess", "clips")), done
        record = ClipVerdictRecord.model_validate_json(
            api.ws.pfs.get_file("clips", "master", f"{accepted['path']}/{CLIP_VERDICT_FILE}")
        )
        assert record.verdict == verdict["verdict"] and record.clip_sha256 == hashlib.sha256(clip).hexdigest()

        again = post(c, "cam-1", clip, name="gate.mp4", time="2026-11-27T11:00:00Z")
        assert again.json()["duplicate"] and again.json()["id"] == accepted["id"]

        # the verdict list mirrors `alarmsieve verdicts --json`: the clip once, its frames under it
        listed = c.get("/api/v1/verdicts", params={"device": "cam-1"}).json()
        clips = [v for v in listed if v.get("kind") == "clip"]
        assert [v["input_path"] for v in clips] == [accepted["path"]] and clips[0]["frames"] == verdict["frames"]
        assert not any(v.get("clip") for v in listed if v.get("kind") != "clip")
        cli = run_cli("verdicts", "--json", "--device", "cam-1", home=api.ws.home)
        assert cli.returncode == 0, cli.stderr
        assert [json.loads(line) for line in cli.stdout.splitlines()] == listed


def test_clip_refused_when_no_pipeline_reads_videos(make_workspace: Callable[..., Workspace], tmp_path: Path) -> None:
    ws = make_workspace(init=False)  # no pipelines: a clip committed here would never be judged
    clip = b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x88matroska" + b"\0" * 64
    with serve_api(ws, runner=False) as api, api.client(api.operator) as op:
        r = post(op, "cam-1", clip, name="a.mkv")
        assert r.status_code == 409 and error_of(r)["error"] == "clips_not_configured"
        assert "alarmsieve init" in r.json()["detail"]
    assert not ws.pfs.repo_exists("videos") or ws.pfs.head("videos") is None


def test_provisional_verdict_comes_from_the_server_and_never_for_a_paused_pipeline(
    make_workspace: Callable[..., Workspace], shared_dir: Path
) -> None:
    ws = make_workspace()
    with serve_api(ws, runner=False, fast_path=True) as api, api.client(api.operator) as c:
        alarm = post(c, "cam-1", photo(shared_dir, "coral/grace_hopper.bmp")).json()["id"]
        status = c.get(f"/api/v1/alarms/{alarm}", params={"wait": "30s"}).json()
        # no runner here: the verdict can only be the server's own, and nothing is committed
        assert status["state"] == "provisional" and status["verdict"]["verdict"] == "alert", status
        assert not any(s["done"] for s in status["stages"]) and ws.pfs.head("assess") is None
        assert status["provisional"]["agrees"] is None and status["provisional"]["detector_ms"] > 0
        assert status["verdict"]["pipeline_versions"] == {"detect": "detect@v1", "assess": "assess@v1"}
        final = c.get(f"/api/v1/alarms/{alarm}", params={"wait": "300ms", "final": "true"}).json()
        assert final["state"] == "provisional"  # the committed verdict never came within the wait
        page = httpx.get(f"{api.url}/review/{alarm}", cookies={"alarmsieve_token": api.operator})
        assert page.status_code == 200 and "Provisional verdict: alert" in page.text

        ws.pps.set_state("assess", "paused")  # its verdict would come only when it runs again
        paused = post(c, "cam-1", photo(shared_dir, "coral/bird.bmp")).json()["id"]
        status = c.get(f"/api/v1/alarms/{paused}", params={"wait": "1s"}).json()
        assert status["state"] == "pending" and status["verdict"] is None and status["provisional"] is None
        assert "paused" in api.app.state.api.fast.reason
