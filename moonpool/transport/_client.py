"""``ClientTransport``: request/response over any network, with timeouts.

``get_reply`` never drives I/O itself and never waits on the connection: it asks
the protocol for a correlation id, queues the request on the destination's peer,
then waits on *its own* event, bounded by its timeout.  The peer's reader task
delivers the reply to that event by correlation id.  This is the plan's fix for the
``get_reply`` deadlock, done the structured-concurrency way: the I/O keeps running
in the transport's task group whatever the callers do, so there is no loop to
"self-drive" and nothing a caller can forget to poll.
"""

from __future__ import annotations

import math
import random
from types import TracebackType
from typing import Any, Self, final

import anyio
import anyio.abc

from moonpool._ground._run import current_run
from moonpool.net import InvalidAddress, NetworkProvider, parse_address
from moonpool.transport._background import BackgroundTasks
from moonpool.transport._circuit import CircuitBreaker
from moonpool.transport._dead_letters import DEFAULT_DEAD_LETTERS, DeadLetters
from moonpool.transport._driver import TransportDriver
from moonpool.transport._envelope import Envelope, RequestResponseEnvelope
from moonpool.transport._errors import (
    CircuitOpen,
    ConnectionFailed,
    PeerFailed,
    TransportClosed,
    TransportTimeout,
)
from moonpool.transport._failure_monitor import FailureMonitor
from moonpool.transport._framing import DEFAULT_MAX_FRAME_SIZE
from moonpool.transport._loop_bindings import LoopBindings, OneShotEvent, bind_running_loop
from moonpool.transport._peer import PeerConfig
from moonpool.transport._protocol import Completion, RetryPolicy, TransportProtocol

__all__ = ["ClientTransport"]

DEFAULT_TIMEOUT = 5.0

# A tuple, not ``bytes | bytearray | memoryview``: that builds a union per call.
_BYTES_LIKE = (bytes, bytearray, memoryview)


def transport_random() -> random.Random:
    """A random stream for one transport instance.

    Inside a simulation it is drawn from the run's seeded stream (so each instance
    differs, yet a seed replays exactly); outside, from fresh entropy.
    """
    run = current_run()
    return random.Random(run.random.getrandbits(64)) if run is not None else random.Random()


class _Waiter:
    __slots__ = ("completion", "event")

    def __init__(self, event: OneShotEvent) -> None:
        self.event = event
        self.completion: Completion | None = None


@final
class ClientTransport:
    """Sends requests and waits for their replies; use as ``async with``.

    One transport keeps one connection per (destination, envelope type) and
    multiplexes any number of concurrent ``get_reply`` calls over it.  Closing it
    (leaving the ``async with``) fails pending calls with :class:`TransportClosed`
    and stops every connection task before returning.
    """

    def __init__(
        self,
        network: NetworkProvider,
        *,
        envelope: type[Envelope] = RequestResponseEnvelope,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        peer_config: PeerConfig | None = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        rng: random.Random | None = None,
        max_dead_letters: int = DEFAULT_DEAD_LETTERS,
    ) -> None:
        _check_timeout(timeout)
        self._network = network
        self._default_envelope = envelope
        self._default_timeout = timeout
        self._retry = retry or RetryPolicy()
        self._peer_config = peer_config or PeerConfig()
        self._circuits = self._peer_config.circuit_threshold is not None
        #: Whether each remote is up, as the connections to it have shown.
        self.failure_monitor = FailureMonitor()
        #: What could not be delivered (one-way messages, requests abandoned at close).
        self.dead_letters = DeadLetters(max_dead_letters)
        self._breakers: dict[str, CircuitBreaker] = {}
        self._max_frame_size = max_frame_size
        self._drivers: dict[type[Any], TransportDriver[Any]] = {}
        # Per envelope type (each has its own protocol, so correlation ids may
        # coincide across types), by correlation id: an int key, not a tuple that
        # the cyclic GC would track for the whole call.
        self._waiters: dict[type[Any], dict[int, _Waiter]] = {}
        self._tasks: BackgroundTasks | None = None
        self._loop: LoopBindings | None = None
        self._state = "new"
        # Correlation ids, retry and reconnect jitter; pass a seeded Random to make a
        # component test outside a simulation replayable.
        self._rng = rng if rng is not None else transport_random()
        self._run = current_run()  # a simulation's: the timeline hears of each call
        # A correlation id is this transport's incarnation number (31 random bits,
        # never 0) above a 32-bit count: stable across resends, distinct across
        # calls, and across client restarts but for a 2**-31 chance per pair --
        # what a server deduplicates by (ReceivedEnvelope.request_id).  Ids stay
        # below 2**63, clear of the reserved PING_ID.
        self._first_id = (self._rng.getrandbits(31) or 1) << 32

    def __repr__(self) -> str:
        return f"<ClientTransport {self._state} pending={self.pending}>"

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise TransportClosed("a ClientTransport can be entered only once")
        self._loop = bind_running_loop()
        tasks = BackgroundTasks()
        await tasks.__aenter__()
        self._tasks = tasks
        self._state = "open"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self._shut_down()
        tasks, self._tasks = self._tasks, None
        if tasks is None:
            return False
        return await tasks.__aexit__(exc_type, exc, tb)

    async def aclose(self) -> None:
        """Fail pending requests with ``TransportClosed`` and stop every connection.

        Safe from any task; the connection tasks are gone when the ``async with``
        block exits.
        """
        self._shut_down()
        await anyio.lowlevel.checkpoint()

    def _shut_down(self) -> None:
        if self._state == "closed":
            return
        was_open = self._state == "open"
        self._state = "closed"
        now = self._loop.now() if self._loop is not None else 0.0
        for driver in self._drivers.values():
            driver.dead_letters_at_close(now)
            if driver.protocol.pending_count:
                for destination, count in driver.protocol.pending_by_destination().items():
                    for _ in range(count):
                        self.dead_letters.record(
                            "request", destination, "abandoned: the transport closed", now
                        )
            driver.protocol.close()
            driver.close()
            self._deliver_all(driver)
        if was_open and self._tasks is not None:
            self._tasks.cancel()

    def _deliver_all(self, driver: TransportDriver[Any]) -> None:
        waiters = self._waiters[driver.protocol.envelope_type]
        while (completion := driver.protocol.poll_completion()) is not None:
            _complete(waiters, completion)

    @property
    def closed(self) -> bool:
        return self._state == "closed"

    @property
    def default_timeout(self) -> float:
        """The timeout of calls that do not give one (the ``timeout`` argument)."""
        return self._default_timeout

    @property
    def pending(self) -> int:
        """Requests waiting for a reply."""
        return sum(map(len, self._waiters.values()))

    def stats(self, envelope: type[Envelope] | None = None) -> Any:
        """The protocol counters for ``envelope`` (default: the transport's envelope).

        ``dead_letters`` counts this transport's dead letters, all envelopes together.
        """
        driver = self._drivers.get(envelope or self._default_envelope)
        if driver is None:
            return None
        stats = driver.protocol.stats
        stats.dead_letters = self.dead_letters.total
        return stats

    def _driver(self, envelope: type[Envelope]) -> TransportDriver[Any]:
        driver = self._drivers.get(envelope)
        if driver is None:
            assert self._tasks is not None
            protocol = TransportProtocol(
                envelope,
                max_frame_size=self._max_frame_size,
                retry=self._retry,
                rng=self._rng,
                first_correlation_id=self._first_id,
            )
            if self._run is not None:
                protocol.on_event = self._run_note
            waiters = self._waiters[envelope] = {}
            driver = TransportDriver(
                self._network,
                protocol,
                self._tasks,
                on_completion=lambda c: _complete(waiters, c),
                peer_config=self._peer_config,
                rng=self._rng,
                failure_monitor=self.failure_monitor,
                breakers=self._breakers,
                dead_letters=self.dead_letters,
            )
            self._drivers[envelope] = driver
        return driver

    def _not_open(self) -> TransportClosed:
        if self._state == "closed":
            return TransportClosed("ClientTransport is closed")
        return TransportClosed(
            "ClientTransport is not open: use it as 'async with ClientTransport(...)'"
        )

    # -- the delivery contracts ------------------------------------------------------

    def send(
        self, destination: str, payload: bytes, *, envelope: type[Envelope] | None = None
    ) -> None:
        """Send ``payload`` one way: queued at once, never retried, never answered.

        Fire and forget, so it does not wait (and is not a checkpoint).  A message
        that cannot be delivered -- the peer's queue is full, or the connection
        failed before the message was written -- is recorded in
        :attr:`dead_letters`, never dropped silently; one whose connection broke
        after it was written may or may not have arrived.  The server sees it as
        a :class:`ReceivedEnvelope` with ``expects_reply`` False.  Raises
        :class:`TransportClosed` when the transport is not open, and
        :class:`FrameTooLarge` or ``ValueError`` for a message that could never be sent.
        """
        if self._state != "open":
            raise self._not_open()
        if not isinstance(payload, _BYTES_LIKE):
            raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
        driver = self._drivers.get(envelope or self._default_envelope) or self._driver(
            envelope or self._default_envelope
        )
        if destination not in driver.peers:
            _check_destination(destination)
        driver.send_one_way(destination, driver.protocol.one_way(bytes(payload)))

    async def try_get_reply(
        self,
        destination: str,
        payload: bytes,
        *,
        envelope: type[Envelope] | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """Send a request **at most once** and return the reply's payload.

        The request is written to the wire at most once, on one connection, and
        never after this call has returned or raised.  If that connection breaks
        after the request may have been written, it raises
        :class:`MaybeDelivered` (a :class:`ConnectionFailed`): the server may have
        executed it, so check before trying again; if it provably never left this
        process, plain :class:`ConnectionFailed`.  Otherwise it raises as
        :meth:`get_reply` does.
        """
        return await self._call(destination, payload, envelope, timeout, at_most_once=True)

    async def get_reply(
        self,
        destination: str,
        payload: bytes,
        *,
        envelope: type[Envelope] | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """Send a request **at least once** within ``timeout``; return the reply's payload.

        The request is resent across reconnects (by the transport's
        :class:`RetryPolicy`, default: until the deadline) with the same correlation
        id, so the server may see it more than once: it carries a stable
        ``request_id`` (``ReceivedEnvelope.request_id``: the same on every resend,
        distinct across calls and client restarts) by which a server deduplicates.
        Once the call has returned or raised, nothing of it is written any more.

        ``envelope`` picks the wire format (default: the transport's, normally
        :class:`RequestResponseEnvelope`).  Raises :class:`TransportTimeout` when no
        reply arrives within ``timeout`` seconds (its message gives the last
        connection failure, if any), :class:`ConnectionFailed` when the retry
        policy's ``max_attempts`` ran out, :class:`CircuitOpen` when the
        destination's circuit breaker is open, :class:`RemoteError` for an error
        reply, :class:`SendQueueFull` when the peer's queue stayed full for the
        whole timeout (a full queue makes the call wait for room first:
        backpressure), :class:`TransportClosed` when the transport is closed,
        :class:`FrameTooLarge` (before anything is queued) when the request
        would exceed ``max_frame_size``, header included, and ``ValueError``
        (``InvalidAddress``) for a malformed destination.  It is a checkpoint
        (it yields to other tasks) whether it returns or raises.
        """
        return await self._call(destination, payload, envelope, timeout, at_most_once=False)

    async def get_reply_unless_failed_for(
        self,
        destination: str,
        payload: bytes,
        *,
        failed_for: float,
        envelope: type[Envelope] | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """Like :meth:`get_reply`, but give up once ``destination`` is known dead.

        Keeps retrying (at least once, as :meth:`get_reply`) while the
        :attr:`failure_monitor` has not seen ``destination`` failed continuously
        for ``failed_for`` seconds of this call; then raises :class:`PeerFailed`.  A
        destination that fails and comes back within ``failed_for`` does not end
        the call.  ``timeout`` still bounds it (default: the transport's).

        The monitor learns that a destination is back at the next attempt, which
        the resend and reconnect backoffs (``RetryPolicy.backoff_max``,
        ``PeerConfig.reconnect_max``: 2 s each by default) may hold back: keep
        ``failed_for`` well above them, or a short outage can look long enough.
        """
        _check_timeout(failed_for)
        monitor = self.failure_monitor
        failed: list[PeerFailed] = []
        started = anyio.current_time()

        def deadline() -> float:
            # Failed for that long *during this call*: the transport does not watch
            # an address nobody calls, so an older failure may be stale news.
            since = monitor.failed_since(destination)
            return math.inf if since is None else max(since, started) + failed_for

        async def watch(call: anyio.CancelScope) -> None:
            while True:
                with anyio.move_on_at(deadline()):
                    await monitor.on_state_change(destination)
                    continue
                # The deadline itself, not ``now - since >= failed_for``: woken at
                # since + failed_for, that difference can fall an ulp short, and
                # the loop then spun at that instant (found by the simulation).
                if anyio.current_time() >= deadline():
                    failed.append(
                        PeerFailed(
                            f"{destination} has been failed for {failed_for}s or more "
                            f"(failed_for={failed_for}): {monitor.reason(destination)}"
                        )
                    )
                    call.cancel()
                    return

        error: Exception | None = None
        reply = b""
        with anyio.CancelScope() as call:
            async with anyio.create_task_group() as group:
                group.start_soon(watch, call)
                try:
                    reply = await self.get_reply(
                        destination, payload, envelope=envelope, timeout=timeout
                    )
                except Exception as exc:  # re-raised below, outside the task group
                    error = exc
                group.cancel_scope.cancel()
        if failed:
            raise failed[0]
        if error is not None:
            raise error
        return reply

    async def _call(
        self,
        destination: str,
        payload: bytes,
        envelope: type[Envelope] | None,
        timeout: float | None,
        *,
        at_most_once: bool,
    ) -> bytes:
        breaker: CircuitBreaker | None = None
        probe = False
        try:
            if self._state != "open":
                raise self._not_open()  # noqa: TRY301 - the except below adds a checkpoint
            if not isinstance(payload, _BYTES_LIKE):
                raise TypeError(f"payload must be bytes, got {type(payload).__name__}")  # noqa: TRY301
            if timeout is None:
                timeout = self._default_timeout
            else:
                _check_timeout(timeout)
            envelope = envelope or self._default_envelope
            driver = self._drivers.get(envelope) or self._driver(envelope)
            peer = driver.peers.get(destination)
            if peer is None:
                _check_destination(destination)  # once per peer, not per request
                peer = driver.get_or_create_peer(destination)
            loop = self._loop
            assert loop is not None
            circuit = driver.breaker(destination) if self._circuits else None
            admitted = None if circuit is None else circuit.admit(loop.now())
            if circuit is not None and admitted is None:
                driver.protocol.stats.circuit_rejections += 1
                raise CircuitOpen(  # noqa: TRY301
                    f"circuit to {destination} is open after {circuit.failures} failures in a "
                    f"row (PeerConfig.circuit_threshold={circuit.threshold}); failing at once, "
                    f"without touching the network; a probe goes through in "
                    f"{circuit.retry_in(loop.now()):.3g}s"
                )
            breaker, probe = circuit, bool(admitted)  # the probe's outcome decides
            if peer.full:
                # Backpressure: a burst larger than the peer's queue waits for room,
                # within the call's timeout, instead of failing a healthy remote.
                started = loop.now()
                with anyio.move_on_after(timeout):
                    await peer.wait_room()
                waited = loop.now() - started
                if peer.full or waited >= timeout:
                    raise peer.queue_full(timeout)  # noqa: TRY301
                timeout -= waited
            correlation_id = driver.protocol.start_request(
                destination,
                bytes(payload),
                now=loop.now(),
                timeout=timeout,
                at_most_once=at_most_once,
            )
            if self._run is not None:
                self._run_note(
                    f"request {correlation_id} to {destination} ({len(payload)} bytes, "
                    f"{'at most once' if at_most_once else 'at least once'}, "
                    f"timeout {timeout:g}s)"
                )
        except BaseException:
            if breaker is not None and probe:
                breaker.probe_abandoned()  # let another probe through
            # Every public async call is a checkpoint, also when it raises (trio's
            # rule): a retry loop around a call that fails at once must still let
            # other tasks -- the writer that would make room, say -- run.
            await anyio.lowlevel.checkpoint()
            raise
        waiters = self._waiters[envelope]
        waiter = waiters[correlation_id] = _Waiter(loop.new_event())
        try:
            driver.flush()
            # No timer of our own: the protocol owns this request's deadline, and the
            # driver's timer task completes it with TransportTimeout at now + timeout.
            await waiter.event.wait()
            completion = waiter.completion
            assert completion is not None
            if breaker is not None:
                if isinstance(completion.error, TransportTimeout | ConnectionFailed):
                    breaker.record_failure(loop.now(), probe=probe)
                else:
                    breaker.record_success()
            if self._run is not None:
                error = completion.error
                self._run_note(
                    f"reply to {correlation_id} from {destination}"
                    if error is None
                    else f"request {correlation_id} to {destination} failed: "
                    f"{type(error).__name__}: {error}"
                )
            return completion.unwrap()
        finally:
            if self._run is not None and waiter.completion is None:
                self._run_note(f"request {correlation_id} to {destination} cancelled")
            del waiters[correlation_id]
            if waiter.completion is None:
                # Timed out or cancelled: a reply arriving later is dropped and
                # counted, and a frame still queued is dropped unwritten.
                driver.cancel(destination, correlation_id)
                if breaker is not None and probe:
                    breaker.probe_abandoned()

    def _run_note(self, text: str) -> None:
        assert self._run is not None
        self._run.note("rpc", text)

    # -- what the transport knows of its remotes ---------------------------------------

    def circuit_state(self, address: str) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"``: the circuit towards ``address``.

        Always ``"closed"`` without ``PeerConfig.circuit_threshold``.
        """
        breaker = self._breakers.get(address)
        return "closed" if breaker is None else breaker.state.value


def _complete(waiters: dict[int, _Waiter], completion: Completion) -> None:
    waiter = waiters.get(completion.correlation_id)
    if waiter is not None and waiter.completion is None:
        waiter.completion = completion
        waiter.event.set()


def _check_destination(destination: str) -> None:
    if parse_address(destination).port == 0:
        # Port 0 means "any free port" to listen(), and is nowhere to connect to.
        # Caught here, not by the peer's connect, where it used to crash the
        # transport's background tasks.
        raise InvalidAddress(f"cannot send to {destination!r}: port 0 is not a real port")


def _check_timeout(timeout: float) -> None:
    if not (isinstance(timeout, int | float) and 0 < timeout < math.inf):
        raise ValueError(f"timeout must be a positive, finite number of seconds, got {timeout!r}")
