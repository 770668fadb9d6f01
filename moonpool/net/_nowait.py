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
* (on asyncio, :class:`~moonpool.net.RealNetwork` makes streams of its own,
  which have ``send_nowait``: see :mod:`moonpool.net._asyncio_stream`.)

The receiving side has a fast path too: :func:`push_receiver` returns a stream's
``receive_into(on_data)``, which calls ``on_data`` from the event loop's own read
callback (asyncio streams of :class:`~moonpool.net.RealNetwork`).  A reader that
only decodes bytes and wakes the tasks waiting for them then costs no scheduling
of its own per message -- on asyncio a round trip takes one loop iteration less.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

import anyio.abc
from anyio.abc import SocketAttribute

from moonpool.net._asyncio_stream import AsyncioSocketStream
from moonpool.net._sim_network import SimStream

__all__ = ["NonBlockingSender", "PushReceiver", "nonblocking_sender", "push_receiver"]

NonBlockingSender = Callable[[bytes], int]
PushReceiver = Callable[[Callable[[bytes], object]], Coroutine[Any, Any, NoReturn]]


def push_receiver(stream: anyio.abc.ByteStream) -> PushReceiver | None:
    """``stream.receive_into`` for moonpool's own asyncio streams, else ``None``.

    Checked by type, not by the method's name: other streams may well have a
    ``receive_into`` of their own with another meaning (``socket.recv_into``'s).
    """
    if isinstance(stream, AsyncioSocketStream):
        return stream.receive_into
    if isinstance(stream, SimStream) and stream.pushes:
        return stream.receive_into
    return None


def nonblocking_sender(stream: anyio.abc.ByteStream) -> NonBlockingSender | None:
    """A function writing to ``stream`` without waiting, or ``None`` if it has none."""
    own = getattr(stream, "send_nowait", None)
    if callable(own):
        return own  # type: ignore[no-any-return]
    if not isinstance(stream, anyio.abc.SocketStream):
        return None
    # Only on trio is the socket all there is (anyio's asyncio streams keep a
    # write buffer of their own, which a direct write would overtake).
    if type(stream).__module__ == "anyio._backends._trio":
        return _socket_sender(stream.extra(SocketAttribute.raw_socket, None))
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
