"""Notification configuration as data: ``/notify.json`` (or ``/notify.yaml``) at the head of the rules repo.

Channels, routes (who gets what, per site / camera / severity), incident grouping and rate limits.
Secrets never appear in the file: a channel names an environment variable (``*_env``) or a file
(``*_file``) that holds them, and they are read when the channel is built, never logged.

Sites and time zones have one definition: the threat rules of the same repo (``cameras.<id>.site``,
``sites.<name>.timezone``, ``cameras.<id>.timezone``). This file's own ``sites`` and ``timezones`` are
still read but deprecated: they fill in only what the rules leave out, and the rules win where both say.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from alarmsieve.errors import AlarmsieveError
from alarmsieve.rules.schema import RulePlaces, rule_places

log = logging.getLogger(__name__)

CONFIG_PATHS = ("/notify.json", "/notify.yaml", "/notify.yml")
Severity = Literal["alert", "review"]


class NotifyConfigError(AlarmsieveError):
    """The notification configuration is wrong; the message names the file, the field and the fix."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Secret(_Model):
    """Where a secret lives: an environment variable or a file (first line, stripped)."""

    env: str | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _one(self) -> Secret:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of `env` (a variable name) or `file` (a path)")
        return self

    def resolve(self, env: Mapping[str, str], what: str) -> str:
        if self.env is not None:
            value = env.get(self.env, "").strip()
            if not value:
                raise NotifyConfigError(f"{what}: environment variable {self.env} is not set; export it")
            return value
        path = Path(self.file or "")
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise NotifyConfigError(f"{what}: cannot read secret file {path}: {exc.strerror}; fix the path") from None
        if not value:
            raise NotifyConfigError(f"{what}: secret file {path} is empty; write the secret into it")
        return value


class _ChannelBase(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,49}$")


class OutboxConfig(_ChannelBase):
    type: Literal["outbox"]
    sender: str = "alarmsieve@localhost"
    folder: str | None = None  # default: <workspace>/outbox


class SendGridConfig(_ChannelBase):
    type: Literal["sendgrid"]
    sender: str
    api_key: Secret
    base_url: str = "https://api.sendgrid.com"
    timeout_s: float = Field(default=30.0, gt=0)


class SmtpConfig(_ChannelBase):
    type: Literal["smtp"]
    sender: str
    host: str
    port: int = Field(default=25, ge=1, le=65535)
    security: Literal["plain", "starttls", "tls"] = "starttls"
    username: str | None = None
    password: Secret | None = None
    timeout_s: float = Field(default=30.0, gt=0)
    ca_file: str | None = None  # extra CA bundle for STARTTLS/TLS (self-signed relays)

    @model_validator(mode="after")
    def _auth(self) -> SmtpConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("`username` and `password` go together: give both or neither")
        return self


class WebhookConfig(_ChannelBase):
    type: Literal["webhook"]
    url: str = Field(pattern=r"^https?://")
    secret: Secret
    allowed_hosts: list[str] = Field(min_length=1)
    timeout_s: float = Field(default=10.0, gt=0)
    images: Literal["base64", "url", "none"] = "base64"
    image_url_template: str | None = None  # with images: url, e.g. https://nvr/alarms{alarm}/{file}

    @model_validator(mode="after")
    def _images(self) -> WebhookConfig:
        if self.images == "url" and not self.image_url_template:
            raise ValueError("images: url needs `image_url_template` (placeholders {alarm}, {camera}, {file})")
        return self


class MqttConfig(_ChannelBase):
    type: Literal["mqtt"]
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    topic_prefix: str = "alarmsieve"
    qos: Literal[0, 1, 2] = 1
    username: str | None = None
    password: Secret | None = None
    timeout_s: float = Field(default=10.0, gt=0)
    snapshot: bool = True


ChannelConfig = Annotated[
    OutboxConfig | SendGridConfig | SmtpConfig | WebhookConfig | MqttConfig, Field(discriminator="type")
]


class Match(_Model):
    severity: list[Severity] = ["alert"]
    sites: list[str] | None = None  # None: any
    cameras: list[str] | None = None


class Route(_Model):
    channel: str
    to: list[str] = []  # recipients, for e-mail channels (outbox, sendgrid, smtp)
    match: Match = Match()


class Grouping(_Model):
    scope: Literal["camera", "site"] = "camera"
    window_s: float = Field(default=120.0, ge=0)  # alarms closer than this (alarm time) are one incident
    update_every_s: float = Field(default=60.0, ge=0)  # at most one update message per incident per route


class RateLimit(_Model):
    max_messages: int = Field(default=30, ge=1)  # per recipient, per period
    period_s: float = Field(default=3600.0, gt=0)


class NotifyConfig(_Model):
    sites: dict[str, list[str]] = {}  # site -> cameras (deprecated: the rules' cameras.<id>.site win)
    timezones: dict[str, str] = {}  # camera or site -> IANA zone (deprecated: the rules' timezone wins)
    channels: list[ChannelConfig] = []
    routes: list[Route] = []
    grouping: Grouping = Grouping()
    rate_limit: RateLimit = RateLimit()

    @field_validator("timezones")
    @classmethod
    def _zones(cls, value: dict[str, str]) -> dict[str, str]:
        for where, zone in value.items():
            try:
                ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"{where}: unknown time zone {zone!r} (use an IANA name like Europe/Paris)") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> NotifyConfig:
        names = [c.name for c in self.channels]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"channel name(s) used twice: {', '.join(dupes)}")
        by_name = {c.name: c for c in self.channels}
        for i, route in enumerate(self.routes):
            channel = by_name.get(route.channel)
            if channel is None:
                raise ValueError(
                    f"routes[{i}].channel: no channel named {route.channel!r} (defined: {', '.join(names) or 'none'})"
                )
            if channel.type in ("outbox", "sendgrid", "smtp") and not route.to:
                raise ValueError(f"routes[{i}]: channel {route.channel!r} sends e-mail: list recipients in `to`")
        seen: dict[str, str] = {}
        for site, cameras in self.sites.items():
            for camera in cameras:
                if camera in seen:
                    raise ValueError(f"sites: camera {camera!r} is in both {seen[camera]!r} and {site!r}")
                seen[camera] = site
        return self

    _places: RulePlaces = PrivateAttr(default_factory=RulePlaces)  # sites and zones from the rules

    def with_places(self, places: RulePlaces) -> NotifyConfig:
        """This configuration reading sites and time zones from the rules first."""
        copy = self.model_copy()
        copy._places = places
        return copy

    def _own_site(self, camera: str) -> str | None:
        return next((site for site, cameras in self.sites.items() if camera in cameras), None)

    def site_of(self, camera: str) -> str | None:
        return self._places.site_of(camera) or self._own_site(camera)

    def timezone_of(self, camera: str) -> str | None:
        found = self._places.timezone_of(camera)
        if found:
            return found
        site = self.site_of(camera)
        return self.timezones.get(camera) or (self.timezones.get(site) if site else None)

    def deprecation_notes(self, path: str = "/notify.json") -> list[str]:
        """What to move into the rules (shown by ``rules check``, logged once by the notify stage)."""
        where = f"rules@master:{path}"
        notes = []
        if self.sites:
            notes.append(
                f"{where}: `sites` is deprecated: name each camera's site in the rules "
                "(cameras: {gate: {site: hq}}); the rules win where both name one"
            )
        if self.timezones:
            notes.append(
                f"{where}: `timezones` is deprecated: set `timezone:` on the site or camera in the rules "
                "(sites: {hq: {timezone: America/New_York}}); the rules win where both set one"
            )
        places = self._places
        for site, cameras in self.sites.items():
            for camera in cameras:
                ruled = places.site_of(camera)
                if ruled and ruled != site:
                    notes.append(f"{where}: camera {camera}: site {site!r} here, {ruled!r} in the rules: the rules win")
        for key, zone in self.timezones.items():
            ruled = places.timezone_of(key) or places.site_zone.get(key)  # the key is a camera or a site
            if ruled and ruled != zone:
                notes.append(f"{where}: {key}: time zone {zone} here, {ruled} in the rules: the rules win")
        return notes

    def channel(self, name: str) -> ChannelConfig:
        for c in self.channels:
            if c.name == name:
                return c
        raise NotifyConfigError(
            f"no notification channel named {name!r} in the configuration; "
            f"defined: {', '.join(c.name for c in self.channels) or 'none'}"
        )

    def routes_for(self, camera: str, severity: str) -> list[Route]:
        site = self.site_of(camera)
        out = []
        for route in self.routes:
            m = route.match
            if severity not in m.severity:
                continue
            if m.cameras is not None and camera not in m.cameras:
                continue
            if m.sites is not None and site not in m.sites:
                continue
            out.append(route)
        return out


def parse_config(path: str, data: bytes) -> NotifyConfig:
    """Parse one configuration file (JSON or YAML by extension); errors name the file and field."""
    try:
        raw = json.loads(data) if path.endswith(".json") else yaml.safe_load(data)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise NotifyConfigError(
            f"rules@master:{path}: not valid {'JSON' if path.endswith('.json') else 'YAML'}: {exc}"
        ) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise NotifyConfigError(f"rules@master:{path}: the top level must be a mapping (channels:, routes:, ...)")
    try:
        return NotifyConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors(include_url=False)
        )
        raise NotifyConfigError(f"rules@master:{path}: {problems}. Fix the file and commit it again") from None


_logged: set[str] = set()  # deprecation notes already logged by this process


def load_config(files: Mapping[str, bytes]) -> tuple[str | None, NotifyConfig | None]:
    """The configuration among a rules repo's files (path -> bytes), or (None, None) when there is none.

    Sites and time zones come from the rules files among ``files`` first (see the module doc); each
    deprecation note is logged once per process.
    """
    present = [p for p in CONFIG_PATHS if p in files]
    if len(present) > 1:
        raise NotifyConfigError(f"rules repo has {' and '.join(present)}: keep one notification configuration")
    if not present:
        return None, None
    config = parse_config(present[0], files[present[0]]).with_places(rule_places(files))
    for note in config.deprecation_notes(present[0]):
        if note not in _logged:
            _logged.add(note)
            log.warning("%s", note)
    return present[0], config


def environ() -> Mapping[str, str]:
    return os.environ
