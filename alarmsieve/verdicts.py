"""Reading verdicts back out of the ``assess`` repo, for the CLI, eval and the report."""

from __future__ import annotations

from datetime import datetime

from alarmsieve.pfs.api import Pfs
from alarmsieve.stages.records import VERDICT_FILE, VerdictRecord

ASSESS_REPO = "assess"


def read_verdicts(
    pfs: Pfs, *, device: str | None = None, since: datetime | None = None, repo: str = ASSESS_REPO, ref: str = "master"
) -> list[VerdictRecord]:
    if not pfs.repo_exists(repo) or pfs.head(repo) is None:
        return []
    out = []
    for info in pfs.walk(repo, ref):
        if not info.path.endswith("/" + VERDICT_FILE) or info.sha256 is None:
            continue
        record = VerdictRecord.model_validate_json(pfs.objects.get_bytes(info.sha256))
        if device and record.camera != device:
            continue
        if since and record.time < since:
            continue
        out.append(record)
    out.sort(key=lambda r: (r.time, r.alarm))
    return out


def verdict_json(record: VerdictRecord) -> dict:
    """The public JSON of one verdict (``alarmsieve verdicts --json``)."""
    return {
        "input_path": record.alarm,
        "device": record.camera,
        "time": record.time.isoformat(),
        "verdict": record.verdict,
        "reasons": record.reasons,
        "status": record.status,
        "rule_path": record.rule_path,
        "rules_version": record.rules_commit,
        "rules_note": record.rules_note,
        "detections": [
            {
                "label": d.label,
                "score": d.score,
                "box": list(d.box),
                "kept": d.kept,
                "why": d.why,
                "zone": d.zone,
                "rule_path": d.rule_path,
            }
            for d in record.detections
        ],
        "clip": record.clip.model_dump() if record.clip else None,
        "model": record.model.model_dump() if record.model else None,
        "pipeline_versions": record.pipeline_versions,
    }
