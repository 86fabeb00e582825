"""Verdict quality commands: ``quality eval`` (intervals, per label / camera, HTML report, tiling),
``quality robustness make|eval`` (the degraded-photo set, per condition) and ``tune``.

``alarmsieve eval`` (in cli.py) stays the short form; ``quality eval`` takes the same options plus the
report and detect-stage ones.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from alarmsieve.cli import JsonFlag, _progress, _RichProgress, app, console, err_console, workspace
from alarmsieve.errors import AlarmsieveError

quality_app = typer.Typer(
    help="Verdict quality: eval with intervals and an HTML report, robustness set.", no_args_is_help=True
)
robustness_app = typer.Typer(
    help="The robustness set: real photos under night, IR, blur, rain, glare …", no_args_is_help=True
)
app.add_typer(quality_app, name="quality")
quality_app.add_typer(robustness_app, name="robustness")

TilingOpt = Annotated[
    str, typer.Option("--tiling", help="detect with tiles: auto, on or off (default: the detect pipeline's, auto)")
]
TileCamerasOpt = Annotated[str, typer.Option("--tile-cameras", help="comma-separated cameras always tiled")]
TileMaxOpt = Annotated[
    int, typer.Option("--tile-max", help="at most this many tiles besides the whole frame (0: native 416-px tiles)")
]
HtmlOpt = Annotated[Path | None, typer.Option("--html", help="write the HTML report here")]
ThreatOpt = Annotated[str | None, typer.Option("--threat-labels", help="comma-separated; default: what rules alert on")]


LISTED = 20  # misses and false alarms listed in the terminal; --json and --html have them all


class QualityUsageError(AlarmsieveError):
    pass


def detect_args(tiling: str, tile_cameras: str, tile_max: int) -> list[str]:
    if tiling not in ("", "auto", "on", "off"):
        raise QualityUsageError(f"--tiling {tiling!r}: use auto, on or off")
    if tile_max < 0:
        raise QualityUsageError(f"--tile-max {tile_max}: use 0 (no cap, native tiles) or a positive count")
    args: list[str] = []
    if tiling:
        args += ["--tiling", tiling]
    if tile_cameras.strip():
        args += ["--tile-cameras", tile_cameras.strip()]
    if args and tile_max != 2:
        args += ["--tile-max", str(tile_max)]
    return args


def _threats(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def eval_inputs(images: Path | None, labels: Path | None, sequences: Path | None) -> tuple[Path, Path]:
    """``--images`` + ``--labels``, or ``--sequences DIR`` (= ``--images DIR --labels DIR/labels.csv``)."""
    if sequences is not None:
        if images is not None or labels is not None:
            raise QualityUsageError("give either --sequences DIR or --images DIR --labels L, not both")
        if not (sequences / "labels.csv").is_file():
            raise QualityUsageError(
                f"--sequences {sequences}: no labels.csv there (columns sequence,file,person[,condition][,note])"
            )
        return sequences, sequences / "labels.csv"
    if images is None or labels is None:
        raise QualityUsageError("give --images DIR and --labels CSV|YOLO_DIR (or --sequences DIR)")
    return images, labels


def _run(
    images: Path, labels: Path, threat_labels: str | None, args: list[str], min_area: float, *, sequences: bool = False
) -> Any:
    from alarmsieve.config import load_settings
    from alarmsieve.evaluate import load_label_set, run_eval

    label_set = load_label_set(images, labels)
    if sequences and not any(i.sequence for i in label_set.items):
        raise QualityUsageError(f"--sequences: {labels} has no 'sequence' column; name each frame's sequence folder")
    warn_problems(label_set.problems)
    with _progress() as progress:
        return run_eval(
            images,
            labels,
            base=load_settings(),
            threat_labels=_threats(threat_labels),
            progress=_RichProgress(progress),
            detect_args=args,
            min_threat_area=min_area,
            label_set=label_set,
        )


def warn_problems(problems: list[str]) -> None:
    """One line per labels row left out, before the run (the rest of the set is evaluated)."""
    for line in problems:
        err_console.print(f"[yellow]skipped:[/] {line}", highlight=False, soft_wrap=True)


def _pct(p: Any) -> str:
    return "-" if p is None else p.text()


def group_table(groups: list[Any], title: str) -> Table:
    table = Table(
        title.upper(),
        "IMAGES",
        "THREATS",
        "MISSED [95%]",
        "CALM",
        "SUPPRESSION [95%]",
        "ALERTS/REVIEWS ON CALM",
        box=None,
    )
    for g in groups:
        table.add_row(
            g.name,
            str(g.images),
            str(g.threats),
            _pct(g.missed) if g.threats else "-",
            str(g.calm),
            _pct(g.suppression) if g.calm else "-",
            f"{g.alerts_on_calm}/{g.reviews_on_calm}",
        )
    return table


def condition_table(groups: list[Any], title: str) -> Table:
    """Per condition or per sequence: recall (alert or review) and alerted over person frames,
    suppression over frames without one, excluded frames, and events reached where there are sequences."""
    with_events = any(g.events is not None for g in groups)
    columns = [title.upper(), "FRAMES", "EXCL", "PERSON", "RECALL [95%]", "ALERTED [95%]", "CALM", "SUPPRESSION [95%]"]
    table = Table(*columns, *(["EVENTS REACHED [95%]"] if with_events else []), box=None)
    for g in groups:
        row = [
            g.name,
            str(g.images),
            str(g.excluded),
            str(g.threats),
            _pct(g.recall) if g.threats else "-",
            _pct(g.alerted) if g.threats else "-",
            str(g.calm),
            _pct(g.suppression) if g.calm else "-",
        ]
        if with_events:
            row.append(_pct(g.events) if g.events is not None and g.events.n else "-")
        table.add_row(*row)
    return table


def print_conditions(report: Any) -> None:
    """The per-condition / per-sequence part of a report (labels with a condition or sequence column)."""
    if report.excluded:
        console.print(f"excluded (person label empty: run, not scored): {len(report.excluded)} frames", highlight=False)
    if report.event_recall is not None:
        console.print(
            f"events reached (a run of person frames with a frame alerted or reviewed): {_pct(report.event_recall)}; "
            f"alerted {_pct(report.event_alerted)}",
            highlight=False,
        )
    if report.per_condition:
        console.print(condition_table(report.per_condition, "condition"))
    if report.per_sequence:
        console.print(condition_table(report.per_sequence, "sequence"))
    for e in report.events:
        when = (
            f"reached at {escape(e.first_reaching_file or '')} ({e.frames_before_reached} person frames before it)"
            if e.reached
            else "[red]never reached a person[/]"
        )
        last = escape(e.last_file.rsplit("/", 1)[-1])
        console.print(f"  event {escape(e.first_file)} .. {last} ({e.frames} frames): {when}", highlight=False)
    if report.detect_ms_mean is not None:
        console.print(
            f"detect time per frame: mean {report.detect_ms_mean:.1f} ms, median {report.detect_ms_median:.1f} ms "
            f"({report.detect_ms_frames} frames)",
            highlight=False,
        )


def print_report(report: Any, *, group_title: str = "camera") -> None:
    load = report.operator_load
    console.print(
        f"[bold]{report.images} images[/]: {report.threats} threats ({', '.join(report.threat_labels)}), "
        f"{report.calm} calm" + (f"; detect {' '.join(report.detect_args)}" if report.detect_args else ""),
        highlight=False,
    )
    console.print(f"recall:              {_pct(report.recall)} (alert or review: reach a person)", highlight=False)
    console.print(f"missed threats:      {_pct(report.missed_detail)} (dismissed: reach no one)", highlight=False)
    if report.alerted is not None:
        console.print(f"threats alerted:     {_pct(report.alerted)} (the rest went to review)", highlight=False)
    console.print(f"suppression:         {_pct(report.suppression_detail)}", highlight=False)
    console.print(
        f"operator load:       {load.alerts_on_calm} alerts + {load.reviews_on_calm} reviews on calm images"
        + (f" ({load.per_100_calm} per 100)" if load.per_100_calm is not None else ""),
        highlight=False,
    )
    console.print(
        f"recall, threat box >= {report.min_threat_area:.1%} of frame: {_pct(report.large_threat_recall)}"
        + (f"; alerted {_pct(report.large_threat_alerted)}" if report.large_threat_alerted is not None else ""),
        highlight=False,
    )
    console.print(f"suppression, calm with no vehicle: {_pct(report.clear_calm_suppression)}", highlight=False)
    console.print(group_table(report.per_label, "label"))
    if not report.per_sequence:  # with sequences the cameras are the sequences, shown below
        console.print(group_table(report.per_camera, group_title))
    print_conditions(report)
    for title, items in (("missed threats", report.misses), ("false alarms", report.false_alarms)):
        if items:
            console.print(f"[bold]{title}:[/]")
            for o in items[:LISTED]:
                console.print(
                    f"  {o.file} [{', '.join(o.objects)}] -> {o.verdict}: {'; '.join(o.reasons[:2])}",
                    highlight=False,
                    markup=False,  # "[person]" is text, not a rich tag
                )
            if len(items) > LISTED:
                console.print(f"  … and {len(items) - LISTED} more (all in --json and --html)", highlight=False)


@quality_app.command("eval")
def quality_eval(
    images: Annotated[Path | None, typer.Option(help="folder of images")] = None,
    labels: Annotated[
        Path | None,
        typer.Option(help="labels: a CSV (file,objects or file,person [,condition,note,sequence]) or a YOLO folder"),
    ] = None,
    sequences: Annotated[
        Path | None,
        typer.Option(help="a folder of sequences (<sequence>/<file>) with labels.csv: sequence,file,person,…"),
    ] = None,
    threat_labels: ThreatOpt = None,
    html: HtmlOpt = None,
    tiling: TilingOpt = "",
    tile_cameras: TileCamerasOpt = "",
    tile_max: TileMaxOpt = 2,
    min_threat_area: Annotated[
        float, typer.Option(help="targets: threats whose largest box covers at least this share of the frame")
    ] = 0.005,
    as_json: JsonFlag = False,
) -> None:
    """Eval with 95 % Wilson intervals, per label, camera, condition and sequence (events), curve and HTML report."""
    folder, labels_file = eval_inputs(images, labels, sequences)
    args = detect_args(tiling, tile_cameras, tile_max)
    report = _run(folder, labels_file, threat_labels, args, min_threat_area, sequences=sequences is not None)
    if html:
        from alarmsieve.quality.report import write_html

        write_html(report, folder, html, title=f"alarmsieve eval: {folder}")
    if as_json:
        sys.stdout.write(report.model_dump_json() + "\n")
        return
    print_report(report)
    if html:
        console.print(f"HTML report: {html}", highlight=False)


@robustness_app.command("make")
def robustness_make(
    out: Annotated[Path, typer.Argument(help="new or empty folder for the set")],
    images: Annotated[
        list[Path] | None, typer.Option("--images", help="source photos (repeatable; default: ../shared sets)")
    ] = None,
    labels: Annotated[list[Path] | None, typer.Option("--labels", help="their labels, one per --images")] = None,
    limit: Annotated[int | None, typer.Option(help="a seeded sample of at most N photos per source")] = None,
    seed: Annotated[int, typer.Option(help="random seed: same seed, same files")] = 0,
    conditions: Annotated[str | None, typer.Option(help="comma-separated (default: all)")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Write the robustness set: every chosen photo under every condition, with labels.csv and manifest.json."""
    from alarmsieve.quality.robustness import CONDITIONS, RobustnessSource, make_robustness_set

    images = images or []
    labels = labels or []
    if len(images) != len(labels):
        raise QualityUsageError(f"give one --labels per --images ({len(images)} --images, {len(labels)} --labels)")
    if images:
        sources = [
            RobustnessSource(name=f"{i}-{p.name}", images=p, labels=lab, limit=limit)
            for i, (p, lab) in enumerate(zip(images, labels, strict=True))
        ]
    else:
        sources = default_sources(limit)
    wanted = [c.strip() for c in conditions.split(",") if c.strip()] if conditions else list(CONDITIONS)
    manifest = make_robustness_set(out, sources, seed=seed, conditions=wanted)
    if as_json:
        sys.stdout.write(
            json.dumps({"folder": str(out), "images": len(manifest.items), "conditions": manifest.conditions}) + "\n"
        )
        return
    console.print(
        f"{len(manifest.items)} images in {out} "
        f"({len(manifest.conditions)} conditions: {', '.join(manifest.conditions)}); "
        f"evaluate with: alarmsieve quality robustness eval {out}",
        highlight=False,
    )


def default_sources(limit: int | None) -> list[Any]:
    from alarmsieve.quality.robustness import RobustnessError, RobustnessSource

    shared = Path(__file__).resolve().parents[2].parent / "shared"
    found = []
    if (shared / "images/labels.csv").is_file():
        found.append(
            RobustnessSource(name="photos", images=shared / "images", labels=shared / "images/labels.csv", limit=limit)
        )
    coco = shared / "datasets/coco128/train2017"
    if (coco / "labels").is_dir():
        found.append(RobustnessSource(name="coco", images=coco / "images", labels=coco / "labels", limit=limit or 40))
    if not found:
        raise RobustnessError(f"no default photos under {shared}: give --images DIR --labels CSV|YOLO_DIR")
    return found


@robustness_app.command("eval")
def robustness_eval(
    folder: Annotated[Path, typer.Argument(help="a set written by `quality robustness make`")],
    threat_labels: ThreatOpt = None,
    html: HtmlOpt = None,
    tiling: TilingOpt = "",
    tile_max: TileMaxOpt = 2,
    min_recall: Annotated[float, typer.Option(help="target recall in every condition")] = 0.95,
    min_suppression: Annotated[float, typer.Option(help="target suppression in every condition")] = 0.95,
    as_json: JsonFlag = False,
) -> None:
    """Eval on the robustness set, each condition separately, against the targets."""
    from alarmsieve.quality.robustness import load_manifest

    load_manifest(folder)
    report = _run(folder, folder / "labels.csv", threat_labels, detect_args(tiling, "", tile_max), 0.0)
    rows = robustness_rows(report, min_recall, min_suppression)
    if html:
        from alarmsieve.quality.report import write_html

        write_html(report, folder, html, title=f"alarmsieve robustness: {folder}")
    if as_json:
        sys.stdout.write(json.dumps({"conditions": rows, "report": report.model_dump(mode="json")}) + "\n")
        return
    table = Table("CONDITION", "RECALL [95%]", "SUPPRESSION [95%]", "ALERTS/REVIEWS ON CALM", "TARGETS", box=None)
    for r in rows:
        table.add_row(
            r["condition"],
            r["recall_text"],
            r["suppression_text"],
            f"{r['alerts_on_calm']}/{r['reviews_on_calm']}",
            "[green]met[/]" if r["met"] else "[red]missed[/]",
        )
    console.print(table)
    if html:
        console.print(f"HTML report: {html}", highlight=False)


def robustness_rows(report: Any, min_recall: float, min_suppression: float) -> list[dict[str, Any]]:
    from alarmsieve.quality.stats import proportion

    rows = []
    for g in report.per_camera:
        recall = proportion(g.threats - g.missed.k, g.threats)
        ok_r = recall.rate is None or recall.rate >= min_recall
        ok_s = g.suppression.rate is None or g.suppression.rate >= min_suppression
        rows.append(
            {
                "condition": g.name,
                "recall": recall.model_dump(),
                "suppression": g.suppression.model_dump(),
                "recall_text": recall.text(),
                "suppression_text": g.suppression.text(),
                "alerts_on_calm": g.alerts_on_calm,
                "reviews_on_calm": g.reviews_on_calm,
                "met": ok_r and ok_s,
            }
        )
    return rows


# ---- tune ------------------------------------------------------------------------------------------
@app.command("tune")
def tune(
    target: Annotated[str, typer.Argument(help="camera id, comma list, pattern (north-*), a rules site, or all")],
    labels: Annotated[
        Path, typer.Option("--labels", help="labelled alarms: CSV file,objects (or YOLO dir with --images)")
    ],
    images: Annotated[
        Path | None, typer.Option(help="run the pipeline on this folder first (else: the workspace's verdicts)")
    ] = None,
    threat_labels: Annotated[str, typer.Option("--threat-labels", help="labels to tune (comma-separated)")] = "person",
    target_recall: Annotated[float, typer.Option(help="share of labelled threats that must alert")] = 1.0,
    review_recall: Annotated[float, typer.Option(help="share that must at least reach review")] = 1.0,
    write_rules: Annotated[Path | None, typer.Option(help="write the proposal as a rules YAML file here")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Propose alert and review thresholds reaching a target recall on a camera's (or site's) labelled alarms."""
    from alarmsieve.evaluate import score
    from alarmsieve.quality.tune import (
        TuneError,
        TuneReport,
        check_rules_yaml,
        current_thresholds,
        default_rules_files,
        load_feedback,
        match_cameras,
        propose,
        rules_yaml,
    )
    from alarmsieve.verdicts import read_verdicts

    wanted = _threats(threat_labels) or ["person"]
    if images is not None:
        report = _run(images, labels, ",".join(wanted), [], 0.0)
        outcomes = report.outcomes
        rules_files = default_rules_files()
    else:
        ws = workspace()
        items = load_feedback(labels)
        verdicts = {v.alarm: v for v in read_verdicts(ws.pfs)}
        missing = [i.file for i in items if "/" + i.file not in verdicts]
        if missing:
            raise TuneError(
                f"{len(missing)} labelled alarm(s) have no verdict in {ws.home} (e.g. /{missing[0]}): "
                "run `alarmsieve run` first, or fix the paths in --labels"
            )
        outcomes = score(items, verdicts, wanted).outcomes
        rules_files = workspace_rules(ws) or default_rules_files()
    cameras_all = sorted({o.camera for o in outcomes})
    cameras = match_cameras(target, cameras_all) or site_cameras(rules_files, target, cameras_all)
    if not cameras:
        raise TuneError(f"{target!r} matches no camera of the labelled alarms ({', '.join(cameras_all)}) and no site")
    chosen = [o for o in outcomes if o.camera in cameras]
    current = current_thresholds(rules_files, cameras[0], wanted)
    proposals = propose(chosen, wanted, target_recall=target_recall, review_recall=review_recall, current=current)
    note = (
        f"proposed by `alarmsieve tune {target}` on {len(chosen)} labelled alarms of {', '.join(cameras)}\n"
        f"target recall {target_recall}, review recall {review_recall}; commit to the rules repo "
        "(merge into the camera's own file if it already has one)"
    )
    text = rules_yaml(cameras, proposals, note)
    try:
        check_rules_yaml(text, default_rules_files())
    except Exception as exc:  # the proposal must load; never write a file the assess stage refuses
        raise TuneError(f"the proposed rules do not load: {exc}") from exc
    result = TuneReport(
        target=target,
        cameras=cameras,
        target_recall=target_recall,
        review_recall=review_recall,
        alarms=len(chosen),
        labels=proposals,
        rules_yaml=text,
    )
    if write_rules:
        write_rules.write_text(text)
    if as_json:
        sys.stdout.write(result.model_dump_json() + "\n")
        return
    console.print(f"[bold]{target}[/]: {len(chosen)} labelled alarms on {', '.join(cameras)}", highlight=False)
    table = Table(
        "LABEL",
        "",
        "ALERT ≥",
        "REVIEW ≥",
        "ALERTED [95%]",
        "REACH A PERSON",
        "SUPPRESSION [95%]",
        "ALERTS/REVIEWS ON CALM",
        box=None,
    )
    for p in proposals:
        for name, op in (("in force", p.current), ("proposed", p.proposed)):
            table.add_row(
                p.label,
                name,
                f"{op.alert_threshold:.2f}",
                f"{op.review_threshold:.2f}",
                _pct(op.recall_alert),
                _pct(op.recall_person),
                _pct(op.suppression),
                f"{op.alerts_on_calm}/{op.reviews_on_calm}",
            )
    console.print(table)
    for p in proposals:
        if p.note:
            console.print(f"[yellow]{p.label}:[/] {p.note}", highlight=False)
    if write_rules:
        console.print(
            f"rules written to {write_rules}: commit them with "
            f"`alarmsieve put file rules@master:/{write_rules.name} -f {write_rules}`",
            highlight=False,
        )
    else:
        console.print(text, highlight=False, markup=False)


def workspace_rules(ws: Any) -> dict[str, bytes] | None:
    """The YAML files at the head of ``rules@master`` (None when the repo is empty)."""
    if not ws.pfs.repo_exists("rules") or ws.pfs.head("rules") is None:
        return None
    files = {}
    for info in ws.pfs.walk("rules", "master"):
        if info.sha256 and info.path.endswith((".yaml", ".yml")):
            files[info.path] = ws.pfs.objects.get_bytes(info.sha256)
    return files or None


def site_cameras(rules_files: dict[str, bytes], site: str, cameras: list[str]) -> list[str]:
    """Cameras the rules place in ``site`` (rules with ``sites:``), among those labelled."""
    from alarmsieve.rules import load_rules
    from alarmsieve.vision.models import COCO_LABELS

    rules = load_rules(rules_files, known_labels=COCO_LABELS)
    blocks = getattr(rules, "cameras", {}) or {}
    return sorted(c for c in cameras if c in blocks and getattr(blocks[c], "site", None) == site)
