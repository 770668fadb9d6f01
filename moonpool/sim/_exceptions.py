"""Reading the exceptions a seed ends with: which part failed, which part only stopped.

trio wraps errors in exception groups, and a failing seed is cancelled, so what
reaches the runtime is often a group holding the real error next to
``Cancelled``.  These helpers find the error (for the failure's summary) and
keep the cancellation (which must propagate for trio to unwind).
"""

from __future__ import annotations

import os
import traceback

import trio

from moonpool.sim import _assertions
from moonpool.sim._assertions import AssertionViolation

__all__ = [
    "SeedAbandoned",
    "describe_exception",
    "split_cancellation",
    "user_traceback",
    "violation_in",
]

# The runtime's own frames around every failure -- the phase that called the
# workload or process, the assertion that raised -- say nothing about the user's
# bug; pytest and hypothesis hide theirs too.  The network's and transport's
# frames stay: a failure inside them is worth seeing.
_SIM_DIR = os.path.dirname(os.path.abspath(_assertions.__file__))
_HIDDEN_FILES = frozenset(
    os.path.normcase(os.path.join(_SIM_DIR, name))
    for name in ("_assertions.py", "_iteration.py", "_processes.py")
)


def user_traceback(exc: BaseException) -> str:
    """``exc`` formatted as ``traceback.format_exception`` does, without the frames of
    the simulation runtime that merely carried it (see ``_HIDDEN_FILES``)."""
    shown = traceback.TracebackException.from_exception(exc)
    _hide_runtime_frames(shown, set())
    return "".join(shown.format())


def _hide_runtime_frames(shown: traceback.TracebackException, seen: set[int]) -> None:
    if id(shown) in seen:
        return
    seen.add(id(shown))
    shown.stack = traceback.StackSummary.from_list(
        [
            frame
            for frame in shown.stack
            if os.path.normcase(os.path.abspath(frame.filename)) not in _HIDDEN_FILES
        ]
    )
    for linked in (shown.__cause__, shown.__context__, *(shown.exceptions or ())):
        if linked is not None:
            _hide_runtime_frames(linked, seen)


class SeedAbandoned(BaseException):
    """Raised in the tasks of a failed seed whose teardown got stuck (see ``_supervisor``)."""


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        found: list[BaseException] = []
        for inner in exc.exceptions:
            found.extend(_leaves(inner))
        return found
    if isinstance(exc, trio.Cancelled):
        return []
    return [exc]


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` of the real error, looking through task groups' exception groups."""
    leaves = _leaves(exc) or [exc]
    first = leaves[0]
    text = f"{type(first).__name__}: {first}" if str(first) else type(first).__name__
    if len(leaves) > 1:
        text += f" (and {len(leaves) - 1} more: " + ", ".join(
            type(other).__name__ for other in leaves[1:4]
        )
        text += ", ...)" if len(leaves) > 4 else ")"
    return text


def split_cancellation(exc: BaseException) -> tuple[BaseException | None, BaseException | None]:
    """(the error part, the cancellation part) of ``exc``: trio's ``Cancelled``, Ctrl-C
    and the supervisor's ``SeedAbandoned`` are how a seed stops, not what failed."""
    stopping = (trio.Cancelled, KeyboardInterrupt, SeedAbandoned)
    if isinstance(exc, BaseExceptionGroup):
        cancellation, error = exc.split(stopping)
        return error, cancellation
    return (None, exc) if isinstance(exc, stopping) else (exc, None)


def violation_in(exc: BaseException) -> str | None:
    """The message of the ``always``/``unreachable`` violation ``exc`` is or contains."""
    if isinstance(exc, BaseExceptionGroup):
        group = exc.subgroup(AssertionViolation)
        found: BaseException | None = group
        while isinstance(found, BaseExceptionGroup):
            found = found.exceptions[0]
        return None if found is None else str(found)
    return str(exc) if isinstance(exc, AssertionViolation) else None
