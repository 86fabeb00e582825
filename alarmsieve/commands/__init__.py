"""Command groups kept in their own modules (rules, notifications, api, operations …).

Each module here imports the Typer apps from ``alarmsieve.cli`` and adds its commands to them;
``load_all`` imports every module of this package once, at the end of ``alarmsieve.cli``.
"""

from __future__ import annotations

import importlib
import pkgutil


def load_all() -> None:
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        importlib.import_module(f"{__name__}.{module}")
