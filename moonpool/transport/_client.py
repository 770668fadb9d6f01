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
from moonpool.transport._driver import TransportDriver
from moonpool.transport._envelope import Envelope, RequestResponseEnvelope
from moonpool.transport._errors import TransportClosed
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
    ) -> None:
        _check_timeout(timeout)
        self._network = network
        self._default_envelope = envelope
        self._default_timeout = timeout
        self._retry = retry or RetryPolicy()
        self._peer_config = peer_config or PeerConfig()
        self._max_frame_size = max_frame_size
        self._drivers: dict[type[Any], TransportDriver[Any]] = {}
        self._waiters: dict[tuple[type[Any], int], _Waiter] = {}
        self._tasks: BackgroundTasks | None = None
        self._loop: LoopBindings | None = None
        self._state = "new"
        # Correlation ids, retry and reconnect jitter; pass a seeded Random to make a
        # component test outside a simulation replayable.
        self._rng = rng if rng is not None else transport_random()
        # Correlation ids start at a random point so that two client incarnations
        # talking to one server are unlikely to reuse each other's ids.
        self._first_id = self._rng.getrandbits(32) + 1

    def __repr__(self) -> str:
        return f"<ClientTransport {self._state} pending={len(self._waiters)}>"

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
        for driver in self._drivers.values():
            driver.protocol.close()
            driver.close()
            self._deliver_all(driver)
        if was_open and self._tasks is not None:
            self._tasks.cancel()

    def _deliver_all(self, driver: TransportDriver[Any]) -> None:
        while (completion := driver.protocol.poll_completion()) is not None:
            self._complete(driver.protocol.envelope_type, completion)

    @property
    def closed(self) -> bool:
        return self._state == "closed"

    @property
    def pending(self) -> int:
        """Requests waiting for a reply."""
        return len(self._waiters)

    def stats(self, envelope: type[Envelope] | None = None) -> Any:
        """The protocol counters for ``envelope`` (default: the transport's envelope)."""
        driver = self._drivers.get(envelope or self._default_envelope)
        return None if driver is None else driver.protocol.stats

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
            driver = TransportDriver(
                self._network,
                protocol,
                self._tasks,
                on_completion=lambda c: self._complete(envelope, c),
                peer_config=self._peer_config,
                rng=self._rng,
            )
            self._drivers[envelope] = driver
        return driver

    def _complete(self, envelope: type[Any], completion: Completion) -> None:
        waiter = self._waiters.get((envelope, completion.correlation_id))
        if waiter is not None and waiter.completion is None:
            waiter.completion = completion
            waiter.event.set()

    def _not_open(self) -> TransportClosed:
        if self._state == "closed":
            return TransportClosed("ClientTransport is closed")
        return TransportClosed(
            "ClientTransport is not open: use it as 'async with ClientTransport(...)'"
        )

    async def get_reply(
        self,
        destination: str,
        payload: bytes,
        *,
        envelope: type[Envelope] | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """Send ``payload`` to ``destination`` and return the reply's payload.

        ``envelope`` picks the wire format (default: the transport's, normally
        :class:`RequestResponseEnvelope`).  Raises :class:`TransportTimeout` when no
        reply arrives within ``timeout`` seconds, :class:`ConnectionFailed` when the
        connection cannot be made or breaks under the request,
        :class:`RemoteError` for an error reply, :class:`SendQueueFull` when the
        peer's queue stayed full for the whole timeout (a full queue makes the
        call wait for room first: backpressure), :class:`TransportClosed` when the transport is
        closed, :class:`FrameTooLarge` (before anything is queued) when the request
        would exceed ``max_frame_size``, header included, and ``ValueError``
        (``InvalidAddress``) for a malformed destination.  It is a checkpoint
        (it yields to other tasks) whether it returns or raises.
        """
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
                destination, bytes(payload), now=loop.now(), timeout=timeout
            )
        except BaseException:
            # Every public async call is a checkpoint, also when it raises (trio's
            # rule): a retry loop around a call that fails at once must still let
            # other tasks -- the writer that would make room, say -- run.
            await anyio.lowlevel.checkpoint()
            raise
        key = (envelope, correlation_id)
        waiter = self._waiters[key] = _Waiter(loop.new_event())
        try:
            driver.flush()
            # No timer of our own: the protocol owns this request's deadline, and the
            # driver's timer task completes it with TransportTimeout at now + timeout.
            await waiter.event.wait()
            completion = waiter.completion
            assert completion is not None
            return completion.unwrap()
        finally:
            del self._waiters[key]
            if waiter.completion is None:
                # Timed out or cancelled: a reply arriving later is dropped and counted.
                driver.protocol.cancel_request(correlation_id)


def _check_destination(destination: str) -> None:
    if parse_address(destination).port == 0:
        # Port 0 means "any free port" to listen(), and is nowhere to connect to.
        # Caught here, not by the peer's connect, where it used to crash the
        # transport's background tasks.
        raise InvalidAddress(f"cannot send to {destination!r}: port 0 is not a real port")


def _check_timeout(timeout: float) -> None:
    if not (isinstance(timeout, int | float) and 0 < timeout < math.inf):
        raise ValueError(f"timeout must be a positive, finite number of seconds, got {timeout!r}")
