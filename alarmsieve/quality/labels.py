"""Labelled eval sets as CSV: which columns mean what, and the rows that cannot be used.

Two CSV shapes (docs/quality.md, "Labels"):

- ``file,objects[,condition][,note][,sequence]``: ``objects`` split by ``;``, ``|`` or spaces;
- ``file,person[,condition][,note][,sequence]`` (the cctv-dev set): ``person`` is ``1`` (a person is
  visible), ``0`` (none) or empty: not labelled (a person may be there but cannot be made out), so the
  frame is excluded from every figure and counted as excluded.

With a ``sequence`` column a row's image is ``<images>/<sequence>/<file>`` and the sequence is its
camera. A bad row (missing file, unknown ``person`` value, a path leaving the folder, a file listed
twice) is one problem line naming the CSV, its line and the file; the other rows are evaluated.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path, PurePosixPath

from pydantic import BaseModel


class LabelsError(ValueError):
    """The labels cannot be used at all (no such file, no usable column, no usable row)."""


class LabelledImage(BaseModel):
    file: str  # relative to the images folder (``<sequence>/<file>`` for a sequence frame)
    objects: list[str]
    # largest box per label as a fraction of the frame (YOLO labels only; empty when unknown)
    areas: dict[str, float] = {}
    condition: str | None = None  # e.g. day, low_light, thermal, night_ir (a `condition` column)
    sequence: str | None = None  # the sequence (camera) the frame belongs to (a `sequence` column)
    note: str = ""
    labelled: bool = True  # False: the person label is empty; the frame runs but is not scored
    line: int | None = None  # its line in the CSV


class LabelSet(BaseModel):
    items: list[LabelledImage]
    problems: list[str] = []  # one line per row that was left out, naming the CSV, line and file


PERSON_VALUES = {"1": True, "0": False}
OBJECT_SPLIT = re.compile(r"[;|\s]+")


def _safe_relative(text: str) -> bool:
    path = PurePosixPath(text)
    return bool(text) and not path.is_absolute() and ".." not in path.parts and "\\" not in text


def read_labels_csv(images: Path, labels: Path) -> LabelSet:
    """Read a labels CSV against its images folder; bad rows become ``problems``, never exceptions."""
    with labels.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = columns
        if "file" not in columns or not ({"objects", "person"} & set(columns)):
            raise LabelsError(
                f"--labels {labels}: a CSV needs the columns 'file' and 'objects' (objects separated by ';'), "
                f"or 'file' and 'person' (1, 0 or empty); found {', '.join(columns) or 'no header'}"
            )
        by_objects = "objects" in columns
        items: list[LabelledImage] = []
        problems: list[str] = []
        first_line: dict[str, int] = {}
        for line, row in enumerate(reader, start=2):
            file = (row.get("file") or "").strip()
            sequence = (row.get("sequence") or "").strip() or None
            where = f"{labels} line {line}"
            if not file:
                problems.append(f"{where}: the 'file' field is empty; give the image's file name")
                continue
            if "sequence" in columns and sequence is None:
                problems.append(f"{where}: {file!r} has no 'sequence'; name the folder its frames are in")
                continue
            rel = f"{sequence}/{file}" if sequence else file
            if not _safe_relative(rel) or (sequence is not None and "/" in sequence):
                problems.append(f"{where}: {rel!r} is not a relative path inside {images}; drop the '..' or '/'")
                continue
            if not (images / rel).is_file():
                problems.append(f"{where}: {rel!r} is not a file under {images}; fix the name or add the file")
                continue
            if rel in first_line:
                problems.append(f"{where}: {rel!r} is listed twice (first on line {first_line[rel]}); drop one row")
                continue
            labelled = True
            if by_objects:
                objects = [o for o in OBJECT_SPLIT.split((row.get("objects") or "").strip()) if o]
            else:
                value = (row.get("person") or "").strip()
                if value and value not in PERSON_VALUES:
                    problems.append(
                        f"{where}: {rel!r} has person {value!r}; use 1 (a person is visible), 0 (none) "
                        "or leave it empty (not labelled: the frame is excluded)"
                    )
                    continue
                labelled = value != ""
                objects = ["person"] if PERSON_VALUES.get(value) else []
            first_line[rel] = line
            items.append(
                LabelledImage(
                    file=rel,
                    objects=objects,
                    condition=(row.get("condition") or "").strip() or None,
                    sequence=sequence,
                    note=(row.get("note") or "").strip(),
                    labelled=labelled,
                    line=line,
                )
            )
    if not items:
        first = f"; the first: {problems[0]}" if problems else ""
        raise LabelsError(f"--labels {labels}: no usable row{first}")
    return LabelSet(items=items, problems=problems)
