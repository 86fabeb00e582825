"""The Quick start's demo: sample alarms from three cameras, a verdict table and report.html."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import run_cli


def test_demo_verifies_the_scikit_image_photos_and_writes_the_report(tmp_path: Path, model_dir: Path) -> None:
    report = tmp_path / "report.html"
    result = run_cli(
        "demo", "--report", str(report), home=tmp_path / "ws", env={"ALARMSIEVE_MODEL_DIR": str(model_dir)}
    )
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode()
    assert "9 alarms verified" in out and "2 alert, 1 review, 6 dismiss" in out
    for camera in ("cam-front", "cam-yard", "cam-shop"):
        assert camera in out
    html = report.read_text()
    assert len(re.findall(r'class="verdict (alert|review|dismiss)"', html)) == 9
    assert html.count("data:image/jpeg;base64,") == 9  # every photo decodes, so every alarm is annotated
    assert html.index("astronaut.png") < html.index("motorcycle_left.png") < html.index("grass.png")  # alerts first
    assert len(list((tmp_path / "ws" / "outbox").glob("*.eml"))) == 2
