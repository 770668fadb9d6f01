"""The timeline of one seed: what happened, when, and where.

A failing seed must say what led to it.  The trace hash proves two runs were
the same; the timeline says what that run *was*: every injected fault with its
details, connects, accepts and closes, transport requests, replies, timeouts
and retries, process kills and restarts, the phases of the seed, violated
assertions and the user's own ``logging`` lines -- each stamped with simulated
time and the host it happened on.  (Upstream moonpool keeps an event timeline,
FoundationDB its ``TraceEvent`` files; this is that, kept in memory.)

Every seed keeps the last :data:`TAIL` events (a bounded deque: appending a
tuple-sized record is cheap enough for every seed), so that any failure carries
the tail of its own story.  A seed replayed with the timeline on keeps all of
it.  Event texts are built only from deterministic values (host names, sizes,
counts, seeded ids), so the timeline of a seed is the same in every process.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import final

import trio

__all__ = [
    "KINDS",
    "TAIL",
    "Timeline",
    "TimelineEvent",
    "format_timeline",
    "current_host",
    "set_current_host",
]

#: How many events a seed keeps when its timeline was not asked for.
TAIL = 40

#: The kinds of event, for filters (``--timeline-kind``).
KINDS = (
    "phase",
    "fault",
    "net",
    "rpc",
    "process",
    "storage",
    "assertion",
    "failure",
    "log",
    "determinism",
)


@final
@dataclass(frozen=True)
class TimelineEvent:
    """One thing that happened in a seed, at simulated ``time`` on ``host``."""

    time: float
    host: str
    kind: str
    text: str

    def __str__(self) -> str:
        return f"{self.time:10.4f}s  {self.host or '-':<14} {self.kind:<11} {self.text}"


TimelineEvent.__module__ = "moonpool.sim"


_host: ContextVar[str] = ContextVar("moonpool_host", default="")


def set_current_host(name: str) -> None:
    """Name the host of the running task (and of every task it starts from now on)."""
    _host.set(name)


def current_host() -> str:
    """The running task's host ("" outside any host's tasks): what an object that
    notes events from outside any task (a push callback) captures first."""
    return _host.get()


RawEvent = tuple[float, str, str, str]
"""(time, host, kind, text): how events are kept, made into TimelineEvents when read.

A frozen dataclass costs about a microsecond to build; a tuple a tenth of that,
and most events of most seeds are never read."""


class Timeline:
    """The events of one seed: all of them, or the last :data:`TAIL`."""

    __slots__ = ("_events", "complete", "count", "ended")

    def __init__(self, *, complete: bool) -> None:
        self.complete = complete
        self._events: deque[RawEvent] = deque(maxlen=None if complete else TAIL)
        self.count = 0
        #: True once the seed's failure is on it: what the teardown does after it
        #: (connections closing as the seed is cancelled) is not kept, so that the
        #: timeline, and a failure's tail, end with the failure.
        self.ended = False

    def add(
        self, kind: str, text: str, host: str | None = None, at: float | None = None
    ) -> RawEvent:
        """Add an event (at the current simulated time, unless ``at`` says when)."""
        now = at
        if now is None:
            try:
                now = trio.current_time()
            except RuntimeError:  # outside trio.run (before the seed starts, after it ends)
                now = 0.0
        event = (now, _host.get() if host is None else host, kind, text)
        if not self.ended:
            self.count += 1
            self._events.append(event)
            self.ended = kind == "failure"
        return event

    def __iter__(self) -> Iterator[TimelineEvent]:
        return (TimelineEvent(*event) for event in self._events)

    def __len__(self) -> int:
        return len(self._events)

    def tail(self, count: int = TAIL) -> tuple[TimelineEvent, ...]:
        events = list(self._events)[-count:]
        return tuple(TimelineEvent(*event) for event in events)


def format_timeline(
    events: Iterable[TimelineEvent],
    *,
    hosts: Iterable[str] = (),
    kinds: Iterable[str] = (),
) -> str:
    """The events as aligned lines, only those on ``hosts`` and of ``kinds`` if given."""
    wanted_hosts, wanted_kinds = set(hosts), set(kinds)
    lines = [
        str(event)
        for event in events
        if (not wanted_hosts or event.host in wanted_hosts)
        and (not wanted_kinds or event.kind in wanted_kinds)
    ]
    return "\n".join(lines)
