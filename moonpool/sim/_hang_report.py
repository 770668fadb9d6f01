"""Where every task of a stuck run waits, told in the user's own lines.

A deadlock, a budget running out or a process deaf to shutdown is only useful
to report if it points at the user's code.  The innermost frame of a blocked
task is nearly always inside trio, anyio or moonpool (a parking lot, a memory
stream, a transport's waiter); what the user needs is the innermost frame
*outside* them -- the line of their workload that awaits.  Every workload and
process task is listed (even one blocked inside ``async with ClientTransport``,
whose task has children), then the other tasks that wait in user code; tasks
entirely inside the libraries are counted, not listed.
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Mapping
from types import FrameType

import anyio
import trio

import moonpool

__all__ = ["describe_waiting_tasks", "user_frame"]


def _library_dirs() -> tuple[str, ...]:
    dirs = [os.path.dirname(module.__file__ or "") for module in (trio, anyio, moonpool)]
    dirs.append(sysconfig.get_paths()["stdlib"])
    for optional in ("outcome", "sniffio", "exceptiongroup"):
        try:
            module = __import__(optional)
        except ImportError:
            continue
        dirs.append(os.path.dirname(module.__file__ or ""))
    return tuple(os.path.join(os.path.realpath(d), "") for d in dirs if d)


_LIBRARIES = _library_dirs()


def _is_library(filename: str) -> bool:
    return os.path.realpath(filename).startswith(_LIBRARIES)


def user_frame(task: trio.lowlevel.Task) -> FrameType | None:
    """The innermost frame of ``task``'s await chain that is the user's own code."""
    found = None
    for frame, _ in task.iter_await_frames():
        if not _is_library(frame.f_code.co_filename):
            found = frame
    return found


def _where(frame: FrameType) -> str:
    code = frame.f_code
    return f"{code.co_filename}:{frame.f_lineno} in {code.co_qualname}"


def describe_waiting_tasks(
    root: trio.lowlevel.Task | None,
    roles: Mapping[trio.lowlevel.Task, str],
    order: Mapping[trio.lowlevel.Task, int],
) -> str:
    """One line per workload/process task and per other task waiting in user code."""
    if root is None:
        return "  (no tasks)"
    tasks: list[trio.lowlevel.Task] = []
    stack = [root]
    while stack:
        task = stack.pop()
        tasks.append(task)
        stack.extend(child for nursery in task.child_nurseries for child in nursery.child_tasks)
    tasks.sort(key=lambda t: order.get(t, -1))
    role_lines: list[str] = []
    other_lines: list[str] = []
    internal = 0
    for task in tasks:
        frame = user_frame(task)
        label = roles.get(task)
        if label is not None:
            where = _where(frame) if frame is not None else "inside trio/anyio/moonpool"
            role_lines.append(f"  {label} waits at {where}")
        elif task.child_nurseries and any(n.child_tasks for n in task.child_nurseries):
            continue  # a parent waiting for its children: the children say where
        elif frame is not None:
            other_lines.append(f"  task {task.name!r} waits at {_where(frame)}")
        elif task is not root:
            internal += 1
    lines = role_lines + other_lines
    if internal:
        lines.append(f"  (and {internal} task(s) waiting inside trio, anyio or moonpool)")
    return "\n".join(lines) if lines else "  (no tasks)"
