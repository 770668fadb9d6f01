"""Writing to a stream without waiting: the transport's fast path for small exchanges.

An ``anyio.abc.ByteStream`` only has ``await send()``, and on every backend that
await is a trip through the scheduler.  A request/response transport that hands
each frame to a writer task pays one more: the caller wakes the writer, the writer
runs, sends, and yields.  When the connection is idle and the kernel has room,
none of that is needed -- the bytes can go out from the caller's own task, right
away, with a plain non-blocking system call.

:func:`nonblocking_sender` returns such a function for a stream, or ``None`` when
the stream cannot do it.  The function writes as much as the connection takes at
once and returns how many bytes that was -- possibly fewer than asked, possibly
0.  It never blocks, never yields and never raises: an error (a reset, a closed
stream) shows up as 0, and the caller's ordinary ``await send()`` path, which
must take the rest anyway, reports it.

The one rule for callers: never call it while an ``await send()`` on the same
stream is in progress, or the two writes could interleave.

Which streams qualify:

* a stream with a ``send_nowait(data) -> int`` method of its own
  (:class:`~moonpool.net.SimStream` has one, so simulations exercise this path,
  partial writes included);
* anyio's TCP streams on trio: the socket is non-blocking and trio keeps no
  write buffer of its own, so ``socket.send`` is exactly what ``send()`` does
  minus the scheduling;
* anyio's TCP streams on asyncio: ``transport.write`` is synchronous and keeps
  order with every other write; we only use it while the transport's buffer is
  below its flow-control mark.  This reads anyio's private ``_transport``
  attribute -- checked by ``tests/net/test_nowait.py`` on every CI run -- and
  degrades to ``None`` (the slower, always-correct path) if it ever goes away.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Final

import anyio.abc
from anyio.abc import SocketAttribute

__all__ = ["NonBlockingSender", "nonblocking_sender"]

NonBlockingSender = Callable[[bytes], int]

#: Bytes an asyncio transport may hold before we stop adding to it without
#: waiting (asyncio's default high-water mark).
ASYNCIO_BUFFER_LIMIT: Final = 64 * 1024


def nonblocking_sender(stream: anyio.abc.ByteStream) -> NonBlockingSender | None:
    """A function writing to ``stream`` without waiting, or ``None`` if it has none."""
    own = getattr(stream, "send_nowait", None)
    if callable(own):
        return own  # type: ignore[no-any-return]
    if not isinstance(stream, anyio.abc.SocketStream):
        return None
    # Which anyio backend made the stream decides what is safe (see above).
    backend = type(stream).__module__
    if backend == "anyio._backends._trio":
        return _socket_sender(stream.extra(SocketAttribute.raw_socket, None))
    if backend == "anyio._backends._asyncio":
        return _transport_sender(getattr(stream, "_transport", None))
    return None


def _socket_sender(sock: socket.socket | None) -> NonBlockingSender | None:
    if not isinstance(sock, socket.socket):
        return None
    send = sock.send

    def send_nowait(data: bytes) -> int:
        try:
            return send(data)
        except OSError:
            # BlockingIOError: the kernel buffer is full; anything else (reset,
            # closed): the writer's send() raises it properly.  Either way, 0.
            return 0

    return send_nowait


def _transport_sender(transport: object) -> NonBlockingSender | None:
    if not isinstance(transport, asyncio.WriteTransport):
        return None
    write, is_closing, buffered = (
        transport.write,
        transport.is_closing,
        transport.get_write_buffer_size,
    )

    def send_nowait(data: bytes) -> int:
        if is_closing() or buffered() >= ASYNCIO_BUFFER_LIMIT:
            return 0
        try:
            write(data)
        except (OSError, RuntimeError):
            return 0
        return len(data)

    return send_nowait
