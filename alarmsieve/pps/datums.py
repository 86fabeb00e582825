"""Datums as Pachyderm defines them, and how a job finds the ones that changed.

Datum ID: sha256 of (input name, repo, branch, root path) of each input in the datum.
Datum hash: sha256 of the ID, each file's (input, path, content sha256) and the pipeline salt.
A datum with the ID and hash of one already processed is skipped. For a pipeline with a single
``pfs`` input the plan reads only the files that changed since the last job (so planning cost grows
with the change, not with the history); ``cross`` and ``union`` plan over all files.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from alarmsieve.pfs.api import Pfs
from alarmsieve.pps.glob import compile_glob
from alarmsieve.pps.spec import Input, PfsInput
from alarmsieve.pps.worker import DatumFile


@dataclass
class Datum:
    id: str
    hash: str
    roots: list[tuple[str, str]]  # (input name, root path)
    files: list[DatumFile] = field(default_factory=list)


@dataclass(frozen=True)
class _Part:
    """One input's contribution to a datum."""

    input: PfsInput
    root: str
    files: tuple[DatumFile, ...]


def datum_id(parts: Iterable[_Part]) -> str:
    key = "\n".join(f"{p.input.name}\x00{p.input.repo}\x00{p.input.branch}\x00{p.root}" for p in parts)
    return hashlib.sha256(key.encode()).hexdigest()


def datum_hash(identifier: str, files: Iterable[DatumFile], salt: str) -> str:
    digest = hashlib.sha256(identifier.encode())
    for f in sorted(files, key=lambda f: (f.input, f.path)):
        digest.update(f"\n{f.input}\x00{f.path}\x00{f.sha256}".encode())
    digest.update(b"\nsalt\x00" + salt.encode())
    return digest.hexdigest()


def _make(parts: list[_Part], salt: str) -> Datum:
    files = [f for p in parts for f in p.files]
    ident = datum_id(parts)
    return Datum(ident, datum_hash(ident, files, salt), [(p.input.name, p.root) for p in parts], files)


def _pfs_parts(pfs: Pfs, leaf: PfsInput, commit: str | None, roots: Iterable[str] | None = None) -> list[_Part]:
    if commit is None:  # an input repo without commits yet is empty
        return []
    glob = compile_glob(leaf.glob)
    entries = list(pfs.walk(leaf.repo, commit)) if roots is None else list(pfs.walk_many(leaf.repo, commit, roots))
    grouped: dict[str, list[DatumFile]] = {}
    for info in entries:
        root = glob.datum_root(info.path)
        if root is None:
            continue
        grouped.setdefault(root, []).append(DatumFile(leaf.name, leaf.repo, info.path, info.sha256 or "", info.size))
    return [_Part(leaf, root, tuple(files)) for root, files in sorted(grouped.items())]


def _parts_of(pfs: Pfs, node: Input, commits: dict[str, str]) -> list[list[_Part]]:
    if node.pfs is not None:
        return [[part] for part in _pfs_parts(pfs, node.pfs, commits.get(node.pfs.name))]
    if node.union is not None:
        return [combo for child in node.union for combo in _parts_of(pfs, child, commits)]
    if node.cross is not None:
        children = [_parts_of(pfs, child, commits) for child in node.cross]
        return [[p for group in combo for p in group] for combo in itertools.product(*children)]
    if node.cron is not None:
        leaf = node.cron.as_pfs()
        return [[part] for part in _pfs_parts(pfs, leaf, commits.get(leaf.name))]
    if node.join is not None:
        return _join_parts(pfs, node.join, commits)
    if node.group is not None:
        return _group_parts(pfs, node.group, commits)
    raise ValueError("input has none of pfs, cross, union, join, group")


def _keyed(pfs: Pfs, children: list[Input], commits: dict[str, str], join: bool) -> list[dict[str, list[_Part]]]:
    """Per child `pfs` input: its datum parts by key (`joinOn` / `groupBy` filled from the glob's groups)."""
    out = []
    for child in children:
        leaf = child.pfs
        assert leaf is not None  # the spec allows only pfs inputs here
        glob = compile_glob(leaf.glob)
        template = leaf.join_on if join else leaf.group_by
        by_key: dict[str, list[_Part]] = {}
        for part in _pfs_parts(pfs, leaf, commits.get(leaf.name)):
            by_key.setdefault(glob.expand(template, part.root), []).append(part)
        out.append(by_key)
    return out


def _join_parts(pfs: Pfs, children: list[Input], commits: dict[str, str]) -> list[list[_Part]]:
    """Pachyderm's join: for each key, the cross product of the inputs' datums with that key.

    A key missing from some inputs gives datums only when an input that has it sets `outerJoin`; such
    datums hold the inputs that have the key.
    """
    keyed = _keyed(pfs, children, commits, join=True)
    outer = [bool(child.pfs and child.pfs.outer_join) for child in children]
    combos: list[list[_Part]] = []
    for key in sorted({k for by_key in keyed for k in by_key}):
        present = [i for i, by_key in enumerate(keyed) if key in by_key]
        if len(present) < len(keyed) and not any(outer[i] for i in present):
            continue
        lists = [keyed[i][key] for i in present]
        combos.extend(list(combo) for combo in itertools.product(*lists))
    return combos


def _group_parts(pfs: Pfs, children: list[Input], commits: dict[str, str]) -> list[list[_Part]]:
    """Pachyderm's group: every datum of every input with one `groupBy` key forms one datum."""
    keyed = _keyed(pfs, children, commits, join=False)
    return [
        [part for by_key in keyed for part in by_key.get(key, [])]
        for key in sorted({k for by_key in keyed for k in by_key})
    ]


def plan_all(pfs: Pfs, spec_input: Input, commits: dict[str, str], salt: str) -> dict[str, Datum]:
    """Every datum of the input at the given commits (input name -> commit id)."""
    datums = [_make(parts, salt) for parts in _parts_of(pfs, spec_input, commits)]
    return {d.id: d for d in datums}


def plan_changed(
    pfs: Pfs,
    leaf: PfsInput,
    old_commit: str | None,
    new_commit: str,
    salt: str,
    extra_roots: Iterable[str] = (),
) -> tuple[dict[str, Datum], set[str]]:
    """For a single ``pfs`` input: the datums touched since ``old_commit`` (plus ``extra_roots``).

    Returns (datums that exist now, ids of touched datums that no longer exist).
    """
    glob = compile_glob(leaf.glob)
    roots = set(extra_roots)
    for change in pfs.diff(leaf.repo, old_commit, new_commit):
        root = glob.datum_root(change.path)
        if root is not None:
            roots.add(root)
    present = {d.id: d for d in (_make([p], salt) for p in _pfs_parts(pfs, leaf, new_commit, roots))}
    gone = {datum_id([_Part(leaf, root, ())]) for root in roots} - set(present)
    return present, gone
