"""``TransportDriver``: pumps a Sans-I/O :class:`TransportProtocol` through peers.

The protocol decides *what* to send and *when* a request is over; the driver does
the I/O it asks for.  It owns the peer pool (one :class:`Peer` actor per remote,
created on first use), moves the protocol's transmits into peers, feeds bytes the
peers read back into the protocol, hands finished requests to whoever waits for
them, and runs the one timer task that wakes the protocol for retries.

Everything here runs on anyio, so the same driver serves a simulation (trio on a
mock clock), trio and asyncio.

It also keeps what the client knows of each remote: the failure monitor (fed by
the peers' connects and losses), the circuit breakers, and the dead letters of
one-way messages it could not send.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Container, Coroutine
from typing import Any, Generic, Protocol, TypeVar, final

import anyio
import anyio.abc

from moonpool.net import NetworkProvider
from moonpool.transport._circuit import CircuitBreaker, CircuitState
from moonpool.transport._dead_letters import DeadLetters
from moonpool.transport._envelope import Envelope
from moonpool.transport._errors import SendQueueFull, TransportClosed
from moonpool.transport._failure_monitor import FailureMonitor
from moonpool.transport._peer import Peer, PeerConfig
from moonpool.transport._protocol import Completion, TransportProtocol

__all__ = ["TransportDriver"]

log = logging.getLogger("moonpool.transport")

E = TypeVar("E", bound=Envelope)


class TaskSpawner(Protocol):
    """Where the driver starts its tasks: an anyio task group, or a transport's own."""

    def start_soon(
        self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any, name: object = None
    ) -> None: ...


@final
class _Live(Container[int]):
    """The tags worth writing: pending requests (ids >= 0) and one-way messages (< 0)."""

    __slots__ = ("_pending",)

    def __init__(self, pending: Container[int]) -> None:
        self._pending = pending

    def __contains__(self, tag: object) -> bool:
        return isinstance(tag, int) and (tag < 0 or tag in self._pending)


@final
class TransportDriver(Generic[E]):
    """Connects one protocol instance to the network through a pool of peers.

    ``task_group`` is where peer actors and the timer task live; cancelling it
    (the owning transport does, on close) stops all of them.
    """

    def __init__(
        self,
        network: NetworkProvider,
        protocol: TransportProtocol[E],
        task_group: TaskSpawner,
        *,
        on_completion: Callable[[Completion], None],
        peer_config: PeerConfig | None = None,
        rng: random.Random | None = None,
        failure_monitor: FailureMonitor | None = None,
        breakers: dict[str, CircuitBreaker] | None = None,
        dead_letters: DeadLetters | None = None,
    ) -> None:
        self.protocol = protocol
        self.peer_config = peer_config or PeerConfig()
        self._network = network
        self._task_group = task_group
        self._on_completion = on_completion
        self._rng = rng or random.Random()
        self._peers: dict[str, Peer] = {}
        self._timer_changed = anyio.Event()
        self._timer_deadline = math.inf  # what the timer task currently sleeps until
        self._closed = False
        self.dropped_transmits = 0
        self.failure_monitor = failure_monitor or FailureMonitor()
        #: Per destination, when the peer config has a circuit threshold.
        self.breakers = breakers if breakers is not None else {}
        self.dead_letters = dead_letters if dead_letters is not None else DeadLetters()
        self.peers_evicted = 0
        self._live = _Live(protocol.live_ids)
        self._ping_frame = protocol.ping()
        self._uses = 0
        self._next_one_way = -1
        self._scopes: dict[Peer, anyio.CancelScope] = {}
        task_group.start_soon(self._run_timers, name="moonpool transport timers")

    @property
    def peers(self) -> dict[str, Peer]:
        """The live peers by address (read-only use)."""
        return self._peers

    def get_or_create_peer(self, destination: str) -> Peer:
        """The peer for ``destination``, starting its actor on first use."""
        peer = self._peers.get(destination)
        if peer is None:
            if self._closed:
                raise TransportClosed("transport is closed")
            if len(self._peers) >= self.peer_config.max_peers:
                self._evict_least_recently_used()
            protocol = self.protocol
            created: Peer  # the callbacks name their own peer: see _current()
            created = peer = Peer(
                self._network,
                destination,
                on_data=lambda data: self._received(destination, data),
                on_lost=lambda reason, unsent: self._lost(created, reason, unsent),
                on_connected=lambda: self._connected(created),
                config=self.peer_config,
                rng=self._rng,
                buffered=lambda: protocol.buffered(destination),
                live=self._live,
                pending=lambda: protocol.pending_count_to(destination),
                ping_frame=self._ping_frame,
            )
            self._peers[destination] = peer
            self._task_group.start_soon(self._run_peer, peer, name=f"moonpool peer {destination}")
        return peer

    def _evict_least_recently_used(self) -> None:
        """Close the least recently used idle peer, if any (``PeerConfig.max_peers``)."""
        idle = [peer for peer in self._peers.values() if peer.idle]
        if not idle:
            return  # every peer is busy: closing one would fail its calls
        victim = min(idle, key=lambda peer: peer.last_used)
        self.peers_evicted += 1
        log.debug("closing idle peer %s: at max_peers=%d", victim.address, len(self._peers))
        victim.close()
        # Stopped now, not at its next wait: a connect it is stuck in would
        # otherwise fail later and be taken for the destination's new peer's.
        scope = self._scopes.pop(victim, None)
        if scope is not None:
            scope.cancel()
        self._release(victim.address)

    async def _run_peer(self, peer: Peer) -> None:
        with anyio.CancelScope() as scope:
            self._scopes[peer] = scope
            try:
                await peer.run()
            finally:
                self._scopes.pop(peer, None)
                if self._peers.get(peer.address) is peer:
                    self._release(peer.address)

    def _release(self, destination: str) -> None:
        """The destination has no peer any more: keep nothing of it that can grow.

        Its failure state goes too: without a peer nothing watches it, and a
        failure remembered for hours would fail a later call at once.
        """
        self._peers.pop(destination, None)
        self.failure_monitor.forget(destination)
        breaker = self.breakers.get(destination)
        if breaker is not None and breaker.state is CircuitState.CLOSED:
            del self.breakers[destination]
        if not self.protocol.pending_count_to(destination):
            self.protocol.forget_destination(destination)

    def _current(self, peer: Peer) -> bool:
        return self._peers.get(peer.address) is peer

    def _connected(self, peer: Peer) -> None:
        if self._current(peer):
            self.failure_monitor.report_available(peer.address)

    def dead_letters_at_close(self, now: float) -> None:
        """The transport is closing: its one-way messages still queued are dead letters."""
        for peer in self._peers.values():
            for _ in range(peer.queued_one_way()):
                self.dead_letters.record(
                    "one-way", peer.address, "abandoned: the transport closed", now
                )

    def send_one_way(self, destination: str, frame: bytes) -> None:
        """Queue a one-way frame; one that cannot be queued becomes a dead letter."""
        peer = self.get_or_create_peer(destination)
        tag = self._next_one_way
        self._next_one_way -= 1
        self._uses += 1
        peer.last_used = self._uses
        try:
            peer.send(frame, write_now=self.protocol.pending_count_to(destination) == 0, tag=tag)
        except SendQueueFull as exc:
            self.dead_letters.record("one-way", destination, str(exc), anyio.current_time())

    def cancel(self, destination: str, correlation_id: int) -> None:
        """A caller gave up on a request: forget it, and its frame if still queued."""
        self.protocol.cancel_request(correlation_id)
        peer = self._peers.get(destination)
        if peer is not None:
            peer.forget_ended()

    def breaker(self, destination: str) -> CircuitBreaker | None:
        """The circuit towards ``destination`` (None without ``circuit_threshold``)."""
        threshold = self.peer_config.circuit_threshold
        if threshold is None:
            return None
        breaker = self.breakers.get(destination)
        if breaker is None:
            breaker = self.breakers[destination] = CircuitBreaker(
                threshold, self.peer_config.circuit_cooldown, self._rng
            )
        return breaker

    def flush(self) -> None:
        """Move every frame the protocol wants sent into its peer's queue."""
        protocol = self.protocol
        while (transmit := protocol.poll_transmit()) is not None:
            destination = transmit.destination
            peer = self.get_or_create_peer(destination)
            self._uses += 1
            peer.last_used = self._uses
            try:
                # A lone request goes out from the caller's task; with others in
                # flight, replies come back in batches and the next requests are
                # better joined into one write by the peer's actor.
                peer.send(
                    transmit.data,
                    write_now=protocol.pending_count_to(destination) <= 1,
                    tag=transmit.correlation_id,
                )
            except SendQueueFull as exc:
                # The frame's request (if any) will end by its timeout; say why now.
                self.dropped_transmits += 1
                log.warning("dropping a frame: %s", exc)
        self._dispatch_completions()
        deadline = protocol.poll_timeout()
        if deadline is not None and deadline < self._timer_deadline:
            self._timer_changed.set()

    def _dispatch_completions(self) -> None:
        protocol = self.protocol
        while (completion := protocol.poll_completion()) is not None:
            self._on_completion(completion)

    def _received(self, destination: str, data: bytes) -> None:
        # SerializationError propagates to the peer, which closes the connection.
        self.protocol.handle_received(destination, data)
        self._dispatch_completions()

    def _lost(self, peer: Peer, reason: str, unsent: list[int]) -> None:
        destination = peer.address
        now = anyio.current_time()
        if not self._current(peer):
            return  # an evicted peer's: its destination has moved on
        self.failure_monitor.report_failure(destination, now, reason)
        for tag in unsent:
            if tag < 0:
                self.dead_letters.record("one-way", destination, f"never sent: {reason}", now)
        self.protocol.connection_lost(destination, now=now, reason=reason, unsent=unsent)
        self.flush()

    async def _run_timers(self) -> None:
        """Wake the protocol at its next deadline (retries and request expiry)."""
        protocol = self.protocol
        while True:
            deadline = protocol.poll_timeout()
            self._timer_deadline = math.inf if deadline is None else deadline
            changed = self._timer_changed = anyio.Event()
            with anyio.move_on_at(self._timer_deadline):
                await changed.wait()
            self._timer_deadline = -math.inf  # awake: nobody needs to wake us
            timeouts = protocol.stats.timeouts
            protocol.handle_timeout(anyio.current_time())
            if protocol.stats.timeouts != timeouts:
                # Expired requests may have frames still queued behind a connect.
                for peer in self._peers.values():
                    peer.forget_ended()
            self.flush()

    def close(self) -> None:
        """Stop every peer; their tasks end and the task group can exit."""
        self._closed = True
        for peer in list(self._peers.values()):
            peer.close()
