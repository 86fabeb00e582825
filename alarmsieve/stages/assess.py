"""Stage ``assess``: judge each alarm against the threat rules of its camera, and say why.

The rules are those in force in the ``rules`` repo when the job runs: the stage records that rules
commit in every verdict, and a later rules commit does not re-judge old alarms (rules are not part
of the datum, so they do not change its hash). Under a real Pachyderm, cross the input with the
``rules`` repo and the stage reads them from ``<pfs>/rules`` instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from alarmsieve.rules import AlarmFacts, ObjectBox, RuleSet, judge, load_rules
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
        self._rules: tuple[str | None, RuleSet] | None = None
        self._by_commit: dict[str | None, RuleSet] = {}

    def rules_for(self, ctx: DatumContext) -> tuple[str | None, RuleSet]:
        """The rules in force for this job (read once per job, parsed once per rules commit)."""
        local = ctx.pfs / self.rules_repo
        if local.is_dir():  # Pachyderm layout: rules crossed into the datum
            files = {"/" + p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file()}
            return None, load_rules(files, known_labels=COCO_LABELS)
        if self._rules is not None and self._job == ctx.job_id:
            return self._rules
        if self.services.read_repo is None:
            raise StageUsageError(
                f"assess: no rules: neither {local} exists nor can the {self.rules_repo} repo be read here"
            )
        snapshot = self.services.read_repo(self.rules_repo, self.rules_branch)
        rules = self._by_commit.get(snapshot.commit_id)
        if rules is None:
            rules = load_rules(snapshot.files, known_labels=COCO_LABELS)
            self._by_commit[snapshot.commit_id] = rules
        self._job, self._rules = ctx.job_id, (snapshot.commit_id, rules)
        return self._rules

    def process(self, ctx: DatumContext) -> None:
        rules_commit, rules = self.rules_for(ctx)
        for folder, rel in alarm_folders(ctx, DETECTIONS_FILE):
            record = read_record(folder / DETECTIONS_FILE, DetectionsRecord)
            verdict = self.assess_one(record, rules, rules_commit, folder, ctx)
            write_record(ctx, rel, VERDICT_FILE, verdict)
            pass_through(ctx, folder, rel, verdict.annotated_file)
            pass_through(ctx, folder, rel, record.meta.image_file)
            why = verdict.reasons[0] if verdict.reasons else ""
            ctx.log.info("alarm %s: %s: %s", verdict.alarm, verdict.verdict, why)

    @staticmethod
    def assess_one(
        record: DetectionsRecord, rules: RuleSet, rules_commit: str | None, folder: Path, ctx: DatumContext
    ) -> VerdictRecord:
        meta = record.meta
        facts = AlarmFacts(
            camera=meta.camera,
            width=meta.width,
            height=meta.height,
            status=record.status,
            status_reason=record.reason or meta.reason,
            objects=[ObjectBox(label=d.label, score=d.score, box=d.box) for d in record.detections],
        )
        judgement = judge(rules, facts)
        versions = {"detect": record.pipeline_version, "assess": ctx.pipeline_version}
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
                JudgedBox(label=j.label, score=j.score, box=j.box, kept=j.kept, severity=j.severity, why=j.why)
                for j in judgement.detections
            ],
            model=record.model,
            annotated_file=ANNOTATED_FILE if (folder / ANNOTATED_FILE).exists() else None,
            image_sha256=meta.sha256,
            pipeline_versions={k: v for k, v in versions.items() if v},
        )
