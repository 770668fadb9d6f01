"""Catching the user's calls that make a simulation stop being a function of its seed.

A seed replays only if everything the simulated program observes comes from the
seed: the mock clock, the seeded scheduler, the seeded ``ctx.random`` streams
and the simulated network.  One ``time.time()``, one global ``random.random()``,
one ``uuid.uuid4()`` or one real socket in the code under test and the replay
silently diverges -- the failure a seed reproduced yesterday does not come back
today, and nothing says why.  :func:`determinism_guards`, wrapped by the
runtime around ``trio.run``, turns that silence into a report naming the line.

**What is guarded.**  While the block runs, these module attributes are replaced
by checking wrappers and put back exactly when it ends (even if it raises):
``time.time``/``time_ns``/``monotonic``/``monotonic_ns``/``perf_counter``/
``perf_counter_ns``; every public function of the global ``random`` module
(each is a bound method of the hidden instance ``random._inst``); ``os.urandom``
(and ``random._urandom``, the same function bound by name inside ``random.py``,
through which ``secrets`` and ``random.SystemRandom`` draw their entropy); and
``socket.socket.__init__``, plus ``socket.socketpair`` and
``socket.create_connection`` (so that they are reported once, under their own
name, and refused in strict mode before any descriptor exists).  The socket
*class* is not replaced: ``socket.socket`` is a plain Python class (only its
base ``_socket.socket`` is the C type), so wrapping its ``__init__`` catches
every construction -- ``socket.socket()``, ``create_server()``, ``accept()``,
``dup()``, even a ``from socket import socket`` bound earlier -- while
``type(s) is socket.socket`` (which ``trio.socket.from_stdlib_socket`` insists
on) and ``isinstance`` keep holding for sockets made before, during and after
the block; a subclass swapped in for the attribute would break both.
Instances of ``random.Random`` are untouched: a seeded ``random.Random(seed)`` is
exactly what simulated code should use.

**Whose call is it.**  Each wrapper looks at the frame that called it
(``sys._getframe``) and classifies that frame's ``co_filename`` once, in a
dict, so the common path is a frame lookup and a dict lookup.  The call is not
the user's -- it passes through silently -- when that file is in the standard
library (``sysconfig``'s ``stdlib``/``platstdlib``, minus ``site-packages``, or
a ``<frozen ...>`` module) or inside one of the packages the runtime is built on
(``moonpool``, ``trio``, ``anyio``, ``sniffio``, ``outcome``, ``msgspec``,
``pytest``/``_pytest``, ``pluggy``).  So logging stamping its records with
``time.time()``, trio's and moonpool's own clock reads and ``email`` drawing a
MIME boundary from ``random`` are not reported.

Two kinds of call are judged by who asked for them rather than by who made
them.  ``os.urandom`` called by the standard library's ``uuid.py``,
``secrets.py`` or ``random.py`` (``SystemRandom``), and sockets made by anyone,
are blamed on the first frame above the standard library and the
libraries user code calls into (``trio`` outside ``trio/_core``, ``anyio``,
``sniffio``, ``outcome``, ``msgspec``): ``uuid.uuid4()``, ``secrets.token_hex()``
or ``trio.socket.socket()`` written in user code are the user's.  The walk stops
at the runtime -- trio's scheduler and I/O core (``trio/_core``), ``moonpool``,
pytest -- and reports nothing there: the socket pair ``trio.run`` makes for its
wake-ups is found below ``trio/_core`` and is trio's, not that of the code that
called ``trio.run``.  (For the same reason a socket made in a child task that
trio spawned on the user's behalf, as ``trio.open_tcp_stream`` does for each
connection attempt, is not reported: only the scheduler is above it.)  Code in
other third-party packages counts as the user's: it runs inside the simulation
just the same, and its frame is the one named.

**What happens then.**  ``report(call)`` is invoked on every such call (the
runtime deduplicates), with the guards switched off for the duration so a
reporter may itself read the clock.  In strict mode the wrapper then raises
:class:`NondeterminismError`, so the traceback ends at the user's line;
otherwise the real function runs and the program behaves as without the guard.

**Scope.**  Which guard is active is a :class:`contextvars.ContextVar`, like the
current run (``moonpool._ground._run``): trio tasks and ``trio.to_thread``
workers of the guarded run see it, another thread running its own simulation
(or none) does not.  The patches are process-wide and reference-counted: they
are installed by the first guard entered and removed by the last one left, so
nested guards and guards on several threads compose; the innermost guard of a
context receives the reports.

**Known limits.**  A name bound before the guard was installed keeps the real
function -- ``from time import time``, ``from random import random``, ``from os
import urandom`` at the top of a module are not seen (the socket guard, on the
class, has no such gap).  ``random.Random()`` without a seed seeds itself from
the OS in C and is not reported; nor are other clock reads done in C:
``datetime.datetime.now()``, ``time.localtime()``/``time.strftime()`` without an
argument, ``uuid.uuid1()`` (which reads the clock from ``uuid.py``).
"""

from __future__ import annotations

import functools
import os
import random
import socket
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from types import CodeType, FrameType, ModuleType
from typing import Any, final

__all__ = [
    "NondeterminismError",
    "NondeterminismWarning",
    "NondeterministicCall",
    "determinism_guards",
    "is_user_file",
]


@final
@dataclass(frozen=True)
class NondeterministicCall:
    """One call from user code that the seed does not determine, and where it was made."""

    #: What was called, e.g. ``"time.time()"`` or ``"os.urandom()"``.
    what: str
    #: The user's frame: ``"path/to/file.py:12 in func_name"`` (``co_filename``
    #: as the code object has it, the line, ``co_qualname``).
    site: str
    #: What to use instead, e.g. ``"use trio.current_time() (simulated time)"``.
    advice: str

    def describe(self) -> str:
        """One line for a report or an exception message."""
        return f"{self.what} called at {self.site}: nondeterministic in a simulation; {self.advice}"


class NondeterminismError(RuntimeError):
    """Raised at the user's call by a strict guard; ``call`` says what and where."""

    def __init__(self, call: NondeterministicCall) -> None:
        super().__init__(call.describe())
        self.call = call

    def __reduce__(self) -> tuple[type[NondeterminismError], tuple[NondeterministicCall]]:
        return (type(self), (self.call,))


class NondeterminismWarning(UserWarning):
    """A simulation's user code made a nondeterministic call (not strict: it ran)."""


NondeterministicCall.__module__ = "moonpool.sim"
NondeterminismWarning.__module__ = "moonpool.sim"
NondeterminismError.__module__ = "moonpool.sim"

TIME_ADVICE = "use trio.current_time() (simulated time)"
RANDOM_ADVICE = "use ctx.random (a seeded random.Random)"
ENTROPY_ADVICE = (
    "use ctx.random (a seeded random.Random): ctx.random.randbytes(n) for bytes, "
    "uuid.UUID(int=ctx.random.getrandbits(128), version=4) for a UUID"
)
SOCKET_ADVICE = "use the simulated network (ctx.network)"

_TIME_FUNCTIONS = (
    "time",
    "time_ns",
    "monotonic",
    "monotonic_ns",
    "perf_counter",
    "perf_counter_ns",
)

# ---------------------------------------------------------------------------
# Classifying files.

_USER = 0
#: The standard library (and ``<frozen ...>`` modules).
_STDLIB = 1
#: A standard-library module that only forwards entropy to its caller
#: (``uuid.py``, ``secrets.py``, ``random.py``): ``os.urandom`` from it is judged
#: by who called it.
_ENTROPY = 2
#: A library user code calls into; skipped when looking for who asked.
_LIBRARY = 3
#: The runtime (trio's core, moonpool, pytest): its calls are never the user's.
_RUNTIME = 4

#: Checked before ``_LIBRARY_PACKAGES``, so ``trio._core`` wins over ``trio``.
_RUNTIME_PACKAGES = ("trio._core", "moonpool", "pytest", "_pytest", "pluggy")
_LIBRARY_PACKAGES = ("trio", "anyio", "sniffio", "outcome", "msgspec")
_ENTROPY_MODULES = ("uuid", "secrets", "random")


def _real_dir(path: str) -> str:
    return os.path.join(os.path.realpath(path), "")


def _stdlib_dirs() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The standard library's directories, and the site-packages found inside them.

    In a virtual environment ``platstdlib`` is the environment's ``lib/pythonX.Y``,
    which holds ``site-packages``; a distribution's Python may keep it under
    ``stdlib`` too.  Installed packages are not the standard library.
    """
    paths = sysconfig.get_paths()
    stdlib = tuple({_real_dir(paths[key]) for key in ("stdlib", "platstdlib") if key in paths})
    site = tuple({_real_dir(paths[key]) for key in ("purelib", "platlib") if key in paths})
    return stdlib, site


_STDLIB_DIRS, _SITE_DIRS = _stdlib_dirs()
_ENTROPY_FILES = frozenset(
    os.path.join(stdlib_dir, f"{name}.py")
    for stdlib_dir in _STDLIB_DIRS
    for name in _ENTROPY_MODULES
)

#: Package name -> its directories (``os.sep``-terminated, realpath'd), filled in
#: once the package is imported: no frame can come from a package before that.
_package_dirs: dict[str, tuple[str, ...]] = {}
_kinds: dict[str, int] = {}


def _dirs_of(name: str) -> tuple[str, ...]:
    dirs = _package_dirs.get(name)
    if dirs is None:
        module = sys.modules.get(name)
        if not isinstance(module, ModuleType):
            return ()
        # A package's directory is what its ``__path__`` lists: dirname(__file__)
        # for a regular package, each portion for a namespace package.
        dirs = tuple(_real_dir(entry) for entry in getattr(module, "__path__", ()))
        _package_dirs[name] = dirs
    return dirs


def _classify(filename: str) -> int:
    if filename.startswith("<frozen "):
        return _STDLIB
    if filename.startswith("<"):
        return _USER  # <string>, <stdin>, <doctest ...>: code the user had compiled
    path = os.path.realpath(filename)
    for names, kind in ((_RUNTIME_PACKAGES, _RUNTIME), (_LIBRARY_PACKAGES, _LIBRARY)):
        for name in names:
            if path.startswith(_dirs_of(name)):
                return kind
    if path.startswith(_STDLIB_DIRS) and not path.startswith(_SITE_DIRS):
        return _ENTROPY if path in _ENTROPY_FILES else _STDLIB
    return _USER


def _kind(filename: str) -> int:
    kind = _kinds.get(filename)
    if kind is None:
        kind = _kinds[filename] = _classify(filename)
    return kind


def is_user_file(filename: str) -> bool:
    """True when code in ``filename`` (a ``co_filename``) counts as the user's.

    False for the standard library, ``<frozen ...>`` modules and the packages the
    runtime is built on (see the module docstring); true for everything else,
    third-party packages included.  The answer is cached per ``filename``.
    """
    return _kind(filename) == _USER


def _asker(frame: FrameType | None) -> FrameType | None:
    """The user's frame on whose behalf ``frame`` works, or ``None`` if it is the runtime's.

    Walks outwards past the standard library and the libraries user code calls
    into; the first other frame decides.
    """
    while frame is not None:
        kind = _kind(frame.f_code.co_filename)
        if kind == _USER:
            return frame
        if kind == _RUNTIME:
            return None
        frame = frame.f_back
    return None


# ---------------------------------------------------------------------------
# The active guard and reporting.


@dataclass(eq=False)
class _Guard:
    report: Callable[[NondeterministicCall], None]
    strict: bool
    #: Cleared on exit, so a context copied while the guard was active (a
    #: leftover task or thread) cannot report to it afterwards.
    open: bool = True


_active: ContextVar[_Guard | None] = ContextVar("moonpool_determinism_guard", default=None)
_calls: dict[tuple[str, CodeType, int], NondeterministicCall] = {}


def _current_guard() -> _Guard | None:
    guard = _active.get()
    return guard if guard is not None and guard.open else None


def _report(guard: _Guard, what: str, advice: str, frame: FrameType) -> NondeterministicCall:
    code = frame.f_code
    line = frame.f_lineno
    key = (what, code, line)
    call = _calls.get(key)
    if call is None:
        call = NondeterministicCall(
            what, f"{code.co_filename}:{line} in {code.co_qualname}", advice
        )
        _calls[key] = call
    # The guards are off while the reporter runs: it may read the clock or log.
    token = _active.set(None)
    try:
        guard.report(call)
    finally:
        _active.reset(token)
    return call


# ---------------------------------------------------------------------------
# The wrappers.

_MARK = "_moonpool_determinism_guard"


def _marked(wrapper: Callable[..., Any]) -> Callable[..., Any]:
    setattr(wrapper, _MARK, True)
    return wrapper


def _unwrapped(value: Any) -> Any:
    """``value``, or what it wraps if it is one of our wrappers left behind."""
    while getattr(value, _MARK, False):
        value = value.__wrapped__
    return value


def _direct_wrapper(original: Callable[..., Any], what: str, advice: str) -> Callable[..., Any]:
    """A wrapper judging the call by its direct caller's file."""

    @functools.wraps(original)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        guard = _current_guard()
        if guard is not None:
            frame = sys._getframe(1)
            if _kind(frame.f_code.co_filename) == _USER:
                call = _report(guard, what, advice, frame)
                if guard.strict:
                    raise NondeterminismError(call)
        return original(*args, **kwargs)

    return _marked(guarded)


def _entropy_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
    """``os.urandom``: judged by its direct caller, or by whoever asked ``uuid``/``secrets``."""

    @functools.wraps(original)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        guard = _current_guard()
        if guard is not None:
            caller = sys._getframe(1)
            kind = _kind(caller.f_code.co_filename)
            frame = caller if kind == _USER else _asker(caller) if kind == _ENTROPY else None
            if frame is not None:
                call = _report(guard, "os.urandom()", ENTROPY_ADVICE, frame)
                if guard.strict:
                    raise NondeterminismError(call)
        return original(*args, **kwargs)

    return _marked(guarded)


def _asking_wrapper(original: Callable[..., Any], what: str, advice: str) -> Callable[..., Any]:
    """``socket.socketpair``/``create_connection``: judged by whoever asked for them.

    The sockets they then make are not reported again: the walk from their
    ``__init__`` meets this wrapper, which is moonpool's frame.
    """

    @functools.wraps(original)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        guard = _current_guard()
        if guard is not None:
            frame = _asker(sys._getframe(1))
            if frame is not None:
                call = _report(guard, what, advice, frame)
                if guard.strict:
                    raise NondeterminismError(call)
        return original(*args, **kwargs)

    return _marked(guarded)


def _socket_init_wrapper(original: Callable[..., None]) -> Callable[..., None]:
    """``socket.socket.__init__``: judged by whoever asked for the socket."""

    @functools.wraps(original)
    def __init__(self: socket.socket, *args: Any, **kwargs: Any) -> None:
        __tracebackhide__ = True
        guard = _current_guard()
        if guard is not None:
            frame = _asker(sys._getframe(1))
            if frame is not None:
                call = _report(guard, "socket.socket()", SOCKET_ADVICE, frame)
                if guard.strict:
                    fileno = args[3] if len(args) > 3 else kwargs.get("fileno")
                    if fileno is not None:
                        # accept(), dup(), fromfd() hand over a descriptor that
                        # already exists: adopt it and close it, or it leaks.
                        original(self, *args, **kwargs)
                        self.close()
                    raise NondeterminismError(call)
        original(self, *args, **kwargs)

    return _marked(__init__)


# ---------------------------------------------------------------------------
# Installing and removing the patches (process-wide, reference-counted).

_lock = threading.Lock()
_users = 0
#: (owner, attribute, original value), in installation order.
_saved: list[tuple[object, str, object]] = []


def _patches() -> list[tuple[object, str, object, object]]:
    """(owner, attribute, current value, wrapper) for everything to guard."""
    patches: list[tuple[object, str, object, object]] = []
    for name in _TIME_FUNCTIONS:
        current = getattr(time, name)
        patches.append(
            (
                time,
                name,
                current,
                _direct_wrapper(_unwrapped(current), f"time.{name}()", TIME_ADVICE),
            )
        )
    shared = random._inst
    for name in sorted(vars(random)):
        if name.startswith("_"):
            continue
        current = getattr(random, name)
        if getattr(_unwrapped(current), "__self__", None) is shared:
            wrapper = _direct_wrapper(_unwrapped(current), f"random.{name}()", RANDOM_ADVICE)
            patches.append((random, name, current, wrapper))
    urandom = _entropy_wrapper(_unwrapped(os.urandom))
    patches.append((os, "urandom", os.urandom, urandom))
    if hasattr(os, "getrandom"):  # Linux
        current = os.getrandom
        wrapper = _direct_wrapper(_unwrapped(current), "os.getrandom()", ENTROPY_ADVICE)
        patches.append((os, "getrandom", current, wrapper))
    if hasattr(random, "_urandom"):
        current = getattr(random, "_urandom")  # noqa: B009 -- private, not in the stubs
        patches.append((random, "_urandom", current, _entropy_wrapper(_unwrapped(current))))
    for name in ("socketpair", "create_connection"):
        current = getattr(socket, name)
        wrapper = _asking_wrapper(_unwrapped(current), f"socket.{name}()", SOCKET_ADVICE)
        patches.append((socket, name, current, wrapper))
    init = socket.socket.__dict__["__init__"]
    patches.append((socket.socket, "__init__", init, _socket_init_wrapper(_unwrapped(init))))
    return patches


#: The last patches made, reused while what they wrap is still in place: making
#: them (35 ``functools.wraps``) cost a fifth of an empty seed.
_made: list[tuple[object, str, object, object]] = []


def _still_current(patches: list[tuple[object, str, object, object]]) -> bool:
    return bool(patches) and all(
        vars(owner).get(name) is current for owner, name, current, _ in patches
    )


def _install() -> None:
    if not _still_current(_made):
        _made[:] = _patches()
    try:
        for owner, name, current, wrapper in _made:
            _saved.append((owner, name, current))
            setattr(owner, name, wrapper)
    except BaseException:
        _uninstall()
        raise


def _uninstall() -> None:
    while _saved:
        owner, name, original = _saved.pop()
        setattr(owner, name, original)


def _acquire() -> None:
    global _users
    with _lock:
        if _users == 0:
            _install()
        _users += 1


def _release() -> None:
    global _users
    with _lock:
        _users -= 1
        if _users == 0:
            _uninstall()


@contextmanager
def determinism_guards(
    report: Callable[[NondeterministicCall], None], *, strict: bool
) -> Iterator[None]:
    """Report (and in ``strict`` mode refuse) the user's nondeterministic calls in the block.

    ``report`` is called with a :class:`NondeterministicCall` each time user code
    reads the real clock, the global ``random`` module or the OS's entropy, or
    makes a real socket (see the module docstring for what is guarded and how
    "user code" is told apart).  With ``strict`` the call then raises
    :class:`NondeterminismError` instead of running.  Everything patched is put
    back on exit, by the last guard to exit when several are active.
    """
    guard = _Guard(report, strict)
    _acquire()
    try:
        token = _active.set(guard)
        try:
            yield
        finally:
            guard.open = False
            _active.reset(token)
    finally:
        _release()
