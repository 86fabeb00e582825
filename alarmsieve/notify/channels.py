"""Delivery channels: a local outbox of .eml files, and SendGrid's v3 mail API.

A channel sends once and reports; retries and exactly-once bookkeeping live in the ledger.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import logging
import os
import re
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx

from alarmsieve.notify.message import (
    ANNOTATED_FILENAME,
    AlarmNotification,
    build_email,
    content_id,
    message_id,
    original_filename,
    original_mime,
    render_html,
    render_text,
    subject,
    utc_time,
)

log = logging.getLogger(__name__)

SENDGRID_URL = "https://api.sendgrid.com"
DEFAULT_SENDER = "alarmsieve@localhost"
DEFAULT_RECIPIENT = "operator@localhost"
# A kept SMTP connection idle longer than this is closed, not reused: servers drop idle clients (RFC 5321
# lets them after 5 minutes, many sooner), and a fresh connection costs a few milliseconds.
SMTP_REUSE_IDLE_S = 60.0


class DeliveryError(Exception):
    """A send failed. ``retryable``: the same request may succeed later (rate limit, outage)."""

    def __init__(self, retryable: bool, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.message = message
        self.retry_after = retry_after  # seconds the provider asked us to wait, if it said

    def __reduce__(self) -> tuple[Any, ...]:
        return (_delivery_error, (self.retryable, self.message, self.retry_after))


def _delivery_error(retryable: bool, message: str, retry_after: float | None) -> DeliveryError:
    return DeliveryError(retryable, message, retry_after=retry_after)


class Channel(ABC):
    name: str
    recipient: str  # where it goes, for the ledger: addresses or a folder

    @abstractmethod
    def send(self, n: AlarmNotification) -> str:
        """Deliver ``n``; return the provider's message id; raise :class:`DeliveryError` on failure."""

    def already_delivered(self, n: AlarmNotification) -> str | None:
        """Delivery check before a resend: the provider id if ``n`` is known to have arrived, else None.

        Called by the ledger only for a row left ``pending`` by an attempt that never reported (a crash
        between "pending" and "sent"). Channels that cannot ask their provider return None.
        """
        return None

    def close(self) -> None:  # noqa: B027 - most channels hold nothing open
        """Let go of any connection kept between sends."""


_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,149}")


def safe_key(key: str) -> str:
    """A file name for ``key``: the key itself when harmless, else a readable part + hash (no collisions)."""
    if _SAFE.fullmatch(key) and not key.endswith("."):
        return key
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._-")[:80]
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    return f"{readable}-{digest}" if readable else digest


class OutboxChannel(Channel):
    """Writes ``<dir>/<safe key>.eml``; an existing file is never rewritten, so resends are no-ops."""

    name = "outbox"

    def __init__(self, directory: Path, *, sender: str = DEFAULT_SENDER, recipients: list[str] | None = None) -> None:
        self.directory = Path(directory)
        self.sender = sender
        self.recipients = list(recipients or [DEFAULT_RECIPIENT])
        self.recipient = ", ".join(self.recipients)

    def path_for(self, key: str) -> Path:
        return self.directory / f"{safe_key(key)}.eml"

    def send(self, n: AlarmNotification) -> str:
        provider_id = message_id(n.key, self.sender)
        target = self.path_for(n.key)
        if target.exists():
            return provider_id
        data = build_email(n, sender=self.sender, recipients=self.recipients).as_bytes()
        tmp_name = ""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            # Temp file in the same folder + os.replace: readers never see a half-written .eml.
            with tempfile.NamedTemporaryFile(dir=self.directory, prefix=".tmp-", suffix=".eml", delete=False) as f:
                tmp_name = f.name
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_name, target)
        except OSError as exc:
            if tmp_name:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_name)
            # Disk full or a flaky mount may heal; the ledger's retry limit bounds the rest.
            raise DeliveryError(True, f"outbox write failed: {exc}") from exc
        return provider_id

    def __repr__(self) -> str:
        return f"OutboxChannel({str(self.directory)!r})"


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class SendGridChannel(Channel):
    """SendGrid v3 ``/v3/mail/send``. The API key is only ever put in the Authorization header."""

    name = "sendgrid"

    def __init__(
        self,
        api_key: str,
        *,
        sender: str,
        recipients: list[str],
        base_url: str = SENDGRID_URL,
        timeout: float = 30.0,
        client: httpx.Client | None = None,
    ) -> None:
        if not recipients:
            raise ValueError("SendGridChannel needs at least one recipient")
        self._api_key = api_key
        self.sender = sender
        self.recipients = list(recipients)
        self.recipient = ", ".join(self.recipients)
        self.url = base_url.rstrip("/") + "/v3/mail/send"
        self.timeout = timeout
        self._client = client

    def __repr__(self) -> str:  # never show the key
        return f"SendGridChannel(url={self.url!r}, sender={self.sender!r}, recipients={self.recipients!r})"

    def payload(self, n: AlarmNotification) -> dict[str, Any]:
        cid = content_id(n)
        attachments: list[dict[str, str]] = [
            {
                "content": base64.b64encode(n.annotated_jpeg).decode("ascii"),
                "type": "image/jpeg",
                "filename": ANNOTATED_FILENAME,
                "disposition": "inline",
                "content_id": cid,
            }
        ]
        if n.original is not None:
            main, sub = original_mime(n)
            attachments.append(
                {
                    "content": base64.b64encode(n.original).decode("ascii"),
                    "type": f"{main}/{sub}",
                    "filename": original_filename(n),
                    "disposition": "attachment",
                }
            )
        return {
            "personalizations": [{"to": [{"email": r} for r in self.recipients]}],
            "from": {"email": self.sender},
            "subject": subject(n),
            # SendGrid requires text/plain before text/html.
            "content": [
                {"type": "text/plain", "value": render_text(n)},
                {"type": "text/html", "value": render_html(n, cid)},
            ],
            "attachments": attachments,
            "headers": {"X-Alarmsieve-Key": n.key},
            "custom_args": {"alarmsieve_key": n.key[:200]},
        }

    def already_delivered(self, n: AlarmNotification) -> str | None:
        """Ask the Email Activity API whether a message with our ``alarmsieve_key`` custom arg was accepted."""
        key = n.key[:200].replace('"', "")
        url = self.url.rsplit("/v3/", 1)[0] + "/v3/messages"
        params = {"query": f"unique_args['alarmsieve_key']=\"{key}\"", "limit": "1"}
        try:
            with httpx.Client(timeout=self.timeout) as client:
                resp = client.get(url, params=params, headers={"Authorization": f"Bearer {self._api_key}"})
            if resp.status_code != 200:
                log.warning("SendGrid delivery check: HTTP %s; sending again", resp.status_code)
                return None
            messages = resp.json().get("messages") or []
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            log.warning("SendGrid delivery check failed (%s); sending again", type(exc).__name__)
            return None
        return str(messages[0].get("msg_id") or "sendgrid:delivered") if messages else None

    def send(self, n: AlarmNotification) -> str:
        headers = {"Authorization": f"Bearer {self._api_key}"}
        try:
            if self._client is None:  # one client per channel: building one (its TLS context) costs ~20 ms
                self._client = httpx.Client(timeout=self.timeout)
            resp = self._client.post(self.url, json=self.payload(n), headers=headers, timeout=self.timeout)
        except httpx.TimeoutException as exc:
            raise DeliveryError(True, f"SendGrid timed out: {type(exc).__name__}") from None
        except httpx.TransportError as exc:
            raise DeliveryError(True, f"SendGrid unreachable: {type(exc).__name__}: {exc}") from None
        if resp.status_code in (200, 202):
            return resp.headers.get("X-Message-Id", "")
        text = resp.text[:1000]
        if resp.status_code == 429 or resp.status_code >= 500:
            raise DeliveryError(
                True,
                f"SendGrid HTTP {resp.status_code}: {text}",
                retry_after=_retry_after(resp.headers.get("Retry-After")),
            )
        raise DeliveryError(False, f"SendGrid HTTP {resp.status_code}: {text}")


def channel_from_env(outbox_dir: Path, env: Mapping[str, str] = os.environ) -> Channel:
    """SendGrid when ``SENDGRID_API_KEY`` is set, else the outbox folder.

    ``ALARMSIEVE_MAIL_FROM`` (sender), ``ALARMSIEVE_MAIL_TO`` (comma-separated recipients) and
    ``ALARMSIEVE_SENDGRID_URL`` (API base URL) configure both; SendGrid requires FROM and TO.
    """
    sender = env.get("ALARMSIEVE_MAIL_FROM", "").strip()
    recipients = [r.strip() for r in env.get("ALARMSIEVE_MAIL_TO", "").split(",") if r.strip()]
    api_key = env.get("SENDGRID_API_KEY", "").strip()
    if api_key:
        missing = [
            name for name, value in (("ALARMSIEVE_MAIL_FROM", sender), ("ALARMSIEVE_MAIL_TO", recipients)) if not value
        ]
        if missing:
            raise ValueError(f"SENDGRID_API_KEY is set but {' and '.join(missing)} is empty; set it")
        base_url = env.get("ALARMSIEVE_SENDGRID_URL", "").strip() or SENDGRID_URL
        log.info("notifications via SendGrid (%s) to %d recipient(s)", base_url, len(recipients))
        return SendGridChannel(api_key, sender=sender, recipients=recipients, base_url=base_url)
    log.info("notifications to the outbox folder %s", outbox_dir)
    return OutboxChannel(Path(outbox_dir), sender=sender or DEFAULT_SENDER, recipients=recipients or None)


# --- SMTP, webhook, MQTT -------------------------------------------------------------------------


class SmtpChannel(Channel):
    """SMTP submission, plain / STARTTLS / implicit TLS, optional AUTH; the same MIME message as the outbox."""

    name = "smtp"

    def __init__(
        self,
        *,
        host: str,
        port: int,
        sender: str,
        recipients: list[str],
        security: str = "starttls",
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
        ca_file: str | None = None,
        name: str = "smtp",
    ) -> None:
        if not recipients:
            raise ValueError("SmtpChannel needs at least one recipient")
        if security not in ("plain", "starttls", "tls"):
            raise ValueError(f"SMTP security {security!r}: use plain, starttls or tls")
        self.name = name
        self.host, self.port, self.security = host, port, security
        self.sender = sender
        self.recipients = list(recipients)
        self.recipient = ", ".join(self.recipients)
        self.username = username
        self._password = password
        self.timeout = timeout
        self.ca_file = ca_file
        # One connection kept open between sends (a worker sends many): no TCP, EHLO, TLS and AUTH each time.
        self._client: Any = None
        self._used_at = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never show the password
        return f"SmtpChannel({self.host}:{self.port}, {self.security}, recipients={self.recipients!r})"

    def _context(self) -> Any:
        import ssl

        return ssl.create_default_context(cafile=self.ca_file)

    def send(self, n: AlarmNotification) -> str:
        msg = build_email(n, sender=self.sender, recipients=self.recipients)
        with self._lock:
            try:
                client = self._connection()
                if all(a.isascii() for a in (self.sender, *self.recipients)):
                    # The message flattened once, here: send_message would copy and re-parse its headers.
                    refused = client.sendmail(self.sender, self.recipients, _smtp_bytes(msg))
                else:  # SMTPUTF8 addresses: send_message asks the server for it
                    refused = client.send_message(msg, from_addr=self.sender, to_addrs=self.recipients)
                self._used_at = time.monotonic()
            except BaseException as exc:
                self._drop()  # never reuse a connection in an unknown state
                raise _smtp_delivery_error(exc, self.host, self.port) from None
        if refused:
            log.warning("SMTP refused some recipients: %s", sorted(refused))
        return str(msg["Message-ID"])

    def _connection(self) -> Any:
        """The kept connection when it is fresh and answers NOOP, else a new one (TLS and login done)."""
        import smtplib

        client = self._client
        if client is not None:
            if time.monotonic() - self._used_at < SMTP_REUSE_IDLE_S:
                try:
                    if client.noop()[0] == 250:
                        return client
                except (smtplib.SMTPException, OSError):
                    pass  # the server closed it: connect again
            self._drop()
        if self.security == "tls":
            client = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=self._context())
        else:
            client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            if self.security == "starttls":
                client.starttls(context=self._context())
            if self.username is not None:
                client.login(self.username, self._password or "")
        except BaseException:
            with contextlib.suppress(Exception):
                client.close()
            raise
        self._client = client
        return client

    def close(self) -> None:
        """QUIT and close the kept connection (the next send connects again)."""
        client = self._client
        if client is not None:
            with contextlib.suppress(Exception):
                client.quit()
        self._drop()

    def _drop(self) -> None:
        """Close the kept connection without a word: after an error a QUIT could wait out the timeout."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()


def _smtp_bytes(msg: Any) -> bytes:
    """The message as SMTP carries it: CRLF line ends (smtplib dot-stuffs it)."""
    from email.generator import BytesGenerator

    with io.BytesIO() as out:
        BytesGenerator(out).flatten(msg, linesep="\r\n")
        return out.getvalue()


def _smtp_delivery_error(exc: BaseException, host: str, port: int) -> BaseException:
    """An smtplib / socket failure as a :class:`DeliveryError` saying whether a retry may help."""
    import smtplib

    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        retryable = all(400 <= c < 500 for c in codes)
        return DeliveryError(retryable, f"SMTP refused every recipient: {exc.recipients}")
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return DeliveryError(False, f"SMTP authentication failed ({exc.smtp_code}); check username/password")
    if isinstance(exc, smtplib.SMTPNotSupportedError):  # e.g. no AUTH, no STARTTLS: a configuration problem
        return DeliveryError(False, f"SMTP server {host}:{port}: {exc}; check `security`")
    if isinstance(exc, smtplib.SMTPResponseException):
        text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
        return DeliveryError(400 <= exc.smtp_code < 500, f"SMTP {exc.smtp_code}: {text}")
    if isinstance(exc, smtplib.SMTPException | OSError):  # connection refused, timeout, TLS failure
        return DeliveryError(True, f"SMTP {host}:{port} unreachable: {type(exc).__name__}: {exc}")
    return exc  # a bug, not a delivery outcome: the ledger records it and lets it propagate


def webhook_signature(secret: str, body: bytes) -> str:
    """``X-Alarmsieve-Signature``: ``sha256=`` + hex HMAC-SHA256 of the exact body bytes."""
    import hmac

    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class WebhookChannel(Channel):
    """POSTs the verdict as JSON, signed with a per-endpoint secret; only to hosts on the allow-list."""

    name = "webhook"

    def __init__(
        self,
        url: str,
        *,
        secret: str,
        allowed_hosts: list[str],
        timeout: float = 10.0,
        images: str = "base64",
        image_url_template: str | None = None,
        name: str = "webhook",
    ) -> None:
        host = httpx.URL(url).host
        if host not in allowed_hosts:
            raise DeliveryError(
                False, f"webhook host {host!r} is not in allowed_hosts {allowed_hosts}; add it there or fix the url"
            )
        self.name = name
        self.url = url
        self.recipient = url
        self._secret = secret
        self.allowed_hosts = list(allowed_hosts)
        self.timeout = timeout
        self.images = images
        self.image_url_template = image_url_template
        self._client: httpx.Client | None = None

    def __repr__(self) -> str:
        return f"WebhookChannel({self.url!r})"

    def body(self, n: AlarmNotification) -> dict[str, Any]:
        record = n.model_dump(mode="json", exclude={"annotated_jpeg", "original"})
        images: dict[str, Any] = {}
        files = {"annotated": (ANNOTATED_FILENAME, n.annotated_jpeg, "image/jpeg")}
        if n.original is not None:
            main, sub = original_mime(n)
            files["original"] = (original_filename(n), n.original, f"{main}/{sub}")
        for role, (fname, data, mime) in files.items():
            if self.images == "base64":
                images[role] = {"filename": fname, "content_type": mime, "base64": base64.b64encode(data).decode()}
            elif self.images == "url" and self.image_url_template:
                url = self.image_url_template.format(alarm=n.alarm_path, camera=n.camera, file=fname)
                images[role] = {"filename": fname, "content_type": mime, "url": url}
        return {"event": n.kind, "notification": record, "images": images}

    def send(self, n: AlarmNotification) -> str:
        import json

        host = httpx.URL(self.url).host
        if host not in self.allowed_hosts:  # checked again: the URL object is the one we post to
            raise DeliveryError(False, f"webhook host {host!r} is not in allowed_hosts")
        body = json.dumps(self.body(n), separators=(",", ":"), sort_keys=True).encode("utf-8")
        headers = {
            "Content-Type": "application/json",
            "X-Alarmsieve-Signature": webhook_signature(self._secret, body),
            "X-Alarmsieve-Event": n.kind,
            "Idempotency-Key": n.key,  # receivers drop a repeat (a resend after a crash)
        }
        try:
            if self._client is None:  # reused: building a client (its TLS context) costs ~20 ms
                self._client = httpx.Client(timeout=self.timeout, follow_redirects=False)
            resp = self._client.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise DeliveryError(True, f"webhook timed out: {type(exc).__name__}") from None
        except httpx.TransportError as exc:
            raise DeliveryError(True, f"webhook unreachable: {type(exc).__name__}: {exc}") from None
        if 200 <= resp.status_code < 300:
            return resp.headers.get("X-Request-Id") or f"webhook:{resp.status_code}:{n.key}"
        text = resp.text[:500]
        if resp.status_code in (408, 429) or resp.status_code >= 500:
            raise DeliveryError(
                True,
                f"webhook HTTP {resp.status_code}: {text}",
                retry_after=_retry_after(resp.headers.get("Retry-After")),
            )
        raise DeliveryError(False, f"webhook HTTP {resp.status_code}: {text}")


class MqttChannel(Channel):
    """``<prefix>/<camera>/events`` (JSON lifecycle new / update / end under the incident id) and
    ``<prefix>/<camera>/snapshot`` (the annotated JPEG, retained), QoS 1 by default."""

    name = "mqtt"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        topic_prefix: str = "alarmsieve",
        qos: int = 1,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
        snapshot: bool = True,
        name: str = "mqtt",
    ) -> None:
        self.name = name
        self.host, self.port = host, port
        self.prefix = topic_prefix.strip("/")
        self.qos = qos
        self.username = username
        self._password = password
        self.timeout = timeout
        self.snapshot = snapshot
        self.recipient = f"mqtt://{host}:{port}/{self.prefix}"

    def __repr__(self) -> str:
        return f"MqttChannel({self.recipient!r}, qos={self.qos})"

    def topic(self, camera: str, what: str) -> str:
        return f"{self.prefix}/{re.sub(r'[#+/]', '_', camera)}/{what}"

    def event(self, n: AlarmNotification, kind: str) -> dict[str, Any]:
        # Parallel workers may publish two alarms of one incident in either order: ``seq`` (the alarm's
        # place in the incident) orders them; a consumer treats an update of an unknown id as new.
        return {
            "type": kind,
            "id": n.incident_id or n.key,
            "key": n.key,
            "camera": n.camera,
            "site": n.site,
            "alarm": n.alarm_path,
            "time": utc_time(n).isoformat(),
            "verdict": n.verdict,
            "labels": list(dict.fromkeys(str(o.get("label")) for o in n.objects)),
            "objects": n.objects,
            "reasons": n.reasons,
            "alarms": n.incident_alarms,
            "seq": n.incident_alarms if kind != "end" else n.incident_alarms + 1_000_000,
        }

    def _publish(self, messages: list[tuple[str, bytes, bool]]) -> None:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        if self.username is not None:
            client.username_pw_set(self.username, self._password)
        try:
            client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            raise DeliveryError(True, f"MQTT broker {self.host}:{self.port} unreachable: {exc}") from None
        client.loop_start()
        try:
            for topic, payload, retain in messages:
                info = client.publish(topic, payload, qos=self.qos, retain=retain)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    raise DeliveryError(True, f"MQTT publish to {topic} failed: {mqtt.error_string(info.rc)}")
                info.wait_for_publish(timeout=self.timeout)
                if not info.is_published():
                    raise DeliveryError(True, f"MQTT broker did not acknowledge {topic} within {self.timeout}s")
        finally:
            client.disconnect()
            client.loop_stop()

    def send(self, n: AlarmNotification) -> str:
        import json

        kind = {"new": "new", "end": "end"}.get(n.kind, "update")
        messages = [(self.topic(n.camera, "events"), json.dumps(self.event(n, kind)).encode(), False)]
        if self.snapshot and n.annotated_jpeg and kind != "end":
            messages.append((self.topic(n.camera, "snapshot"), n.annotated_jpeg, True))
        self._publish(messages)
        return f"mqtt:{self.event(n, kind)['id']}:{kind}"
