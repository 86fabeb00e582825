"""Operator feedback: a verdict marked wrong becomes a labelled example in the ``feedback`` repo.

``feedback@master:/<camera>/<name>/`` holds ``image.<ext>`` (the alarm's bytes, stored once: the object
store is content-addressed) and ``label.json`` (:class:`FeedbackRecord`). A later mark replaces
``label.json``; the commit history keeps every earlier one.
"""

from __future__ import annotations

from alarmsieve.api.ingest import IMAGES_REPO, IngestError, split_alarm_id
from alarmsieve.api.schemas import EXPECTED, FeedbackIn, FeedbackOut, FeedbackRecord
from alarmsieve.api.tables import now
from alarmsieve.stages.records import VERDICT_FILE, VerdictRecord
from alarmsieve.workspace import Workspace

FEEDBACK_REPO = "feedback"
LABEL_FILE = "label.json"


def read_verdict(ws: Workspace, alarm_id: str) -> VerdictRecord | None:
    pfs = ws.pfs
    if not pfs.repo_exists("assess") or pfs.head("assess") is None:
        return None
    path = f"/{alarm_id}/{VERDICT_FILE}"
    found = pfs.lookup("assess", "master", [path]).get(path)
    if found is None or found.sha256 is None:
        return None
    return VerdictRecord.model_validate_json(pfs.objects.get_bytes(found.sha256))


def read_feedback(ws: Workspace, alarm_id: str) -> FeedbackRecord | None:
    pfs = ws.pfs
    if not pfs.repo_exists(FEEDBACK_REPO) or pfs.head(FEEDBACK_REPO) is None:
        return None
    path = f"/{alarm_id}/{LABEL_FILE}"
    found = pfs.lookup(FEEDBACK_REPO, "master", [path]).get(path)
    if found is None or found.sha256 is None:
        return None
    return FeedbackRecord.model_validate_json(pfs.objects.get_bytes(found.sha256))


def store_feedback(ws: Workspace, body: FeedbackIn, operator: str) -> FeedbackOut:
    camera, name = split_alarm_id(body.alarm_id)
    alarm_id = f"{camera}/{name}"
    pfs = ws.pfs
    image = pfs.lookup(IMAGES_REPO, "master", [f"/{alarm_id}"]).get(f"/{alarm_id}") if pfs.head(IMAGES_REPO) else None
    if image is None or image.sha256 is None:
        raise IngestError(404, "not_found", f"no alarm {alarm_id!r} in images@master; check the alarm id")
    verdict = read_verdict(ws, alarm_id)
    ext = name.rsplit(".", 1)[-1] if "." in name else "bin"
    record = FeedbackRecord(
        alarm=alarm_id,
        camera=camera,
        label=body.label,
        verdict_given=verdict.verdict if verdict else None,
        expected_verdict=EXPECTED.get(body.label, verdict.verdict if verdict else None),
        operator=operator,
        note=body.note,
        at=now(),
        image_file=f"image.{ext}",
        image_sha256=image.sha256,
        rules_commit=verdict.rules_commit if verdict else None,
        model=verdict.model.model_dump() if verdict and verdict.model else None,
        detections=[d.model_dump(mode="json") for d in verdict.detections] if verdict else [],
    )
    pfs.create_repo(FEEDBACK_REPO, description="operator feedback: labelled alarms", exist_ok=True)
    builder = pfs.start_commit(FEEDBACK_REPO, description=f"{body.label} on {alarm_id} by {operator}")
    builder.put_object(f"/{alarm_id}/{record.image_file}", image.sha256, image.size)
    builder.put_bytes(f"/{alarm_id}/{LABEL_FILE}", record.model_dump_json(indent=2).encode())
    commit = builder.finish()
    return FeedbackOut(alarm_id=alarm_id, commit=commit.id, path=f"/{alarm_id}/{LABEL_FILE}", record=record)
