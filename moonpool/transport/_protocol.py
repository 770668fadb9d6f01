"""The transport's Sans-I/O state machine.

:class:`TransportProtocol` knows everything about requests, replies, correlation
ids, deadlines and retries, and nothing about sockets, tasks or clocks. Bytes and
the current time go in (:meth:`~TransportProtocol.handle_received`,
:meth:`~TransportProtocol.handle_timeout`); request frames to send, received
requests and finished requests come out of ``poll_*`` methods, and a reply's frame
comes straight back from :meth:`~TransportProtocol.send`. An I/O driver (trio, asyncio or
the simulation) pumps it. Because every input is explicit, the whole protocol is
tested with plain function calls, and a simulation replays it exactly.

Determinism: state lives in insertion-ordered dicts, deques and a heap ordered by
``(time, sequence number)``; nothing iterates a set or depends on hash seeds.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar, cast, final

from moonpool.transport._envelope import Envelope, EnvelopeSerializer, ErrorReply, KindedEnvelope
from moonpool.transport._errors import (
    ConnectionFailed,
    FrameTooLarge,
    MaybeDelivered,
    RemoteError,
    SerializationError,
    TransportClosed,
    TransportError,
    TransportTimeout,
)
from moonpool.transport._framing import DEFAULT_MAX_FRAME_SIZE, FrameDecoder

__all__ = [
    "ONE_WAY_ID",
    "PING_ID",
    "Completion",
    "RetryPolicy",
    "Transmit",
    "TransportProtocol",
    "TransportStats",
]

ONE_WAY_ID = 0
"""The correlation id of a one-way message (no request ever has it)."""
PING_ID = 2**64 - 1
"""The correlation id of a health ping: a server answers it at once, with an empty
payload, and never hands it to the application; a client drops the answer.  Ids a
client allocates stay below 2**63, so no request ever has it either."""

E = TypeVar("E", bound=Envelope)


# Transmit and Completion are made once per frame and per request: NamedTuples,
# immutable like a frozen dataclass but built about 1.5x faster.


class Transmit(NamedTuple):
    """Bytes the driver must write to the connection for ``destination``.

    ``correlation_id`` names the request the frame carries: a driver that still
    holds the frame unwritten when the connection is lost hands it back through
    :meth:`TransportProtocol.connection_lost` (``unsent``).
    """

    destination: str
    data: bytes
    correlation_id: int | None = None


class Completion(NamedTuple):
    """The end of a tracked request: exactly one of ``payload`` and ``error`` is set."""

    correlation_id: int
    payload: bytes | None
    error: TransportError | None

    def unwrap(self) -> bytes:
        """The reply payload, or raise the request's error."""
        if self.error is not None:
            raise self.error
        assert self.payload is not None
        return self.payload


@final
@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How an at-least-once request (``get_reply``) survives a lost connection.

    ``max_attempts`` counts attempts; the default, ``None``, resends until the
    request's deadline, and 1 means "never resend".  A frame that provably never
    left this process (still queued when its connection failed) goes out again at
    once without counting, the first time; after that each connection that fails
    under it counts as an attempt, with a backoff, so that a remote that cannot be
    reached (or hangs up at once) ends an N-attempt policy instead of cycling.  A resend
    reuses the request's correlation id, so a reply to any attempt completes it;
    the server may therefore execute it more than once, and deduplicates by
    ``ReceivedEnvelope.request_id`` if that matters.  At-most-once requests
    (``try_get_reply``) are never resent, whatever the policy.
    """

    max_attempts: int | None = None
    backoff_initial: float = 0.05
    backoff_max: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if not 0 <= self.backoff_initial <= self.backoff_max:
            raise ValueError(
                "need 0 <= backoff_initial <= backoff_max, got "
                f"backoff_initial={self.backoff_initial}, backoff_max={self.backoff_max}"
            )
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be within [0, 1], got {self.jitter}")

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Delay before retry number ``attempt`` (1 for the first retry).

        Exponential (``backoff_initial * 2**(attempt - 1)``, capped at
        ``backoff_max``), then shortened by up to ``jitter`` of itself so that many
        clients that lost the same server do not come back in lockstep.
        """
        if attempt < 1:
            raise ValueError(f"attempt numbers start at 1, got {attempt}")
        base = min(self.backoff_max, self.backoff_initial * 2.0 ** min(attempt - 1, 1000))
        return base * (1.0 - self.jitter * rng.random())


@dataclass(slots=True)
class TransportStats:
    """Counters for tests, reports and dashboards; all start at zero."""

    requests_started: int = 0
    replies_matched: int = 0
    remote_errors: int = 0
    dropped_replies: int = 0
    #: Envelopes a server received that are not requests (replies, error replies).
    unexpected_envelopes: int = 0
    timeouts: int = 0
    retries: int = 0
    connection_failures: int = 0
    requests_cancelled: int = 0
    envelopes_sent: int = 0
    envelopes_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    protocol_errors: int = 0
    #: Health pings answered (client) or answered to (server).
    pings: int = 0
    #: Messages recorded as dead letters (see ``dead_letters``).
    dead_letters: int = 0
    #: Calls refused at once because their destination's circuit was open.
    circuit_rejections: int = 0


@dataclass(slots=True)
class _Pending:
    correlation_id: int
    destination: str
    frame: bytes
    timeout: float
    deadline: float
    at_most_once: bool = False
    attempts: int = 1
    # True once poll_transmit handed the latest attempt to the driver: only then
    # can a lost connection have lost it.
    on_wire: bool = False
    # True once the driver handed this attempt back unwritten (connection_lost's
    # ``unsent``): it is put back at once only that time; the next time it waits
    # out a retry backoff like a lost attempt, so that a remote that keeps hanging
    # up cannot keep it cycling without a pause.
    requeued: bool = False
    # Why the last connection carrying it failed, for the timeout's message.
    last_failure: str = ""
    retry_at: float | None = None
    # Sequence numbers of this request's live heap entries (lazy deletion).
    deadline_seq: int = -1
    retry_seq: int = -1


@final
class TransportProtocol(Generic[E]):
    """Request/response bookkeeping for one endpoint, with no I/O.

    A client (``serves_requests=False``) starts requests, and every envelope it
    receives is a candidate reply. A server (``serves_requests=True``) queues every
    received envelope for :meth:`poll_receive` and answers with :meth:`send`, which
    returns the reply's frame for the driver to write on the request's connection.

    The driver loop, in outline::

        proto.handle_received(source, data)        # when bytes arrive
        proto.connection_lost(source, now=now)     # when a connection breaks
        proto.handle_timeout(now)                  # when poll_timeout() is reached
        while (t := proto.poll_transmit()) is not None: write t.data to t.destination
        while (c := proto.poll_completion()) is not None: wake the waiter of c.correlation_id
        while (r := proto.poll_receive()) is not None: deliver the request

    ``rng`` drives retry jitter; a simulation must pass its seeded RNG (the default
    is an OS-seeded ``random.Random``, right for real networks).
    """

    def __init__(
        self,
        envelope: type[E],
        *,
        serves_requests: bool = False,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        retry: RetryPolicy = RetryPolicy(),  # frozen, so sharing the default is safe
        rng: random.Random | None = None,
        first_correlation_id: int = 1,
    ) -> None:
        if first_correlation_id < 0:
            raise ValueError(f"first_correlation_id must be >= 0, got {first_correlation_id}")
        self._envelope = envelope
        self._serializer: EnvelopeSerializer[E] = envelope.serializer()
        self._carries_errors = issubclass(envelope, ErrorReply)
        self._kinded = issubclass(envelope, KindedEnvelope)
        self._serves_requests = serves_requests
        self._max_frame_size = max_frame_size
        self._retry = retry
        self._rng = rng if rng is not None else random.Random()
        self._next_correlation_id = first_correlation_id
        self._closed = False

        # (transmit, correlation id of the request it carries)
        self._transmits: deque[Transmit] = deque()
        self._received: deque[tuple[str, E]] = deque()
        self._completions: deque[Completion] = deque()
        self._decoders: dict[str, FrameDecoder[E]] = {}
        self._pending: dict[int, _Pending] = {}
        # destination -> correlation ids in start order (a dict used as ordered set)
        self._by_destination: dict[str, dict[int, None]] = {}
        # (when, sequence, correlation id); stale entries are skipped when popped
        self._timers: list[tuple[float, int, int]] = []
        self._timer_seq = 0

        self.stats = TransportStats()
        #: Told, in words, of what a log would want to know and a reply does not
        #: show (a resend); a simulation puts it on the seed's timeline.
        self.on_event: Callable[[str], None] | None = None

    # ------------------------------------------------------------------ inspection

    @property
    def envelope_type(self) -> type[E]:
        return self._envelope

    @property
    def serializer(self) -> EnvelopeSerializer[E]:
        return self._serializer

    @property
    def serves_requests(self) -> bool:
        return self._serves_requests

    @property
    def retry_policy(self) -> RetryPolicy:
        return self._retry

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending_count(self) -> int:
        """Requests started and not yet completed, cancelled or expired."""
        return len(self._pending)

    def __len__(self) -> int:
        return len(self._pending)

    def is_pending(self, correlation_id: int) -> bool:
        return correlation_id in self._pending

    def pending_count_to(self, destination: str) -> int:
        """How many requests are pending towards ``destination``."""
        ids = self._by_destination.get(destination)
        return 0 if ids is None else len(ids)

    def pending_to(self, destination: str) -> list[int]:
        """Correlation ids of the requests pending towards ``destination``, oldest first."""
        return list(self._by_destination.get(destination, ()))

    # ------------------------------------------------------------------ outbound

    def send(self, envelope: E) -> bytes:
        """Encode an untracked envelope (e.g. a reply) and return its frame.

        Like h11's ``send``, the bytes come straight back for the driver to write
        on the connection the envelope belongs to: nothing is queued, since no
        deadline or retry will ever need the frame again.  Counted as sent.
        Raises :class:`SerializationError` if it cannot be encoded and
        :class:`TransportClosed` after :meth:`close`.
        """
        self._check_open()
        frame = self._check_size(self._serializer.serialize(envelope))
        stats = self.stats
        stats.envelopes_sent += 1
        stats.bytes_sent += len(frame)
        return frame

    def _check_size(self, frame: bytes) -> bytes:
        """Refuse to emit a frame the other side would close the connection for."""
        if len(frame) > self._max_frame_size:
            header = self._serializer.header_size
            raise FrameTooLarge(
                f"message too large to send: its frame is {len(frame)} bytes ({header}-byte "
                f"header included), above max_frame_size={self._max_frame_size} bytes; send "
                f"at most {self._max_frame_size - header} bytes of payload with this envelope, "
                f"or raise max_frame_size on both sides"
            )
        return frame

    def start_request(
        self,
        destination: str,
        payload: bytes,
        *,
        now: float,
        timeout: float,
        at_most_once: bool = False,
    ) -> int:
        """Queue a tracked request and return its new correlation id.

        Ids are unique for this protocol instance and never reused, so a late reply
        can never complete a newer request. The request ends with exactly one
        :class:`Completion` (reply, remote error, timeout at ``now + timeout`` or
        connection failure), unless :meth:`cancel_request` is called first.

        An ``at_most_once`` request is handed out for writing once and never
        again: if its connection is lost, it fails with :class:`MaybeDelivered`,
        or with plain :class:`ConnectionFailed` when the driver reports it unsent.
        Otherwise it is retried by the :class:`RetryPolicy` (at least once).
        """
        self._check_open()
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(
                f"timeout must be a positive, finite number of seconds, got {timeout!r}"
            )
        correlation_id = self._next_correlation_id
        frame = self._check_size(
            self._serializer.serialize(self._envelope.create_request(correlation_id, payload))
        )
        self._next_correlation_id += 1
        pending = _Pending(correlation_id, destination, frame, timeout, now + timeout, at_most_once)
        pending.deadline_seq = self._push_timer(pending.deadline, correlation_id)
        self._pending[correlation_id] = pending
        ids = self._by_destination.get(destination)
        if ids is None:
            ids = self._by_destination[destination] = {}
        ids[correlation_id] = None
        self._transmits.append(Transmit(destination, frame, correlation_id))
        self.stats.requests_started += 1
        return correlation_id

    def one_way(self, payload: bytes) -> bytes:
        """The frame of a one-way message: untracked, never retried, never answered.

        Envelope types with a ``create_one_way`` constructor (such as
        :class:`~moonpool.transport.CheckedEnvelope`) say so in their kind; for the
        others the message carries correlation id :data:`ONE_WAY_ID`, which a
        server takes as "no reply expected".
        """
        create_one_way = getattr(self._envelope, "create_one_way", None)
        envelope = (
            create_one_way(payload)
            if create_one_way is not None
            else self._envelope.create_request(ONE_WAY_ID, payload)
        )
        return self.send(envelope)

    def ping(self) -> bytes:
        """The frame of a health ping (see :data:`PING_ID`); its answer is dropped.

        Not counted as sent: pings are the peer's business, counted there."""
        return self._serializer.serialize(self._envelope.create_request(PING_ID, b""))

    @property
    def live_ids(self) -> Container[int]:
        """Correlation ids of the requests still pending (a live view, for peers)."""
        return self._pending.keys()

    def forget_destination(self, destination: str) -> None:
        """Drop the decoder kept for ``destination`` (its connection is gone for good)."""
        self._decoders.pop(destination, None)

    def pending_by_destination(self) -> dict[str, int]:
        """How many requests are pending towards each destination."""
        return {destination: len(ids) for destination, ids in self._by_destination.items()}

    def cancel_request(self, correlation_id: int) -> None:
        """Forget a request whose caller gave up; no completion will be produced.

        Unknown or already-finished ids are ignored, so cancelling after a
        completion raced in is harmless. A reply arriving later is dropped and
        counted in ``stats.dropped_replies``; an unsent frame is never sent.
        """
        if self._remove(correlation_id) is not None:
            self.stats.requests_cancelled += 1

    def poll_transmit(self) -> Transmit | None:
        """The next request frame to write, or ``None``.

        Frames of requests that finished before being handed out (cancelled or
        expired) are skipped: nobody is waiting for their answer.
        """
        while self._transmits:
            transmit = self._transmits.popleft()
            # Every queued transmit names its request (the field is optional for callers).
            pending = self._pending.get(transmit.correlation_id)  # type: ignore[arg-type]
            if pending is None:
                continue
            pending.on_wire = True
            self.stats.envelopes_sent += 1
            self.stats.bytes_sent += len(transmit.data)
            return transmit
        return None

    # ------------------------------------------------------------------ inbound

    def handle_received(self, source: str, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes read from the connection identified by ``source``.

        Raises :class:`SerializationError` on malformed input, after every envelope
        that preceded the bad frame has been processed. The connection's stream
        position is then lost: the driver must close it and call
        :meth:`connection_lost`. Bytes arriving after :meth:`close` are ignored.
        """
        if self._closed:
            return
        self.stats.bytes_received += len(data)
        decoder = self._decoders.get(source)
        if decoder is None:
            decoder = FrameDecoder(self._serializer, self._max_frame_size)
            self._decoders[source] = decoder
        try:
            decoder.push(data)
            while (envelope := decoder.next_frame()) is not None:
                self.stats.envelopes_received += 1
                self._dispatch(source, envelope)
        except SerializationError:
            self.stats.protocol_errors += 1
            raise

    def _dispatch(self, source: str, envelope: E) -> None:
        if self._serves_requests:
            if self._kinded and not cast(KindedEnvelope, envelope).is_request():
                # A reply or an error sent to a server: nothing asked for it.
                self.stats.unexpected_envelopes += 1
                return
            self._received.append((source, envelope))
            return
        correlation_id = envelope.correlation_id
        if correlation_id == PING_ID:
            self.stats.pings += 1  # the remote is alive: the peer saw the bytes
            return
        pending = self._pending.get(correlation_id)
        if (
            pending is None
            or pending.destination != source
            or not envelope.is_reply_to(correlation_id)
        ):
            self.stats.dropped_replies += 1
            return
        self._remove(correlation_id)
        message = cast(ErrorReply, envelope).remote_error() if self._carries_errors else None
        if message is None:
            self.stats.replies_matched += 1
            self._completions.append(Completion(correlation_id, envelope.extract_payload(), None))
        else:
            self.stats.remote_errors += 1
            error = RemoteError(
                f"{source} answered request {correlation_id} with an error: {message}"
            )
            self._completions.append(Completion(correlation_id, None, error))

    def buffered(self, source: str) -> int:
        """Bytes received from ``source`` that do not make a whole frame yet.

        Non-zero when a connection ends means it ended mid-frame: the driver
        reports that as bad input rather than as a clean close.
        """
        decoder = self._decoders.get(source)
        return 0 if decoder is None else decoder.buffered

    def poll_receive(self) -> tuple[str, E] | None:
        """The next received ``(source, envelope)`` in server mode, or ``None``."""
        return self._received.popleft() if self._received else None

    def poll_completion(self) -> Completion | None:
        """The next finished request, or ``None``."""
        return self._completions.popleft() if self._completions else None

    # ------------------------------------------------------------------ failures & time

    def connection_lost(
        self, source: str, *, now: float, reason: str = "", unsent: Iterable[int] = ()
    ) -> None:
        """The connection for ``source`` is gone (closed, broken, or never opened).

        Its partial frame is discarded. ``unsent`` lists requests whose frames the
        driver was still holding, never written to the connection: an
        at-least-once request among them is queued again for the next connection,
        as the same attempt (nothing was lost); an at-most-once one fails with
        :class:`ConnectionFailed` (it never left).  Every other request to that
        destination whose latest attempt was handed out may have been written:
        an at-most-once one fails with :class:`MaybeDelivered`; an at-least-once
        one is retried after a backoff (same correlation id) if the retry policy
        allows another attempt before its deadline, and otherwise fails with
        :class:`ConnectionFailed`. Requests still waiting in the transmit queue or
        for a retry are untouched: the lost connection never carried them.
        """
        self._decoders.pop(source, None)
        if self._received:
            # Requests decoded from that connection but not yet taken cannot be
            # answered any more; drop them rather than keep them forever.
            self._received = deque(item for item in self._received if item[0] != source)
        ids = self._by_destination.get(source)
        if not ids:
            return
        stats = self.stats
        cause = f": {reason}" if reason else ""
        for correlation_id in unsent:
            pending = self._pending.get(correlation_id)
            if pending is None or not pending.on_wire or pending.destination != source:
                continue
            pending.on_wire = False
            pending.last_failure = reason
            # Not sent after all.
            stats.envelopes_sent -= 1
            stats.bytes_sent -= len(pending.frame)
            if pending.at_most_once:
                self._fail(
                    pending,
                    ConnectionFailed(
                        f"request {correlation_id} to {source} was never sent: its "
                        f"connection failed first{cause}"
                    ),
                )
            elif not pending.requeued:
                pending.requeued = True
                # poll_transmit counts it when it goes out again.
                self._transmits.append(Transmit(source, pending.frame, correlation_id))
            else:
                pending.on_wire = True  # handled below, as a lost attempt
        max_attempts = self._retry.max_attempts
        for correlation_id in list(ids):
            pending = self._pending[correlation_id]
            if not pending.on_wire:
                continue
            pending.on_wire = False
            pending.last_failure = reason
            if pending.at_most_once:
                error: ConnectionFailed = MaybeDelivered(
                    f"connection to {source} lost after request {correlation_id} may have "
                    f"been written (at most once: not resent; check whether it took effect "
                    f"before trying again){cause}"
                )
                self._fail(pending, error)
                continue
            if max_attempts is None or pending.attempts < max_attempts:
                retry_at = now + self._retry.backoff(pending.attempts, self._rng)
                if retry_at < pending.deadline:
                    pending.retry_at = retry_at
                    pending.retry_seq = self._push_timer(retry_at, correlation_id)
                # else: no time left for another attempt; it times out at its
                # deadline, with this failure in the message.
                continue
            error = ConnectionFailed(
                f"connection to {source} lost while request {correlation_id} awaited "
                f"its reply (attempt {pending.attempts} of {max_attempts}){cause}"
            )
            self._fail(pending, error)

    def _fail(self, pending: _Pending, error: ConnectionFailed) -> None:
        self._remove(pending.correlation_id)
        self.stats.connection_failures += 1
        self._completions.append(Completion(pending.correlation_id, None, error))

    def handle_timeout(self, now: float) -> None:
        """Expire requests whose deadline is ``<= now`` and queue retries that are due."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, seq, correlation_id = heapq.heappop(timers)
            pending = self._pending.get(correlation_id)
            if pending is None:
                continue
            if seq == pending.retry_seq:
                pending.retry_at = None
                pending.retry_seq = -1
                pending.attempts += 1
                self.stats.retries += 1
                self._transmits.append(Transmit(pending.destination, pending.frame, correlation_id))
                if self.on_event is not None:
                    self.on_event(
                        f"resend request {correlation_id} to {pending.destination} "
                        f"(attempt {pending.attempts}; last failure: {pending.last_failure})"
                    )
            elif seq == pending.deadline_seq:
                self._remove(correlation_id)
                self.stats.timeouts += 1
                last = f"; last failure: {pending.last_failure}" if pending.last_failure else ""
                error = TransportTimeout(
                    f"no reply from {pending.destination} to request {correlation_id} "
                    f"within {pending.timeout}s (after {pending.attempts} attempt"
                    f"{'s' if pending.attempts != 1 else ''}{last})"
                )
                self._completions.append(Completion(correlation_id, None, error))

    def poll_timeout(self) -> float | None:
        """When :meth:`handle_timeout` next has work (a deadline or a retry), or ``None``."""
        timers = self._timers
        while timers:
            when, seq, correlation_id = timers[0]
            pending = self._pending.get(correlation_id)
            if pending is not None and seq in (pending.deadline_seq, pending.retry_seq):
                return when
            heapq.heappop(timers)
        return None

    def close(self) -> None:
        """Fail every pending request with :class:`TransportClosed` and stop.

        Afterwards :meth:`send` and :meth:`start_request` raise
        :class:`TransportClosed`, unsent frames are discarded, and received bytes are
        ignored; completions already queued can still be polled.
        """
        if self._closed:
            return
        self._closed = True
        for correlation_id, pending in list(self._pending.items()):
            self._remove(correlation_id)
            error = TransportClosed(
                f"transport closed while request {correlation_id} to "
                f"{pending.destination} was pending"
            )
            self._completions.append(Completion(correlation_id, None, error))
        self._transmits.clear()
        self._decoders.clear()
        self._timers.clear()

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosed("the transport protocol is closed")

    def _push_timer(self, when: float, correlation_id: int) -> int:
        seq = self._timer_seq
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, seq, correlation_id))
        return seq

    def _remove(self, correlation_id: int) -> _Pending | None:
        pending = self._pending.pop(correlation_id, None)
        if pending is None:
            return None
        ids = self._by_destination[pending.destination]
        del ids[correlation_id]
        if not ids:
            del self._by_destination[pending.destination]
        # Each pending request owns at most two live timer entries; once dead ones
        # dominate the heap, rebuild it so memory tracks live requests only.
        if len(self._timers) > 4 * len(self._pending) + 64:
            self._compact_timers()
        return pending

    def _compact_timers(self) -> None:
        live = []
        for entry in self._timers:
            pending = self._pending.get(entry[2])
            if pending is not None and entry[1] in (pending.deadline_seq, pending.retry_seq):
                live.append(entry)
        heapq.heapify(live)
        # In place: handle_timeout may be iterating this very list.
        self._timers[:] = live
