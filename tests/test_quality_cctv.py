"""Verdict quality on the real security footage of ../shared/datasets/cctv-dev: labels with a condition,
empty person labels (excluded), bad rows, per-condition figures with Wilson intervals, and sequences
with per-event recall, through the real pipeline and detector."""

from __future__ import annotations

import csv
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from scipy.stats import binomtest

from alarmsieve.evaluate import EvalError, arrival_batches, load_label_set
from alarmsieve.quality.events import find_events
from alarmsieve.quality.labels import read_labels_csv
from alarmsieve.quality.stats import proportion, wilson
from tests.conftest import run_cli


@pytest.fixture(scope="session")
def cctv(shared_dir: Path) -> Path:
    folder = shared_dir / "datasets/cctv-dev"
    if not (folder / "labels.csv").is_file() or not (folder / "sequences/labels.csv").is_file():
        pytest.skip(f"the cctv-dev set (labels.csv, sequences/labels.csv) is not in {folder}")
    return folder


def rows_of(labels: Path, wanted: dict[str, str | None]) -> list[dict[str, str]]:
    """The rows of ``labels`` for the files in ``wanted``; a value replaces the person label."""
    with labels.open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["file"] in wanted]
    for row in rows:
        if wanted[row["file"]] is not None:
            row["person"] = wanted[row["file"]] or ""
    assert len(rows) == len(wanted)
    return rows


def write_csv(path: Path, rows: list[dict[str, str]], extra_lines: str = "") -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with path.open("a") as handle:
        handle.write(extra_lines)
    return path


# ---- Wilson on known counts ------------------------------------------------------------------------------
@pytest.mark.parametrize(("k", "n"), [(18, 30), (50, 52), (4, 5), (0, 7), (218, 218), (2, 4)])
def test_wilson_matches_an_independent_implementation(k: int, n: int) -> None:
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-5)
    p = proportion(k, n)
    assert (p.k, p.n, p.rate) == (k, n, round(k / n, 6)) and p.low == wilson(k, n)[0]


# ---- labels: condition, empty person, bad rows -----------------------------------------------------------
def test_labels_csv_condition_empty_person_and_bad_rows(cctv: Path, tmp_path: Path) -> None:
    rows = rows_of(cctv / "labels.csv", {"intel_001.jpg": None, "intel_004.jpg": None, "tno_tree_visual_002.png": ""})
    labels = write_csv(
        tmp_path / "labels.csv",
        rows,
        "nope.jpg,1,day,a file that is not there\n"
        "intel_003.jpg,maybe,other,not 0/1/empty\n"
        "intel_001.jpg,1,other,listed twice\n"
        "../labels.csv,0,day,outside the folder\n"
        ",1,day,no file name\n",
    )
    found = load_label_set(cctv / "images", labels)
    by_file = {i.file: i for i in found.items}
    assert list(by_file) == ["intel_001.jpg", "intel_004.jpg", "tno_tree_visual_002.png"]
    assert by_file["intel_001.jpg"].objects == ["person"] and by_file["intel_001.jpg"].condition == "other"
    assert by_file["intel_004.jpg"].objects == [] and by_file["intel_004.jpg"].labelled
    assert (
        not by_file["tno_tree_visual_002.png"].labelled and by_file["tno_tree_visual_002.png"].condition == "low_light"
    )
    assert "overhead camera" in by_file["intel_001.jpg"].note
    # one line per bad row, naming the CSV, the line and the file, and how to fix it
    assert len(found.problems) == 5
    assert found.problems[0] == (
        f"{labels} line 5: 'nope.jpg' is not a file under {cctv / 'images'}; fix the name or add the file"
    )
    assert "line 6: 'intel_003.jpg' has person 'maybe'; use 1" in found.problems[1]
    assert "line 7: 'intel_001.jpg' is listed twice (first on line 2)" in found.problems[2]
    assert "line 8: '../labels.csv' is not a relative path inside" in found.problems[3]
    assert "line 9: the 'file' field is empty" in found.problems[4]
    # no usable column, no usable row: one error, no traceback (EvalError is a known CLI error)
    (tmp_path / "bad.csv").write_text("file,who\nintel_001.jpg,me\n")
    with pytest.raises(EvalError, match=r"'file' and 'objects' .* or 'file' and 'person' \(1, 0 or empty\)"):
        load_label_set(cctv / "images", tmp_path / "bad.csv")
    (tmp_path / "none.csv").write_text("file,person\nnope.jpg,1\n")
    with pytest.raises(EvalError, match=r"no usable row; the first: .* line 2: 'nope.jpg' is not a file"):
        load_label_set(cctv / "images", tmp_path / "none.csv")


def test_sequence_column_places_frames_under_their_camera(cctv: Path) -> None:
    found = read_labels_csv(cctv / "sequences", cctv / "sequences/labels.csv")
    assert found.problems == [] and len(found.items) == 360
    item = found.items[1]
    assert (item.sequence, item.file, item.labelled) == (
        "natocamp_visual",
        "natocamp_visual/20260110_220001.png",
        False,
    )
    assert sum(not i.labelled for i in found.items) == 41
    # arrival: each sequence's n-th frame in the n-th commit, so a frame is judged knowing only earlier ones
    batches = arrival_batches(found.items)
    assert len(batches) == 61 and len(batches[0]) == 12 and len(batches[-1]) == 2
    for batch in batches:
        assert len({i.sequence for i in batch}) == len(batch)
    order = [i.file for b in batches for i in b if i.sequence == "tree_visual"]
    assert order == sorted(order) and len(order) == 19


# ---- events ------------------------------------------------------------------------------------------------
@dataclass
class Frame:
    """A scored frame as ``find_events`` reads it."""

    file: str
    threat: bool
    verdict: str
    condition: str | None = "thermal"

    @property
    def sequence(self) -> str:
        return self.file.split("/")[0]


def _frame(file: str, threat: bool, verdict: str) -> Frame:
    return Frame(file, threat, verdict)


def test_events_are_runs_of_person_frames_and_empty_labels_do_not_split_them() -> None:
    frames = [
        _frame("a/00.png", False, "dismiss"),
        _frame("a/01.png", True, "dismiss"),
        _frame("a/02.png", True, "review"),
        # a/03.png had an empty person label: not scored, so absent here; the run goes on
        _frame("a/04.png", True, "dismiss"),
        _frame("a/05.png", False, "dismiss"),
        _frame("a/06.png", True, "dismiss"),
        _frame("b/00.png", True, "alert"),
    ]
    events = find_events(list(reversed(frames)))  # order of the input does not matter: file names are times
    assert [(e.sequence, e.first_file, e.last_file, e.frames) for e in events] == [
        ("a", "a/01.png", "a/04.png", 3),
        ("a", "a/06.png", "a/06.png", 1),
        ("b", "b/00.png", "b/00.png", 1),
    ]
    assert [(e.reached, e.alerted, e.frames_before_reached) for e in events] == [
        (True, False, 1),
        (False, False, None),
        (True, True, 0),
    ]


# ---- the real pipeline on real cctv-dev frames ---------------------------------------------------------------
SINGLE_FRAMES: dict[str, str | None] = {
    "intel_001.jpg": None,  # indoor overhead camera, a man at a table: a sure person
    "intel_003.jpg": None,  # the same room, empty
    "intel_004.jpg": None,  # parking lot from above, no person
    "bgs_002.jpg": None,  # highway camera, a distant cyclist
    "mdet_011.jpg": None,  # camera trap, no person
    "tno_tree_thermal_009.png": None,  # thermal, a person
    "mdet_018.jpg": None,  # IR camera trap at night, a beaver
    "tno_natocamp_visual_000.png": "",  # its person label emptied: must be excluded, and counted
}


def test_quality_eval_per_condition_on_real_cctv_frames(cctv: Path, tmp_path: Path, model_dir: Path) -> None:
    labels = write_csv(
        tmp_path / "labels.csv",
        rows_of(cctv / "labels.csv", SINGLE_FRAMES),
        "missing_cam.jpg,1,day,no such file\nintel_005.jpg,yes,day,bad person value\n",
    )
    html = tmp_path / "report.html"
    env = {"ALARMSIEVE_MODEL_DIR": str(model_dir)}
    result = run_cli("quality", "eval", "--images", str(cctv / "images"), "--labels", str(labels),
                     "--html", str(html), "--json", home=tmp_path / "unused", env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    # the bad rows: one line each on stderr, naming the file and line; the rest was evaluated
    stderr = result.stderr.decode()
    assert f"skipped: {labels} line 10: 'missing_cam.jpg' is not a file" in stderr
    assert "line 11: 'intel_005.jpg' has person 'yes'" in stderr and "Traceback" not in stderr
    report = json.loads(result.stdout)
    assert len(report["label_problems"]) == 2
    assert report["images"] == 7 and report["threats"] == 3 and report["calm"] == 4
    assert [o["file"] for o in report["excluded"]] == ["tno_natocamp_visual_000.png"]
    verdicts = {o["file"]: o["verdict"] for o in report["outcomes"]}
    assert verdicts["intel_001.jpg"] == "alert"
    # per condition: counts from the outcomes, each share with its Wilson interval
    conditions = {g["name"]: g for g in report["per_condition"]}
    assert sorted(conditions) == ["day", "low_light", "night_ir", "other", "thermal"]
    assert conditions["low_light"]["images"] == 0 and conditions["low_light"]["excluded"] == 1
    for name, group in conditions.items():
        mine = [o for o in report["outcomes"] if o["condition"] == name]
        persons = [o for o in mine if o["threat"]]
        calm = [o for o in mine if not o["threat"]]
        reached = sum(o["verdict"] in ("alert", "review") for o in persons)
        assert group["recall"] == proportion(reached, len(persons)).model_dump()
        assert group["alerted"] == proportion(sum(o["verdict"] == "alert" for o in persons), len(persons)).model_dump()
        assert group["suppression"] == proportion(sum(o["verdict"] == "dismiss" for o in calm), len(calm)).model_dump()
    assert (conditions["other"]["threats"], conditions["other"]["calm"]) == (1, 1)
    assert (conditions["day"]["threats"], conditions["day"]["calm"]) == (1, 2)
    assert conditions["other"]["recall"]["k"] == 1 and conditions["other"]["recall"]["low"] == pytest.approx(
        0.2065, 1e-3
    )
    assert report["detect_ms_frames"] == 8 and report["detect_ms_mean"] > 0  # the excluded frame ran too
    # HTML: the per-condition table, and every missed frame and false alarm as a thumbnail with its reasons
    page = html.read_text()
    assert "<h2>Per condition</h2>" in page and "<td>night_ir</td>" in page
    assert "1 frames whose person label is empty" in page and "missing_cam.jpg" in page
    for section, items in (("Missed threats (dismissed)", report["misses"]), ("False alarms", report["false_alarms"])):
        assert f"{section}" in page and f"({len(items)})</h2>" in page
        for o in items:
            card = page[page.index(f'alt="{o["file"]}"') :][:3000]
            assert o["reasons"][0] in card.replace("&gt;", ">").replace("&lt;", "<").replace("&#39;", "'")

    # the short `eval` prints the per-condition table too (two frames of the set, and the bad row)
    small = rows_of(cctv / "labels.csv", {"intel_001.jpg": None, "intel_003.jpg": None, "mdet_018.jpg": ""})
    small_labels = write_csv(tmp_path / "small.csv", small, "missing_cam.jpg,1,day,no such file\n")
    plain = run_cli("eval", "--images", str(cctv / "images"), "--labels", str(small_labels),
                    home=tmp_path / "unused", env=env)  # fmt: skip
    assert plain.returncode == 0, plain.stderr.decode()
    out = plain.stdout.decode()
    assert re.search(r"other\s+2\s+0\s+1\s+1/1 100\.0% \[20\.7%, 100\.0%\]", out), out
    assert re.search(r"night_ir\s+0\s+1\s+0\s+-", out), out
    assert "excluded (person label empty: run, not scored): 1 frames" in out
    assert "line 5: 'missing_cam.jpg' is not a file" in plain.stderr.decode()


SEQUENCE_FRAMES = {"tree_visual": 9, "duine_visual": 11, "fire2_dhv": 3}  # the first N frames of each


def test_sequences_per_event_recall_on_real_night_footage(cctv: Path, tmp_path: Path, model_dir: Path) -> None:
    folder = tmp_path / "sequences"
    with (cctv / "sequences/labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    kept = []
    for sequence, count in SEQUENCE_FRAMES.items():
        chosen = sorted((r for r in rows if r["sequence"] == sequence), key=lambda r: r["file"])[:count]
        (folder / sequence).mkdir(parents=True)
        for row in chosen:
            shutil.copyfile(cctv / "sequences" / sequence / row["file"], folder / sequence / row["file"])
        kept += chosen
    write_csv(folder / "labels.csv", kept)
    html = tmp_path / "seq.html"
    result = run_cli("quality", "eval", "--sequences", str(folder), "--json", "--html", str(html),
                     home=tmp_path / "unused", env={"ALARMSIEVE_MODEL_DIR": str(model_dir)})  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    report = json.loads(result.stdout)
    # duine_visual's frames 1-7 have an empty person label (not discernible): run, excluded, counted
    assert len(report["excluded"]) == 7 and {o["sequence"] for o in report["excluded"]} == {"duine_visual"}
    assert report["images"] == 23 - 7
    sequences = {g["name"]: g for g in report["per_sequence"]}
    assert sorted(sequences) == sorted(SEQUENCE_FRAMES) and sequences["duine_visual"]["excluded"] == 7
    assert {o["camera"] for o in report["outcomes"]} == set(SEQUENCE_FRAMES)  # a sequence is one camera
    # events: a run of person frames each; reached when any of its frames reached a person
    events = {e["sequence"]: e for e in report["events"]}
    assert sorted(events) == ["duine_visual", "tree_visual"]
    assert (events["tree_visual"]["first_file"], events["tree_visual"]["frames"]) == (
        "tree_visual/20260110_220001.png",
        8,
    )
    assert (events["duine_visual"]["first_file"], events["duine_visual"]["frames"]) == (
        "duine_visual/20260110_220008.png",
        3,
    )
    assert events["tree_visual"]["reached"]  # the walker by the tree is seen at 0.57 in its first frame
    for name, event in events.items():
        frames = [o for o in report["outcomes"] if o["sequence"] == name and o["threat"]]
        assert event["reached"] == any(o["verdict"] in ("alert", "review") for o in frames)
        assert sequences[name]["events"]["n"] == 1 and sequences[name]["events"]["k"] == int(event["reached"])
    reached = sum(e["reached"] for e in report["events"])
    assert report["event_recall"] == proportion(reached, 2).model_dump()
    assert {g["name"]: g["excluded"] for g in report["per_condition"]} == {"low_light": 7, "night_ir": 0}
    # frames arrive in time order: a burst only ever cites the camera's earlier frames
    cited = [int(m) for o in report["outcomes"] for r in o["reasons"] for m in re.findall(r"\.png ([+-]\d+) s", r)]
    assert cited, "no burst among these frames: choose frames where a review-band person is confirmed"
    assert all(offset < 0 for offset in cited)
    page = html.read_text()
    assert "<h2>Per sequence</h2>" in page and "<h2>Events (2)</h2>" in page
