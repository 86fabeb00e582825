"""Notifications: e-mail rendering, outbox and SendGrid channels, the exactly-once ledger."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from alarmsieve.notify import (
    AlarmNotification,
    DeliveryError,
    NotificationLedger,
    NotificationRecord,
    OutboxChannel,
    SendGridChannel,
    build_email,
    channel_from_env,
    message_id,
    safe_key,
)
from alarmsieve.pfs.db import Base, get_engine

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9"
ORIGINAL = b"\xff\xd8\xff\xe1original" + bytes(100) + b"\xff\xd9"
API_KEY = "SG.test-secret-key"


def notification(key: str = "cam-1/2026-03-01T12:00:00Z/abc", **kw: Any) -> AlarmNotification:
    fields: dict[str, Any] = {
        "key": key,
        "camera": "cam-1",
        "alarm_path": "alarms/cam-1/2026-03-01/120000.jpg",
        "time": datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC),
        "verdict": "alert",
        "reasons": ["person 0.87 >= min_score 0.50: alert (defaults)"],
        "objects": [{"label": "person", "score": 0.87, "box": [10, 20, 110, 320]}],
        "rules_version": "rules@3f2a",
        "model": "yolox-s",
        "annotated_jpeg": JPEG,
        "original": ORIGINAL,
        "original_name": "120000.jpg",
    }
    fields.update(kw)
    return AlarmNotification(**fields)


@pytest.fixture
def ledger(tmp_path: Path) -> NotificationLedger:
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    Base.metadata.create_all(get_engine(url))
    return NotificationLedger(url)


# --- message -------------------------------------------------------------------------------------


def test_build_email_parses_back():
    n = notification()
    raw = build_email(n, sender="alarms@example.org", recipients=["a@example.org", "b@example.org"]).as_bytes()
    msg = email.message_from_bytes(raw, policy=email.policy.default)

    assert msg["Subject"] == "[alarmsieve] ALERT person on cam-1 at 2026-03-01 12:00:05 +00:00 (UTC)"
    assert msg["To"] == "a@example.org, b@example.org"
    assert msg["Message-ID"] == message_id(n.key, "alarms@example.org")
    assert msg.get_content_type() == "multipart/mixed"

    text = msg.get_body(preferencelist=("plain",))
    html = msg.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    text_body = text.get_content()
    assert "cam-1" in text_body and "ALERT" in text_body and "person 0.87" in text_body
    html_body = html.get_content()

    images = [p for p in msg.walk() if p.get_content_maintype() == "image"]
    assert len(images) == 2
    inline = next(p for p in images if p.get_content_disposition() == "inline")
    attached = next(p for p in images if p.get_content_disposition() == "attachment")
    assert inline.get_content() == JPEG
    assert attached.get_content() == ORIGINAL
    assert attached.get_filename() == "120000.jpg"
    cid = inline["Content-ID"].strip("<>")
    assert f'src="cid:{cid}"' in html_body
    assert "person 0.87" in html_body and "cam-1" in html_body


def test_message_id_is_deterministic():
    a = build_email(notification(), sender="x@y.org", recipients=["r@y.org"])
    b = build_email(notification(), sender="x@y.org", recipients=["r@y.org"])
    c = build_email(notification(key="other"), sender="x@y.org", recipients=["r@y.org"])
    assert a["Message-ID"] == b["Message-ID"] != c["Message-ID"]
    assert a["Message-ID"].endswith("@y.org>")


def test_email_without_original_and_html_escaping():
    n = notification(original=None, original_name=None, camera="<cam&1>", objects=[], verdict="review")
    msg = email.message_from_bytes(
        build_email(n, sender="s@x.org", recipients=["r@x.org"]).as_bytes(), policy=email.policy.default
    )
    assert msg["Subject"].startswith("[alarmsieve] REVIEW on <cam&1> at ")
    assert "&lt;cam&amp;1&gt;" in msg.get_body(preferencelist=("html",)).get_content()
    assert [p.get_content_disposition() for p in msg.walk() if p.get_content_maintype() == "image"] == ["inline"]


def test_notification_json_round_trip():
    n = notification()
    assert AlarmNotification.model_validate_json(n.model_dump_json()) == n


def test_safe_key():
    assert safe_key("cam-1_20260301.120005") == "cam-1_20260301.120005"
    odd = safe_key("cam-1/2026-03-01T12:00:00Z/abc")
    assert "/" not in odd and ":" not in odd and odd.startswith("cam-1_2026")
    assert safe_key("a/b") != safe_key("a_b") != safe_key("a:b")
    assert safe_key("../../etc") != "../../etc" and "/" not in safe_key("../../etc")


# --- outbox + ledger -----------------------------------------------------------------------------


def test_outbox_deliver_twice_writes_one_file(tmp_path: Path, ledger: NotificationLedger):
    channel = OutboxChannel(tmp_path / "outbox", sender="s@x.org", recipients=["r@x.org"])
    n = notification()
    first = ledger.deliver_once(channel, n)
    second = ledger.deliver_once(channel, n)
    assert (first.state, first.already_sent, first.attempts) == ("sent", False, 1)
    assert (second.state, second.already_sent, second.attempts) == ("sent", True, 1)
    assert first.provider_id == second.provider_id == message_id(n.key, "s@x.org")
    files = list((tmp_path / "outbox").iterdir())
    assert [f.name for f in files] == [f"{safe_key(n.key)}.eml"]
    parsed = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert parsed["Message-ID"] == first.provider_id

    [row] = ledger.list()
    assert (row.key, row.channel, row.recipient, row.state) == (n.key, "outbox", "r@x.org", "sent")
    assert row.sent_at is not None and row.sent_at.tzinfo is not None
    assert row.created_at.utcoffset().total_seconds() == 0
    assert [r.key for r in ledger.list("sent")] == [n.key]
    assert ledger.list("pending") == []


def test_outbox_does_not_rewrite_existing_file(tmp_path: Path):
    channel = OutboxChannel(tmp_path)
    n = notification()
    first = channel.send(n)
    path = channel.path_for(n.key)
    before = path.read_bytes()
    assert channel.send(n) == first
    assert path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_pending_row_from_crash_sends_exactly_once(tmp_path: Path, ledger: NotificationLedger):
    channel = OutboxChannel(tmp_path / "outbox")
    n = notification()
    now = datetime.now(UTC)
    # A worker crashed after committing "pending" (and maybe after writing the file: do that too).
    with ledger.engine.begin() as conn:
        conn.execute(
            insert(NotificationRecord).values(
                key=n.key, channel="outbox", recipient="x", state="pending", attempts=1, created_at=now, updated_at=now
            )
        )
    channel.send(n)
    out = ledger.deliver_once(channel, n)
    assert (out.state, out.already_sent, out.attempts) == ("sent", False, 2)
    assert ledger.deliver_once(channel, n).already_sent
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 1


def test_concurrent_deliveries_send_once(tmp_path: Path, ledger: NotificationLedger):
    calls: list[str] = []
    gate = threading.Barrier(4)

    class Slow(OutboxChannel):
        def send(self, n: AlarmNotification) -> str:
            calls.append(n.key)
            threading.Event().wait(0.2)  # hold the claim while the others try
            return super().send(n)

    channel = Slow(tmp_path / "outbox")
    n = notification()
    outcomes = []

    def worker() -> None:
        gate.wait()
        outcomes.append(ledger.deliver_once(channel, n))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert [o.state for o in outcomes] == ["sent"] * 4
    assert sorted(o.already_sent for o in outcomes) == [False, True, True, True]
    assert len(ledger.list()) == 1


def test_claim_is_compare_and_set(tmp_path: Path, ledger: NotificationLedger):
    # Two processes that read the row in the same state: only one may claim the attempt.
    channel = OutboxChannel(tmp_path)
    row = ledger._get_or_create(channel, "k")
    assert ledger._claim(channel, row) is True
    assert ledger._claim(channel, row) is False
    assert ledger.get("k").attempts == 1


class FlakyChannel(OutboxChannel):
    """Fails with the given errors first, then delegates to the outbox."""

    def __init__(self, directory: Path, errors: list[DeliveryError]) -> None:
        super().__init__(directory)
        self.errors = errors
        self.calls = 0

    def send(self, n: AlarmNotification) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return super().send(n)


def test_failed_row_retried_by_later_call(tmp_path: Path, ledger: NotificationLedger):
    channel = FlakyChannel(tmp_path, [DeliveryError(False, "mailbox full")])
    n = notification()
    out = ledger.deliver_once(channel, n)
    assert (out.state, out.attempts, out.last_error) == ("failed", 1, "mailbox full")
    assert [r.key for r in ledger.list("failed")] == [n.key]
    out = ledger.deliver_once(channel, n)
    assert (out.state, out.attempts, out.last_error) == ("sent", 2, None)


def test_unexpected_exception_keeps_row_pending(tmp_path: Path, ledger: NotificationLedger):
    class Broken(OutboxChannel):
        def send(self, n: AlarmNotification) -> str:
            raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        ledger.deliver_once(Broken(tmp_path), notification())
    [row] = ledger.list()
    assert (row.state, row.attempts, row.last_error) == ("pending", 1, "RuntimeError: bug")


def test_list_rejects_unknown_state(ledger: NotificationLedger):
    with pytest.raises(ValueError, match="unknown state"):
        ledger.list("done")


# --- SendGrid against a real local HTTP server ---------------------------------------------------

Responder = Callable[[int], tuple[int, dict[str, str], bytes]]


def validate_v3(headers: Any, body: dict[str, Any]) -> list[str]:
    problems = []
    if headers.get("Authorization") != f"Bearer {API_KEY}":
        problems.append("authorization")
    if headers.get("Content-Type", "").split(";")[0] != "application/json":
        problems.append("content-type")
    try:
        assert body["personalizations"] == [{"to": [{"email": "a@example.org"}, {"email": "b@example.org"}]}]
        assert body["from"] == {"email": "alarms@example.org"}
        assert body["subject"].startswith("[alarmsieve] ALERT person on cam-1 at 2026-03-01")
        assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
        assert "cam-1" in body["content"][0]["value"]
        inline, original = body["attachments"]
        assert base64.b64decode(inline["content"], validate=True) == JPEG
        assert (inline["type"], inline["disposition"]) == ("image/jpeg", "inline")
        assert f'src="cid:{inline["content_id"]}"' in body["content"][1]["value"]
        assert base64.b64decode(original["content"], validate=True) == ORIGINAL
        assert (original["disposition"], original["filename"]) == ("attachment", "120000.jpg")
        assert "content_id" not in original
    except (AssertionError, KeyError, ValueError, TypeError) as exc:
        problems.append(f"payload: {exc!r}")
    return problems


class FakeSendGrid:
    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.requests: list[dict[str, Any]] = []
        self.problems: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body})
                problems = validate_v3(self.headers, body) if self.path == "/v3/mail/send" else ["path"]
                outer.problems += problems
                if problems:
                    status, headers, payload = 400, {}, json.dumps({"errors": problems}).encode()
                else:
                    status, headers, payload = outer.responder(len(outer.requests))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def channel(self) -> SendGridChannel:
        return SendGridChannel(
            API_KEY,
            sender="alarms@example.org",
            recipients=["a@example.org", "b@example.org"],
            base_url=self.url,
            timeout=5,
        )


@pytest.fixture
def sendgrid() -> Iterator[Callable[[Responder], FakeSendGrid]]:
    servers: list[FakeSendGrid] = []

    def start(responder: Responder) -> FakeSendGrid:
        fake = FakeSendGrid(responder)
        fake.thread.start()
        servers.append(fake)
        return fake

    yield start
    for fake in servers:
        fake.server.shutdown()
        fake.server.server_close()


def accepted(_: int) -> tuple[int, dict[str, str], bytes]:
    return 202, {"X-Message-Id": "sg-msg-1"}, b""


def test_sendgrid_payload_and_202(sendgrid, ledger: NotificationLedger, caplog):
    fake = sendgrid(accepted)
    caplog.set_level(logging.DEBUG)
    channel = fake.channel()
    assert API_KEY not in repr(channel)
    out = ledger.deliver_once(channel, notification())
    assert fake.problems == []
    assert (out.state, out.provider_id, out.attempts) == ("sent", "sg-msg-1", 1)
    assert len(fake.requests) == 1
    assert ledger.deliver_once(channel, notification()).already_sent
    assert len(fake.requests) == 1
    assert API_KEY not in caplog.text


def test_sendgrid_429_then_202(sendgrid, ledger: NotificationLedger):
    def responder(i: int) -> tuple[int, dict[str, str], bytes]:
        if i == 1:
            return 429, {"Retry-After": "0"}, b'{"errors":[{"message":"too many requests"}]}'
        return accepted(i)

    fake = sendgrid(responder)
    out = ledger.deliver_once(fake.channel(), notification(), backoff=0.01)
    assert fake.problems == []
    assert (out.state, out.attempts, out.provider_id) == ("sent", 2, "sg-msg-1")


def test_sendgrid_500_forever_fails(sendgrid, ledger: NotificationLedger):
    fake = sendgrid(lambda i: (500, {}, b"internal error"))
    out = ledger.deliver_once(fake.channel(), notification(), max_attempts=4, backoff=0.01)
    assert (out.state, out.attempts, out.already_sent) == ("failed", 4, False)
    assert len(fake.requests) == 4
    assert "gave up after 4 attempts" in out.last_error and "500" in out.last_error
    [row] = ledger.list("failed")
    assert row.last_error == out.last_error


def test_sendgrid_400_fails_at_once(sendgrid, ledger: NotificationLedger):
    fake = sendgrid(lambda i: (400, {}, b'{"errors":[{"message":"The from address is not verified"}]}'))
    out = ledger.deliver_once(fake.channel(), notification(), backoff=0.01)
    assert (out.state, out.attempts) == ("failed", 1)
    assert len(fake.requests) == 1
    assert "400" in out.last_error and "from address is not verified" in out.last_error
    assert API_KEY not in out.last_error


def test_sendgrid_unreachable_is_retryable(tmp_path: Path):
    channel = SendGridChannel(
        API_KEY, sender="s@x.org", recipients=["r@x.org"], base_url="http://127.0.0.1:9", timeout=2
    )
    with pytest.raises(DeliveryError) as info:
        channel.send(notification())
    assert info.value.retryable
    assert API_KEY not in str(info.value)


# --- configuration ---------------------------------------------------------------------------------


def test_channel_from_env(tmp_path: Path):
    outbox = channel_from_env(tmp_path, env={})
    assert isinstance(outbox, OutboxChannel) and outbox.directory == tmp_path

    env = {
        "SENDGRID_API_KEY": API_KEY,
        "ALARMSIEVE_MAIL_FROM": "alarms@example.org",
        "ALARMSIEVE_MAIL_TO": "a@example.org, b@example.org,",
        "ALARMSIEVE_SENDGRID_URL": "http://127.0.0.1:1/",
    }
    sg = channel_from_env(tmp_path, env=env)
    assert isinstance(sg, SendGridChannel)
    assert sg.recipients == ["a@example.org", "b@example.org"]
    assert sg.url == "http://127.0.0.1:1/v3/mail/send"
    assert API_KEY not in repr(sg)

    with pytest.raises(ValueError, match="ALARMSIEVE_MAIL_TO") as info:
        channel_from_env(tmp_path, env={"SENDGRID_API_KEY": API_KEY, "ALARMSIEVE_MAIL_FROM": "a@b.c"})
    assert API_KEY not in str(info.value)
