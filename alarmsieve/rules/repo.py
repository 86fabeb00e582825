"""The rules repo as the CLI sees it: validated commits, arming state, the rules in force, what-if.

The only module of :mod:`alarmsieve.rules` that touches the versioned storage (``Pfs``); the schema
and the judging stay free of other layers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import yaml
from pydantic import BaseModel, ConfigDict

from alarmsieve.errors import AlarmsieveError
from alarmsieve.rules.schema import ArmingState, RulesError, RuleSet, arming_file, load_rules
from alarmsieve.stages.records import DETECTIONS_FILE, VERDICT_FILE, DetectionsRecord, VerdictRecord

if TYPE_CHECKING:
    from alarmsieve.pfs.api import CommitInfo, Pfs

RULES_REPO = "rules"
REJUDGED_REPO = "rejudged"
REJUDGED_FILE = "rejudged.json"


class RulesRefused(AlarmsieveError):
    """A rules change that does not validate: nothing was committed, the rules in force stay."""


def known_labels() -> tuple[str, ...]:
    from alarmsieve.vision.models import COCO_LABELS

    return COCO_LABELS


def read_files(pfs: Pfs, ref: str = "master", repo: str = RULES_REPO) -> tuple[str | None, dict[str, bytes]]:
    head = pfs.inspect_commit(repo, ref) if ref != "master" else pfs.head(repo, ref)
    if head is None:
        return None, {}
    files = {info.path: pfs.objects.get_bytes(info.sha256 or "") for info in pfs.walk(repo, head.id)}
    return head.id, files


def read_dir(folder: Path) -> dict[str, bytes]:
    if not folder.is_dir():
        raise AlarmsieveError(f"{folder}: not a folder of rules files")
    return {"/" + p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def validate(files: Mapping[str, bytes]) -> RuleSet:
    return load_rules(files, known_labels=known_labels())


@dataclass
class InForce:
    commit: str | None
    rules: RuleSet
    head: str | None
    head_error: RulesError | None = None  # the head is invalid: ``commit`` is the last valid one

    @property
    def note(self) -> str:
        if self.head_error is None:
            return ""
        return f"rules head {self.head} is invalid ({self.head_error}); in force: {self.commit or 'built-in defaults'}"


def in_force(pfs: Pfs, repo: str = RULES_REPO) -> InForce:
    """The rules that judge new alarms: the head of ``rules@master``, or the last valid commit before it."""
    head_error: RulesError | None = None
    head_id: str | None = None
    for commit in pfs.list_commits(repo):
        _, files = read_files(pfs, commit.id, repo)
        try:
            rules = validate(files)
        except RulesError as exc:
            if head_id is None:
                head_id, head_error = commit.id, exc
            continue
        return InForce(commit.id, rules, head_id or commit.id, head_error)
    return InForce(None, validate({}), head_id, head_error)


def check_rules_change(pfs: Pfs, puts: Mapping[str, bytes], deletes: tuple[str, ...] = ()) -> RuleSet:
    """Validate the rules repo as it would be after a change; :class:`RulesRefused` if it would be bad.

    ``deletes`` are paths of files or folders. Call it before committing anything to ``rules``.
    """
    head, files = read_files(pfs)

    def deleted(path: str) -> bool:
        return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deletes)

    merged = {k: v for k, v in files.items() if not deleted(k)}
    merged.update(puts)
    try:
        return validate(merged)
    except RulesError as exc:
        raise RulesRefused(
            f"rules change refused: {exc}. Nothing was committed; the rules in force stay "
            f"{RULES_REPO}@{head or '(none)'}."
        ) from None


def commit_rules(pfs: Pfs, puts: Mapping[str, bytes], deletes: tuple[str, ...] = (), *, message: str) -> CommitInfo:
    """Commit changes to the rules repo only if the whole repo validates after them."""
    check_rules_change(pfs, puts, deletes)
    builder = pfs.start_commit(RULES_REPO, description=message)
    for path in deletes:
        builder.delete(path)
    for path, data in puts.items():
        builder.put_bytes(path, data)
    return builder.finish()


# --- arming ---------------------------------------------------------------------------------------


def set_arming(
    pfs: Pfs,
    target: str,
    state: Literal["armed", "disarmed"] | None,
    *,
    by: str,
    until: datetime | None = None,
    note: str = "",
    now: datetime | None = None,
) -> tuple[ArmingState | None, CommitInfo]:
    """Arm or disarm a site (when one is called ``target``) or a camera; ``state=None`` clears it."""
    rules = in_force(pfs).rules
    scope: Literal["site", "camera"] = "site" if target in rules.sites else "camera"
    path = arming_file(scope, target)
    if state is None:
        _, files = read_files(pfs)
        if path not in files:
            raise AlarmsieveError(f"{scope} {target} has no arming state to clear (no {path} in {RULES_REPO})")
        return None, commit_rules(pfs, {}, (path,), message=f"clear arming of {scope} {target} by {by}")
    at = now or datetime.now(UTC)
    if until is not None and until <= at:
        raise AlarmsieveError(f"--until {until.isoformat()} is not in the future; give a later time or a duration")
    arming = ArmingState(scope=scope, target=target, state=state, by=by, at=at, until=until, note=note)
    text = yaml.safe_dump(arming.model_dump(mode="json", exclude_defaults=True), sort_keys=False)
    header = f"# {state} by {by} with `alarmsieve {'arm' if state == 'armed' else 'disarm'}`\n"
    commit = commit_rules(pfs, {path: (header + text).encode()}, message=f"{state} {scope} {target} by {by}")
    return arming, commit


# --- verdicts, detections, re-judging -----------------------------------------------------------


@dataclass
class StoredVerdict:
    folder: str  # the alarm's folder in the assess repo, e.g. /cam-1/0001.jpg
    record: VerdictRecord


def stored_verdicts(pfs: Pfs, since: datetime | None = None) -> list[StoredVerdict]:
    if not pfs.repo_exists("assess") or pfs.head("assess") is None:
        return []
    out = []
    for info in pfs.walk("assess", "master"):
        if info.path.endswith("/" + VERDICT_FILE) and info.sha256:
            record = VerdictRecord.model_validate_json(pfs.objects.get_bytes(info.sha256))
            if since is None or record.time >= since:
                out.append(StoredVerdict(info.path.rsplit("/", 1)[0], record))
    out.sort(key=lambda v: (v.record.time, v.record.alarm))
    return out


def find_verdict(pfs: Pfs, alarm: str) -> StoredVerdict:
    """An alarm by its path (/cam-1/0001.jpg, cam-1/0001.jpg) or, when unique, its file name."""
    wanted = "/" + alarm.strip("/")
    all_verdicts = stored_verdicts(pfs)
    exact = [v for v in all_verdicts if v.record.alarm == wanted or v.folder == wanted]
    if not exact:
        exact = [v for v in all_verdicts if v.record.alarm.rsplit("/", 1)[-1] == alarm.strip("/")]
    if len(exact) == 1:
        return exact[0]
    if not exact:
        raise AlarmsieveError(
            f"no verdict for alarm {alarm!r}; give its path as listed by `alarmsieve verdicts` (e.g. /cam-1/0001.jpg)"
        )
    names = ", ".join(v.record.alarm for v in exact[:5])
    raise AlarmsieveError(f"alarm {alarm!r} is ambiguous ({names}); give the full path /camera/file")


def detections_of(pfs: Pfs, folders: list[str]) -> dict[str, DetectionsRecord]:
    if not folders or not pfs.repo_exists("detect") or pfs.head("detect") is None:
        return {}
    paths = {f"{folder}/{DETECTIONS_FILE}": folder for folder in folders}
    found = pfs.lookup("detect", "master", paths)
    return {
        paths[p]: DetectionsRecord.model_validate_json(pfs.objects.get_bytes(info.sha256 or ""))
        for p, info in found.items()
    }


class Rejudgement(BaseModel):
    """``rejudged@master:/<alarm>/rejudged.json``: both verdicts of an alarm re-judged by ``what-if --apply``."""

    model_config = ConfigDict(extra="forbid")

    alarm: str
    before: VerdictRecord
    after: VerdictRecord
    rules: str  # the commit or folder whose rules judged ``after``
    applied_at: datetime
    by: str


@dataclass
class WhatIf:
    rules_ref: str
    rules_commit: str | None
    changes: list[tuple[StoredVerdict, VerdictRecord]] = field(default_factory=list)
    unchanged: int = 0
    missing: list[str] = field(default_factory=list)  # verdicts whose detections are gone


def candidate_rules(pfs: Pfs, source: str | None) -> tuple[str, str | None, RuleSet]:
    """(label, commit, rules) of ``--rules``: a local folder, a rules commit, or (None) the rules in force."""
    if source is None:
        found = in_force(pfs)
        return f"{RULES_REPO}@{found.commit}", found.commit, found.rules
    folder = Path(source)
    if folder.is_dir():
        return str(folder), None, validate(read_dir(folder))
    commit, files = read_files(pfs, source.removeprefix(f"{RULES_REPO}@"))
    return f"{RULES_REPO}@{commit}", commit, validate(files)


def what_if(pfs: Pfs, source: str | None = None, since: datetime | None = None) -> WhatIf:
    """Which stored verdicts would change under other rules (nothing is written, nobody notified)."""
    from alarmsieve.stages.assess import judge_record

    label, commit, rules = candidate_rules(pfs, source)
    result = WhatIf(label, commit)
    verdicts = stored_verdicts(pfs, since)
    records = detections_of(pfs, [v.folder for v in verdicts])
    for stored in verdicts:
        record = records.get(stored.folder)
        if record is None:
            result.missing.append(stored.record.alarm)
            continue
        old = stored.record
        new = judge_record(record, rules, commit, old.annotated_file, old.pipeline_versions)
        if new.verdict != old.verdict:
            result.changes.append((stored, new))
        else:
            result.unchanged += 1
    return result


def apply_what_if(pfs: Pfs, result: WhatIf, *, by: str, now: datetime | None = None) -> CommitInfo | None:
    """Record both verdicts of every changed alarm in the ``rejudged`` repo (no notifications)."""
    if not result.changes:
        return None
    if not pfs.repo_exists(REJUDGED_REPO):
        pfs.create_repo(REJUDGED_REPO, description="verdicts re-judged by `alarmsieve rules what-if --apply`")
    at = now or datetime.now(UTC)
    builder = pfs.start_commit(REJUDGED_REPO, description=f"re-judged {len(result.changes)} by {result.rules_ref}")
    for stored, new in result.changes:
        entry = Rejudgement(
            alarm=stored.record.alarm, before=stored.record, after=new, rules=result.rules_ref, applied_at=at, by=by
        )
        builder.put_bytes(f"{stored.folder}/{REJUDGED_FILE}", entry.model_dump_json(indent=2).encode())
    return builder.finish()


def rejudgement_of(pfs: Pfs, folder: str) -> Rejudgement | None:
    if not pfs.repo_exists(REJUDGED_REPO) or pfs.head(REJUDGED_REPO) is None:
        return None
    found = pfs.lookup(REJUDGED_REPO, "master", [f"{folder}/{REJUDGED_FILE}"])
    for info in found.values():
        return Rejudgement.model_validate(json.loads(pfs.objects.get_bytes(info.sha256 or "")))
    return None
