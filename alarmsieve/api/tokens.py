"""API tokens: per-camera (may only post alarms for its own camera) and per-operator (everything).

A token is ``ast_<id>_<secret>``; only the sha256 of the secret is stored (the secret is 32 random
bytes, so a plain hash is enough: there is nothing to brute-force). Tokens are revoked, never deleted,
so that the audit trail (``api_alarms.token_id``) keeps its meaning.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from typing import Literal

from pydantic import BaseModel
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from alarmsieve.api.tables import ApiToken, now
from alarmsieve.errors import AlarmsieveError
from alarmsieve.pfs.db import get_engine

TokenKind = Literal["camera", "operator"]
CAMERA_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
TOKEN_FORMAT = re.compile(r"^ast_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
LAST_USED_EVERY_S = 60.0


class TokenError(AlarmsieveError):
    pass


class TokenInfo(BaseModel):
    id: str
    name: str
    kind: TokenKind
    camera: str | None
    created_at: str
    revoked_at: str | None
    last_used_at: str | None


class Principal(BaseModel):
    """Who a request is from."""

    token_id: str
    name: str
    kind: TokenKind
    camera: str | None

    def may_post_for(self, camera: str) -> bool:
        return self.kind == "operator" or self.camera == camera


def check_camera_id(camera: str) -> str:
    if not CAMERA_ID.match(camera):
        raise TokenError(
            f"camera id {camera!r} is not valid: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return camera


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _info(row: ApiToken) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        name=row.name,
        kind=row.kind,  # type: ignore[arg-type]
        camera=row.camera,
        created_at=row.created_at.isoformat(timespec="seconds"),
        revoked_at=row.revoked_at.isoformat(timespec="seconds") if row.revoked_at else None,
        last_used_at=row.last_used_at.isoformat(timespec="seconds") if row.last_used_at else None,
    )


class TokenStore:
    def __init__(self, catalog_url: str) -> None:
        self.engine = get_engine(catalog_url)
        self._last_used: dict[str, float] = {}
        self._lock = threading.Lock()

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False, autoflush=False)

    def create(self, name: str, kind: TokenKind, camera: str | None = None) -> tuple[TokenInfo, str]:
        """A new token; returns its record and the token text (shown once, never stored)."""
        if kind == "camera":
            if not camera:
                raise TokenError("a camera token needs --camera CAMERA_ID (the camera it may post for)")
            check_camera_id(camera)
        elif camera:
            raise TokenError("an operator token is not tied to a camera; drop --camera or use --kind camera")
        if not name.strip():
            raise TokenError("give the token a name (who or what uses it), e.g. --name front-door")
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        row = ApiToken(id=token_id, name=name.strip(), kind=kind, camera=camera, secret_sha256=_hash(secret))
        with self._session() as s, s.begin():
            s.add(row)
        return _info(row), f"ast_{token_id}_{secret}"

    def list(self, include_revoked: bool = True) -> list[TokenInfo]:
        with self._session() as s:
            q = select(ApiToken).order_by(ApiToken.created_at)
            if not include_revoked:
                q = q.where(ApiToken.revoked_at.is_(None))
            return [_info(r) for r in s.scalars(q)]

    def revoke(self, token_id: str) -> TokenInfo:
        token_id = token_id.removeprefix("ast_").split("_", 1)[0]
        with self._session() as s, s.begin():
            row = s.get(ApiToken, token_id)
            if row is None:
                raise TokenError(f"no token with id {token_id!r}; see `alarmsieve token list`")
            if row.revoked_at is None:
                row.revoked_at = now()
            return _info(row)

    def verify(self, token: str) -> Principal | None:
        """The principal of a valid, unrevoked token; None otherwise."""
        match = TOKEN_FORMAT.match(token.strip())
        if not match:
            return None
        token_id, secret = match.groups()
        with self._session() as s:
            row = s.get(ApiToken, token_id)
            if row is None or row.revoked_at is not None:
                return None
            if not hmac.compare_digest(row.secret_sha256, _hash(secret)):
                return None
            principal = Principal(token_id=row.id, name=row.name, kind=row.kind, camera=row.camera)  # type: ignore[arg-type]
        self._touch(token_id)
        return principal

    def _touch(self, token_id: str) -> None:
        """Record last use at most once a minute per token (a write per request would serialise the API)."""
        t = time.monotonic()
        with self._lock:
            if t - self._last_used.get(token_id, -LAST_USED_EVERY_S) < LAST_USED_EVERY_S:
                return
            self._last_used[token_id] = t
        with self._session() as s, s.begin():
            s.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now()))
