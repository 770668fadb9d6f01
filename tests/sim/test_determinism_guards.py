"""The determinism guards: the user's clock, randomness, entropy and sockets are caught.

This file is "user code" to the guards (it is neither the standard library nor
one of the runtime's packages), so every guarded call written here is reported
with a site in this file -- and calls the standard library, trio or moonpool
make on their own account are not.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import random
import secrets
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import FrozenInstanceError, dataclass
from types import TracebackType
from typing import Any

import pytest
import trio
import trio.testing

import moonpool
import moonpool.sim
from moonpool.sim._guards import (
    NondeterminismError,
    NondeterministicCall,
    determinism_guards,
    is_user_file,
)

# Bound before any guard is installed: the real functions, for comparisons.
_real_time = time.time
_real_perf_counter = time.perf_counter
_real_urandom = os.urandom

_TIME_NAMES = ("time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns")
_RANDOM_NAMES = tuple(
    name
    for name in sorted(vars(random))
    if not name.startswith("_") and getattr(getattr(random, name), "__self__", None) is random._inst
)


def _snapshot() -> dict[str, object]:
    """Everything the guards patch, by name."""
    values: dict[str, object] = {f"time.{name}": getattr(time, name) for name in _TIME_NAMES}
    values.update({f"random.{name}": getattr(random, name) for name in _RANDOM_NAMES})
    values["os.urandom"] = os.urandom
    values["os.getrandom"] = os.getrandom
    values["random._urandom"] = getattr(random, "_urandom")  # noqa: B009
    values["socket.socketpair"] = socket.socketpair
    values["socket.create_connection"] = socket.create_connection
    values["socket.socket.__init__"] = socket.socket.__dict__["__init__"]
    return values


_ORIGINALS = _snapshot()


def _assert_restored() -> None:
    now = _snapshot()
    changed = [name for name, value in _ORIGINALS.items() if now[name] is not value]
    assert changed == []


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[NondeterministicCall] = []

    def __call__(self, call: NondeterministicCall) -> None:
        self.calls.append(call)


@pytest.fixture
def recorder() -> Iterator[_Recorder]:
    state = random.getstate()  # some cases reseed the global generator
    yield _Recorder()
    random.setstate(state)
    _assert_restored()


# ---------------------------------------------------------------------------
# One function per guarded call, each making it on the line after its ``def``.


def _time_time() -> object:
    return time.time()


def _time_time_ns() -> object:
    return time.time_ns()


def _time_monotonic() -> object:
    return time.monotonic()


def _time_monotonic_ns() -> object:
    return time.monotonic_ns()


def _time_perf_counter() -> object:
    return time.perf_counter()


def _time_perf_counter_ns() -> object:
    return time.perf_counter_ns()


def _random_random() -> object:
    return random.random()


def _random_randint() -> object:
    return random.randint(1, 6)


def _random_randrange() -> object:
    return random.randrange(10)


def _random_choice() -> object:
    return random.choice("abc")


def _random_choices() -> object:
    return random.choices("abc", k=2)


def _random_shuffle() -> object:
    return random.shuffle([1, 2, 3])


def _random_sample() -> object:
    return random.sample(range(10), 3)


def _random_uniform() -> object:
    return random.uniform(0.0, 1.0)


def _random_gauss() -> object:
    return random.gauss()


def _random_getrandbits() -> object:
    return random.getrandbits(8)


def _random_randbytes() -> object:
    return random.randbytes(4)


def _random_seed() -> object:
    return random.seed(7)


def _random_expovariate() -> object:
    return random.expovariate(1.0)


def _random_normalvariate() -> object:
    return random.normalvariate()


def _random_triangular() -> object:
    return random.triangular()


def _random_betavariate() -> object:
    return random.betavariate(2.0, 3.0)


def _os_urandom() -> object:
    return os.urandom(8)


def _uuid_uuid4() -> object:
    return uuid.uuid4()


def _secrets_token_hex() -> object:
    return secrets.token_hex()


def _secrets_token_bytes() -> object:
    return secrets.token_bytes(8)


def _system_random() -> object:
    return random.SystemRandom().random()


def _os_getrandom() -> object:
    return os.getrandom(8)


def _socket_socket() -> object:
    return socket.socket()


def _socket_socketpair() -> object:
    return socket.socketpair()


@dataclass(frozen=True)
class _Case:
    function: Callable[[], object]
    what: str
    check: Callable[[Any], bool]

    @property
    def site(self) -> str:
        code = self.function.__code__
        return f"{code.co_filename}:{code.co_firstlineno + 1} in {code.co_qualname}"


def _is_float(value: Any) -> bool:
    return isinstance(value, float)


def _is_int(value: Any) -> bool:
    return isinstance(value, int)


def _near_now(value: Any) -> bool:
    return isinstance(value, float) and abs(value - _real_time()) < 60


def _is_socket(value: Any) -> bool:
    return isinstance(value, socket.socket) and value.fileno() >= 0


def _is_socket_pair(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and all(map(_is_socket, value))


_CASES = [
    _Case(_time_time, "time.time()", _near_now),
    _Case(_time_time_ns, "time.time_ns()", lambda v: abs(v / 1e9 - _real_time()) < 60),
    _Case(_time_monotonic, "time.monotonic()", _is_float),
    _Case(_time_monotonic_ns, "time.monotonic_ns()", _is_int),
    _Case(_time_perf_counter, "time.perf_counter()", lambda v: v <= _real_perf_counter()),
    _Case(_time_perf_counter_ns, "time.perf_counter_ns()", _is_int),
    _Case(_random_random, "random.random()", lambda v: 0.0 <= v < 1.0),
    _Case(_random_randint, "random.randint()", lambda v: v in range(1, 7)),
    _Case(_random_randrange, "random.randrange()", lambda v: v in range(10)),
    _Case(_random_choice, "random.choice()", lambda v: v in "abc"),
    _Case(_random_choices, "random.choices()", lambda v: len(v) == 2),
    _Case(_random_shuffle, "random.shuffle()", lambda v: v is None),
    _Case(_random_sample, "random.sample()", lambda v: len(set(v)) == 3),
    _Case(_random_uniform, "random.uniform()", lambda v: 0.0 <= v <= 1.0),
    _Case(_random_gauss, "random.gauss()", _is_float),
    _Case(_random_getrandbits, "random.getrandbits()", lambda v: v in range(256)),
    _Case(_random_randbytes, "random.randbytes()", lambda v: isinstance(v, bytes) and len(v) == 4),
    _Case(_random_seed, "random.seed()", lambda v: v is None),
    _Case(_random_expovariate, "random.expovariate()", lambda v: v >= 0.0),
    _Case(_random_normalvariate, "random.normalvariate()", _is_float),
    _Case(_random_triangular, "random.triangular()", lambda v: 0.0 <= v <= 1.0),
    _Case(_random_betavariate, "random.betavariate()", lambda v: 0.0 <= v <= 1.0),
    _Case(_os_urandom, "os.urandom()", lambda v: isinstance(v, bytes) and len(v) == 8),
    _Case(_uuid_uuid4, "os.urandom()", lambda v: isinstance(v, uuid.UUID) and v.version == 4),
    _Case(_secrets_token_hex, "os.urandom()", lambda v: len(bytes.fromhex(v)) == 32),
    _Case(_secrets_token_bytes, "os.urandom()", lambda v: len(v) == 8),
    _Case(_system_random, "os.urandom()", lambda v: 0.0 <= v < 1.0),
    _Case(_os_getrandom, "os.getrandom()", lambda v: isinstance(v, bytes) and len(v) == 8),
    _Case(_socket_socket, "socket.socket()", _is_socket),
    _Case(_socket_socketpair, "socket.socketpair()", _is_socket_pair),
]


def _close(value: object) -> None:
    for item in value if isinstance(value, tuple) else (value,):
        if isinstance(item, socket.socket):
            item.close()


@pytest.mark.parametrize("case", _CASES, ids=lambda case: case.function.__name__)
def test_a_guarded_call_is_reported_and_behaves_as_usual(case: _Case, recorder: _Recorder) -> None:
    with determinism_guards(recorder, strict=False):
        result = case.function()
    try:
        assert case.check(result), result
    finally:
        _close(result)
    assert len(recorder.calls) == 1  # a socketpair's two sockets are not reported again
    call = recorder.calls[0]
    assert call.what == case.what
    assert call.site == case.site
    assert call.site.startswith(__file__)
    assert call.advice.startswith("use ")
    assert call.describe() == (
        f"{case.what} called at {case.site}: nondeterministic in a simulation; {call.advice}"
    )


_ADVICE = {
    "time": "use trio.current_time() (simulated time)",
    "random": "use ctx.random (a seeded random.Random)",
    "os": "use ctx.random (a seeded random.Random)",
    "socket": "use the simulated network (ctx.network)",
}


@pytest.mark.parametrize("case", _CASES, ids=lambda case: case.function.__name__)
def test_the_advice_names_the_deterministic_replacement(case: _Case, recorder: _Recorder) -> None:
    with determinism_guards(recorder, strict=False):
        _close(case.function())
    assert recorder.calls[0].advice.startswith(_ADVICE[case.what.split(".")[0]])


def _frames(tb: TracebackType | None) -> list[tuple[str, int, str]]:
    frames = []
    while tb is not None:
        code = tb.tb_frame.f_code
        frames.append((code.co_filename, tb.tb_lineno, code.co_qualname))
        tb = tb.tb_next
    return frames


@pytest.mark.parametrize("case", _CASES, ids=lambda case: case.function.__name__)
def test_strict_mode_raises_at_the_users_call(case: _Case, recorder: _Recorder) -> None:
    with determinism_guards(recorder, strict=True), pytest.raises(NondeterminismError) as info:
        _close(case.function())
    error = info.value
    assert error.call == recorder.calls[-1]
    assert len(recorder.calls) == 1
    assert str(error) == error.call.describe()
    assert error.call.what == case.what
    frames = _frames(info.tb)
    code = case.function.__code__
    user_frame = (code.co_filename, code.co_firstlineno + 1, code.co_qualname)
    assert user_frame in frames
    # Raised by the wrapper itself: the innermost frame is in the guards module.
    assert frames[-1][0].endswith(os.path.join("moonpool", "sim", "_guards.py"))


def test_every_function_of_the_global_random_module_is_wrapped(recorder: _Recorder) -> None:
    assert {"random", "randint", "choice", "shuffle", "seed", "getstate", "setstate"} <= set(
        _RANDOM_NAMES
    )
    with determinism_guards(recorder, strict=False):
        unwrapped = [
            name for name in _RANDOM_NAMES if getattr(random, name) is _ORIGINALS[f"random.{name}"]
        ]
        state = random.getstate()
        random.setstate(state)
    assert unwrapped == []
    assert [call.what for call in recorder.calls] == ["random.getstate()", "random.setstate()"]


def test_the_global_random_functions_still_return_the_real_stream(recorder: _Recorder) -> None:
    random.seed(1234)
    with determinism_guards(recorder, strict=False):
        got = [
            random.random(),
            random.randint(0, 10**9),
            random.choice(range(1000)),
            random.gauss(),
        ]
    replica = random.Random(1234)
    assert got == [
        replica.random(),
        replica.randint(0, 10**9),
        replica.choice(range(1000)),
        replica.gauss(),
    ]
    assert len(recorder.calls) == 4


_RandomClass = random.Random
_SystemRandomClass = random.SystemRandom


def test_random_instances_are_left_alone(recorder: _Recorder) -> None:
    expected = random.Random(5).random()
    with determinism_guards(recorder, strict=True):
        assert random.Random is _RandomClass
        assert random.SystemRandom is _SystemRandomClass
        assert random.Random(5).random() == expected
        # Unseeded, it seeds itself from the OS in C: not seen (a documented limit).
        random.Random().random()
    assert recorder.calls == []


def test_a_name_bound_to_the_socket_class_before_the_guard_is_still_caught(
    recorder: _Recorder,
) -> None:
    from socket import socket as socket_class

    with determinism_guards(recorder, strict=False):
        sock = socket_class()
    sock.close()
    assert [call.what for call in recorder.calls] == ["socket.socket()"]
    assert type(sock) is socket.socket


def test_sockets_keep_their_type_across_the_guard(recorder: _Recorder) -> None:
    before = socket.socket()
    try:
        with determinism_guards(recorder, strict=False):
            during = socket.socket()
            assert type(before) is socket.socket
            assert isinstance(before, socket.socket)
        try:
            assert type(during) is socket.socket
            # trio insists on exactly this type, before and after the guard.
            trio.socket.from_stdlib_socket(during)
        finally:
            during.close()
    finally:
        before.close()


def test_create_connection_is_reported(recorder: _Recorder) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        with determinism_guards(recorder, strict=False):
            line = sys._getframe().f_lineno + 1
            conn = socket.create_connection(listener.getsockname())
        conn.close()
    finally:
        listener.close()
    code = test_create_connection_is_reported.__code__
    assert recorder.calls == [
        NondeterministicCall(
            "socket.create_connection()",
            f"{code.co_filename}:{line} in {code.co_qualname}",
            "use the simulated network (ctx.network)",
        )
    ]


# ---------------------------------------------------------------------------
# What is not the user's.


def test_logging_reads_the_clock_on_its_own_account(recorder: _Recorder) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(relativeCreated)d %(message)s"))
    logger = logging.getLogger("moonpool.tests.guards")
    logger.addHandler(handler)
    try:
        with determinism_guards(recorder, strict=True):
            logger.warning("hi")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue().rstrip().endswith(" hi")
    assert recorder.calls == []


def test_the_standard_library_using_the_global_random_module_is_not_reported(
    recorder: _Recorder,
) -> None:
    import email.generator
    import tempfile

    with determinism_guards(recorder, strict=True):
        boundary = email.generator._make_boundary()  # type: ignore[attr-defined]
        name = next(tempfile._get_candidate_names())  # type: ignore[attr-defined]
    assert boundary and name
    assert recorder.calls == []


def test_a_real_trio_run_inside_the_guard_reports_nothing(recorder: _Recorder) -> None:
    async def main() -> float:
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(trio.sleep, 0)
        await trio.sleep(0.001)
        return trio.current_time()

    with determinism_guards(recorder, strict=True):
        trio.run(main)  # trio's own clock reads and its wake-up socketpair
        clock = trio.testing.MockClock(autojump_threshold=0)  # captures time.perf_counter
        trio.run(trio.sleep, 5, clock=clock)
    assert recorder.calls == []


def test_a_trio_socket_made_by_the_user_in_a_trio_run_is_reported(recorder: _Recorder) -> None:
    lines: list[int] = []

    async def main() -> None:
        lines.append(sys._getframe().f_lineno + 1)
        sock = trio.socket.socket()
        sock.close()
        lines.append(sys._getframe().f_lineno + 1)
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        for listener in listeners:
            await listener.aclose()

    with determinism_guards(recorder, strict=False):
        trio.run(main)
    code = main.__code__
    assert [call.site for call in recorder.calls] == [
        f"{code.co_filename}:{line} in {code.co_qualname}" for line in lines
    ]
    assert {call.what for call in recorder.calls} == {"socket.socket()"}


def test_a_trio_socket_in_strict_mode_raises_out_of_trio_run(recorder: _Recorder) -> None:
    async def main() -> None:
        trio.socket.socket().close()

    with determinism_guards(recorder, strict=True), pytest.raises(NondeterminismError):
        trio.run(main)
    assert len(recorder.calls) == 1


def test_is_user_file_classification(tmp_path: Any) -> None:
    assert is_user_file(__file__)
    assert is_user_file(_time_time.__code__.co_filename)
    assert is_user_file(str(tmp_path / "workload.py"))
    assert is_user_file("<string>")
    assert not is_user_file(logging.__file__)
    assert not is_user_file(uuid.__file__)
    assert not is_user_file(socket.__file__)
    assert not is_user_file("<frozen importlib._bootstrap>")
    assert not is_user_file(trio.__file__)
    assert not is_user_file(trio._core._run.__file__)
    assert not is_user_file(moonpool.__file__)
    assert not is_user_file(pytest.__file__)


# ---------------------------------------------------------------------------
# Installing, restoring, nesting, scope.


def test_everything_is_patched_inside_and_restored_after(recorder: _Recorder) -> None:
    with determinism_guards(recorder, strict=False):
        inside = _snapshot()
    assert [name for name, value in inside.items() if value is _ORIGINALS[name]] == []
    _assert_restored()
    time.time()
    assert recorder.calls == []


def test_everything_is_restored_after_an_exception(recorder: _Recorder) -> None:
    with pytest.raises(ZeroDivisionError), determinism_guards(recorder, strict=False):
        _ = 1 / 0
    _assert_restored()


def test_everything_is_restored_after_a_strict_refusal(recorder: _Recorder) -> None:
    with pytest.raises(NondeterminismError), determinism_guards(recorder, strict=True):
        time.time()
    _assert_restored()


def test_nested_guards_report_to_the_innermost_and_restore_once_both_exit() -> None:
    outer = _Recorder()
    inner = _Recorder()
    with determinism_guards(outer, strict=False):
        time.time()
        with determinism_guards(inner, strict=False):
            time.monotonic()
        assert _snapshot()["time.time"] is not _ORIGINALS["time.time"]
        time.perf_counter()
    _assert_restored()
    assert [call.what for call in outer.calls] == ["time.time()", "time.perf_counter()"]
    assert [call.what for call in inner.calls] == ["time.monotonic()"]


def test_a_strict_inner_guard_inside_a_lenient_one() -> None:
    outer = _Recorder()
    inner = _Recorder()
    with determinism_guards(outer, strict=False):
        with determinism_guards(inner, strict=True), pytest.raises(NondeterminismError):
            time.time()
        assert isinstance(time.time(), float)
    _assert_restored()
    assert len(outer.calls) == len(inner.calls) == 1


def test_two_guards_one_after_the_other(recorder: _Recorder) -> None:
    for _ in range(2):
        with determinism_guards(recorder, strict=False):
            time.time()
        _assert_restored()
    assert len(recorder.calls) == 2


def test_a_thread_without_a_guard_is_not_reported(recorder: _Recorder) -> None:
    results: list[float] = []
    thread = threading.Thread(target=lambda: results.append(time.time()))
    with determinism_guards(recorder, strict=True):
        thread.start()
        thread.join()
    assert len(results) == 1
    assert recorder.calls == []


def test_a_reporter_may_read_the_clock_itself() -> None:
    stamps: list[float] = []
    calls: list[NondeterministicCall] = []

    def report(call: NondeterministicCall) -> None:
        stamps.append(time.time())  # not reported again, no recursion
        calls.append(call)

    with determinism_guards(report, strict=False):
        time.monotonic()
    assert [call.what for call in calls] == ["time.monotonic()"]
    assert len(stamps) == 1


def test_the_call_and_the_error_are_public_values(monkeypatch: pytest.MonkeyPatch) -> None:
    call = NondeterministicCall("time.time()", "app.py:3 in tick", "use trio.current_time()")
    assert call.describe() == (
        "time.time() called at app.py:3 in tick: nondeterministic in a simulation; "
        "use trio.current_time()"
    )
    with pytest.raises(FrozenInstanceError):
        call.what = "x"  # type: ignore[misc]
    error = NondeterminismError(call)
    assert isinstance(error, RuntimeError)
    assert error.call is call
    # Pickled under its public name; moonpool.sim re-exports it (set here in case
    # this runs before the package does).
    monkeypatch.setattr(moonpool.sim, "NondeterminismError", NondeterminismError, raising=False)
    monkeypatch.setattr(moonpool.sim, "NondeterministicCall", NondeterministicCall, raising=False)
    copy = pickle.loads(pickle.dumps(error))
    assert copy.call == call
    assert str(copy) == str(error)
    assert NondeterministicCall.__module__ == NondeterminismError.__module__ == "moonpool.sim"
