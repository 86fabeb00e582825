"""Benchmark: time from a verdict committed to the provider accepting the notification, p50 / p99.

Local endpoints only (a SendGrid-compatible HTTP server answering 202, an aiosmtpd SMTP server, a webhook
receiver, and the Mosquitto broker on 127.0.0.1:1883 when it is up). For each channel, ``ALARMS`` verdicts
are committed one at a time to an ``assess`` repo and the real ``notify`` pipeline (its workers, the
ledger, incident grouping with ``window_s: 0`` so that every alarm is sent) processes each commit; the
latency of one alarm is the ledger's ``sent_at`` minus the verdict commit's ``finished_at``. It therefore
includes the runner noticing the commit, planning the job, handing the datum to a warm worker, the
pending/sent ledger commits and the provider call, and the output commit is not in it.

Run alone: ``.venv/bin/python -m benchmarks.bench_notify``; ``benchmarks/run_all.py`` finds it by name.
"""

from __future__ import annotations

import json
import socket
import statistics
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from benchmarks.common import Target, below, say, temp_folder, workspace

ALARMS = 40
TARGET_P50_MS = 50.0
PROJECT = Path(__file__).resolve().parents[1]
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 200 + b"\xff\xd9"  # ~50 KB, like an annotated snapshot


def _verdict(i: int) -> bytes:
    from datetime import UTC, datetime, timedelta

    return json.dumps(
        {
            "alarm": f"/bench/{i:04d}.jpg",
            "camera": "bench",
            "time": (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=i)).isoformat(),
            "verdict": "alert",
            "reasons": ["person 0.90 >= 0.50: alert"],
            "rule_path": "defaults",
            "rules_commit": None,
            "status": "ok",
            "detections": [
                {"label": "person", "score": 0.9, "box": [1, 2, 50, 90], "kept": True, "severity": "alert", "why": "x"}
            ],
            "model": None,
            "annotated_file": "annotated.jpg",
            "image_sha256": f"{i:064x}",
            "pipeline_versions": {},
        }
    ).encode()


class _Http:
    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(202)
                self.send_header("X-Message-Id", "bench")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mqtt_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 1883), timeout=1).close()
        return True
    except OSError:
        return False


def _one_channel(channel: dict[str, Any], env: dict[str, str]) -> dict[str, float]:
    import os

    from alarmsieve.notify.ledger import NotificationLedger
    from alarmsieve.pps.spec import load_spec_file

    os.environ.update(env)
    with temp_folder("notify") as home, workspace(home, None) as ws:
        ws.pfs.create_repo("rules")
        ws.pfs.create_repo("assess")
        ws.pfs.create_repo("clips")  # notify reads the union of assess and clips (one verdict per video clip)
        route: dict[str, Any] = {"channel": channel["name"]}
        if channel["type"] in ("outbox", "sendgrid", "smtp"):
            route["to"] = ["oncall@example.org"]
        config = {
            "channels": [channel],
            "routes": [route],
            "grouping": {"window_s": 0},
            "rate_limit": {"max_messages": 10_000},
        }
        builder = ws.pfs.start_commit("rules")
        builder.put_bytes("/notify.json", json.dumps(config).encode())
        builder.finish()
        ws.pps.create_pipeline(load_spec_file(PROJECT / "pipelines" / "notify.json"))
        ledger = NotificationLedger(ws.catalog_url)
        latencies: list[float] = []
        to_pending: list[float] = []  # commit -> ledger row (runner, job planning, worker, config, grouping)
        to_accepted: list[float] = []  # ledger row (pending) -> provider accepted and recorded
        with ws.runner() as runner:
            for i in range(ALARMS + 2):  # the first two warm the workers up and are not counted
                builder = ws.pfs.start_commit("assess")
                builder.put_bytes(f"/bench/{i:04d}.jpg/verdict.json", _verdict(i))
                builder.put_bytes(f"/bench/{i:04d}.jpg/annotated.jpg", JPEG + i.to_bytes(4, "big"))
                commit = builder.finish()
                jobs = runner.run_until_idle()
                assert jobs and jobs[-1].state == "success", [(j.pipeline, j.reason) for j in jobs]
                rows = [r for r in ledger.list("sent") if r.key.startswith(_key_prefix(i))]
                assert len(rows) == 1, f"alarm {i}: {len(rows)} sent rows"
                row = rows[0]
                if i >= 2 and row.sent_at is not None:
                    latencies.append((row.sent_at - commit.finished_at).total_seconds() * 1000)
                    to_pending.append((row.created_at - commit.finished_at).total_seconds() * 1000)
                    to_accepted.append((row.sent_at - row.created_at).total_seconds() * 1000)
    latencies.sort()
    return {
        "alarms": len(latencies),
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 2),
        "max_ms": round(latencies[-1], 2),
        "p50_commit_to_pending_ms": round(statistics.median(to_pending), 2),
        "p50_pending_to_accepted_ms": round(statistics.median(to_accepted), 2),
    }


def _key_prefix(i: int) -> str:
    import hashlib

    return hashlib.sha256(f"/bench/{i:04d}.jpg\x00{i:064x}".encode()).hexdigest()[:32]


def run() -> tuple[dict[str, Any], list[Target]]:
    from aiosmtpd.controller import Controller

    say("== notifications: verdict committed -> provider accepted (local endpoints) ==")
    http = _Http()

    class Sink:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 OK"

    smtp_port = _free_port()
    smtp = Controller(Sink(), hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    channels: list[tuple[dict[str, Any], dict[str, str]]] = [
        ({"name": "outbox", "type": "outbox"}, {}),
        (
            {"name": "sendgrid", "type": "sendgrid", "sender": "a@example.org", "api_key": {"env": "BENCH_SG_KEY"}}
            | {"base_url": http.url},
            {"BENCH_SG_KEY": "SG.bench"},
        ),
        (
            {"name": "smtp", "type": "smtp", "sender": "a@example.org", "host": "127.0.0.1", "port": smtp_port}
            | {"security": "plain"},
            {},
        ),
        (
            {"name": "webhook", "type": "webhook", "url": http.url + "/hook", "secret": {"env": "BENCH_HOOK"}}
            | {"allowed_hosts": ["127.0.0.1"]},
            {"BENCH_HOOK": "bench-secret"},
        ),
    ]
    if _mqtt_up():
        channels.append(({"name": "mqtt", "type": "mqtt", "topic_prefix": "alarmsieve-bench"}, {}))
    else:
        say("MQTT skipped: no broker on 127.0.0.1:1883")
    figures: dict[str, Any] = {"alarms_per_channel": ALARMS}
    targets: list[Target] = []
    try:
        for channel, env in channels:
            result = _one_channel(channel, env)
            figures[channel["name"]] = result
            say(
                f"{channel['name']:>9}: p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
                f"max {result['max_ms']:.1f} ms over {result['alarms']} alarms (p50 commit->pending "
                f"{result['p50_commit_to_pending_ms']:.1f} ms, "
                f"pending->accepted {result['p50_pending_to_accepted_ms']:.1f} ms)"
            )
            targets.append(
                below(f"notify {channel['name']} verdict->accepted p50", result["p50_ms"], TARGET_P50_MS, "ms")
            )
    finally:
        smtp.stop()
        http.close()
    return figures, targets


if __name__ == "__main__":
    from benchmarks.common import quiet_environment

    quiet_environment()
    figures, targets = run()
    for t in targets:
        say(t.line())
