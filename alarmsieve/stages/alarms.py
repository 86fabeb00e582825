"""Helpers shared by the alarm stages: finding alarm folders in a datum, reading and writing records."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from alarmsieve.stages.base import DatumContext

R = TypeVar("R", bound=BaseModel)


def alarm_folders(ctx: DatumContext, marker: str) -> Iterator[tuple[Path, str]]:
    """(folder, relative alarm path) of every alarm folder holding ``marker`` in the datum's inputs."""
    for root in ctx.inputs():
        for record in sorted(root.rglob(marker)):
            yield record.parent, record.parent.relative_to(root).as_posix()


def read_record(path: Path, model: type[R]) -> R:
    return model.model_validate_json(path.read_bytes())


def write_record(ctx: DatumContext, rel: str, name: str, record: BaseModel) -> None:
    dest = ctx.out / rel / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(record.model_dump_json(indent=2))


def pass_through(ctx: DatumContext, folder: Path, rel: str, name: str | None) -> None:
    """Carry a file to the output unchanged (stored once: the object store is content-addressed)."""
    if not name:
        return
    src = folder / name
    if src.is_file():
        dest = ctx.out / rel / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dest)  # inputs are read-only links into the object store: no copy needed
        except OSError:
            shutil.copyfile(src, dest)
