"""``alarmsieve token create|list|revoke``: API tokens for cameras and operators."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from alarmsieve.cli import JsonFlag, app, console, emit_json, fail, workspace

if TYPE_CHECKING:
    from alarmsieve.api.tokens import TokenStore

token_app = typer.Typer(
    help="API tokens for cameras and operators (the HTTP API of `serve --http`).", no_args_is_help=True
)
app.add_typer(token_app, name="token")


def _store() -> TokenStore:
    from alarmsieve.api.tokens import TokenStore

    return TokenStore(workspace().catalog_url)


@token_app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", "-n", help="who or what uses it, e.g. front-door or alice")],
    kind: Annotated[str, typer.Option("--kind", help="camera (posts for one camera) or operator")] = "camera",
    camera: Annotated[str | None, typer.Option("--camera", help="the camera id a camera token may post for")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a token; it is printed once (only its hash is kept)."""
    if kind not in ("camera", "operator"):
        fail(f"--kind {kind!r}: use camera or operator", 2)
    store = _store()
    info, token = store.create(name, kind, camera)  # type: ignore[arg-type]
    if as_json:
        return emit_json([{**info.model_dump(), "token": token}])
    scope = f"camera {info.camera}" if info.kind == "camera" else "operator"
    console.print(f"created {scope} token {info.id} ({info.name}); it is shown only now:", highlight=False)
    console.print(token, highlight=False, soft_wrap=True)


@token_app.command("list")
def list_tokens(
    all_tokens: Annotated[bool, typer.Option("--all", help="include revoked tokens")] = False,
    as_json: JsonFlag = False,
) -> None:
    """List tokens (never their secrets)."""
    store = _store()
    tokens = store.list(include_revoked=all_tokens)
    if as_json:
        return emit_json(tokens)
    table = Table("ID", "NAME", "KIND", "CAMERA", "CREATED", "LAST USED", "REVOKED", box=None)
    for t in tokens:
        table.add_row(t.id, t.name, t.kind, t.camera or "-", t.created_at, t.last_used_at or "-", t.revoked_at or "-")
    console.print(table)


@token_app.command("revoke")
def revoke(
    token_id: Annotated[str, typer.Argument(help="the token's id (see `token list`) or the token itself")],
) -> None:
    """Revoke a token: requests with it are refused from now on (401)."""
    store = _store()
    info = store.revoke(token_id)
    console.print(f"revoked token {info.id} ({info.name}) at {info.revoked_at}")
