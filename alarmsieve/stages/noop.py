"""A stage that copies its input to its output unchanged: for overhead benchmarks and tests."""

from __future__ import annotations

import shutil

from alarmsieve.stages.base import DatumContext, Stage


class NoopStage(Stage):
    name = "noop"

    def process(self, ctx: DatumContext) -> None:
        for folder in ctx.inputs():
            for src in folder.rglob("*"):
                if src.is_file():
                    dest = ctx.out / src.relative_to(folder)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dest)
