"""A stage that copies its input to its output unchanged: for overhead benchmarks and tests.

Arguments (for supervision tests): ``--fail-on TEXT`` raises on a datum whose input path contains
TEXT; ``--die-on TEXT`` kills the worker process there (exit code 3), as a crashing stage would.
``ALARMSIEVE_NOOP_CODE_VERSION`` overrides its code version, to stand for a code change.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

from alarmsieve.stages.base import DatumContext, Stage, StageServices, StageUsageError


class NoopStage(Stage):
    name = "noop"

    def __init__(self, args: Sequence[str], services: StageServices) -> None:
        super().__init__(args, services)
        self.fail_on: str | None = None
        self.die_on: str | None = None
        rest = list(args)
        while rest:
            flag = rest.pop(0)
            if flag not in ("--fail-on", "--die-on") or not rest:
                raise StageUsageError(f"noop: unknown argument {flag!r}; use --fail-on TEXT or --die-on TEXT")
            setattr(self, flag[2:].replace("-", "_"), rest.pop(0))

    def identity(self) -> dict[str, str]:
        return {**super().identity(), "code_version": os.environ.get("ALARMSIEVE_NOOP_CODE_VERSION", self.code_version)}

    def process(self, ctx: DatumContext) -> None:
        for folder in ctx.inputs():
            for src in folder.rglob("*"):
                if src.is_file():
                    where = "/" + src.relative_to(folder).as_posix()
                    if self.die_on is not None and self.die_on in where:
                        os._exit(3)
                    if self.fail_on is not None and self.fail_on in where:
                        print(f"noop: refusing {where}")
                        raise ValueError(f"noop was told to fail on {where}")
                    dest = ctx.out / src.relative_to(folder)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dest)
