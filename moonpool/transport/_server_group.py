"""``ServerGroup``: one logical service behind several servers, with failover.

A client of a replicated service should not care which replica answers, only
that one does -- while replicas crash, reboot and slow down.  ``ServerGroup``
puts a :class:`~moonpool.transport._load_balance.LoadBalancer` in front of a
:class:`~moonpool.transport.ClientTransport`: each attempt goes to the server
the strategy picks among those the transport's failure monitor does not think
failed, and a failed attempt moves on to another server within the call's
deadline (FoundationDB's ``loadBalance`` over an interface group, in small).

Delivery contracts, as ``ClientTransport``'s:

* :meth:`get_reply` -- **at least once**: an attempt that times out or loses its
  connection is sent again, to another server if there is one, until the
  deadline.  Servers may therefore execute a request more than once.
* :meth:`try_get_reply` -- **at most once**: it moves to another server only when
  the request provably never left (refused connect, open circuit); once it may
  have been written, a failure is raised (``MaybeDelivered``,
  ``TransportTimeout``), never retried elsewhere.
* :meth:`send` -- one way, to one server.

When every server has been failed for ``failed_for`` seconds the call raises
:class:`NoServerAvailable` at once instead of waiting out its timeout; a server
failed for less is still tried (its failure may have been a moment's), and a
round in which every server failed is followed by a short backoff.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import anyio

from moonpool.transport._client import ClientTransport, transport_random
from moonpool.transport._errors import (
    CircuitOpen,
    ConnectionFailed,
    MaybeDelivered,
    NoServerAvailable,
    TransportTimeout,
)
from moonpool.transport._load_balance import LoadBalancer, Strategy

__all__ = ["DEFAULT_STRATEGY", "ServerGroup"]

#: Least outstanding steers away from a slow server best in the pure model
#: (tests/transport/test_load_balance.py); to be confirmed by the benchmarks.
DEFAULT_STRATEGY: Strategy = "least_outstanding"

#: Seconds between two probes of a server the failure monitor holds failed.
PROBE_INTERVAL = 1.0
_BACKOFF_INITIAL = 0.02
_BACKOFF_MAX = 1.0


class ServerGroup:
    """Requests to whichever of ``addresses`` can answer (see the module doc).

    ``attempt_timeout`` bounds one attempt at one server (a slow or partitioned
    server costs at most that much of the call's timeout before another is
    tried); ``failed_for`` is how long every server must have been failed before
    a call gives up at once.
    """

    def __init__(
        self,
        client: ClientTransport,
        addresses: Iterable[str],
        *,
        strategy: Strategy = DEFAULT_STRATEGY,
        attempt_timeout: float = 1.0,
        failed_for: float = 2.0,
        hedge_after: float | None = None,
    ) -> None:
        settings = [("attempt_timeout", attempt_timeout), ("failed_for", failed_for)]
        if hedge_after is not None:
            settings.append(("hedge_after", hedge_after))
        for name, value in settings:
            if isinstance(value, bool) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
        self._hedge_after = hedge_after
        self._client = client
        # The members, in the order added, and each one's requests in flight.
        self._outstanding: dict[str, int] = {}
        self._next_probe: dict[str, float] = {}
        for address in addresses:
            self.add(address)
        self._rng = transport_random()
        self._balancer = LoadBalancer(strategy, self._rng)
        self._attempt_timeout = attempt_timeout
        self._failed_for = failed_for
        #: Attempts sent, and how many of them were a call moving on to another
        #: server after a failed attempt (for reports and benchmarks).
        self.attempts = 0
        self.failovers = 0
        #: Hedged attempts sent (``hedge_after``).
        self.hedges = 0

    def __repr__(self) -> str:
        return f"<ServerGroup {self._balancer.strategy} over {', '.join(self._outstanding)}>"

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(self._outstanding)

    @property
    def strategy(self) -> Strategy:
        return self._balancer.strategy

    def outstanding(self) -> dict[str, int]:
        """Requests in flight per server, as the balancer sees them."""
        return dict(self._outstanding)

    def add(self, address: str) -> None:
        """Add a server; calls in flight may use it from their next attempt."""
        if not isinstance(address, str) or not address:
            raise ValueError(f"a server address is a non-empty string, got {address!r}")
        if address in self._outstanding:
            raise ValueError(f"{address} is already in the group")
        self._outstanding[address] = 0

    def remove(self, address: str) -> None:
        """Remove a server; attempts already sent to it finish, no new one goes there."""
        if address not in self._outstanding:
            raise ValueError(f"{address} is not in the group ({', '.join(self._outstanding)})")
        del self._outstanding[address]
        self._next_probe.pop(address, None)

    # -- calls ----------------------------------------------------------------------

    async def get_reply(self, payload: bytes, *, timeout: float | None = None) -> bytes:
        """The reply of one server to ``payload``; at least once, failing over.

        With ``hedge_after``, a call still unanswered after that many seconds is
        also sent to another server; the first reply wins and the other attempt
        is cancelled (both servers may execute it: at least once).
        """
        if self._hedge_after is None or len(self._outstanding) < 2:
            return await self._call(payload, timeout, at_most_once=False)
        return await self._hedged(payload, timeout, self._hedge_after)

    async def _hedged(self, payload: bytes, timeout: float | None, after: float) -> bytes:
        replies: list[bytes] = []
        errors: list[Exception] = []
        first: set[str] = set()  # where the first attempt went: the hedge goes elsewhere

        async with anyio.create_task_group() as race:

            async def attempt(delay: float) -> None:
                try:
                    if delay:
                        await anyio.sleep(delay)
                        self.hedges += 1
                    reply = await self._call(
                        payload, timeout, at_most_once=False, avoid=first, note=first
                    )
                except Exception as exc:  # the other attempt may still answer
                    errors.append(exc)
                    if len(errors) == 2:
                        race.cancel_scope.cancel()
                    return
                replies.append(reply)
                race.cancel_scope.cancel()

            race.start_soon(attempt, 0.0)
            race.start_soon(attempt, after)
        if replies:
            return replies[0]
        raise errors[0]

    async def try_get_reply(self, payload: bytes, *, timeout: float | None = None) -> bytes:
        """The reply of one server to ``payload``; at most once."""
        return await self._call(payload, timeout, at_most_once=True)

    def send(self, payload: bytes) -> None:
        """Send ``payload`` one way to one server (see ``ClientTransport.send``)."""
        server = self._pick(set())
        if server is None:
            raise self._none_available("send", "")
        self._client.send(server, payload)

    def _pick(self, tried: set[str]) -> str | None:
        """A server not tried yet by this call: one not failed if any, else any.

        A failed server is due a probe every ``PROBE_INTERVAL`` seconds: one request
        goes there to see whether it is back.  Without it, a server that rebooted
        would never be asked again while the others answer -- nothing else sends
        it anything, so nothing would tell the failure monitor it is up.
        """
        monitor = self._client.failure_monitor
        now = anyio.current_time()
        probes = self._next_probe
        members = tuple(self._outstanding)
        failed = set()
        for address in members:
            if monitor.is_failed(address):
                if probes.setdefault(address, now + PROBE_INTERVAL) > now:
                    failed.add(address)
            else:
                probes.pop(address, None)
        chosen = self._balancer.choose(members, self._outstanding, exclude=tried | failed)
        if chosen is None:  # only failed ones left: try one (it may be back)
            chosen = self._balancer.choose(members, self._outstanding, exclude=tried)
        if chosen is not None and chosen in probes:
            probes[chosen] = now + PROBE_INTERVAL  # one probe at a time
        return chosen

    def _all_failed_long_enough(self, now: float) -> bool:
        monitor = self._client.failure_monitor
        for address in self._outstanding:
            since = monitor.failed_since(address)
            if since is None or now - since < self._failed_for:
                return False
        return True

    def _none_available(self, what: str, last: str) -> NoServerAvailable:
        if not self._outstanding:
            return NoServerAvailable(f"cannot {what}: the server group is empty")
        return NoServerAvailable(
            f"cannot {what}: every server of the group ({', '.join(self._outstanding)}) has "
            f"been failed for {self._failed_for:g}s or more (failed_for){last}"
        )

    async def _call(
        self,
        payload: bytes,
        timeout: float | None,
        *,
        at_most_once: bool,
        avoid: set[str] | None = None,
        note: set[str] | None = None,
    ) -> bytes:
        """One call; ``avoid``: servers its first attempt should not go to (a hedge's),
        ``note``: where to record the server of its first attempt."""
        if timeout is None:
            timeout = self._client.default_timeout
        deadline = anyio.current_time() + timeout
        tried: set[str] = set(avoid or ())
        attempts, rounds = 0, 0
        last = ""
        while True:
            now = anyio.current_time()
            if not self._outstanding or self._all_failed_long_enough(now):
                await anyio.lowlevel.checkpoint()
                raise self._none_available("call", last)
            left = deadline - now
            if left <= 0:
                raise TransportTimeout(
                    f"no server of the group answered within {timeout:g}s "
                    f"({attempts} attempt{'s' if attempts != 1 else ''}{last})"
                )
            server = self._pick(tried)
            if server is None:  # every server tried once: back off, then a new round
                rounds += 1
                pause = min(_BACKOFF_MAX, _BACKOFF_INITIAL * 2 ** min(rounds, 20))
                await anyio.sleep(min(left, pause * (0.5 + 0.5 * self._rng.random())))
                tried.clear()
                continue
            if note is not None and not note:
                note.add(server)
            attempts += 1
            self.attempts += 1
            self.failovers += attempts > 1
            self._outstanding[server] += 1
            try:
                ask = self._client.try_get_reply
                return await ask(server, payload, timeout=min(left, self._attempt_timeout))
            except (MaybeDelivered, TransportTimeout) as exc:
                if at_most_once:
                    raise  # it may have been executed: never again, elsewhere either
                last = f"; last failure: {server}: {exc}"
            except (ConnectionFailed, CircuitOpen) as exc:  # never left: safe to move on
                last = f"; last failure: {server}: {exc}"
            finally:
                if server in self._outstanding:  # not removed meanwhile
                    self._outstanding[server] -= 1
            tried.add(server)
