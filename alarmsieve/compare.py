"""``alarmsieve compare pipeline``: what a new pipeline version would change, before ``update``.

The candidate runs in a throw-away shadow workspace: its own catalog, the same (content-addressed,
so shared safely) object store, copies of the input repos' trees (metadata only: no file is copied)
and the current specs of everything downstream of the pipeline, except notification stages. Nobody
is notified and nothing in the real workspace changes. The report lists the output files that would
change and, when the alarm verdicts are downstream, every verdict that would flip, by camera. (The
candidate's outputs stay in the shared object store as unreferenced objects.)
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path

from pydantic import BaseModel

from alarmsieve.errors import AlarmsieveError
from alarmsieve.pps.spec import PipelineSpec
from alarmsieve.verdicts import ASSESS_REPO, read_verdicts
from alarmsieve.workspace import Workspace


class CompareError(AlarmsieveError):
    pass


class VerdictFlip(BaseModel):
    alarm: str
    camera: str
    before: str
    after: str
    reason_after: str
    annotated_sha256: str | None  # the candidate's annotated image, in the (shared) object store


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


def _is_notifier(spec: PipelineSpec) -> bool:
    cmd = spec.transform.cmd
    return len(cmd) >= 3 and cmd[:2] == ["alarmsieve", "stage"] and cmd[2] == "notify"


def compare_pipeline(ws: Workspace, name: str, candidate: PipelineSpec, *, on: str | None = None) -> CompareReport:
    if candidate.name != name:
        raise CompareError(f"the candidate spec is for pipeline {candidate.name!r}, not {name!r}")
    names = ws.pps.pipeline_names()
    if name not in names:
        raise CompareError(f"pipeline {name!r} not found (pipelines: {', '.join(names) or 'none'})")
    specs = {n: ws.pps.get_spec(n)[0] for n in names}
    specs[name] = candidate
    # the pipeline and everything downstream of it, minus notification stages
    chosen = {name}
    for pipeline in ws.pps.topological_order():
        if pipeline not in chosen and set(specs[pipeline].input_repos()) & chosen and not _is_notifier(specs[pipeline]):
            chosen.add(pipeline)
    order = [p for p in ws.pps.topological_order() if p in chosen]
    copied = sorted({repo for p in order for repo in specs[p].input_repos()} - chosen | {"rules"})
    inputs: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="alarmsieve-compare-") as tmp:
        settings = ws.settings.model_copy(
            update={"home": Path(tmp), "catalog_url": None, "object_store": ws.settings.resolved_object_store}
        )
        shadow = Workspace(settings, must_exist=False)
        for repo in copied:
            if not ws.pfs.repo_exists(repo):
                continue
            ref = on if (on and repo in candidate.input_repos()) else "master"
            head = ws.pfs.inspect_commit(repo, ref) if ws.pfs.head(repo) else None
            shadow.pfs.create_repo(repo)
            if head is None:
                continue
            inputs[repo] = head.id
            builder = shadow.pfs.start_commit(repo, description=f"copy of {repo}@{head.id}")
            for info in ws.pfs.walk(repo, head.id):
                builder.put_object(info.path, info.sha256 or "", info.size)
            builder.finish()
        for pipeline in order:
            shadow.pps.create_pipeline(specs[pipeline])
        with shadow.runner() as runner:
            jobs = runner.run_until_idle()
        broken = [j for j in jobs if j.state not in ("success", "failure")]
        if broken:
            raise CompareError(
                f"the candidate could not run: {broken[0].pipeline} job {broken[0].state}: {broken[0].reason}"
            )
        before = {f.path: f.sha256 for f in ws.pfs.walk(name)} if ws.pfs.head(name) else {}
        after = {f.path: f.sha256 for f in shadow.pfs.walk(name)} if shadow.pfs.head(name) else {}
        flips: list[VerdictFlip] = []
        compared = 0
        if ASSESS_REPO in chosen:
            old = {v.alarm: v for v in read_verdicts(ws.pfs)}
            for new in read_verdicts(shadow.pfs):
                was = old.get(new.alarm)
                if was is None:
                    continue
                compared += 1
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
    )
