"""The interface every network implementation offers to the transport.

A :class:`NetworkProvider` is deliberately small -- ``connect`` and ``listen`` --
and speaks only ``anyio.abc.ByteStream``, so the transport above it cannot tell a
simulated network from a real one.  Errors are the same on both:

* ``connect`` to an address nobody listens on raises :class:`ConnectionRefusedError`;
* ``connect`` that does not complete in time raises :class:`TimeoutError`;
* ``listen`` on an address already in use raises :class:`AddressInUse`;
* a malformed address raises :class:`~moonpool.net.InvalidAddress` (a ``ValueError``);
* on a stream, use after close raises ``anyio.ClosedResourceError`` and a reset by
  the other side raises ``anyio.BrokenResourceError``.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self, final, runtime_checkable

import anyio.abc

__all__ = ["AddressInUse", "Listener", "NetworkProvider"]


@final
class AddressInUse(OSError):
    """``listen`` was called on an address another listener already holds."""


@runtime_checkable
class Listener(Protocol):
    """A bound listening endpoint.  Closing it stops new connections only."""

    @property
    def address(self) -> str:
        """The bound address; with port 0 requested, the port actually chosen."""
        ...

    async def accept(self) -> anyio.abc.ByteStream:
        """Wait for the next incoming connection.

        Raises ``anyio.ClosedResourceError`` once the listener is closed.
        """
        ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class NetworkProvider(Protocol):
    """Opens connections and listeners; implemented by ``SimNetwork`` and ``RealNetwork``."""

    async def connect(self, address: str) -> anyio.abc.ByteStream:
        """Open a byte stream to ``address`` (``"host:port"``)."""
        ...

    async def listen(self, address: str) -> Listener:
        """Start listening on ``address``; port 0 picks a free port."""
        ...
