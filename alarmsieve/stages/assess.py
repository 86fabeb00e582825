"""Stage ``assess``: judge each alarm against the threat rules of its camera, and say why.

The rules are those in force in the ``rules`` repo when the job runs: the stage records that rules
commit in every verdict, and a later rules commit does not re-judge old alarms (rules are not part
of the datum, so they do not change its hash). Under a real Pachyderm, cross the input with the
``rules`` repo and the stage reads them from ``<pfs>/rules`` instead.

A bad rules commit never takes effect: ``alarmsieve rules put`` refuses it, and should one land
anyway (a plain ``put file``), this stage keeps judging with the last valid rules it knows — kept
in memory and in ``<workspace>/cache/rules/`` so a fresh worker knows them too — and says so in
every verdict (``rules_note``) and in the job's log. With no valid rules known at all it judges
with the built-in defaults and never dismisses (``review`` instead).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

from alarmsieve.rules import AlarmFacts, ObjectBox, RulesError, RuleSet, judge, load_rules
from alarmsieve.stages.alarms import alarm_folders, pass_through, read_record, write_record
from alarmsieve.stages.base import DatumContext, Stage, StageServices, StageUsageError
from alarmsieve.stages.records import (
    ANNOTATED_FILE,
    DETECTIONS_FILE,
    VERDICT_FILE,
    DetectionsRecord,
    JudgedBox,
    VerdictRecord,
)
from alarmsieve.vision.models import COCO_LABELS

BUILTIN = "built-in defaults"


@dataclass(frozen=True)
class RulesInForce:
    commit: str | None  # the commit whose rules judge (None: from <pfs>/rules, or built-in)
    rules: RuleSet
    note: str = ""  # why these are not the head's rules, if they are not
    doubt: bool = False  # no valid rules known: never dismiss


class AssessStage(Stage):
    name = "assess"

    def __init__(self, args: list[str], services: StageServices) -> None:
        super().__init__(args, services)
        parser = argparse.ArgumentParser(prog="alarmsieve stage assess", exit_on_error=False)
        parser.add_argument("--rules", default="rules@master", help="REPO@BRANCH holding the rules YAML files")
        try:
            opts = parser.parse_args(args)
        except (argparse.ArgumentError, SystemExit) as exc:
            raise StageUsageError(f"assess: bad arguments {args}: {exc}") from exc
        repo, _, branch = opts.rules.partition("@")
        self.rules_repo, self.rules_branch = repo, branch or "master"
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

    def rules_for(self, ctx: DatumContext) -> tuple[str | None, RuleSet]:
        """(commit, rules) in force for this job (kept for callers of the first version)."""
        found = self.rules_in_force(ctx)
        return found.commit, found.rules

    # --- judging ----------------------------------------------------------------------------------
    def process(self, ctx: DatumContext) -> None:
        in_force = self.rules_in_force(ctx)
        for folder, rel in alarm_folders(ctx, DETECTIONS_FILE):
            record = read_record(folder / DETECTIONS_FILE, DetectionsRecord)
            verdict = self.assess_one(record, in_force.rules, in_force.commit, folder, ctx)
            if in_force.note:
                verdict = with_note(verdict, in_force.note, in_force.doubt)
            write_record(ctx, rel, VERDICT_FILE, verdict)
            pass_through(ctx, folder, rel, verdict.annotated_file)
            pass_through(ctx, folder, rel, record.meta.image_file)
            why = verdict.reasons[0] if verdict.reasons else ""
            ctx.log.info("alarm %s: %s: %s", verdict.alarm, verdict.verdict, why)

    @staticmethod
    def assess_one(
        record: DetectionsRecord, rules: RuleSet, rules_commit: str | None, folder: Path, ctx: DatumContext
    ) -> VerdictRecord:
        versions = {"detect": record.pipeline_version, "assess": ctx.pipeline_version}
        annotated = ANNOTATED_FILE if (folder / ANNOTATED_FILE).exists() else None
        return judge_record(record, rules, rules_commit, annotated, {k: v for k, v in versions.items() if v})


def with_note(verdict: VerdictRecord, note: str, doubt: bool) -> VerdictRecord:
    if doubt and verdict.verdict == "dismiss":
        reason = "no valid rules known: review (never dismiss on doubt)"
        reasons = [reason, *verdict.reasons]
        return verdict.model_copy(update={"verdict": "review", "reasons": reasons, "rules_note": note})
    return verdict.model_copy(update={"rules_note": note})


def judge_record(
    record: DetectionsRecord,
    rules: RuleSet,
    rules_commit: str | None,
    annotated_file: str | None,
    pipeline_versions: dict[str, str],
) -> VerdictRecord:
    """The verdict of one detect record under the given rules (used by assess and `rules what-if`)."""
    meta = record.meta
    facts = AlarmFacts(
        camera=meta.camera,
        width=meta.width,
        height=meta.height,
        status=record.status,
        status_reason=record.reason or meta.reason,
        objects=[ObjectBox(label=d.label, score=d.score, box=d.box) for d in record.detections],
        time=meta.time,
    )
    judgement = judge(rules, facts)
    return VerdictRecord(
        alarm=meta.alarm,
        camera=meta.camera,
        time=meta.time,
        verdict=judgement.verdict,
        reasons=judgement.reasons,
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
            )
            for j in judgement.detections
        ],
        model=record.model,
        annotated_file=annotated_file,
        image_sha256=meta.sha256,
        pipeline_versions=pipeline_versions,
        clip=record.meta.clip,
    )
