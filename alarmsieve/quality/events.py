"""Per-event recall on labelled sequences: the figure an operator cares about.

An event is a run of consecutive person frames of one sequence, in time order (the file names are
times). It is *reached* when any of its frames reaches a person (``alert`` or ``review``), and
*alerted* when any frame alerts. Frames whose person label is empty (a person is there but cannot be
made out) are not scored; they neither end an event nor start one: the person is still present, so
a run of person frames on both sides of them is one event.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pydantic import BaseModel

REACHES_A_PERSON = ("alert", "review")


class ScoredFrame(Protocol):
    file: str
    sequence: str | None
    condition: str | None
    threat: bool
    verdict: str


class EventOutcome(BaseModel):
    sequence: str
    condition: str | None
    first_file: str
    last_file: str
    frames: int  # scored person frames in the event
    reached: bool  # some frame reached a person (alert or review)
    alerted: bool  # some frame alerted
    first_reaching_file: str | None = None
    # person frames before the first one that reached a person (0: the event's first frame did)
    frames_before_reached: int | None = None


def find_events(frames: Sequence[ScoredFrame]) -> list[EventOutcome]:
    """The events of every sequence among ``frames`` (scored frames only), sequences in name order."""
    by_sequence: dict[str, list[ScoredFrame]] = {}
    for frame in frames:
        if frame.sequence is not None:
            by_sequence.setdefault(frame.sequence, []).append(frame)
    events: list[EventOutcome] = []
    for sequence in sorted(by_sequence):
        run: list[ScoredFrame] = []
        for frame in [*sorted(by_sequence[sequence], key=lambda f: f.file), None]:
            if frame is not None and frame.threat:
                run.append(frame)
                continue
            if run:
                events.append(_event(sequence, run))
                run = []
    return events


def _event(sequence: str, run: list[ScoredFrame]) -> EventOutcome:
    reaching = [i for i, f in enumerate(run) if f.verdict in REACHES_A_PERSON]
    first = reaching[0] if reaching else None
    return EventOutcome(
        sequence=sequence,
        condition=run[0].condition,
        first_file=run[0].file,
        last_file=run[-1].file,
        frames=len(run),
        reached=first is not None,
        alerted=any(f.verdict == "alert" for f in run),
        first_reaching_file=run[first].file if first is not None else None,
        frames_before_reached=first,
    )
