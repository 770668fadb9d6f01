"""TCP streams for :class:`~moonpool.net.RealNetwork` on asyncio.

anyio's asyncio ``SocketStream`` is correct but pays for generality on every
call: each ``receive`` resumes reading before it waits and pauses it afterwards
(two ``epoll_ctl`` system calls per message), and each ``send`` yields to the
event loop even when the kernel took everything.  For a request/response
transport those costs are most of a round trip.  This stream keeps reading while
its buffer has room (flow control only when it fills, as asyncio's own
``StreamReader`` does) and lets a ``send`` the kernel accepts at once return
without a loop iteration.  It also offers :meth:`AsyncioSocketStream.send_nowait`,
the transport's fast path (see :mod:`moonpool.net._nowait`), and
:meth:`AsyncioSocketStream.receive_into`, which hands each chunk to a callback
straight from the event loop's read callback: a reader that only parses bytes
and wakes other tasks needs no task of its own to be scheduled per message.

It is an ``anyio.abc.SocketStream`` with the same semantics as anyio's own,
checked by the shared stream conformance suite: ordering, ``max_bytes``,
half-close, ``EndOfStream``/``BrokenResourceError``/``ClosedResourceError``,
``BusyResourceError`` for concurrent use, and cancellation that loses nothing.
Cancellation is noticed at every call, also when the call need not wait
(``checkpoint_if_cancelled``).  One deliberate difference: ``aclose()`` lets asyncio
finish writing what is already buffered (anyio aborts the connection and drops
it), bounded by :data:`CLOSE_FLUSH_TIMEOUT`, so a reply written just before a
server closes a connection is not lost.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from asyncio.selector_events import BaseSelectorEventLoop
from collections import deque
from collections.abc import Callable
from typing import Final, NoReturn, final

import anyio
import anyio.abc
import anyio.lowlevel

__all__ = ["AsyncioSocketStream"]

#: Received bytes buffered before we stop reading from the socket (TCP then
#: pushes back on the sender); reading resumes below half of it.
READ_BUFFER_LIMIT: Final = 256 * 1024

#: Unsent bytes the transport may hold before ``send`` waits for them to drain,
#: and above which ``send_nowait`` writes nothing.
WRITE_BUFFER_LIMIT: Final = 64 * 1024

#: Seconds ``aclose()`` leaves asyncio to flush buffered bytes before aborting.
CLOSE_FLUSH_TIMEOUT: Final = 10.0


#: The most one read takes from the kernel (asyncio's own read size).
READ_SIZE: Final = 256 * 1024

#: A connection's own read buffer, on loops that cannot share one (see _Protocol).
OWN_BUFFER_SIZE: Final = 64 * 1024


class _ReadBuffers(threading.local):
    """One receive buffer per thread, shared by every connection of its event loop.

    A plain ``Protocol`` gets each read as a new ``bytes``: asyncio's
    ``sock.recv(256 KiB)`` allocates the whole 256 KiB, then shrinks it to what
    came.  Above glibc's mmap threshold that is an ``mmap``/``munmap`` pair (or a
    heap trim and refault) per read, whatever the message size; it hit 2-4 of 10
    processes at random and halved a 16-byte round trip (measured).  Reading into
    this buffer, and copying out only the bytes that came, allocates what a
    message needs and nothing more.  One per thread, not per connection: an idle
    connection must stay small, and the selector loop reads into it and hands
    it back before anything else runs.
    """

    def __init__(self) -> None:
        self.view = memoryview(bytearray(READ_SIZE))


_read_buffers = _ReadBuffers()


class _Protocol(asyncio.BufferedProtocol):
    """Buffers what the socket delivers and wakes whoever waits for it.

    A ``BufferedProtocol`` (see :class:`_ReadBuffers`).  Selector event loops
    (and uvloop) call ``buffer_updated`` right after reading into
    ``get_buffer``'s buffer, so they share the thread's; on any other loop (the
    proactor keeps a buffer across an overlapped read) a connection gets its
    own, of :data:`OWN_BUFFER_SIZE`, on its first read.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        shared = isinstance(loop, BaseSelectorEventLoop) or type(loop).__module__.startswith(
            "uvloop"
        )
        self._buffer: memoryview | None = _read_buffers.view if shared else None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.reading_paused = False
        self.writing_paused = False
        self.eof = False
        self.lost = False
        self.error: BaseException | None = None
        self.read_waiter: asyncio.Future[None] | None = None
        self.drain_waiter: asyncio.Future[None] | None = None
        # Set while receive_into() runs: chunks go to it instead of the buffer.
        self.consumer: Callable[[bytes], object] | None = None
        self.consumer_error: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_BUFFER_LIMIT)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._buffer is None:
            self._buffer = memoryview(bytearray(OWN_BUFFER_SIZE))
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        assert self._buffer is not None
        self.data_received(bytes(self._buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        consumer = self.consumer
        if consumer is not None and self.read_waiter is not None and self.read_waiter.cancelled():
            # receive_into() was cancelled and has not run its cleanup yet: from
            # now on the bytes are the next reader's, so buffer them.
            consumer = self.consumer = None
        if consumer is not None:
            try:
                consumer(data)
            except Exception as exc:
                # Stop delivering; receive_into() raises it in its own task.
                self.consumer = None
                self.consumer_error = exc
                _wake(self.read_waiter)
            return
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered >= READ_BUFFER_LIMIT and not self.reading_paused:
            assert self.transport is not None
            self.transport.pause_reading()
            self.reading_paused = True
        _wake(self.read_waiter)

    def eof_received(self) -> bool:
        self.eof = True
        _wake(self.read_waiter)
        return True  # keep our side open: the peer only half-closed

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if exc is not None and self.error is None:
            self.error = exc
        _wake(self.read_waiter)
        _wake(self.drain_waiter)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        _wake(self.drain_waiter)

    def consumed(self, size: int) -> None:
        self.buffered -= size
        if self.reading_paused and self.buffered < READ_BUFFER_LIMIT // 2:
            assert self.transport is not None
            self.transport.resume_reading()
            self.reading_paused = False


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


@final
class AsyncioSocketStream(anyio.abc.SocketStream):
    """A connected TCP socket on asyncio; create with :meth:`wrap`."""

    def __init__(
        self, transport: asyncio.Transport, protocol: _Protocol, sock: socket.socket
    ) -> None:
        self._transport = transport
        self._protocol = protocol
        self._socket = sock
        self._closed = False
        self._receiving = False
        self._sending = False

    @classmethod
    async def wrap(cls, sock: socket.socket) -> AsyncioSocketStream:
        """Wrap a connected, non-blocking socket (ours from then on)."""
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.connect_accepted_socket(_Protocol, sock)
        return cls(transport, protocol, sock)

    def __repr__(self) -> str:
        return f"<AsyncioSocketStream fd={self._socket.fileno()}>"

    @property
    def _raw_socket(self) -> socket.socket:
        return self._socket

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if max_bytes < 1:
            raise ValueError("max_bytes must be a positive integer")
        if self._receiving:
            raise anyio.BusyResourceError("reading from")
        protocol = self._protocol
        chunks = protocol.chunks
        if chunks:
            # No wait ahead, so no other place to notice a cancellation.
            await anyio.lowlevel.checkpoint_if_cancelled()
        while not chunks:
            self._check_readable()
            waiter = protocol.read_waiter = asyncio.get_running_loop().create_future()
            self._receiving = True
            try:
                await waiter
            finally:
                self._receiving = False
                protocol.read_waiter = None
        if self._closed:
            raise anyio.ClosedResourceError
        data = chunks.popleft()
        if len(data) > max_bytes:
            chunks.appendleft(data[max_bytes:])
            data = data[:max_bytes]
        elif chunks and len(data) + len(chunks[0]) <= max_bytes:
            # Several small deliveries waiting: hand them over in one piece.
            parts = [data]
            size = len(data)
            while chunks and size + len(chunks[0]) <= max_bytes:
                part = chunks.popleft()
                parts.append(part)
                size += len(part)
            data = b"".join(parts)
        protocol.consumed(len(data))
        return data

    async def receive_into(self, on_data: Callable[[bytes], object]) -> NoReturn:
        """Call ``on_data(chunk)`` for every chunk received, until the stream ends.

        Buffered chunks are handed over first; after that each chunk is passed on
        from the event loop's read callback as it arrives, so ``on_data`` must not
        block (it cannot await).  Never returns: raises ``EndOfStream``,
        ``BrokenResourceError`` or ``ClosedResourceError`` as :meth:`receive`
        would, or re-raises what ``on_data`` raised (delivery stops at that
        chunk; later chunks stay buffered for :meth:`receive`).  Cancelling the
        call stops delivery and loses nothing.
        """
        if self._receiving:
            raise anyio.BusyResourceError("reading from")
        protocol = self._protocol
        await anyio.lowlevel.checkpoint_if_cancelled()
        self._receiving = True
        try:
            chunks = protocol.chunks
            while chunks and not self._closed:
                data = chunks.popleft()
                protocol.consumed(len(data))
                on_data(data)
            protocol.consumer = on_data
            while True:
                error = protocol.consumer_error
                if error is not None:
                    protocol.consumer_error = None
                    raise error
                self._check_readable()
                waiter = protocol.read_waiter = asyncio.get_running_loop().create_future()
                try:
                    await waiter
                except asyncio.CancelledError:
                    error = protocol.consumer_error
                    if error is not None:  # on_data failed, then cancelled its reader:
                        raise error from None  # its failure is what the caller must see
                    raise
        finally:
            protocol.consumer = None
            protocol.consumer_error = None
            protocol.read_waiter = None
            self._receiving = False

    async def send(self, item: bytes) -> None:
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self._sending:
            raise anyio.BusyResourceError("writing to")
        self._check_writable()
        if not item:
            return
        try:
            self._transport.write(item)
        except RuntimeError as exc:  # written after send_eof(), or while closing
            raise anyio.BrokenResourceError(str(exc)) from exc
        protocol = self._protocol
        if protocol.writing_paused:
            # Wait until the kernel has taken most of it: backpressure.
            self._sending = True
            try:
                while protocol.writing_paused and not protocol.lost:
                    protocol.drain_waiter = asyncio.get_running_loop().create_future()
                    await protocol.drain_waiter
            finally:
                self._sending = False
                protocol.drain_waiter = None
            self._check_writable()

    def send_nowait(self, data: bytes) -> int:
        """Write ``data`` without waiting if the transport has room; else write nothing.

        Returns ``len(data)`` or 0; never raises (see :mod:`moonpool.net._nowait`).
        """
        protocol = self._protocol
        if (
            not data
            or self._closed
            or self._sending
            or protocol.writing_paused
            or protocol.lost
            or self._transport.is_closing()
        ):
            return 0
        try:
            self._transport.write(data)
        except (RuntimeError, OSError):
            return 0
        return len(data)

    def _check_readable(self) -> None:
        """Raise how the stream ended, if it has (nothing buffered is assumed)."""
        if self._closed:
            raise anyio.ClosedResourceError
        protocol = self._protocol
        if protocol.error is not None:
            raise anyio.BrokenResourceError from protocol.error
        if protocol.eof or protocol.lost:
            raise anyio.EndOfStream

    def _check_writable(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        protocol = self._protocol
        if protocol.error is not None:
            raise anyio.BrokenResourceError from protocol.error
        if protocol.lost or self._transport.is_closing():
            raise anyio.BrokenResourceError("the connection is closed")

    async def send_eof(self) -> None:
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise anyio.ClosedResourceError
        transport = self._transport
        if not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            transport = self._transport
            if transport.get_write_buffer_size():
                # Let asyncio flush what is buffered, but not forever.
                transport.close()
                asyncio.get_running_loop().call_later(CLOSE_FLUSH_TIMEOUT, transport.abort)
            else:
                transport.abort()
            _wake(self._protocol.read_waiter)
            _wake(self._protocol.drain_waiter)
        await anyio.lowlevel.checkpoint()
