"""Repo paths and references: ``repo@branch:/path`` parsing and path safety."""

from __future__ import annotations

import re
from dataclasses import dataclass

REPO_NAME = re.compile(r"^[A-Za-z0-9_-]{1,63}$")


class PathError(ValueError):
    pass


def check_repo_name(name: str) -> str:
    if not REPO_NAME.match(name):
        raise PathError(f"repo name {name!r} is invalid: use 1-63 letters, digits, '-' or '_' (e.g. 'images')")
    return name


def normalize_path(path: str) -> str:
    """Return the canonical absolute form of a repo path, refusing anything that could escape the repo."""
    if "\x00" in path or "\\" in path:
        raise PathError(f"path {path!r} contains a NUL or backslash; use '/'-separated names")
    parts = [p for p in path.split("/") if p not in ("",)]
    for part in parts:
        if part in (".", ".."):
            raise PathError(
                f"path {path!r} contains {part!r}: relative components are not allowed in a repo path "
                "(they could escape the repo); give the full path from the repo root, e.g. /cam-1/0001.jpg"
            )
    return "/" + "/".join(parts)


def parent_dirs(path: str) -> list[str]:
    """Ancestors of a file path, nearest first, excluding the root: /a/b/c -> [/a/b, /a]."""
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def prefix_upper_bound(dir_path: str) -> str:
    """For a directory '/a', the smallest string above every '/a/...' path ('/a0': '0' follows '/')."""
    return dir_path.rstrip("/") + "0"


@dataclass(frozen=True)
class FileRef:
    repo: str
    ref: str  # branch name or commit id
    path: str

    def __str__(self) -> str:
        return f"{self.repo}@{self.ref}:{self.path}"


def parse_file_ref(text: str, *, default_path: str = "/") -> FileRef:
    """Parse ``repo[@branch_or_commit][:/path]``."""
    repo_part, _, path = text.partition(":")
    repo, _, ref = repo_part.partition("@")
    check_repo_name(repo)
    if ref and not REPO_NAME.match(ref):
        raise PathError(f"{text!r}: {ref!r} is neither a branch name nor a commit id")
    return FileRef(repo=repo, ref=ref or "master", path=normalize_path(path or default_path))
