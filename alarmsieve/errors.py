"""The base of user-facing errors: the CLI prints their message (what is wrong, how to fix it) and exits 1."""

from __future__ import annotations


class AlarmsieveError(Exception):
    """Subclass this for errors caused by bad input or state that a user can fix."""
