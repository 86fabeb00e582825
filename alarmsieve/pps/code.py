"""A local transform's code: the files its ``transform.cmd`` / ``transform.stdin`` name, fingerprinted.

A foreign transform such as ``python3 thumbs.py`` is only as versioned as ``thumbs.py``: editing the
script must make a new pipeline version, exactly as new stage code does for a built-in stage. The files
found here (sha256 each) become part of the version's identity; relative names resolve against the folder
the spec was created from, which is recorded in the identity as ``code_dir``.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

CODE_DIR_KEY = "code_dir"
FILE_KEY_PREFIX = "file:"
MAX_CODE_BYTES = 16 * 1024 * 1024  # a bigger file is data or a binary, not a script to fingerprint
# Interpreters and system files are the machine's, not the pipeline's; /pfs is the datum.
_NOT_CODE = ("/usr/", "/bin/", "/sbin/", "/lib", "/etc/", "/proc/", "/sys/", "/dev/", "/pfs/")


# A program named by path is code (`/work/x/thumbs.sh`) unless it is an interpreter (`/root/.pyenv/shims/python3`).
_INTERPRETER = re.compile(r"^(python|pypy|sh|bash|dash|zsh|ksh|env|node|ruby|perl|php|Rscript|java|julia)[\d.]*$")


def _tokens(cmd: Sequence[str], stdin: Sequence[str]) -> Iterator[tuple[str, bool]]:
    """(token, names a Python module) for every word of the command and of the stdin script."""
    words = list(cmd)
    if words and _INTERPRETER.match(Path(words[0]).name):
        words = words[1:]
    for line in stdin:
        try:
            words.extend(shlex.split(line, comments=True))
        except ValueError:  # an unbalanced quote in a shell line: plain words are good enough here
            words.extend(line.split())
    module_next = False
    for word in words:
        if module_next:
            yield word, True
            module_next = False
        elif word == "-m":
            module_next = True
        elif word.startswith("-m") and len(word) > 2 and not word.startswith("--"):
            yield word[2:], True
        elif word.startswith("-") and "=" in word:
            yield word.split("=", 1)[1], False  # --config=settings.yaml
        else:
            yield word, False


def _module_files(module: str, base: Path) -> list[Path]:
    stem = base.joinpath(*module.split("."))
    return [stem.with_suffix(".py"), stem / "__main__.py", stem / "__init__.py"]


def _is_code(path: Path) -> bool:
    # the interpreter's own installation (a venv's python links there) is not the pipeline's code either
    not_code = (*_NOT_CODE, sys.base_prefix + "/", sys.prefix + "/")
    try:
        return (
            not str(path).startswith(not_code)
            and path.is_file()
            and not str(path.resolve()).startswith(not_code)
            and path.stat().st_size <= MAX_CODE_BYTES
        )
    except OSError:
        return False


def code_files(cmd: Sequence[str], stdin: Sequence[str], base: Path | None) -> list[Path]:
    """The local files the transform names that exist now: absolute paths as written, relative ones
    against ``base`` (the spec's folder), ``-m pkg.mod`` as ``base/pkg/mod.py`` (or the package's
    ``__main__.py`` / ``__init__.py``). Sorted, without duplicates."""
    found: dict[str, Path] = {}
    for token, is_module in _tokens(cmd, stdin):
        if not token or "$" in token:
            continue
        if is_module:
            candidates = _module_files(token, base) if base is not None else []
        elif token.startswith("/"):
            candidates = [Path(token)]
        elif base is not None and ("/" in token or "." in token.lstrip(".")):
            candidates = [base / token]
        else:
            candidates = []
        for candidate in candidates:
            if _is_code(candidate):
                resolved = candidate.resolve()
                found[str(resolved)] = resolved
                break
    return [found[key] for key in sorted(found)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def code_identity(cmd: Sequence[str], stdin: Sequence[str], base: Path | None) -> dict[str, str]:
    """Identity entries for a transform's local code: ``file:<path>`` -> sha256, and ``code_dir`` when a
    relative name was resolved against it (so the runner can look again at the same files)."""
    files = code_files(cmd, stdin, base)
    identity = {f"{FILE_KEY_PREFIX}{path}": _sha256(path) for path in files}
    if base is not None and (set(code_files(cmd, stdin, None)) != set(files)):
        identity[CODE_DIR_KEY] = str(base.resolve())
    return identity


def is_code_key(key: str) -> bool:
    return key == CODE_DIR_KEY or key.startswith(FILE_KEY_PREFIX)


def split_identity(identity: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(what the workers report, the code entries) of a stored identity."""
    code = {k: v for k, v in identity.items() if is_code_key(k)}
    return {k: v for k, v in identity.items() if not is_code_key(k)}, code


def fingerprinted_files(identity: dict[str, str]) -> dict[str, str]:
    """path -> sha256 of the code files in an identity."""
    return {k.removeprefix(FILE_KEY_PREFIX): v for k, v in identity.items() if k.startswith(FILE_KEY_PREFIX)}


def runnable_cmd(cmd: Sequence[str], base: Path | None) -> list[str]:
    """``cmd`` with each relative argument that names a file in ``base`` made absolute, so that
    ``python3 thumbs.py`` runs the spec folder's ``thumbs.py`` whatever the working directory."""
    if base is None:
        return list(cmd)
    out = []
    for word in cmd:
        if word and not word.startswith(("/", "-")) and "$" not in word and (base / word).is_file():
            out.append(str((base / word).resolve()))
        else:
            out.append(word)
    return out
