"""Real loopback servers for the notification tests: SMTP (aiosmtpd), webhook (HMAC), SendGrid, MQTT subscriber.

Imported by the other ``test_notify_*`` modules; the few tests here check the servers themselves.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

MQTT_HOST, MQTT_PORT = "127.0.0.1", 1883


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 made with the openssl command line (skip the test without it)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"openssl cannot make a test certificate: {exc}")
    return cert, key


class SmtpServer:
    """aiosmtpd on 127.0.0.1: keeps every message it accepts; optional STARTTLS / TLS / AUTH."""

    def __init__(
        self,
        *,
        tls: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        login: tuple[str, str] | None = None,
        reject: str | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        self.messages: list[tuple[list[str], EmailMessage]] = []
        self.peers: list[Any] = []  # the client address of each accepted message: one per connection used
        self.logins: list[str] = []
        outer = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                if reject:
                    return reject
                msg = message_from_bytes(envelope.content, policy=policy.default)
                outer.messages.append((list(envelope.rcpt_tos), msg))  # type: ignore[arg-type]
                outer.peers.append(session.peer)
                return "250 Message accepted for delivery"

        def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
            ok = isinstance(data, LoginPassword) and (data.login.decode(), data.password.decode()) == login
            if ok:
                outer.logins.append(data.login.decode())
            return AuthResult(success=ok, handled=False)

        self.port = free_port()
        kwargs: dict[str, Any] = {}
        if idle_timeout is not None:  # the server hangs up on a client idle this long
            kwargs["timeout"] = idle_timeout
        if tls is not None and implicit_tls:
            kwargs["ssl_context"] = tls
        elif tls is not None:
            kwargs.update(tls_context=tls, require_starttls=True)
        if login is not None:
            kwargs.update(
                authenticator=authenticator, auth_required=True, auth_require_tls=tls is not None and not implicit_tls
            )
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, **kwargs)

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return header is not None and hmac.compare_digest(expected, header)


class HttpServer:
    """A ThreadingHTTPServer on 127.0.0.1 whose responses come from ``respond(method, path, headers, body)``."""

    def __init__(self, respond: Callable[[str, str, Any, bytes], tuple[int, dict[str, str], bytes]]) -> None:
        self.requests: list[tuple[str, str, Any, bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                outer.requests.append((self.command, self.path, self.headers, body))
                status, headers, payload = respond(self.command, self.path, self.headers, body)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> HttpServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def posts(self, path: str | None = None) -> list[tuple[str, str, Any, bytes]]:
        return [r for r in self.requests if r[0] == "POST" and (path is None or r[1] == path)]


class WebhookReceiver(HttpServer):
    """Accepts a POST only with a valid ``X-Alarmsieve-Signature``; counts distinct idempotency keys."""

    def __init__(self, secret: str, status: int = 200) -> None:
        self.secret = secret
        self.bad_signatures = 0

        def respond(method: str, path: str, headers: Any, body: bytes) -> tuple[int, dict[str, str], bytes]:
            if not verify_signature(self.secret, body, headers.get("X-Alarmsieve-Signature")):
                self.bad_signatures += 1
                return 401, {}, b"bad signature"
            return status, {"X-Request-Id": f"req-{len(self.requests)}"}, b"ok"

        super().__init__(respond)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r[3]) for r in self.posts()]


class FakeSendGrid(HttpServer):
    """``POST /v3/mail/send`` (202 + X-Message-Id) and the Email Activity API ``GET /v3/messages``."""

    def __init__(self, api_key: str, statuses: list[int] | None = None) -> None:
        self.accepted: list[dict[str, Any]] = []
        self.statuses = list(statuses or [])

        def respond(method: str, path: str, headers: Any, body: bytes) -> tuple[int, dict[str, str], bytes]:
            if headers.get("Authorization") != f"Bearer {api_key}":
                return 401, {}, b'{"errors":[{"message":"bad key"}]}'
            if method == "GET" and path.startswith("/v3/messages"):
                from urllib.parse import parse_qs, urlsplit

                query = parse_qs(urlsplit(path).query).get("query", [""])[0]
                found = [m for m in self.accepted if f'"{m["custom_args"]["alarmsieve_key"]}"' in query]
                listing = [{"msg_id": f"sg-{self.accepted.index(m)}"} for m in found]
                return 200, {"Content-Type": "application/json"}, json.dumps({"messages": listing}).encode()
            if method == "POST" and path == "/v3/mail/send":
                status = self.statuses.pop(0) if self.statuses else 202
                if status != 202:
                    return status, {"Retry-After": "0"}, b'{"errors":[{"message":"refused by test"}]}'
                payload = json.loads(body)
                for a in payload.get("attachments", []):
                    base64.b64decode(a["content"], validate=True)
                self.accepted.append(payload)
                return 202, {"X-Message-Id": f"sg-{len(self.accepted) - 1}"}, b""
            return 404, {}, b""

        super().__init__(respond)


class MqttSubscriber:
    """Subscribes to ``<prefix>/#`` on the local Mosquitto and keeps (topic, payload, retained) in order."""

    def __init__(self, prefix: str) -> None:
        import paho.mqtt.client as mqtt

        self.prefix = prefix
        self.messages: list[tuple[str, bytes, bool]] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload, bool(m.retain)))
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{prefix}/#", qos=1)

    def __enter__(self) -> MqttSubscriber:
        try:
            self.client.connect(MQTT_HOST, MQTT_PORT)
        except OSError:
            pytest.skip("no MQTT broker on 127.0.0.1:1883 (start it: mosquitto -d -c /etc/mosquitto/mosquitto.conf)")
        self.client.loop_start()
        assert self._subscribed.wait(10), "MQTT subscription was not acknowledged"
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[tuple[str, bytes, bool]]:
        deadline = time.monotonic() + timeout
        while len(self.live()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.live()

    def live(self) -> list[tuple[str, bytes, bool]]:
        """Messages published while subscribed (not the broker's retained copies from earlier runs)."""
        return [m for m in self.messages if not m[2]]

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p, _ in self.live() if t.endswith("/events")]


def test_webhook_receiver_refuses_a_bad_signature() -> None:
    import httpx

    with WebhookReceiver("s3cret") as hook:
        good = json.dumps({"a": 1}).encode()
        sig = "sha256=" + hmac.new(b"s3cret", good, hashlib.sha256).hexdigest()
        assert httpx.post(hook.url, content=good, headers={"X-Alarmsieve-Signature": sig}).status_code == 200
        assert httpx.post(hook.url, content=good, headers={"X-Alarmsieve-Signature": "sha256=00"}).status_code == 401
        assert hook.bad_signatures == 1
