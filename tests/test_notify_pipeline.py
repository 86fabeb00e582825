"""The notify stage in real pipelines (real photos, detector, workers) with channels configured in the rules repo."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from alarmsieve.notify import NotificationLedger
from alarmsieve.pps.spec import load_spec_file
from alarmsieve.stages.records import NOTIFICATION_FILE, NotificationRecord
from alarmsieve.workspace import Workspace
from tests.conftest import PROJECT, run_cli
from tests.test_notify_servers import FakeSendGrid, MqttSubscriber, SmtpServer, WebhookReceiver

PIPELINES = ("validate", "detect", "assess", "clips", "notify")  # frames waits for a clip
SG_KEY = "SG.pipeline-test-key"
HOOK_SECRET = "pipeline-hook-secret"


def put_config(ws: Workspace, doc: dict[str, Any]) -> None:
    builder = ws.pfs.start_commit("rules")
    builder.put_bytes("/notify.json", json.dumps(doc).encode())
    builder.finish()


def put_alarms(ws: Workspace, shared: Path) -> None:
    builder = ws.pfs.start_commit("images")
    builder.put_local_file("/gate/a.png", shared / "images/skimage/astronaut.png")  # person
    builder.put_local_file("/gate/b.bmp", shared / "images/coral/grace_hopper.bmp")  # person
    builder.put_local_file("/gate/c.png", shared / "images/skimage/grass.png")  # nothing
    builder.finish()


def states(ws: Workspace) -> list[str]:
    return sorted(
        NotificationRecord.model_validate_json(ws.pfs.get_file("notify", "master", f.path)).state
        for f in ws.pfs.walk("notify")
        if f.path.endswith(NOTIFICATION_FILE)
    )


def reprocess_everything(ws: Workspace) -> None:
    for name in PIPELINES:
        ws.pps.create_pipeline(load_spec_file(PROJECT / "pipelines" / f"{name}.json"), update=True, reprocess=True)
    with ws.runner() as runner:
        jobs = runner.run_until_idle()
    assert [(j.pipeline, j.state, j.processed) for j in jobs] == [(p, "success", 3) for p in PIPELINES]


def test_sendgrid_worker_killed_after_provider_accepted_sends_exactly_once(
    make_workspace: Callable[..., Workspace], shared_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = make_workspace()
    with FakeSendGrid(SG_KEY) as sg:
        put_config(
            ws,
            {
                "channels": [
                    {"name": "sg", "type": "sendgrid", "sender": "alarms@example.org", "api_key": {"env": "T_SG_KEY"}}
                    | {"base_url": sg.url, "timeout_s": 5}
                ],
                "routes": [{"channel": "sg", "to": ["oncall@example.org"]}],
            },
        )
        put_alarms(ws, shared_dir)
        monkeypatch.setenv("T_SG_KEY", SG_KEY)
        monkeypatch.setenv("ALARMSIEVE_FAULT", "notify:after_send")
        monkeypatch.setenv("ALARMSIEVE_FAULT_DIR", str(tmp_path))
        with ws.runner() as runner:
            jobs = runner.run_until_idle()
        assert (tmp_path / "fault-notify:after_send.fired").exists()  # killed with the message accepted
        assert jobs[-1].pipeline == "notify" and jobs[-1].state == "success"
        assert [d.attempts for d in ws.pps.list_datums("notify", jobs[-1].id) if d.state == "recovered"] == [2]
        # two person alarms of one camera at the same time: one incident, one e-mail, accepted once
        assert len(sg.posts("/v3/mail/send")) == 1
        assert len([r for r in sg.requests if r[0] == "GET"]) == 1  # the delivery check after the crash
        assert states(ws) == ["not_needed", "not_needed", "sent"]
        [row] = NotificationLedger(ws.catalog_url).list()
        assert (row.state, row.provider_id, row.attempts, row.channel) == ("sent", "sg-0", 1, "sg")

        monkeypatch.delenv("ALARMSIEVE_FAULT")
        reprocess_everything(ws)
        assert len(sg.posts("/v3/mail/send")) == 1  # zero new deliveries
        assert states(ws) == ["already_sent", "not_needed", "not_needed"]


def test_smtp_webhook_mqtt_from_rules_repo_then_reprocess_sends_nothing(
    make_workspace: Callable[..., Workspace], shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = make_workspace()
    prefix = f"alarmsieve-pipe-{id(ws)}"
    monkeypatch.setenv("T_HOOK_SECRET", HOOK_SECRET)
    with SmtpServer() as smtp, WebhookReceiver(HOOK_SECRET) as hook, MqttSubscriber(prefix) as sub:
        put_config(
            ws,
            {
                "sites": {"hq": ["gate"]},
                "timezones": {"hq": "America/New_York"},
                "channels": [
                    {"name": "mail", "type": "smtp", "sender": "alarms@example.org", "host": "127.0.0.1"}
                    | {"port": smtp.port, "security": "plain", "timeout_s": 5},
                    {"name": "hook", "type": "webhook", "url": hook.url + "/in", "secret": {"env": "T_HOOK_SECRET"}}
                    | {"allowed_hosts": ["127.0.0.1"], "timeout_s": 5},
                    {"name": "bus", "type": "mqtt", "topic_prefix": prefix},
                ],
                "routes": [
                    {"channel": "mail", "to": ["oncall@example.org", "guard@example.org"]},
                    {"channel": "hook"},
                    {"channel": "bus"},
                ],
            },
        )
        put_alarms(ws, shared_dir)
        with ws.runner() as runner:
            jobs = runner.run_until_idle()
        assert all(j.state == "success" for j in jobs), [(j.pipeline, j.reason) for j in jobs]
        sub.wait_for(4)  # new + update events, two snapshots
        # one incident: the first alarm e-mails both people, the second (same instant) only updates machines
        assert sorted(r for rcpts, _ in smtp.messages for r in rcpts) == ["guard@example.org", "oncall@example.org"]
        _, msg = smtp.messages[0]
        assert "(hq)" in str(msg["Subject"]) and str(msg["Subject"]).endswith("(America/New_York)")
        assert len([p for p in msg.walk() if p.get_content_maintype() == "image"]) == 2
        assert hook.bad_signatures == 0
        assert sorted(b["event"] for b in hook.bodies()) == ["new", "update"]
        events = sorted(sub.events(), key=lambda e: e["seq"])  # two workers: either may publish first
        assert [(e["type"], e["seq"]) for e in events] == [("new", 1), ("update", 2)]
        assert len({e["id"] for e in sub.events()}) == 1
        deliveries = json.loads(ws.pfs.get_file("notify", "master", "/gate/a.png/deliveries.json"))["deliveries"]
        assert {d["channel"] for d in deliveries} == {"mail", "hook", "bus"}

        counts = (len(smtp.messages), len(hook.posts()), len(sub.live()))
        ws.pps.create_pipeline(load_spec_file(PROJECT / "pipelines/notify.json"), update=True, reprocess=True)
        with ws.runner() as runner:
            assert [(j.pipeline, j.state, j.processed) for j in runner.run_until_idle()] == [("notify", "success", 3)]
        sub.wait_for(counts[2] + 1, timeout=1.0)  # anything new would have arrived by now
        assert (len(smtp.messages), len(hook.posts()), len(sub.live())) == counts

    # the CLI shows the ledger
    home = ws.home
    listed = run_cli("list", "notification", "--json", home=home)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.decode().splitlines()]
    assert sorted(r["channel"] for r in rows) == ["bus", "bus", "hook", "hook", "mail", "mail"]
    assert {r["state"] for r in rows} == {"sent"}
    shown = run_cli("inspect", "notification", str(rows[0]["id"]), home=home)
    assert shown.returncode == 0 and b"Provider ID" in shown.stdout and b"Attempts: 1" in shown.stdout
    none_failed = run_cli("list", "notification", "--failed", "--json", home=home)
    assert none_failed.returncode == 0 and none_failed.stdout == b""
    missing = run_cli("inspect", "notification", "999", home=home)
    assert missing.returncode == 1 and b"no notification with id 999" in missing.stderr
