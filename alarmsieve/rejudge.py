"""``update pipeline --reprocess --rules first|head``: which rules re-judge the alarms a reprocess runs again.

The choice is the ``assess`` stage's argument ``--rejudge-rules`` (``first``, the default, is left out of
the spec): a reprocess sets it on the assess pipelines it reaches (the reprocessed pipeline itself, or
those downstream of it), so the choice is part of the assess pipeline version that judges, visible in
``inspect pipeline assess --diff`` and in every verdict's pipeline versions. An update without
``--reprocess`` leaves it as it is.
"""

from __future__ import annotations

from typing import Literal

from alarmsieve.errors import AlarmsieveError
from alarmsieve.pps.api import Pps
from alarmsieve.pps.spec import PipelineSpec
from alarmsieve.stages.registry import builtin_stage_of

RejudgeRules = Literal["first", "head"]
ARG = "--rejudge-rules"


def parse_choice(text: str) -> RejudgeRules:
    if text == "first" or text == "head":
        return text
    raise AlarmsieveError(
        f"--rules {text!r}: give first (re-judge each alarm with the rules it was first judged with) or head"
    )


def is_assess(spec: PipelineSpec) -> bool:
    builtin = builtin_stage_of(spec.transform.cmd)
    return builtin is not None and builtin[0] == "assess"


def with_rejudge_rules(spec: PipelineSpec, choice: RejudgeRules) -> PipelineSpec:
    """``spec`` with its assess stage's ``--rejudge-rules`` set to ``choice`` (other specs unchanged)."""
    if not is_assess(spec):
        return spec
    cmd = list(spec.transform.cmd)
    kept: list[str] = []
    skip = False
    for arg in cmd:
        if skip:
            skip = False
            continue
        if arg == ARG:
            skip = True
            continue
        if arg.startswith(ARG + "="):
            continue
        kept.append(arg)
    if choice == "head":  # "first" is the default: left out, so the spec stays the one in pipelines/
        kept += [ARG, "head"]
    if kept == cmd:
        return spec
    return spec.model_copy(update={"transform": spec.transform.model_copy(update={"cmd": kept})})


def downstream_assess(pps: Pps, names: list[str]) -> list[str]:
    """The assess pipelines that read, directly or not, the output of any of ``names`` (in run order)."""
    reached = set(names)
    out = []
    for name in pps.topological_order():
        spec = pps.get_spec(name)[0]
        if name not in reached and set(spec.input_repos()) & reached:
            reached.add(name)
            if is_assess(spec):
                out.append(name)
    return out


def set_downstream(pps: Pps, names: list[str], choice: RejudgeRules) -> list[tuple[str, int, str]]:
    """Set ``choice`` on the assess pipelines downstream of ``names``: (pipeline, version, what happened)."""
    done = []
    for name in downstream_assess(pps, names):
        spec = pps.get_spec(name)[0]
        wanted = with_rejudge_rules(spec, choice)
        if wanted is spec:
            continue
        version, what = pps.create_pipeline(wanted, update=True)
        done.append((name, version, what))
    return done
