"""Where two runs of one seed part: the first timeline event that differs.

``--check-determinism`` runs each seed twice.  Two trace hashes that differ say
*that* the seed is not deterministic; the first differing event of the two
timelines says *where* -- usually right after the user's code read the wall
clock or the global ``random``.
"""

from __future__ import annotations

from collections.abc import Sequence

from moonpool._ground._timeline import TimelineEvent

__all__ = ["first_divergence"]

_CONTEXT = 3


def first_divergence(first: Sequence[TimelineEvent], second: Sequence[TimelineEvent]) -> str:
    """A few lines: the events both runs shared last, then how each went on."""
    index = next(
        (i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b),
        min(len(first), len(second)),
    )
    if index == len(first) == len(second):
        return "their timelines are the same: the difference is in what the timeline does not show"
    lines = [f"the two runs part at timeline event {index + 1}:"]
    lines += [f"  both    {event}" for event in first[max(0, index - _CONTEXT) : index]]
    for label, events in (("first ", first), ("second", second)):
        shown = events[index] if index < len(events) else "(the run ended here)"
        lines.append(f"  {label}  {shown}")
    return "\n".join(lines)
