"""``ServerTransport``: accept connections, hand out requests, route replies back.

Each accepted connection is served by its own task for its whole life -- reading,
decoding, and writing replies -- so the bug the plan describes (a server that did
I/O only on its first tick) has no place to live: there is no tick.  Requests from
every connection meet in one bounded queue that the application consumes with
``async for request in server``; a reply goes back on the connection its request
came from, queued synchronously with :meth:`ServerTransport.send_reply`.

Bad bytes on one connection close that connection (with a logged
:class:`SerializationError`) and nothing else.  Limits keep memory bounded
whatever clients do: a maximum frame size, a maximum number of connections, a
bounded request queue (a client that floods it stops being read: TCP
backpressure) and a bounded reply queue per connection.  A ``frame_timeout``
closes connections that start a frame and never finish it ("slowloris"), so
they cannot hold a connection slot and a frame buffer forever; an
``idle_timeout`` closes connections that have nothing to do, and at
``max_connections`` a new client takes the slot of the longest-idle connection
rather than being refused, so silent sockets cannot lock clients out.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Generic, Self, TypedDict, TypeVar, Unpack, cast, final, overload

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from moonpool._ground._run import current_run
from moonpool._ground._timeline import current_host
from moonpool.net import InvalidAddress, Listener, NetworkProvider
from moonpool.net._nowait import PushReceiver, nonblocking_sender, push_receiver
from moonpool.transport._background import BackgroundTasks
from moonpool.transport._dead_letters import DEFAULT_DEAD_LETTERS, DeadLetters
from moonpool.transport._envelope import Envelope, KindedEnvelope, RequestResponseEnvelope
from moonpool.transport._errors import (
    BindFailed,
    ConnectionFailed,
    SendQueueFull,
    SerializationError,
    TransportClosed,
)
from moonpool.transport._frame_queue import ByteBudget, FrameQueue, write_frames
from moonpool.transport._framing import DEFAULT_MAX_FRAME_SIZE
from moonpool.transport._loop_bindings import bind_running_loop
from moonpool.transport._protocol import ONE_WAY_ID, PING_ID, TransportProtocol
from moonpool.transport._request_queue import FairQueue

__all__ = ["ReceivedEnvelope", "RequestHandler", "ServerStats", "ServerTransport"]

log = logging.getLogger("moonpool.transport")

E = TypeVar("E", bound=Envelope)
_Other = TypeVar("_Other", bound=Envelope)


class ServerLimits(TypedDict, total=False):
    """The keyword options of :meth:`ServerTransport.bind` (see the class doc)."""

    max_frame_size: int
    max_connections: int
    max_pending_requests: int
    max_pending_request_bytes: int
    max_queued_replies: int
    max_queued_reply_bytes: int
    max_total_reply_bytes: int
    drain_timeout: float
    frame_timeout: float | None
    idle_timeout: float | None
    max_dead_letters: int


#: What :meth:`ServerTransport.serve` calls for each request: returns the reply's
#: payload, or ``None`` when it replied itself (or means not to reply).
RequestHandler = Callable[["ReceivedEnvelope[E]"], Awaitable[bytes | None]]


class _DefaultIdleTimeout(float):
    """The default ``idle_timeout``: 300 s on a real network, none in simulation.

    A distinct float, so that an explicit ``idle_timeout=300`` is told apart from
    the default and honoured in simulation too.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"{float(self):g} (None in simulation)"


DEFAULT_IDLE_TIMEOUT: Final = _DefaultIdleTimeout(300.0)

#: What a waiting request costs beyond its payload (the envelope and request
#: objects), as counted against ``max_pending_request_bytes``.
REQUEST_OVERHEAD: Final = 512

#: Most requests the application takes without waiting, or ``serve`` handles in
#: a connection's task, before the other tasks run (the connections' readers among
#: them): the bound on how long a greedy connection's backlog keeps the others
#: waiting.  Smaller is fairer but splits pipelined batches into more writes:
#: measured, one per turn made 64 pipelined requests 3-4 times slower.
TURN: Final = 16


@dataclass(slots=True)
class ServerStats:
    """Counters of a server's connections, requests and replies (``ServerTransport.stats``)."""

    connections_accepted: int = 0
    #: Refused at ``max_connections`` because no connection was idle to make room.
    connections_rejected: int = 0
    #: Closed at ``max_connections`` to make room for a new one (the longest idle).
    connections_evicted: int = 0
    #: Closed after ``idle_timeout`` with nothing to do.
    connections_closed_idle: int = 0
    connections_closed_for_bad_input: int = 0
    connections_closed_for_slow_frames: int = 0
    requests_received: int = 0
    replies_sent: int = 0
    #: Health pings answered (by the transport: they never reach the application).
    pings_answered: int = 0
    #: Replies recorded in ``dead_letters``: their client had gone.
    dead_letters: int = 0


#: The outbox tag of a ping's answer (replies are untagged).
_PING_TAG: Final = -1


class _Connection:
    """Server-side state of one accepted connection."""

    __slots__ = (
        "_answered",
        "closed",
        "id",
        "last_active",
        "outbox",
        "outstanding",
        "source",
        "stream",
        "tasks",
        "writer_done",
    )

    def __init__(
        self,
        connection_id: str,
        source: str,
        stream: anyio.abc.ByteStream,
        queue: int,
        queue_bytes: int,
        budget: ByteBudget,
        activity: int,
    ) -> None:
        self.id = connection_id
        self.source = source
        self.stream = stream
        self.closed = False
        # The server's activity count when bytes last arrived or a reply was last
        # queued: an order, not a time (reading the clock on every read and reply
        # cost more than the rest of the bookkeeping).  Eviction takes the lowest;
        # the idle reaper maps counts to times at its own checks.
        self.last_active = activity
        self.outstanding = 0  # requests handed to the application, not yet answered
        self._answered: anyio.Event | None = None
        self.outbox = FrameQueue(queue, byte_limit=queue_bytes, budget=budget)
        # The connection's task group while it is being served.
        self.tasks: anyio.abc.TaskGroup | None = None
        # Created when the writer task is started, set when it has finished.  Most replies
        # leave through the outbox's fast path, so an idle or request/response
        # connection may never need a writer: it is started on the first backlog
        # (a third of an idle connection's memory, measured).
        self.writer_done: anyio.Event | None = None

    def is_idle(self, mid_frame: bool) -> bool:
        """Nothing to do: no unanswered request, no unwritten reply, no half frame."""
        return (
            not self.closed
            and self.tasks is not None
            and not self.outstanding
            and not self.outbox
            and not mid_frame
        )

    def close_now(self) -> None:
        """Close from outside its task (idle or evicted): its task unwinds at once.

        A socket is shut down rather than its task cancelled: the reader then sees
        the end of the stream and returns like after any hang-up.  On trio a
        cancellation delivered from here creates its ``Cancelled`` in this stack,
        and the reference cycles through that exception's traceback kept every
        evicted connection (and the canceller's frames) alive until the cyclic
        garbage collector ran: 20 % more memory than the limits promised.
        """
        tasks = self.tasks
        self.shut()
        sock = self.stream.extra(SocketAttribute.raw_socket, None)
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
                return
        if tasks is not None:
            tasks.cancel_scope.cancel()

    def answered_one(self) -> None:
        self.outstanding -= 1
        if self.outstanding == 0 and self._answered is not None:
            self._answered.set()

    def shut(self) -> int:
        """No more replies: the connection is closing (idempotent).

        Replies still queued can never be written now: they are dropped at once,
        not kept until the last reference to the connection goes (a request the
        application still holds is one), which let a closed connection hold tens
        of megabytes of unread replies.  Returns how many were dropped.
        """
        self.closed = True
        self.tasks = None
        self.outbox.sender = None
        pings = self.outbox.count_tag(_PING_TAG)
        dropped = self.outbox.clear()
        self.outbox.close()
        return dropped - pings  # answers to pings are not replies anyone waits for

    def abandon(self) -> None:
        """The connection can carry no more replies: stop waiting for them."""
        self.closed = True
        self.outstanding = 0
        if self._answered is not None:
            self._answered.set()

    async def wait_all_answered(self) -> None:
        if self.outstanding:
            self._answered = anyio.Event()
            await self._answered.wait()

    async def wait_all_written(self) -> None:
        """Close the outbox and wait until the writer (if any) has written it all."""
        self.outbox.close()
        if self.writer_done is not None:
            await self.writer_done.wait()


@final
class ReceivedEnvelope(Generic[E]):
    """A request as the server application sees it."""

    __slots__ = (
        "_answered",
        "_connection",
        "_owes_yield",
        "_server",
        "envelope",
        "expects_reply",
        "payload",
        "request_id",
        "source",
    )

    def __init__(
        self,
        envelope: E,
        source: str,
        connection: _Connection,
        server: ServerTransport[E],
        expects_reply: bool = True,
    ) -> None:
        self.envelope = envelope
        self.payload = envelope.extract_payload()
        #: The same on every resend of one ``get_reply`` call, distinct across calls
        #: and across client restarts (its correlation id, see ``ClientTransport``):
        #: what a server deduplicates at-least-once requests by.
        self.request_id: int = envelope.correlation_id
        self.source = source
        #: False for a one-way message (a ``KindedEnvelope`` that wants no reply).
        self.expects_reply = expects_reply
        self._connection = connection
        self._server = server
        # Whether a reply was queued: only the first one counts the request answered.
        self._answered = False
        # Handed out without a yield (ServerTransport._next_request): reply() yields.
        self._owes_yield = False

    def __repr__(self) -> str:
        return (
            f"<ReceivedEnvelope from {self.source} id={self.envelope.correlation_id} "
            f"{len(self.payload)} bytes>"
        )

    async def reply(self, payload: bytes) -> None:
        """Queue the reply (like :meth:`ServerTransport.send_reply`).

        A cancel point: a cancelled caller gets ``Cancelled`` and nothing is
        queued.  An ``async for`` loop that replies yields once per request, so
        other connections and tasks run beside a client that pipelines: the
        ``async for`` (or :meth:`ServerTransport.receive`) yields when it had to
        wait for the request, and this yields when it did not (a request taken
        from a backlog) or when it raises.  Not twice: on a connection that
        waits for each reply, that would be a task step per request for nothing.
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        try:
            self._server.send_reply(self, payload)
        except BaseException:
            await anyio.lowlevel.checkpoint()
            raise
        if self._owes_yield:
            self._owes_yield = False
            await anyio.lowlevel.cancel_shielded_checkpoint()  # the reply is queued


def _source_of(stream: anyio.abc.ByteStream, fallback: str) -> str:
    remote = stream.extra(SocketAttribute.remote_address, None)
    if isinstance(remote, tuple) and len(remote) >= 2:
        host, port = remote[0], remote[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return fallback


class _TaskNeeded(Exception):
    """Internal: pushed requests need the connection's task (see ``_push_requests``)."""


def _queued(pending: FairQueue[ReceivedEnvelope[E]], request: ReceivedEnvelope[E]) -> bool:
    """Queue ``request`` for ``async for`` if there is room now; False if not (or closed:
    the reading task then finds out, waiting for room, and ends)."""
    try:
        return pending.put_nowait(
            request._connection.id, request, len(request.payload) + REQUEST_OVERHEAD
        )
    except anyio.ClosedResourceError:
        return False


@final
class ServerTransport(Generic[E]):
    """Serves requests on one address; use as ``async with ServerTransport.bind(...)``.

    The limits (README's "Limits" lists them with their defaults):

    * ``max_frame_size`` -- largest frame, header included, either way;
    * ``max_connections`` -- at the limit a new client takes the slot of the
      longest-idle connection (no unanswered request, no unwritten reply, no half
      frame); it is refused only when every connection is busy;
    * ``max_pending_requests``, ``max_pending_request_bytes`` -- requests waiting
      for the application (payloads plus 512 bytes each); beyond them the server
      stops reading (TCP pushes back).  The application takes them in turn by
      connection, one from each that has any, so a client pipelining hundreds of
      requests does not make the others wait behind all of them;
    * ``max_queued_replies``, ``max_queued_reply_bytes`` -- replies queued to one
      connection (besides the one being written), ``max_total_reply_bytes`` -- to
      all of them, writes in progress included; beyond, :meth:`send_reply` raises
      :class:`SendQueueFull`;
    * ``drain_timeout`` -- how long a half-closed connection's last replies get;
    * ``frame_timeout`` -- how long a client may take to finish a frame it started;
    * ``idle_timeout`` -- how long a connection with nothing to do stays open
      (checked four times per timeout, so it closes within 1.25 times it).  The
      default is 300 s on a real network and none in simulation, where idle
      connections are part of most tests; pass a value to have one there too.
      As with HTTP keep-alive, a request sent just as its idle connection closes
      fails with :class:`ConnectionFailed`: the client cannot know whether it
      was read.
    """

    def __init__(
        self,
        network: NetworkProvider,
        address: str,
        *,
        envelope: type[E] = RequestResponseEnvelope,  # type: ignore[assignment]
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_connections: int = 1024,
        max_pending_requests: int = 1024,
        max_pending_request_bytes: int = 64 * 1024 * 1024,
        max_queued_replies: int = 4096,
        max_queued_reply_bytes: int = 4 * 1024 * 1024,
        max_total_reply_bytes: int = 64 * 1024 * 1024,
        drain_timeout: float = 5.0,
        frame_timeout: float | None = 30.0,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        max_dead_letters: int = DEFAULT_DEAD_LETTERS,
    ) -> None:
        limits = (
            max_connections,
            max_pending_requests,
            max_pending_request_bytes,
            max_queued_replies,
            max_queued_reply_bytes,
            max_total_reply_bytes,
        )
        if min(limits) < 1:
            raise ValueError(
                "max_connections, max_pending_requests, max_pending_request_bytes, "
                "max_queued_replies, "
                "max_queued_reply_bytes and max_total_reply_bytes must be >= 1"
            )
        for name, timeout in (("frame_timeout", frame_timeout), ("idle_timeout", idle_timeout)):
            if timeout is not None and not 0 < timeout < math.inf:
                raise ValueError(f"{name} must be positive and finite, or None, got {timeout!r}")
        self._run = current_run()  # a simulation's: its timeline hears of each request
        # Whose events those are: pushed requests are noted outside any task, where
        # the running task's host is not known (see _push_requests).
        self._host = current_host()
        if idle_timeout is DEFAULT_IDLE_TIMEOUT and self._run is not None:
            # Simulated seeds run for simulated minutes with connections that are
            # idle by design; an idle close there is asked for, not imposed.
            idle_timeout = None
        self._network = network
        self._requested_address = address
        self._protocol: TransportProtocol[E] = TransportProtocol(
            envelope, serves_requests=True, max_frame_size=max_frame_size
        )
        self._kinded = issubclass(envelope, KindedEnvelope)
        self._max_connections = max_connections
        self._max_queued_replies = max_queued_replies
        self._max_queued_reply_bytes = max_queued_reply_bytes
        # Replies queued to every client together (one non-reading client is held
        # back by the per-connection bound, many by this one).
        self._reply_budget = ByteBudget(max_total_reply_bytes)
        self._drain_timeout = drain_timeout
        # Slowloris protection: how long a connection may keep us waiting for the
        # rest of a frame it has started.  Idle connections (between frames) are
        # not affected; max_connections bounds those.
        self._frame_timeout = frame_timeout
        # The loop's clock, bound on entering (push callbacks run outside any task).
        self._now: Callable[[], float] = anyio.current_time
        self._idle_timeout = None if idle_timeout is None else float(idle_timeout)
        self._pending: FairQueue[ReceivedEnvelope[E]] = FairQueue(
            max_pending_requests, max_pending_request_bytes
        )
        # Requests the application took in a row without waiting (see TURN).
        self._taken_in_a_row = 0
        self._connections: dict[str, _Connection] = {}
        # Counts reads and replies on every connection (see _Connection.last_active).
        self._activity = 0
        self._next_connection = 0
        self._listener: Listener | None = None
        self._tasks: BackgroundTasks | None = None
        self._state = "new"
        self._handler: RequestHandler[E] | None = None
        # Wakes serve(): set when the server closes or the handler fails.
        self._serve_stop: anyio.Event | None = None
        self._handler_error: Exception | None = None
        self.stats = ServerStats()
        #: Replies that could not be delivered because their client had gone.
        self.dead_letters = DeadLetters(max_dead_letters)

    @overload
    @classmethod
    def bind(
        cls, network: NetworkProvider, address: str, **options: Unpack[ServerLimits]
    ) -> ServerTransport[RequestResponseEnvelope]: ...

    @overload
    @classmethod
    def bind(
        cls,
        network: NetworkProvider,
        address: str,
        *,
        envelope: type[_Other],
        **options: Unpack[ServerLimits],
    ) -> ServerTransport[_Other]: ...

    @classmethod
    def bind(
        cls,
        network: NetworkProvider,
        address: str,
        *,
        envelope: type[Envelope] = RequestResponseEnvelope,
        **options: Unpack[ServerLimits],
    ) -> ServerTransport[Any]:
        """A server for ``address`` (port 0 picks a free port); it binds on ``async with``.

        Typed by its envelope: ``ServerTransport[RequestResponseEnvelope]`` by
        default, so that handlers take ``ReceivedEnvelope[RequestResponseEnvelope]``
        and a user's code type-checks under ``mypy --strict`` without ``Any``.
        """
        return ServerTransport(network, address, envelope=envelope, **options)

    def __repr__(self) -> str:
        return (
            f"<ServerTransport {self.address} {self._state} connections={len(self._connections)}>"
        )

    @property
    def address(self) -> str:
        """The bound address once open (the real port if 0 was asked), else the requested one."""
        return self._listener.address if self._listener is not None else self._requested_address

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    @property
    def queued_requests(self) -> int:
        """Requests received and waiting for ``async for`` / ``receive()`` (at most
        ``max_pending_requests``: a connection whose next request does not fit is
        not read until there is room)."""
        return len(self._pending)

    @property
    def protocol_stats(self) -> Any:
        return self._protocol.stats

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise TransportClosed("a ServerTransport can be entered only once")
        try:
            self._listener = await self._network.listen(self._requested_address)
        except InvalidAddress:
            raise
        except OSError as exc:
            raise BindFailed(f"cannot listen on {self._requested_address}: {exc}") from exc
        tasks = BackgroundTasks()
        try:
            await tasks.__aenter__()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._listener.aclose()
            raise
        self._tasks = tasks
        self._now = bind_running_loop().now
        self._state = "open"
        # The loop gets the listener and the task group as arguments: __aexit__ clears
        # ``self._tasks`` before the group finishes, and a task cancelled before its
        # first step (the block exited at once) still starts running.
        tasks.start_soon(
            self._accept_loop,
            self._listener,
            tasks,
            name=f"moonpool server accept {self.address}",
        )
        if self._idle_timeout is not None:
            tasks.start_soon(
                self._reap_idle, self._idle_timeout, name=f"moonpool server idle {self.address}"
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self._shut_down()
        tasks, listener = self._tasks, self._listener
        if tasks is None or listener is None:
            return False
        self._tasks = None
        try:
            return await tasks.__aexit__(exc_type, exc, tb)
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()
                # A connection task cancelled before its first step (possible on
                # asyncio when closing right after an accept) never ran its cleanup.
                for connection in list(self._connections.values()):
                    self._connections.pop(connection.id, None)
                    await connection.stream.aclose()

    async def aclose(self) -> None:
        """Stop accepting, close every connection and end iteration.

        Safe from any task (e.g. one watching for shutdown): the connection tasks
        are cancelled at once and are gone when the ``async with`` block exits.
        """
        self._shut_down()
        await anyio.lowlevel.checkpoint()

    def _shut_down(self) -> None:
        if self._state == "closed":
            return
        was_open = self._state == "open"
        self._state = "closed"
        if self._serve_stop is not None:
            self._serve_stop.set()
        self._pending.close()
        self._protocol.close()
        if was_open and self._tasks is not None:
            self._tasks.cancel()

    # -- receiving ------------------------------------------------------------------

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ReceivedEnvelope[E]:
        try:
            return await self._next_request()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def receive(self) -> ReceivedEnvelope[E]:
        """The next request; raises :class:`TransportClosed` once the server is closed."""
        try:
            return await self._next_request()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise TransportClosed(f"server {self.address} is closed") from None

    async def _next_request(self) -> ReceivedEnvelope[E]:
        if self._state == "new":
            raise TransportClosed(
                "ServerTransport is not open: use it as 'async with ServerTransport.bind(...)'"
            )
        if self._handler is not None:
            raise RuntimeError(
                "this server is answering requests with serve(); none reach 'async for' "
                "or receive() while it runs"
            )
        # Take a waiting request without a scheduling round trip: when a batch of
        # pipelined requests arrived together, the application answers them before
        # the connection's writer runs, and the replies leave in one write.  Only
        # TURN in a row, though: then the connections' tasks get to read, or an
        # application that replies without awaiting would keep everyone else's
        # requests unread until the queue ran dry.
        if self._taken_in_a_row < TURN:
            try:
                request = self._pending.get_nowait()
            except anyio.WouldBlock:
                # Nothing waiting: the wait below yields anyway, so no checkpoint
                # first (it cost a task step per request to a sequential caller).
                self._taken_in_a_row = 0
                return await self._pending.get()
            self._taken_in_a_row += 1
            request._owes_yield = True
            return request
        self._taken_in_a_row = 0
        await anyio.lowlevel.checkpoint()
        return await self._pending.get()

    def poll_receive(self) -> ReceivedEnvelope[E] | None:
        """The next request if one is already waiting, else ``None``; never blocks."""
        try:
            return self._pending.get_nowait()
        except anyio.WouldBlock:
            return None
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise TransportClosed(f"server {self.address} is closed") from None

    async def serve(self, handler: RequestHandler[E]) -> None:
        """Answer every request with ``handler`` until the server closes.

        ``await handler(request)`` returns the reply's payload (sent as by
        :meth:`send_reply`), or ``None`` if the handler replied itself or means
        not to.  The handler runs *in the reading task of the request's
        connection*, like a ``trio.serve_tcp`` handler: no task hand-off per
        request, which makes a round trip on an idle connection markedly cheaper
        than ``async for``.  The price is that a connection is not read while
        its handler awaits, so requests on one connection are handled one after
        the other (other connections are unaffected); a handler with slow work
        should start a task for it and reply from there.

        An exception escaping the handler ends ``serve``, which raises it (the
        connection of the failed request is closed); a reply that can no longer
        be delivered (the client left) is only logged.  Requests that were
        already waiting for ``async for`` are answered first.  ``serve`` returns
        once the server is closed (:meth:`aclose`, or leaving the ``async with``).
        """
        if self._state == "new":
            raise TransportClosed(
                "ServerTransport is not open: use it as 'async with ServerTransport.bind(...)'"
            )
        if self._handler is not None:
            raise RuntimeError("serve() is already running on this server")
        if self._state == "closed":
            return
        stop = self._serve_stop = anyio.Event()
        self._handler_error = None
        self._handler = handler
        try:
            while (request := self._waiting_request()) is not None:
                if not await self._handle(handler, request):
                    break
            await stop.wait()
            if self._handler_error is not None:
                raise self._handler_error
        finally:
            self._handler = None
            self._serve_stop = None
            self._handler_error = None

    def _waiting_request(self) -> ReceivedEnvelope[E] | None:
        try:
            return self._pending.get_nowait()
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            return None

    async def _handle(self, handler: RequestHandler[E], request: ReceivedEnvelope[E]) -> bool:
        """Run the handler on one request; False if it failed (serve() raises it)."""
        try:
            reply = await handler(request)
        except Exception as exc:
            if self._handler_error is None and self._serve_stop is not None:
                self._handler_error = exc
                self._serve_stop.set()
            return False
        if reply is None:
            return True
        if not request.expects_reply:
            # A one-way message: its sender waits for nothing, and a handler written
            # for requests (an echo, say) must not take the server down over it.
            log.debug("server %s: handler's answer to a one-way message dropped", self.address)
            return True
        try:
            self.send_reply(request, reply)
        except (ConnectionFailed, TransportClosed) as exc:
            log.debug("server %s: reply to %s not sent: %s", self.address, request.source, exc)
        except SendQueueFull as exc:
            log.warning("server %s: reply dropped: %s", self.address, exc)
            self._dead_replies(request.source, 1, str(exc))
        return True

    # -- replying -------------------------------------------------------------------

    def send_reply(self, request: ReceivedEnvelope[E], payload: bytes) -> None:
        """Queue ``payload`` as the reply to ``request`` on the connection it came from.

        Raises :class:`ConnectionFailed` if that connection is gone (the client will
        see its request fail or time out), :class:`SendQueueFull` if the client is
        not reading its replies, :class:`TransportClosed` after close, and
        :class:`SerializationError` if the reply cannot be encoded --
        :class:`FrameTooLarge` when it would exceed ``max_frame_size`` (header
        included): nothing is queued then, and the connection stays up for the
        other replies.
        """
        if self._state != "open":
            raise TransportClosed(f"server {self.address} is closed")
        connection = request._connection
        if request._server is not self:
            raise ValueError("this request was received by another ServerTransport")
        if not request.expects_reply:
            raise ValueError(f"{request!r} is a one-way message: its sender expects no reply")
        outbox = connection.outbox
        if connection.closed or outbox.closed:
            reason = f"cannot reply to {request.source}: its connection closed before the reply"
            self._dead_replies(request.source, 1, reason)
            raise ConnectionFailed(reason)
        if outbox.full:
            budget = self._reply_budget
            if budget.used >= budget.limit:
                limit = (
                    f"{budget.used} bytes of replies queued to all clients together "
                    f"(max_total_reply_bytes={budget.limit})"
                )
            else:
                limit = (
                    f"{len(outbox)} replies, {outbox.queued_bytes} bytes unread (limits: "
                    f"max_queued_replies={self._max_queued_replies}, "
                    f"max_queued_reply_bytes={self._max_queued_reply_bytes})"
                )
            raise SendQueueFull(
                f"reply queue to {request.source} is full: {limit}; the client is not "
                f"reading its replies -- raise the limit on ServerTransport if it is slow "
                f"by design"
            )
        frame = self._protocol.send(request.envelope.create_reply(bytes(payload)))
        if self._run is not None:
            self._run.note("rpc", f"reply to {request.request_id} queued for {request.source}")
        # The last reply a connection owes goes out from this task at once (with
        # any queued before it); while more are owed, replies wait in the outbox
        # so that a pipelined batch leaves in one write.
        outbox.put(frame, write_now=connection.outstanding <= 1)
        self._activity += 1
        connection.last_active = self._activity
        if outbox and connection.writer_done is None:
            self._start_writer(connection)
        self.stats.replies_sent += 1
        # A second reply to the same request must not count as answering another
        # one: that drove ``outstanding`` to zero early, and a half-closed
        # connection then closed before its other requests were answered.
        if not request._answered:
            request._answered = True
            connection.answered_one()

    # -- connections ----------------------------------------------------------------

    async def _accept_loop(self, listener: Listener, tasks: BackgroundTasks) -> None:
        while True:
            try:
                stream = await listener.accept()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            except OSError as exc:
                # EMFILE and friends: log, back off a little, keep serving the others.
                log.warning("server %s: accept failed: %s", self.address, exc)
                await anyio.sleep(0.1)
                continue
            if len(self._connections) >= self._max_connections and not self._evict_idle():
                self.stats.connections_rejected += 1
                log.warning(
                    "server %s: connection limit of %d reached and every connection is "
                    "busy; closing a new connection (raise max_connections if the "
                    "server has the memory)",
                    self.address,
                    self._max_connections,
                )
                with anyio.CancelScope(shield=True):
                    await stream.aclose()
                continue
            self._next_connection += 1
            self._activity += 1  # accepting counts: a note taken before it is older
            connection_id = f"conn-{self._next_connection}"
            connection = _Connection(
                connection_id,
                _source_of(stream, connection_id),
                stream,
                self._max_queued_replies,
                self._max_queued_reply_bytes,
                self._reply_budget,
                self._activity,
            )
            self._connections[connection_id] = connection
            self.stats.connections_accepted += 1
            tasks.start_soon(
                self._serve_connection, connection, name=f"moonpool server {connection.source}"
            )
            # Waiting for the next accept must not keep this connection (and what it
            # queues) alive after it closes.
            del stream, connection

    async def _serve_connection(self, connection: _Connection) -> None:
        try:
            async with connection.stream, anyio.create_task_group() as group:
                connection.tasks = group
                connection.outbox.sender = nonblocking_sender(connection.stream)
                try:
                    if await self._read_loop(connection):
                        # The client half-closed after its requests: answer them all,
                        # let the writer drain, then close -- within the drain timeout.
                        with anyio.move_on_after(self._drain_timeout):
                            await connection.wait_all_answered()
                            await connection.wait_all_written()
                finally:
                    # Closed now, before the task group and the stream finish closing:
                    # both still let other tasks run, and a reply sent meanwhile must
                    # fail with ConnectionFailed, not try to start a writer there.
                    self._dead_replies(
                        connection.source, connection.shut(), "its connection closed first"
                    )
                group.cancel_scope.cancel()
        finally:
            self._dead_replies(connection.source, connection.shut(), "its connection closed first")
            # Its requests still waiting for the application can never be answered:
            # they go now, with their bytes.
            self._pending.drop(connection.id)
            self._connections.pop(connection.id, None)
            if not self._protocol.closed:
                self._protocol.connection_lost(connection.id, now=anyio.current_time())

    async def _read_loop(self, connection: _Connection) -> bool:
        """Read requests until the connection ends; True if the client half-closed cleanly.

        While requests go to ``async for`` (no ``serve()`` handler) and the stream
        can push (asyncio's read callback, a simulation's wake-ups), bytes are
        decoded and queued for the application as they arrive, with no step of
        this task per read; it takes over -- reading with ``receive()`` -- when a
        request needs a task: ``serve()``'s handler runs in it, a full queue is
        waited for here (backpressure), a writer must be started.
        """
        protocol = self._protocol
        receive_into = push_receiver(connection.stream)
        budget = self._frame_timeout
        while True:
            try:
                before = protocol.buffered(connection.id)
                if receive_into is not None and self._handler is None:
                    received = await self._push_requests(connection, receive_into)
                    budget = self._frame_timeout  # waited on the client only, not on us
                else:
                    received, budget = await self._read_requests(connection, before, budget)
            except anyio.EndOfStream:
                partial = protocol.buffered(connection.id)
                if not partial:
                    return True
                self._bad_input(
                    connection,
                    SerializationError(
                        f"connection ended mid-frame, {partial} bytes into an unfinished frame"
                    ),
                )
                return False
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                return False
            except SerializationError as exc:
                self._bad_input(connection, exc)
                return False
            if received is None:
                self._slow_frame(connection, protocol.buffered(connection.id))
                return False
            self._ensure_writer(connection)  # a ping answer may have left a backlog
            if not await self._deliver(received):
                return False

    async def _read_requests(
        self, connection: _Connection, before: int, budget: float | None
    ) -> tuple[list[ReceivedEnvelope[E]] | None, float | None]:
        """One ``receive()``'s requests and the frame budget left (None: it ran out)."""
        protocol, stream = self._protocol, connection.stream
        if before and budget is not None:
            # Mid-frame: only the time spent waiting on the client counts, not
            # time spent blocked on a slow application below.
            waited_from = anyio.current_time()
            data: bytes | None = None
            with anyio.move_on_after(budget):
                data = await stream.receive()
            if data is None:
                return None, budget
            budget -= anyio.current_time() - waited_from
        else:
            data = await stream.receive()
        self._activity += 1
        connection.last_active = self._activity
        protocol.handle_received(connection.id, data)
        if before + len(data) > protocol.buffered(connection.id):
            budget = self._frame_timeout  # a frame completed: the next gets full time
        return self._take_received(), budget

    async def _push_requests(
        self, connection: _Connection, receive_into: PushReceiver
    ) -> list[ReceivedEnvelope[E]] | None:
        """Queue pushed requests for ``async for`` until some need this task.

        Returns the requests it could not queue without waiting (possibly none:
        a ``serve()`` handler appeared, or a writer must be started), or None when
        a frame stayed unfinished for ``frame_timeout``.  ``on_data`` runs outside
        any task on asyncio, so it touches nothing of anyio's but events it sets;
        the clock is the one bound when the server was entered.
        """
        protocol, pending = self._protocol, self._pending
        connection_id = connection.id
        frame_timeout = self._frame_timeout
        now = self._now
        held: list[ReceivedEnvelope[E]] = []
        # Armed while a frame is half received, from when it began (or the last
        # one completed): push mode only ever waits on the client.
        half_frame = anyio.CancelScope()

        def on_data(data: bytes) -> None:
            self._activity += 1
            connection.last_active = self._activity
            before = protocol.buffered(connection_id)
            protocol.handle_received(connection_id, data)
            received = self._take_received()
            for index, request in enumerate(received):
                if self._handler is not None or not _queued(pending, request):
                    held.extend(received[index:])
                    raise _TaskNeeded
            if connection.outbox and connection.writer_done is None:
                raise _TaskNeeded  # a ping's answer did not fit the socket: start a writer
            if frame_timeout is not None:
                buffered = protocol.buffered(connection_id)
                if not buffered:
                    half_frame.deadline = math.inf
                elif before + len(data) > buffered or half_frame.deadline == math.inf:
                    half_frame.deadline = now() + frame_timeout

        with half_frame:
            try:
                await receive_into(on_data)
            except _TaskNeeded:
                return held
        return None  # only the half-frame deadline ends the block without an error

    def _take_received(self) -> list[ReceivedEnvelope[E]]:
        """Every request decoded so far, each counted as owed by its connection."""
        received: list[ReceivedEnvelope[E]] = []
        protocol = self._protocol
        kinded = self._kinded
        while (item := protocol.poll_receive()) is not None:
            # The protocol's queue is shared by every connection: route each request
            # by the source the protocol recorded, never by "who is reading now".
            source_id, envelope = item
            origin = self._connections.get(source_id)
            if origin is None or origin.closed:
                # Its connection closed meanwhile (say, bad bytes right after this
                # request): nobody to answer.
                continue
            correlation_id = envelope.correlation_id
            if correlation_id == PING_ID:
                self._answer_ping(origin, envelope)
                continue
            self.stats.requests_received += 1
            expects_reply = (
                cast(KindedEnvelope, envelope).expects_reply()
                if kinded
                else correlation_id != ONE_WAY_ID
            )
            request = ReceivedEnvelope(envelope, origin.source, origin, self, expects_reply)
            if self._run is not None:
                self._run.note(
                    "rpc",
                    f"received {'request' if expects_reply else 'one-way message'} "
                    f"{correlation_id} from {origin.source}",
                    self._host,
                )
            if expects_reply:
                # Counted before any is handled, so that replies to all but the last
                # of a pipelined batch wait in the outbox and leave in one write.
                origin.outstanding += 1
            else:
                request._answered = True  # a one-way message is owed nothing
            received.append(request)
        return received

    async def _deliver(self, requests: list[ReceivedEnvelope[E]]) -> bool:
        """Hand requests to ``serve``'s handler or to ``async for``; False once closed.

        Bounded work per turn: with ``serve`` the other connections' tasks run
        after every TURN requests handled here, so one read's worth of pipelined
        requests (a few thousand small ones) cannot hold every other connection
        up; for ``async for`` the requests only queue, in their connection's line.
        """
        pending = self._pending
        last = len(requests) - 1
        for index, request in enumerate(requests):
            handler = self._handler
            if handler is not None:
                if not await self._handle(handler, request):
                    return False  # close this connection; serve() raises the error
                if index % TURN == TURN - 1 and index < last and len(self._connections) > 1:
                    # The next read yields anyway; within one read, the other
                    # connections (if any: alone, a turn only splits the batch's
                    # replies into more writes) get theirs every TURN requests.
                    await anyio.lowlevel.checkpoint()
                continue
            key = request._connection.id
            size = len(request.payload) + REQUEST_OVERHEAD
            try:
                # Hand over without yielding when there is room, so one read's
                # worth of pipelined requests reaches the application together.
                if not pending.put_nowait(key, request, size):
                    await pending.put(key, request, size)  # full: push back on TCP
            except anyio.ClosedResourceError:
                return False
        return True

    def _answer_ping(self, connection: _Connection, envelope: E) -> None:
        """A client's health ping: answered here, at once, never seen by the application."""
        outbox = connection.outbox
        if outbox.closed or outbox.full:
            return  # a client that does not read its replies will miss its pings too
        self.stats.pings_answered += 1
        # Tagged, so that a ping answer dropped at close is not counted as a reply.
        outbox.put(self._protocol.send(envelope.create_reply(b"")), write_now=True, tag=_PING_TAG)
        # A backlog left here gets its writer from the reading task (_ensure_writer):
        # this may run in a push callback, outside any task, where none can start.

    def _dead_replies(self, source: str, count: int, reason: str) -> None:
        if count:
            now = anyio.current_time()
            for _ in range(count):
                self.dead_letters.record("reply", source, reason, now)
            self.stats.dead_letters += count

    def _is_idle(self, connection: _Connection) -> bool:
        return connection.is_idle(mid_frame=self._protocol.buffered(connection.id) > 0)

    def _evict_idle(self) -> bool:
        """Close the longest-idle connection to make room for a new one; False if none is.

        Preferring the new client over a connection with nothing to do is what
        keeps a flood of silent sockets from locking every real client out.
        """
        idle = [c for c in self._connections.values() if self._is_idle(c)]
        if not idle:
            return False
        victim = min(idle, key=lambda connection: connection.last_active)
        self.stats.connections_evicted += 1
        self._close_idle(victim, f"connection limit of {self._max_connections} reached")
        return True

    async def _reap_idle(self, idle_timeout: float) -> None:
        """Close connections idle for ``idle_timeout`` (checked four times per timeout).

        One task for every connection, rather than a deadline on each read.  Each
        check notes the activity count and the time; a connection whose last
        activity came before a note at least ``idle_timeout`` old has been idle
        that long (so it closes between 1 and 1.25 times the timeout after it).
        """
        period = idle_timeout / 4
        notes: deque[tuple[float, int]] = deque()
        while True:
            await anyio.sleep(period)
            now = anyio.current_time()
            notes.append((now, self._activity))
            while len(notes) > 1 and notes[1][0] <= now - idle_timeout:
                notes.popleft()
            noted_at, quiet_since = notes[0]
            if noted_at > now - idle_timeout:
                continue  # not one timeout of history yet
            for connection in list(self._connections.values()):
                if connection.last_active <= quiet_since and self._is_idle(connection):
                    self.stats.connections_closed_idle += 1
                    self._close_idle(connection, f"idle for idle_timeout={idle_timeout:g}s")

    def _close_idle(self, connection: _Connection, why: str) -> None:
        log.info("server %s: closing connection from %s: %s", self.address, connection.source, why)
        self._connections.pop(connection.id, None)
        connection.close_now()

    def _slow_frame(self, connection: _Connection, buffered: int) -> None:
        self.stats.connections_closed_for_slow_frames += 1
        log.warning(
            "server %s: closing connection from %s: a frame is still unfinished after "
            "frame_timeout=%gs of waiting (%d bytes of it received)",
            self.address,
            connection.source,
            self._frame_timeout,
            buffered,
        )

    def _bad_input(self, connection: _Connection, exc: SerializationError) -> None:
        self.stats.connections_closed_for_bad_input += 1
        log.warning(
            "server %s: closing connection from %s: %s: %s",
            self.address,
            connection.source,
            type(exc).__name__,
            exc,
        )

    def _ensure_writer(self, connection: _Connection) -> None:
        if connection.outbox and connection.writer_done is None:
            self._start_writer(connection)

    def _start_writer(self, connection: _Connection) -> None:
        if connection.tasks is None:
            return  # not served yet or any more: its outbox is closed or dropped
        done = anyio.Event()
        connection.tasks.start_soon(
            self._write_loop, connection, done, name=f"moonpool server writer {connection.source}"
        )
        connection.writer_done = done

    async def _write_loop(self, connection: _Connection, done: anyio.Event) -> None:
        try:
            await write_frames(connection.stream, connection.outbox)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            connection.abandon()
        finally:
            done.set()
