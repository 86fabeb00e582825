"""Stage ``assess``: judge each alarm against the threat rules of its camera, and say why.

The rules are those in force in the ``rules`` repo when the job runs: the stage records that rules
commit in every verdict, and a later rules commit does not re-judge old alarms (rules are not part
of the datum, so they do not change its hash). Under a real Pachyderm, cross the input with the
``rules`` repo and the stage reads them from ``<pfs>/rules`` instead.

An alarm judged again (a reprocess upstream, a restarted datum) keeps the rules it was judged with:
the stage reads the alarm's current verdict from its own output repo (``--history``) and, when it is
a verdict of the same image, judges with that verdict's rules commit (:meth:`AssessStage.rules_for_alarm`).
``--rejudge-rules head`` judges it with the head instead (``update pipeline --reprocess --rules head``
sets it). So a reprocess of ``detect`` never turns a notified alert into a dismiss because of a rules
commit made since; ``rules what-if`` is the tool for re-judging history under new rules.

A bad rules commit never takes effect: ``alarmsieve rules put`` refuses it, and should one land
anyway (a plain ``put file``), this stage keeps judging with the last valid rules it knows — kept
in memory and in ``<workspace>/cache/rules/`` so a fresh worker knows them too — and says so in
every verdict (``rules_note``) and in the job's log. With no valid rules known at all it judges
with the built-in defaults and never dismisses (``review`` instead).

Bursts (rules ``burst:``): the other frames of the same camera within ``window_s`` seconds of an alarm
(read once per job and camera from the ``detect`` repo's head through ``StageServices.read_files``) are
its event. A review-band person seen near the same place in ``min_frames`` frames of the event becomes
``alert``; a review-band detection seen in one frame only, while at least two others show nothing like
it, is a one-frame flicker (kept as ``review`` or dismissed, per ``burst.flicker``). Each change is
explained in the detection's ``why`` and the verdict's reasons. Alert-band detections are never touched.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from alarmsieve.rules import AlarmFacts, ObjectBox, RulesError, RuleSet, judge, load_rules
from alarmsieve.rules.clock import CameraTime, skew_note, wall_to_utc
from alarmsieve.rules.schema import EffectiveRules, LabelPolicy
from alarmsieve.stages.alarms import alarm_folders, pass_through, read_record, write_record
from alarmsieve.stages.base import DatumContext, Stage, StageServices, StageUsageError
from alarmsieve.stages.records import (
    ANNOTATED_FILE,
    DETECTIONS_FILE,
    VERDICT_FILE,
    AlarmMeta,
    DetectionsRecord,
    JudgedBox,
    VerdictRecord,
)
from alarmsieve.vision.models import COCO_LABELS

BUILTIN = "built-in defaults"
REJUDGE_CHOICES = ("first", "head")  # the rules that judge an alarm judged before (module doc)


@dataclass(frozen=True)
class RulesInForce:
    commit: str | None  # the commit whose rules judge (None: from <pfs>/rules, or built-in)
    rules: RuleSet
    note: str = ""  # why these are not the head's rules, if they are not
    doubt: bool = False  # no valid rules known: never dismiss


@dataclass(frozen=True)
class BurstFrame:
    """Another frame of the camera: when it was taken and what the detector saw in it."""

    alarm: str
    time: datetime
    time_source: str
    boxes: tuple[tuple[str, float, tuple[float, float, float, float]], ...]  # label, score, box


class AssessStage(Stage):
    name = "assess"
    code_version = "5"  # 2: bursts; 3: an alarm judged again keeps its rules; 4: camera time; 5: models, sources

    def __init__(self, args: list[str], services: StageServices) -> None:
        super().__init__(args, services)
        parser = argparse.ArgumentParser(prog="alarmsieve stage assess", exit_on_error=False)
        parser.add_argument("--rules", default="rules@master", help="REPO@BRANCH holding the rules YAML files")
        parser.add_argument(
            "--frames", default="detect@master", help="REPO@BRANCH of the detections that bursts look at (none: off)"
        )
        parser.add_argument(
            "--rejudge-rules",
            choices=REJUDGE_CHOICES,
            default="first",
            help="an alarm judged before: first = with the rules of its verdict, head = with the rules in force",
        )
        parser.add_argument(
            "--history",
            default="",
            help="REPO@BRANCH of the alarms' current verdicts (default: this pipeline's own output repo)",
        )
        try:
            opts = parser.parse_args(args)
        except (argparse.ArgumentError, SystemExit) as exc:
            raise StageUsageError(f"assess: bad arguments {args}: {exc}") from exc
        repo, _, branch = opts.rules.partition("@")
        self.rules_repo, self.rules_branch = repo, branch or "master"
        frames_repo, _, frames_branch = opts.frames.partition("@")
        self.frames_repo = None if frames_repo == "none" else frames_repo
        self.frames_branch = frames_branch or "master"
        self.rejudge_rules: str = opts.rejudge_rules
        history_repo, _, history_branch = opts.history.partition("@")
        self.history_repo, self.history_branch = history_repo or None, history_branch or "master"
        self._unreadable: dict[str, str] = {}  # rules commit -> why its rules cannot judge
        self._same: dict[tuple[str, str], bool] = {}  # (rules commit, head) -> same rules
        self._frames: dict[str, list[BurstFrame]] = {}  # camera -> its frames, read once per job
        self._frames_job: str | None = None
        self._job: str | None = None
        self._in_force: RulesInForce | None = None
        self._by_commit: dict[str | None, RuleSet] = {}
        self._bad: dict[str | None, RulesError] = {}
        self._last_valid: tuple[str | None, RuleSet] | None = None

    # --- which rules ------------------------------------------------------------------------------
    def _cache_file(self) -> Path | None:
        if self.services.workspace is None:
            return None
        return Path(self.services.workspace) / "cache" / "rules" / f"{self.rules_repo}@{self.rules_branch}.json"

    def _remember(self, commit: str | None, files: dict[str, bytes], rules: RuleSet) -> None:
        self._last_valid = (commit, rules)
        path = self._cache_file()
        if path is None:
            return
        try:
            if path.is_file() and json.loads(path.read_text()).get("commit") == commit:
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            data = {"commit": commit, "files": {k: base64.b64encode(v).decode() for k, v in files.items()}}
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, path)  # atomic: another worker reads the old or the new file, never half
        except OSError:
            pass  # the cache only helps a fresh worker after a bad commit; memory still holds it

    def _recall(self) -> tuple[str | None, RuleSet] | None:
        if self._last_valid is not None:
            return self._last_valid
        path = self._cache_file()
        if path is None or not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            files = {k: base64.b64decode(v) for k, v in data["files"].items()}
            self._last_valid = (data["commit"], load_rules(files, known_labels=COCO_LABELS))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return self._last_valid

    def rules_in_force(self, ctx: DatumContext) -> RulesInForce:
        """The rules for this job (read once per job, parsed once per rules commit, bad heads skipped)."""
        local = ctx.pfs / self.rules_repo
        if local.is_dir():  # Pachyderm layout: rules crossed into the datum
            files = {"/" + p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file()}
            return RulesInForce(None, load_rules(files, known_labels=COCO_LABELS))
        if self._in_force is not None and self._job == ctx.job_id:
            return self._in_force
        if self.services.read_repo is None:
            raise StageUsageError(
                f"assess: no rules: neither {local} exists nor can the {self.rules_repo} repo be read here"
            )
        snapshot = self.services.read_repo(self.rules_repo, self.rules_branch)
        head = snapshot.commit_id
        rules = self._by_commit.get(head)
        error = self._bad.get(head)
        if rules is None and error is None:
            try:
                rules = load_rules(snapshot.files, known_labels=COCO_LABELS)
                self._by_commit[head] = rules
                self._remember(head, snapshot.files, rules)
            except RulesError as exc:
                error = self._bad[head] = exc
        if rules is not None:
            self._last_valid = (head, rules)
            in_force = RulesInForce(head, rules)
        else:
            where = f"{self.rules_repo}@{head}"
            previous = self._recall()
            if previous is not None:
                note = f"rules head {where} is invalid ({error}); judged by the last valid rules {previous[0]}"
                in_force = RulesInForce(previous[0], previous[1], note)
            else:
                note = (
                    f"rules head {where} is invalid ({error}) and no valid rules are known; "
                    f"judged by the {BUILTIN}, never dismissed"
                )
                in_force = RulesInForce(None, load_rules({}, known_labels=COCO_LABELS), note, doubt=True)
            ctx.log.warning("assess: %s", note)
        self._job, self._in_force = ctx.job_id, in_force
        return in_force

    # --- re-judging: the rules an alarm was judged with ------------------------------------------
    def previous_verdict(self, ctx: DatumContext, rel: str) -> VerdictRecord | None:
        """The alarm's current verdict in the history repo (this pipeline's output), if it has one."""
        repo = self.history_repo or ctx.pipeline
        if not repo or self.services.read_files is None:
            return None
        folder = "/" + rel.strip("/")
        path = f"{folder}/{VERDICT_FILE}"
        try:
            snapshot = self.services.read_files(repo, self.history_branch, folder, VERDICT_FILE)
        except Exception as exc:  # no history repo (yet): a new alarm, not a failure
            ctx.log.debug("assess: no previous verdict of %s in %s: %s", rel, repo, exc)
            return None
        raw = snapshot.files.get(path)
        if raw is None:
            return None
        try:
            return VerdictRecord.model_validate_json(raw)
        except ValidationError:
            ctx.log.warning(
                "assess: %s@%s%s is not a verdict record; judged as a new alarm", repo, snapshot.commit_id, path
            )
            return None

    def rules_at(self, ctx: DatumContext, commit: str) -> RuleSet | None:
        """The rules of one rules commit (parsed once per commit); None, with the reason kept, if unusable."""
        rules = self._by_commit.get(commit)
        if rules is not None or commit in self._unreadable or self.services.read_repo is None:
            return rules
        try:
            snapshot = self.services.read_repo(self.rules_repo, commit)
        except Exception as exc:  # a deleted rules commit: judge with the head, and say so
            self._unreadable[commit] = f"it cannot be read: {exc}"
            return None
        if snapshot.commit_id != commit:
            self._unreadable[commit] = "it is not in the rules repo any more"
            return None
        try:
            rules = self._by_commit[commit] = load_rules(snapshot.files, known_labels=COCO_LABELS)
        except RulesError as exc:
            self._unreadable[commit] = f"it is invalid: {exc}"
            return None
        return rules

    def rules_for_alarm(self, ctx: DatumContext, in_force: RulesInForce, rel: str, image_sha256: str) -> RulesInForce:
        """The rules that judge this alarm: those of its current verdict when it was judged before.

        A new alarm, a new image at the same path, ``--rejudge-rules head`` or a verdict without a rules
        commit (built-in or crossed-in rules) are judged by the rules in force, as before.
        """
        if self.rejudge_rules == "head" or (ctx.pfs / self.rules_repo).is_dir():  # crossed-in rules: as given
            return in_force
        previous = self.previous_verdict(ctx, rel)
        if previous is None or previous.image_sha256 != image_sha256 or previous.rules_commit is None:
            return in_force
        first = previous.rules_commit
        if first == in_force.commit:
            return in_force
        rules = self.rules_at(ctx, first)
        where = f"{self.rules_repo}@{first}"
        if rules is None:
            why = self._unreadable.get(first, "the rules repo cannot be read here")
            note = f"the rules it was judged with, {where}, cannot judge ({why}); judged by the rules in force"
            ctx.log.warning("assess: %s: %s", rel, note)
            return replace(in_force, note="; ".join(n for n in (in_force.note, note) if n))
        if in_force.commit is not None and not in_force.note and self._same_rules(first, in_force):
            return in_force  # e.g. the commits since changed only notify.json: nothing to hold
        head = in_force.commit or BUILTIN
        note = (
            f"judged again with the rules it was first judged with, {where} (in force now: {head}); "
            "`update pipeline --reprocess --rules head` re-judges under the head"
        )
        return RulesInForce(first, rules, note)

    def _same_rules(self, commit: str, in_force: RulesInForce) -> bool:
        """Whether the rules of ``commit`` are those in force (compared once per pair of commits)."""
        pair = (commit, in_force.commit or "")
        same = self._same.get(pair)
        if same is None:
            same = self._same[pair] = self._by_commit[commit].model_dump() == in_force.rules.model_dump()
        return same

    def rules_for(self, ctx: DatumContext) -> tuple[str | None, RuleSet]:
        """(commit, rules) in force for this job (kept for callers of the first version)."""
        found = self.rules_in_force(ctx)
        return found.commit, found.rules

    # --- judging ----------------------------------------------------------------------------------
    def process(self, ctx: DatumContext) -> None:
        head_rules = self.rules_in_force(ctx)
        for folder, rel in alarm_folders(ctx, DETECTIONS_FILE):
            record = read_record(folder / DETECTIONS_FILE, DetectionsRecord)
            in_force = self.rules_for_alarm(ctx, head_rules, rel, record.meta.sha256)
            verdict = self.assess_one(record, in_force.rules, in_force.commit, folder, ctx)
            burst = in_force.rules.for_camera(verdict.camera).burst
            # only a review-band detection can change with the burst: read the history only then
            in_doubt = any(d.kept and d.severity == "review" for d in verdict.detections)
            if burst.on and verdict.status == "ok" and in_doubt:
                frames = self.camera_frames(ctx, verdict.camera, in_force.rules)
                if frames:
                    verdict = apply_burst(verdict, record.meta, in_force.rules, frames)
            if in_force.note:
                verdict = with_note(verdict, in_force.note, in_force.doubt)
            write_record(ctx, rel, VERDICT_FILE, verdict)
            pass_through(ctx, folder, rel, verdict.annotated_file)
            pass_through(ctx, folder, rel, record.meta.image_file)
            why = verdict.reasons[0] if verdict.reasons else ""
            ctx.log.info("alarm %s: %s: %s", verdict.alarm, verdict.verdict, why)

    def camera_frames(self, ctx: DatumContext, camera: str, rules: RuleSet | None = None) -> list[BurstFrame]:
        """The camera's frames in the detections repo head, read once per job (empty when unreadable).

        With ``rules``, each frame's time is its camera time (the wall clock read in the camera's zone),
        as the alarm's is: a frame with an EXIF offset and one named by the wall clock compare right."""
        if self.frames_repo is None or self.services.read_files is None:
            return []
        if self._frames_job != ctx.job_id:
            self._frames, self._frames_job = {}, ctx.job_id
        found = self._frames.get(camera)
        if found is None:
            snapshot = self.services.read_files(self.frames_repo, self.frames_branch, f"/{camera}", DETECTIONS_FILE)
            eff = rules.for_camera(camera) if rules is not None else None
            found = []
            for path, raw in snapshot.files.items():
                try:
                    rec = DetectionsRecord.model_validate_json(raw)
                except ValidationError:
                    ctx.log.warning(
                        "assess: bursts: %s@%s%s is not a detections record", self.frames_repo, snapshot.commit_id, path
                    )
                    continue
                if rec.status == "ok":
                    boxes = tuple((d.label, d.score, d.box) for d in rec.detections)
                    when = camera_time(rec.meta, eff).camera_time if eff is not None else _utc(rec.meta.time)
                    found.append(BurstFrame(rec.meta.alarm, when, rec.meta.time_source, boxes))
            self._frames[camera] = found
        return found

    @staticmethod
    def assess_one(
        record: DetectionsRecord, rules: RuleSet, rules_commit: str | None, folder: Path, ctx: DatumContext
    ) -> VerdictRecord:
        versions = {"detect": record.pipeline_version, "assess": ctx.pipeline_version}
        annotated = ANNOTATED_FILE if (folder / ANNOTATED_FILE).exists() else None
        return judge_record(record, rules, rules_commit, annotated, {k: v for k, v in versions.items() if v})


def _utc(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)  # alarm times are UTC


def _policy_of(eff: EffectiveRules, box: JudgedBox) -> LabelPolicy:
    if box.zone is not None:
        for zone in eff.zones:
            if zone.name == box.zone:
                return zone.rules.policy(box.label)
    return eff.policy(box.label)


def _near(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    """Same place, give or take a few seconds of walking: centres within the taller box's height."""
    reach = max(a[3] - a[1], b[3] - b[1])
    return abs((a[0] + a[2]) - (b[0] + b[2])) / 2 <= reach and abs((a[1] + a[3]) - (b[1] + b[3])) / 2 <= reach


def apply_burst(verdict: VerdictRecord, meta: AlarmMeta, rules: RuleSet, frames: list[BurstFrame]) -> VerdictRecord:
    """The verdict with the evidence of the camera's other frames within the burst window (see module doc)."""
    eff = rules.for_camera(verdict.camera)
    b = eff.burst
    t = verdict.camera_time or verdict.time  # the camera's clock, as the frames' times (not the upload's)
    event = [
        f
        for f in frames
        if f.alarm != meta.alarm
        and abs((f.time - t).total_seconds()) <= b.window_s
        # an upload of many files at once says nothing about when they were taken
        and not (f.time == t and "commit" in (f.time_source, meta.time_source))
    ]
    if not event:
        return verdict
    window = f"{b.window_s:g} s"
    boxes: list[JudgedBox] = []
    changed = False
    for d in verdict.detections:
        p = _policy_of(eff, d)
        if not (d.kept and d.severity == "review" and p.severity == "alert" and d.score < p.min_score):
            boxes.append(d)
            continue
        seen = [
            f
            for f in event
            if any(lab == d.label and sc >= p.review_min_score and _near(d.box, bx) for lab, sc, bx in f.boxes)
        ]
        if 1 + len(seen) >= b.min_frames:
            where = ", ".join(f"{f.alarm} {(f.time - t).total_seconds():+.0f} s" for f in seen[:3])
            why = (
                f"{d.why}; seen in {1 + len(seen)} frames within {window} ({where}): alert "
                f"(burst min_frames {b.min_frames}, {b.source})"
            )
            boxes.append(d.model_copy(update={"severity": "alert", "why": why}))
            changed = True
        elif not seen and len(event) >= 2:
            why = f"{d.why}; one-frame flicker: none in the {len(event)} other frames within {window}"
            if b.flicker == "dismiss":
                why += f": dismissed (burst flicker dismiss, {b.source})"
                boxes.append(d.model_copy(update={"kept": False, "why": why}))
            else:
                boxes.append(d.model_copy(update={"why": why + f" (burst flicker keep, {b.source})"}))
            changed = True
        else:
            boxes.append(d)
    if not changed:
        return verdict
    kept = sorted((d for d in boxes if d.kept), key=lambda d: (d.severity != "alert", -d.score))
    time_note = [f"time: {verdict.time_note}"] if verdict.time_note else []
    if kept:
        return verdict.model_copy(
            update={
                "verdict": "alert" if kept[0].severity == "alert" else "review",
                "reasons": [*(d.why for d in kept), *time_note],
                "rule_path": kept[0].rule_path or verdict.rule_path,
                "detections": boxes,
            }
        )
    summary = f"no threat: one-frame flicker dismissed ({len(event)} other frames within {window} show nothing)"
    return verdict.model_copy(
        update={"verdict": "dismiss", "reasons": [summary, *(d.why for d in boxes), *time_note], "detections": boxes}
    )


def with_note(verdict: VerdictRecord, note: str, doubt: bool) -> VerdictRecord:
    if doubt and verdict.verdict == "dismiss":
        reason = "no valid rules known: review (never dismiss on doubt)"
        reasons = [reason, *verdict.reasons]
        return verdict.model_copy(update={"verdict": "review", "reasons": reasons, "rules_note": note})
    return verdict.model_copy(update={"rules_note": note})


def camera_time(meta: AlarmMeta, eff: EffectiveRules) -> CameraTime:
    """The alarm's absolute time under its camera's rules (docs/rules.md, "Camera time").

    A reading without an offset (``wall_time``) is the wall clock of the camera's zone, or UTC with
    ``clock: utc``; an absolute one (EXIF offset, Unix seconds, upload) is kept. A camera time further
    than ``clock_skew_max`` from the upload time is not trusted for schedules: the upload time is used.
    """
    clock = eff.clock
    note = ""
    if meta.wall_time is None:
        taken = _utc(meta.time)
    elif clock.kind == "utc":
        taken = meta.wall_time.replace(tzinfo=UTC)
    else:
        taken, note = wall_to_utc(meta.wall_time, eff.timezone)
    if meta.upload_time is None or meta.time_source == "commit" or clock.skew_max_s <= 0:
        return CameraTime(taken, taken, eff.timezone, note)
    upload = _utc(meta.upload_time)
    if abs((taken - upload).total_seconds()) <= clock.skew_max_s:
        return CameraTime(taken, taken, eff.timezone, note)
    skew, why = skew_note(taken, upload, eff.timezone, clock.kind, clock.skew_max_s, clock.skew_max_from)
    return CameraTime(upload, taken, eff.timezone, f"{note}; {why}" if note else why, skew)


def judge_record(
    record: DetectionsRecord,
    rules: RuleSet,
    rules_commit: str | None,
    annotated_file: str | None,
    pipeline_versions: dict[str, str],
) -> VerdictRecord:
    """The verdict of one detect record under the given rules (used by assess and `rules what-if`)."""
    meta = record.meta
    when = camera_time(meta, rules.for_camera(meta.camera))
    facts = AlarmFacts(
        camera=meta.camera,
        width=meta.width,
        height=meta.height,
        status=record.status,
        status_reason=record.reason or meta.reason,
        objects=[ObjectBox(label=d.label, score=d.score, box=d.box) for d in record.detections],
        time=when.when,
    )
    judgement = judge(rules, facts)
    sources_of = {(d.label, tuple(d.box)): d.sources for d in record.detections}
    return VerdictRecord(
        alarm=meta.alarm,
        camera=meta.camera,
        time=when.when,
        timezone=when.timezone,
        time_note=when.note,
        camera_time=when.camera_time if when.camera_time != when.when else None,
        clock_skew_s=when.skew_s,
        verdict=judgement.verdict,
        # the note last: it says how the time the schedules saw was read (and e-mails list reasons)
        reasons=[*judgement.reasons, f"time: {when.note}"] if when.note else judgement.reasons,
        rule_path=judgement.rule_path,
        rules_commit=rules_commit,
        status=record.status,
        detections=[
            JudgedBox(
                label=j.label,
                score=j.score,
                box=j.box,
                kept=j.kept,
                severity=j.severity,
                why=j.why,
                zone=j.zone,
                rule_path=j.rule_path,
                sources=sources_of.get((j.label, tuple(j.box)), {}),
            )
            for j in judgement.detections
        ],
        model=record.model,
        models=record.models,
        second_look=record.second_look,
        annotated_file=annotated_file,
        image_sha256=meta.sha256,
        pipeline_versions=pipeline_versions,
        clip=record.meta.clip,
    )
