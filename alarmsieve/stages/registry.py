"""Built-in stages by name, imported lazily so a worker loads only the stage (and model) it runs."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from alarmsieve.stages.base import Stage, StageServices, StageUsageError

BUILTIN_STAGES: dict[str, str] = {
    "validate": "alarmsieve.stages.validate:ValidateStage",
    "detect": "alarmsieve.stages.detect:DetectStage",
    "assess": "alarmsieve.stages.assess:AssessStage",
    "notify": "alarmsieve.stages.notify:NotifyStage",
    "noop": "alarmsieve.stages.noop:NoopStage",
    "frames": "alarmsieve.stages.frames:FramesStage",
    "clips": "alarmsieve.stages.clips:ClipsStage",
}


def stage_class(name: str) -> type[Stage]:
    target = BUILTIN_STAGES.get(name)
    if target is None:
        known = ", ".join(sorted(BUILTIN_STAGES))
        raise StageUsageError(f"unknown stage {name!r}; built-in stages are: {known}")
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def build_stage(name: str, args: Sequence[str], services: StageServices) -> Stage:
    return stage_class(name)(args, services)


def builtin_stage_of(cmd: Sequence[str]) -> tuple[str, list[str]] | None:
    """``["alarmsieve", "stage", NAME, *args]`` -> (NAME, args); anything else runs as a subprocess."""
    if len(cmd) >= 3 and cmd[0] == "alarmsieve" and cmd[1] == "stage":
        return cmd[2], list(cmd[3:])
    return None
