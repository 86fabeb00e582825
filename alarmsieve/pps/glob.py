"""Pachyderm glob patterns: which paths of a repo form datums.

In Pachyderm every path (file or directory) that matches a pipeline input's glob is one datum holding
that path and everything below it. This module compiles a glob once and answers, for a file, which
datum it belongs to, in O(depth), so that a changed file maps to its datum without listing the repo.

Syntax (see docs/pipeline-spec.md, "Glob patterns"):

- ``*`` any run of characters inside one path segment (never ``/``); ``?`` one such character;
- ``[abc]``, ``[a-z]``, ``[!abc]`` / ``[^abc]`` one character of (not of) a class, never ``/``;
- ``{a,b}`` alternatives, nestable, may contain ``/``;
- ``(...)`` a capture group, as in Pachyderm: it does not change what matches, and
  `Glob.captures` returns what each group matched (``$1``, ``$2`` in ``joinOn`` / ``groupBy``);
- ``**`` as a whole segment: zero or more segments (one or more when it is the last segment).
  A pattern alternative containing ``**`` matches FILES only, so ``/**`` is one datum per file;
- ``\\x`` the character ``x`` literally.

A file that lies below two matching paths belongs to the shorter one only (the outer datum), so every
file is in at most one datum.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["Glob", "compile_glob"]

# Brace expansion is cartesian; cap it so a hostile pattern cannot blow up memory.
_MAX_ALTERNATIVES = 256

_SEP = "/"  # token: path separator
_STAR = "*"  # token: one `*`; runs of two form `**`
_OPEN = "("  # token: a capture group opens


@dataclass(frozen=True, slots=True)
class _Alternative:
    """One brace-expanded alternative of a pattern."""

    depth: int | None  # number of segments it matches; None when it contains `**` (files only)
    regex: re.Pattern[str]


def _fail(pattern: str, why: str) -> ValueError:
    return ValueError(f"invalid glob {pattern!r}: {why}")


def _parse_class(pattern: str, i: int) -> tuple[str, int]:
    """Parse a `[...]` class starting at pattern[i] == "["; return (regex, index after "]")."""
    start = i
    i += 1
    negate = i < len(pattern) and pattern[i] in "!^"
    if negate:
        i += 1
    chars: list[str] = []
    first = True
    while True:
        if i >= len(pattern):
            raise _fail(pattern, f"unbalanced '[' at position {start}")
        c = pattern[i]
        if c == "]" and not first:
            i += 1
            break
        first = False
        if c == "\\":
            if i + 1 >= len(pattern):
                raise _fail(pattern, "pattern ends with a lone '\\'")
            c = pattern[i + 1]
            i += 1
        if c == "/" and not negate:
            raise _fail(pattern, "a '[...]' class cannot contain '/'")
        i += 1
        # A range `a-z` (a `-` first or last is literal).
        if i + 1 < len(pattern) and pattern[i] == "-" and pattern[i + 1] != "]":
            hi = pattern[i + 1]
            i += 2
            if hi == "\\":
                if i >= len(pattern):
                    raise _fail(pattern, "pattern ends with a lone '\\'")
                hi = pattern[i]
                i += 1
            if not negate and (hi == "/" or c < "/" < hi):
                raise _fail(pattern, "a '[...]' class cannot contain '/'")
            if hi < c:
                raise _fail(pattern, f"reversed range '{c}-{hi}' in '[...]'")
            chars.append(f"{re.escape(c)}-{re.escape(hi)}")
        else:
            chars.append(re.escape(c))
    body = "".join(chars)
    # A negated class must still not match the separator.
    return (f"[^/{body}]" if negate else f"[{body}]"), i


def _parse_seq(pattern: str, i: int, in_braces: bool) -> tuple[list[list[str]], int]:
    """Parse until the end (or a `,`/`}` inside braces); return brace-expanded token lists.

    Tokens are regex fragments, except `_SEP` and `_STAR` which are kept as markers so segments and
    `**` can be recognised after expansion.
    """
    alts: list[list[str]] = [[]]

    def add(token: str) -> None:
        for alt in alts:
            alt.append(token)

    while i < len(pattern):
        c = pattern[i]
        if in_braces and c in ",}":
            break
        if c == "{":
            start = i
            i += 1
            options: list[list[str]] = []
            while True:
                sub, i = _parse_seq(pattern, i, in_braces=True)
                options.extend(sub)
                if i >= len(pattern):
                    raise _fail(pattern, f"unbalanced '{{' at position {start}")
                i += 1  # past "," or "}"
                if pattern[i - 1] == "}":
                    break
            if len(alts) * len(options) > _MAX_ALTERNATIVES:
                raise _fail(pattern, f"more than {_MAX_ALTERNATIVES} alternatives after expanding '{{...}}'")
            alts = [a + b for a in alts for b in options]
            continue
        if c == "}":
            raise _fail(pattern, f"unbalanced '}}' at position {i}")
        if c == "[":
            regex, i = _parse_class(pattern, i)
            add(regex)
            continue
        if c == "\\":
            if i + 1 >= len(pattern):
                raise _fail(pattern, "pattern ends with a lone '\\'")
            add(re.escape(pattern[i + 1]))
            i += 2
            continue
        if c == "/":
            add(_SEP)
        elif c == "*":
            add(_STAR)
        elif c == "?":
            add("[^/]")
        elif c == "(":
            add(_OPEN)
        elif c == ")":
            add(")")
        else:
            add(re.escape(c))
        i += 1
    return alts, i


def _segment_regex(pattern: str, tokens: list[str]) -> str:
    """Regex for one path segment (no `**`)."""
    out: list[str] = []
    open_groups = 0
    run = 0
    for tok in [*tokens, ""]:
        if tok == _STAR:
            run += 1
            continue
        if run >= 2:
            raise _fail(pattern, "'**' must be a whole path segment, e.g. /**/*.jpg")
        if run == 1:
            out.append("[^/]*")
        run = 0
        if tok == _OPEN:
            open_groups += 1
        elif tok == ")":
            open_groups -= 1
            if open_groups < 0:
                raise _fail(pattern, "unbalanced ')'")
        out.append(tok)
    if open_groups:
        raise _fail(pattern, "unbalanced '(' (a group cannot span '/')")
    return "".join(out)


def _compile_alternative(pattern: str, tokens: list[str]) -> _Alternative:
    segments: list[list[str]] = [[]]
    for tok in tokens:
        if tok == _SEP:
            segments.append([])
        else:
            segments[-1].append(tok)
    if segments[0]:
        raise _fail(pattern, "a glob must start with '/' (e.g. '/*')")
    segments = segments[1:]
    if segments and not segments[-1]:
        segments.pop()  # a trailing "/" names the same path
    globstar = False
    parts: list[str] = []
    for n, seg in enumerate(segments):
        if not seg:
            raise _fail(pattern, "empty path segment ('//')")
        if seg == [_STAR, _STAR]:
            globstar = True
            last = n == len(segments) - 1
            # Trailing `**` needs at least one segment: `/cam/**` is what is BELOW /cam.
            parts.append("(?:/[^/]+)+" if last else "(?:/[^/]+)*")
            continue
        if seg in ([re.escape(".")], [re.escape("."), re.escape(".")]):
            raise _fail(pattern, "'.' and '..' segments are not allowed")
        parts.append("/" + _segment_regex(pattern, seg))
    regex = "".join(parts) or "/"
    return _Alternative(depth=None if globstar else len(segments), regex=re.compile(regex))


def _split_path(path: str, *, what: str) -> list[str]:
    if not path.startswith("/"):
        raise ValueError(f"{what} {path!r} must be absolute (start with '/')")
    if path == "/":
        return []
    parts = path[1:].removesuffix("/").split("/")
    if "" in parts:
        raise ValueError(f"{what} {path!r} has an empty segment")
    return parts


class Glob:
    """A compiled glob pattern. Build it with `compile_glob`."""

    __slots__ = ("_alts", "_file_alts", "_fixed_by_depth", "pattern")

    pattern: str

    def __init__(self, pattern: str, alts: list[_Alternative]) -> None:
        self.pattern = pattern
        self._alts = alts
        # A path at depth d can only match the `**`-free alternatives with d segments.
        by_depth: dict[int, list[re.Pattern[str]]] = {}
        for alt in alts:
            if alt.depth is not None:
                by_depth.setdefault(alt.depth, []).append(alt.regex)
        self._fixed_by_depth = {d: _union(rs) for d, rs in sorted(by_depth.items())}
        globstars = [alt.regex for alt in alts if alt.depth is None]
        self._file_alts = _union(globstars) if globstars else None

    def __repr__(self) -> str:
        return f"Glob({self.pattern!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Glob) and other.pattern == self.pattern

    def __hash__(self) -> int:
        return hash(self.pattern)

    def matches(self, path: str, *, is_dir: bool | None = None) -> bool:
        """Whether `path` (a file or a directory, "/" is the root) matches.

        Only patterns with `**` care which it is (they match files only). `is_dir=None` infers it:
        "/" and paths ending in "/" are directories, anything else a file.
        """
        parts = _split_path(path, what="path")
        if is_dir is None:
            is_dir = path.endswith("/")
        return self._matches_parts(parts, is_dir=is_dir)

    def _matches_parts(self, parts: list[str], *, is_dir: bool) -> bool:
        text = "/" + "/".join(parts)
        fixed = self._fixed_by_depth.get(len(parts))
        if fixed is not None and fixed.fullmatch(text):
            return True
        return not is_dir and self._file_alts is not None and bool(self._file_alts.fullmatch(text))

    def datum_root(self, file_path: str) -> str | None:
        """The datum a file belongs to: its shortest matching ancestor-or-self, or None.

        Costs one regex match per distinct pattern depth, at most depth + 1.
        """
        parts = _split_path(file_path, what="file path")
        if not parts or file_path.endswith("/"):
            raise ValueError(f"file path {file_path!r} names a directory")
        n = len(parts)
        for depth, regex in self._fixed_by_depth.items():  # ascending depth: shortest wins
            if depth >= n:
                break
            prefix = "/" + "/".join(parts[:depth])
            if regex.fullmatch(prefix):
                return prefix
        return file_path if self._matches_parts(parts, is_dir=False) else None

    def captures(self, path: str) -> tuple[str, ...] | None:
        """What the pattern's ``(...)`` groups matched in ``path`` (a datum root), or None if it does not match.

        With several ``{a,b}`` alternatives, the first one that matches gives the groups.
        """
        parts = _split_path(path, what="path")
        text = "/" + "/".join(parts)
        for alt in self._alts:
            if alt.depth is not None and alt.depth != len(parts):
                continue
            m = alt.regex.fullmatch(text)
            if m is not None:
                return tuple(g or "" for g in m.groups())
        return None

    def expand(self, template: str, path: str) -> str:
        """``template`` with ``$N`` / ``${N}`` replaced by group N of ``path`` (Pachyderm's joinOn/groupBy)."""
        groups = self.captures(path) or ()

        def one(m: re.Match[str]) -> str:
            n = int(m.group(1) or m.group(2))
            return groups[n - 1] if 0 < n <= len(groups) else ""

        return re.sub(r"\$(\d+)|\$\{(\d+)\}", one, template)

    def group(self, file_paths: Iterable[str]) -> dict[str, list[str]]:
        """Datum root -> the sorted files in that datum; roots sorted; unmatched files left out."""
        groups: dict[str, set[str]] = {}
        for path in file_paths:
            root = self.datum_root(path)
            if root is not None:
                groups.setdefault(root, set()).add(path)
        return {root: sorted(groups[root]) for root in sorted(groups)}


def _union(regexes: list[re.Pattern[str]]) -> re.Pattern[str]:
    # capture groups do not matter when matching; keep the union free of them
    return re.compile("|".join(f"(?:{_uncaptured(r.pattern)})" for r in regexes))


def _uncaptured(regex: str) -> str:
    """``(`` that open a capture group -> ``(?:`` (escaped ``\\(`` and ``(?`` left alone)."""
    return re.sub(r"(?<!\\)\((?!\?)", "(?:", regex)


@lru_cache(maxsize=1024)
def compile_glob(pattern: str) -> Glob:
    """Compile a Pachyderm glob; ValueError says what is wrong with a malformed one."""
    if not isinstance(pattern, str):
        raise TypeError(f"glob must be a string, got {type(pattern).__name__}")
    if not pattern.startswith("/"):
        raise _fail(pattern, "a glob must start with '/' (e.g. '/*')")
    alts, _ = _parse_seq(pattern, 0, in_braces=False)
    return Glob(pattern, [_compile_alternative(pattern, tokens) for tokens in alts])
