"""SMTP, webhook, MQTT and the SendGrid delivery check against real servers on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import select
import ssl
import time
from pathlib import Path

import pytest

from alarmsieve.notify import (
    DeliveryError,
    MqttChannel,
    NotificationLedger,
    SendGridChannel,
    SmtpChannel,
    WebhookChannel,
)
from alarmsieve.pfs.db import Base, get_engine
from tests.test_notify import JPEG, ORIGINAL, notification
from tests.test_notify_servers import (
    FakeSendGrid,
    MqttSubscriber,
    SmtpServer,
    WebhookReceiver,
    self_signed,
    verify_signature,
)

SECRET = "hook-secret-1"


@pytest.fixture
def ledger(tmp_path: Path) -> NotificationLedger:
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    Base.metadata.create_all(get_engine(url))
    return NotificationLedger(url)


def _images(msg) -> dict[str | None, bytes]:
    return {p.get_content_disposition(): p.get_content() for p in msg.walk() if p.get_content_maintype() == "image"}


# --- SMTP -------------------------------------------------------------------------------------------


def test_smtp_plain_delivers_parsable_message_with_both_images(ledger: NotificationLedger) -> None:
    with SmtpServer() as server:
        channel = SmtpChannel(
            host="127.0.0.1", port=server.port, sender="alarms@example.org", recipients=["ops@example.org"],
            security="plain", timeout=5,
        )  # fmt: skip
        n = notification(timezone="Europe/Paris", site="north")
        out = ledger.deliver_once(channel, n)
        assert (out.state, out.attempts) == ("sent", 1)
        assert ledger.deliver_once(channel, n).already_sent
    [(rcpts, msg)] = server.messages
    assert rcpts == ["ops@example.org"]
    assert msg["To"] == "ops@example.org" and msg["From"] == "alarms@example.org"
    assert out.provider_id == msg["Message-ID"]
    # 12:00:05 UTC is 13:00:05 in Paris in March; the site is named
    assert msg["Subject"] == "[alarmsieve] ALERT person on cam-1 (north) at 2026-03-01 13:00:05 +01:00 (Europe/Paris)"
    assert "Time:    2026-03-01 13:00:05 +01:00 (Europe/Paris)" in msg.get_body(preferencelist=("plain",)).get_content()
    images = _images(msg)
    assert images == {"inline": JPEG, "attachment": ORIGINAL}


@pytest.mark.parametrize("mode", ["starttls", "tls"])
def test_smtp_tls_modes_with_auth(tmp_path: Path, ledger: NotificationLedger, mode: str, caplog) -> None:
    cert, key = self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    caplog.set_level(logging.DEBUG, logger="alarmsieve")
    with SmtpServer(tls=server_ctx, implicit_tls=mode == "tls", login=("alarms", "pa55word")) as server:
        channel = SmtpChannel(
            host="127.0.0.1", port=server.port, sender="alarms@example.org",
            recipients=["a@example.org"], security=mode, username="alarms", password="pa55word",
            timeout=5, ca_file=str(cert),
        )  # fmt: skip
        assert "pa55word" not in repr(channel)
        out = ledger.deliver_once(channel, notification())
        assert out.state == "sent", out.last_error
        bad = SmtpChannel(
            host="127.0.0.1", port=server.port, sender="alarms@example.org",
            recipients=["a@example.org"], security=mode, username="alarms", password="wrong", timeout=5,
            ca_file=str(cert),
        )  # fmt: skip
        failed = ledger.deliver_once(bad, notification(key="other"))
    assert server.logins == ["alarms"] and len(server.messages) == 1
    assert (failed.state, failed.dead, failed.attempts) == ("failed", True, 1)
    assert "authentication failed" in (failed.last_error or "")
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("alarmsieve"))
    assert "pa55word" not in ours and "wrong" not in (failed.last_error or "")


def test_smtp_errors_classified(ledger: NotificationLedger) -> None:
    with SmtpServer(reject="554 5.7.1 rejected as spam") as server:
        channel = SmtpChannel(
            host="127.0.0.1", port=server.port, sender="s@x.org", recipients=["r@x.org"], security="plain", timeout=5
        )
        out = ledger.deliver_once(channel, notification(), backoff=0.01)
    assert (out.state, out.dead, out.attempts) == ("failed", True, 1)
    assert "554" in (out.last_error or "")
    with SmtpServer(reject="451 4.3.0 try again later") as server:
        channel = SmtpChannel(
            host="127.0.0.1", port=server.port, sender="s@x.org", recipients=["r@x.org"], security="plain", timeout=5
        )
        out = ledger.deliver_once(channel, notification(key="k2"), max_attempts=2, backoff=0.01)
    assert (out.state, out.dead, out.attempts) == ("failed", False, 2)  # retryable: not a dead letter
    closed = SmtpChannel(host="127.0.0.1", port=9, sender="s@x.org", recipients=["r@x.org"], security="plain")
    with pytest.raises(DeliveryError) as info:
        closed.send(notification())
    assert info.value.retryable


def test_smtp_keeps_one_connection_and_reconnects_after_the_server_hangs_up(ledger: NotificationLedger) -> None:
    with SmtpServer(idle_timeout=0.5) as server:
        channel = SmtpChannel(
            host="127.0.0.1", port=server.port, sender="s@x.org", recipients=["r@x.org"], security="plain", timeout=5
        )
        for key in ("a", "b", "c"):
            assert ledger.deliver_once(channel, notification(key=key)).state == "sent"
        assert len(set(server.peers)) == 1  # three messages, one connection
        # The server drops the idle connection (a 421 and EOF); the channel notices (NOOP) and connects again.
        kept = channel._client.sock
        deadline = time.monotonic() + 30
        while not select.select([kept], [], [], 0.1)[0]:
            assert time.monotonic() < deadline, "the server never dropped the idle connection"
        out = ledger.deliver_once(channel, notification(key="d"))
        channel.close()
    assert (out.state, out.attempts) == ("sent", 1)
    assert [m["X-Alarmsieve-Key"] for _, m in server.messages] == ["a", "b", "c", "d"]
    assert len(set(server.peers)) == 2


# --- webhook ----------------------------------------------------------------------------------------


def test_webhook_signed_body_with_base64_images(ledger: NotificationLedger) -> None:
    with WebhookReceiver(SECRET) as hook:
        channel = WebhookChannel(hook.url + "/alarms", secret=SECRET, allowed_hosts=["127.0.0.1"], timeout=5)
        assert SECRET not in repr(channel)
        out = ledger.deliver_once(channel, notification(kind="new", incident_id="inc-1"))
        assert out.state == "sent" and out.provider_id == "req-1"
        assert ledger.deliver_once(channel, notification(kind="new", incident_id="inc-1")).already_sent
    assert hook.bad_signatures == 0
    [(_method, path, headers, body)] = hook.posts()
    assert path == "/alarms" and verify_signature(SECRET, body, headers["X-Alarmsieve-Signature"])
    assert headers["Idempotency-Key"] == notification().key
    doc = json.loads(body)
    assert doc["event"] == "new"
    assert doc["notification"]["camera"] == "cam-1" and doc["notification"]["verdict"] == "alert"
    assert doc["notification"]["objects"][0]["label"] == "person"
    import base64

    assert base64.b64decode(doc["images"]["annotated"]["base64"]) == JPEG
    assert base64.b64decode(doc["images"]["original"]["base64"]) == ORIGINAL


def test_webhook_wrong_secret_is_a_permanent_failure_and_urls_mode(ledger: NotificationLedger) -> None:
    with WebhookReceiver(SECRET) as hook:
        wrong = WebhookChannel(hook.url, secret="not-it", allowed_hosts=["127.0.0.1"], timeout=5)
        out = ledger.deliver_once(wrong, notification(), backoff=0.01)
        assert (out.state, out.dead, out.attempts) == ("failed", True, 1)
        assert "401" in (out.last_error or "")
        by_url = WebhookChannel(
            hook.url, secret=SECRET, allowed_hosts=["127.0.0.1"], images="url",
            image_url_template="https://nvr.example/{camera}{alarm}/{file}",
        )  # fmt: skip
        assert ledger.deliver_once(by_url, notification(key="k-url")).state == "sent"
    doc = hook.bodies()[-1]
    assert (
        doc["images"]["annotated"]["url"] == "https://nvr.example/cam-1alarms/cam-1/2026-03-01/120000.jpg/annotated.jpg"
    )
    assert "base64" not in doc["images"]["annotated"]


def test_webhook_host_outside_allow_list_is_refused() -> None:
    with pytest.raises(DeliveryError, match="not in allowed_hosts") as info:
        WebhookChannel("http://169.254.169.254/latest", secret=SECRET, allowed_hosts=["127.0.0.1"])
    assert not info.value.retryable


def test_webhook_5xx_retried_then_sent(ledger: NotificationLedger) -> None:
    calls: list[int] = []

    with WebhookReceiver(SECRET) as hook:
        original = hook.server.RequestHandlerClass._handle  # type: ignore[attr-defined]

        def flaky(self) -> None:  # type: ignore[no-untyped-def]
            calls.append(1)
            if len(calls) == 1:
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(503)
                self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            original(self)

        hook.server.RequestHandlerClass.do_POST = flaky  # type: ignore[attr-defined]
        channel = WebhookChannel(hook.url, secret=SECRET, allowed_hosts=["127.0.0.1"], timeout=5)
        out = ledger.deliver_once(channel, notification(), backoff=0.01)
    assert (out.state, out.attempts) == ("sent", 2)


# --- MQTT -------------------------------------------------------------------------------------------


def test_mqtt_lifecycle_and_snapshot(ledger: NotificationLedger) -> None:
    prefix = f"alarmsieve-test-{id(ledger)}"
    channel = MqttChannel(topic_prefix=prefix, qos=1, timeout=5)
    with MqttSubscriber(prefix) as sub:
        for key, kind in [("a1", "new"), ("a2", "update"), ("a3", "escalation"), ("end-1", "end")]:
            out = ledger.deliver_once(channel, notification(key=key, kind=kind, incident_id="inc-42"))
            assert out.state == "sent", out.last_error
        assert ledger.deliver_once(channel, notification(key="a1", kind="new", incident_id="inc-42")).already_sent
        messages = sub.wait_for(7)
    events = [json.loads(p) for t, p, _ in messages if t == f"{prefix}/cam-1/events"]
    assert [e["type"] for e in events] == ["new", "update", "update", "end"]
    assert {e["id"] for e in events} == {"inc-42"}
    assert events[0]["labels"] == ["person"] and events[0]["verdict"] == "alert"
    snapshots = [p for t, p, _ in messages if t == f"{prefix}/cam-1/snapshot"]
    assert snapshots == [JPEG, JPEG, JPEG]  # no snapshot with `end`


def test_mqtt_broker_down_is_retryable() -> None:
    channel = MqttChannel(port=9, timeout=2)
    with pytest.raises(DeliveryError) as info:
        channel.send(notification())
    assert info.value.retryable


# --- SendGrid delivery check ------------------------------------------------------------------------


def test_sendgrid_pending_row_checked_before_resend(ledger: NotificationLedger) -> None:
    with FakeSendGrid("SG.k") as sg:
        channel = SendGridChannel("SG.k", sender="s@x.org", recipients=["r@x.org"], base_url=sg.url, timeout=5)
        n = notification()
        # A worker claimed the row and the provider accepted the message, then the worker died.
        row = ledger._get_or_create(channel, n.key, n)
        assert ledger._claim(channel, row)
        channel.send(n)
        out = ledger.deliver_once(channel, n)
        assert (out.state, out.provider_id, out.attempts) == ("sent", "sg-0", 1)
        assert len(sg.posts("/v3/mail/send")) == 1  # checked, not sent again
        # A pending row whose message never arrived is sent.
        m = notification(key="never-arrived")
        row = ledger._get_or_create(channel, m.key, m)
        assert ledger._claim(channel, row)
        assert ledger.deliver_once(channel, m).state == "sent"
        assert len(sg.posts("/v3/mail/send")) == 2
