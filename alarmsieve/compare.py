"""``alarmsieve compare pipeline``: what a new pipeline version would change, before ``update``.

The candidate runs in a throw-away shadow workspace: its own catalog, the same (content-addressed,
so shared safely) object store, copies of the input repos' trees (metadata only: no file is copied)
and the current specs of everything downstream of the pipeline, except notification stages. Nobody
is notified and nothing in the real workspace changes. The report lists the output files that would
change and, when the alarm verdicts are downstream, every verdict that would flip, by camera. (The
candidate's outputs stay in the shared object store as unreferenced objects.)

Only the compared pipeline changes; every other input is held as it was:

- the rules: each alarm is judged with the rules commit of its current verdict (the shadow holds
  those rules commits and the current verdicts, in ``held-verdicts``, and its ``assess`` reads them as
  its history, ``--history``), so a rules commit made since is not counted as a flip;
- the other pipelines: a baseline runs the same downstream specs on the compared pipeline's current
  output (on the same held rules), and a flip is a verdict where the candidate and that baseline
  differ. Alarms whose stored verdict differs from the baseline changed for another reason (a newer
  ``assess`` version, say): they are listed apart (``stored_differs``), never counted as flips.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path

from pydantic import BaseModel

from alarmsieve.errors import AlarmsieveError
from alarmsieve.pps.spec import PipelineSpec
from alarmsieve.rejudge import is_assess, with_rejudge_rules
from alarmsieve.stages.records import VERDICT_FILE, VerdictRecord
from alarmsieve.verdicts import ASSESS_REPO, read_verdicts
from alarmsieve.workspace import Workspace

RULES_REPO = "rules"
HELD_VERDICTS_REPO = "held-verdicts"  # in the shadow: the real current verdicts, the history assess reads


class CompareError(AlarmsieveError):
    pass


class VerdictFlip(BaseModel):
    alarm: str
    camera: str
    before: str  # the baseline's verdict (the stored one, unless listed in stored_differs)
    after: str
    reason_after: str
    annotated_sha256: str | None  # the candidate's annotated image, in the (shared) object store
    rules_commit: str | None = None  # the rules that judged both (the alarm's own, held)


class StoredDiffers(BaseModel):
    """An alarm whose stored verdict differs from the baseline: changed by something else, not counted."""

    alarm: str
    stored: str
    baseline: str
    stored_pipeline_versions: dict[str, str]


class CompareReport(BaseModel):
    pipeline: str
    pipelines_run: list[str]
    inputs: dict[str, str]  # repo -> commit compared on
    outputs_added: list[str]
    outputs_removed: list[str]
    outputs_changed: list[str]
    verdicts_compared: int
    flips: list[VerdictFlip]
    flips_by_camera: dict[str, dict[str, int]]  # camera -> {"alert->dismiss": n, ...}
    rules_held: dict[str, int] = {}  # rules commit -> alarms judged with it in both runs
    stored_differs: list[StoredDiffers] = []


def _is_notifier(spec: PipelineSpec) -> bool:
    cmd = spec.transform.cmd
    return len(cmd) >= 3 and cmd[:2] == ["alarmsieve", "stage"] and cmd[2] == "notify"


def _holding(spec: PipelineSpec, candidate: bool) -> PipelineSpec:
    """An assess spec that judges each alarm with its held rules (a candidate assess keeps its own choice)."""
    if not is_assess(spec):
        return spec
    held = spec if candidate else with_rejudge_rules(spec, "first")
    if "--history" in held.transform.cmd:
        return held
    cmd = [*held.transform.cmd, "--history", f"{HELD_VERDICTS_REPO}@master"]
    return held.model_copy(update={"transform": held.transform.model_copy(update={"cmd": cmd})})


class _Held:
    """What the shadows hold as it was: the alarms' current verdicts and the rules commits they name."""

    def __init__(self, ws: Workspace, *, judging: bool) -> None:
        self.verdicts: dict[str, VerdictRecord] = {}  # folder in assess -> current verdict
        # without an assess run in the shadow only the rules head is needed (as an input)
        if judging and ws.pfs.repo_exists(ASSESS_REPO) and ws.pfs.head(ASSESS_REPO) is not None:
            for info in ws.pfs.walk(ASSESS_REPO, "master"):
                if info.path.endswith("/" + VERDICT_FILE) and info.sha256:
                    raw = ws.pfs.objects.get_bytes(info.sha256)
                    self.verdicts[info.path.rsplit("/", 1)[0]] = VerdictRecord.model_validate_json(raw)
        wanted = {v.rules_commit for v in self.verdicts.values() if v.rules_commit}
        self.rules_commits: list[str] = []  # oldest first; the head last
        if ws.pfs.repo_exists(RULES_REPO):
            commits = ws.pfs.list_commits(RULES_REPO)
            head = commits[0].id if commits else None
            self.rules_commits = [c.id for c in reversed(commits) if c.id in wanted or c.id == head]

    def copy_into(self, ws: Workspace, shadow: Workspace) -> dict[str, str]:
        """Copy the rules commits and the verdicts into ``shadow``; real rules commit -> shadow commit."""
        shadow.pfs.create_repo(RULES_REPO, exist_ok=True)
        ids: dict[str, str] = {}
        for n, commit in enumerate(self.rules_commits):
            builder = shadow.pfs.start_commit(RULES_REPO, description=f"copy of {RULES_REPO}@{commit}")
            if n:
                builder.delete("/")  # each commit holds exactly the real commit's tree
            for info in ws.pfs.walk(RULES_REPO, commit):
                builder.put_object(info.path, info.sha256 or "", info.size)
            ids[commit] = builder.finish().id
        shadow.pfs.create_repo(HELD_VERDICTS_REPO, description="the real current verdicts (compare)")
        if self.verdicts:
            builder = shadow.pfs.start_commit(HELD_VERDICTS_REPO, description="held verdicts")
            for folder, record in self.verdicts.items():
                mapped = ids.get(record.rules_commit or "", record.rules_commit)
                held = record.model_copy(update={"rules_commit": mapped})
                builder.put_bytes(f"{folder}/{VERDICT_FILE}", held.model_dump_json().encode())
            builder.finish()
        return ids


def _run_shadow(
    ws: Workspace,
    home: Path,
    order: list[str],
    specs: dict[str, PipelineSpec],
    held: _Held,
    *,
    candidate: str | None,
    refs: dict[str, str],
) -> tuple[Workspace, dict[str, str], dict[str, str]]:
    """Run ``order`` in a shadow workspace at ``home``: (shadow, inputs copied, shadow rules id -> real)."""
    home.mkdir(parents=True)
    settings = ws.settings.model_copy(
        update={"home": home, "catalog_url": None, "object_store": ws.settings.resolved_object_store}
    )
    shadow = Workspace(settings, must_exist=False)
    produced = set(order)
    copied = sorted({repo for p in order for repo in specs[p].input_repos()} - produced - {RULES_REPO})
    inputs: dict[str, str] = {}
    for repo in copied:
        if not ws.pfs.repo_exists(repo):
            continue
        ref = refs.get(repo, "master")
        head = ws.pfs.inspect_commit(repo, ref) if ws.pfs.head(repo) else None
        shadow.pfs.create_repo(repo)
        if head is None:
            continue
        inputs[repo] = head.id
        builder = shadow.pfs.start_commit(repo, description=f"copy of {repo}@{head.id}")
        for info in ws.pfs.walk(repo, head.id):
            builder.put_object(info.path, info.sha256 or "", info.size)
        builder.finish()
    ids = held.copy_into(ws, shadow)
    if held.rules_commits:
        inputs[RULES_REPO] = held.rules_commits[-1]
    for pipeline in order:
        shadow.pps.create_pipeline(_holding(specs[pipeline], pipeline == candidate))
    with shadow.runner() as runner:
        jobs = runner.run_until_idle()
    broken = [j for j in jobs if j.state not in ("success", "failure")]
    if broken:
        what = "the candidate" if candidate else "the baseline"
        raise CompareError(f"{what} could not run: {broken[0].pipeline} job {broken[0].state}: {broken[0].reason}")
    return shadow, inputs, {v: k for k, v in ids.items()}


def compare_pipeline(ws: Workspace, name: str, candidate: PipelineSpec, *, on: str | None = None) -> CompareReport:
    if candidate.name != name:
        raise CompareError(f"the candidate spec is for pipeline {candidate.name!r}, not {name!r}")
    names = ws.pps.pipeline_names()
    if name not in names:
        raise CompareError(f"pipeline {name!r} not found (pipelines: {', '.join(names) or 'none'})")
    current = {n: ws.pps.get_spec(n)[0] for n in names}
    specs = {**current, name: candidate}
    # the pipeline and everything downstream of it, minus notification stages
    chosen = {name}
    for pipeline in ws.pps.topological_order():
        if pipeline not in chosen and set(specs[pipeline].input_repos()) & chosen and not _is_notifier(specs[pipeline]):
            chosen.add(pipeline)
    order = [p for p in ws.pps.topological_order() if p in chosen]
    refs = {repo: on for repo in candidate.input_repos()} if on else {}
    held = _Held(ws, judging=any(is_assess(specs[p]) for p in order))
    with tempfile.TemporaryDirectory(prefix="alarmsieve-compare-") as tmp:
        shadow, inputs, real_rules = _run_shadow(
            ws, Path(tmp) / "candidate", order, specs, held, candidate=name, refs=refs
        )
        before = {f.path: f.sha256 for f in ws.pfs.walk(name)} if ws.pfs.head(name) else {}
        after = {f.path: f.sha256 for f in shadow.pfs.walk(name)} if shadow.pfs.head(name) else {}
        flips: list[VerdictFlip] = []
        differs: list[StoredDiffers] = []
        rules_held: dict[str, int] = defaultdict(int)
        compared = 0
        if ASSESS_REPO in chosen:
            stored = {v.alarm: v for v in read_verdicts(ws.pfs)}
            baseline = stored
            # the baseline: the current specs on the compared pipeline's current output (all of it on --on)
            rest = [p for p in order if p != name or on]
            if ASSESS_REPO in rest:
                base_ws, _, _ = _run_shadow(ws, Path(tmp) / "baseline", rest, current, held, candidate=None, refs=refs)
                baseline = {v.alarm: v for v in read_verdicts(base_ws.pfs)}
            for new in read_verdicts(shadow.pfs):
                was = baseline.get(new.alarm)
                if was is None:
                    continue
                compared += 1
                rules = real_rules.get(new.rules_commit or "", new.rules_commit)
                rules_held[rules or "built-in"] += 1
                kept = stored.get(new.alarm)
                if kept is not None and kept.verdict != was.verdict:
                    differs.append(
                        StoredDiffers(
                            alarm=new.alarm,
                            stored=kept.verdict,
                            baseline=was.verdict,
                            stored_pipeline_versions=kept.pipeline_versions,
                        )
                    )
                if was.verdict != new.verdict:
                    image = f"{new.alarm}/{new.annotated_file}" if new.annotated_file else None
                    found = shadow.pfs.lookup(ASSESS_REPO, "master", [image]).get(image) if image else None
                    flips.append(
                        VerdictFlip(
                            alarm=new.alarm,
                            camera=new.camera,
                            before=was.verdict,
                            after=new.verdict,
                            reason_after=new.reasons[0] if new.reasons else "",
                            annotated_sha256=found.sha256 if found else None,
                            rules_commit=rules,
                        )
                    )
    by_camera: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for flip in flips:
        by_camera[flip.camera][f"{flip.before}->{flip.after}"] += 1
    return CompareReport(
        pipeline=name,
        pipelines_run=order,
        inputs=inputs,
        outputs_added=sorted(set(after) - set(before)),
        outputs_removed=sorted(set(before) - set(after)),
        outputs_changed=sorted(p for p in set(before) & set(after) if before[p] != after[p]),
        verdicts_compared=compared,
        flips=sorted(flips, key=lambda f: (f.camera, f.alarm)),
        flips_by_camera={camera: dict(counts) for camera, counts in sorted(by_camera.items())},
        rules_held=dict(rules_held),
        stored_differs=sorted(differs, key=lambda d: d.alarm),
    )
