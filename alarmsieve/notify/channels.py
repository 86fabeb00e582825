"""Delivery channels: a local outbox of .eml files, and SendGrid's v3 mail API.

A channel sends once and reports; retries and exactly-once bookkeeping live in the ledger.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import re
import tempfile
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
)

log = logging.getLogger(__name__)

SENDGRID_URL = "https://api.sendgrid.com"
DEFAULT_SENDER = "alarmsieve@localhost"
DEFAULT_RECIPIENT = "operator@localhost"


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

    def send(self, n: AlarmNotification) -> str:
        headers = {"Authorization": f"Bearer {self._api_key}"}
        try:
            if self._client is not None:
                resp = self._client.post(self.url, json=self.payload(n), headers=headers, timeout=self.timeout)
            else:
                with httpx.Client(timeout=self.timeout) as client:
                    resp = client.post(self.url, json=self.payload(n), headers=headers)
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
