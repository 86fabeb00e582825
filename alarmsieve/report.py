"""The demo's sample alarms and the HTML report of verdicts with their annotated images."""

from __future__ import annotations

import base64
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from alarmsieve.pfs.api import Pfs
from alarmsieve.stages.records import VerdictRecord
from alarmsieve.verdicts import ASSESS_REPO

# (camera, photo): the real photos shipped inside the scikit-image wheel, under three cameras.
DEMO_ALARMS: list[tuple[str, str]] = [
    ("cam-front", "astronaut.png"),
    ("cam-front", "camera.png"),
    ("cam-front", "motorcycle_left.png"),
    ("cam-yard", "chelsea.png"),
    ("cam-yard", "grass.png"),
    ("cam-yard", "gravel.png"),
    ("cam-yard", "brick.png"),
    ("cam-shop", "coffee.png"),
    ("cam-shop", "rocket.jpg"),
]


class DemoDataError(RuntimeError):
    pass


def demo_sources(folder: Path | None = None) -> dict[str, Path]:
    """Paths of the demo photos: ``folder`` if given, else the data folder of the scikit-image wheel."""
    if folder is None:
        try:
            import skimage
        except ImportError as exc:
            raise DemoDataError(
                "the demo photos come from scikit-image's wheel: pip install 'alarmsieve[demo]' "
                "(or pass --images DIR with the photos)"
            ) from exc
        folder = Path(skimage.__file__).parent / "data"
    paths = {name: folder / name for _, name in DEMO_ALARMS}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise DemoDataError(f"demo photos missing: {', '.join(missing)}")
    return paths


def write_report(pfs: Pfs, records: list[VerdictRecord], dest: Path) -> None:
    env = Environment(loader=PackageLoader("alarmsieve", "templates"), autoescape=select_autoescape())
    rows = []
    severity = {"alert": 0, "review": 1, "dismiss": 2}
    for record in sorted(records, key=lambda r: (severity[r.verdict], r.camera, r.alarm)):
        image = None
        if record.annotated_file:
            folder = record.alarm
            data = pfs.get_file(ASSESS_REPO, "master", f"{folder}/{record.annotated_file}")
            image = base64.b64encode(data).decode()
        rows.append({"r": record, "image": image})
    counts = {v: sum(1 for r in records if r.verdict == v) for v in ("alert", "review", "dismiss")}
    dest.write_text(env.get_template("report.html.j2").render(rows=rows, counts=counts))
