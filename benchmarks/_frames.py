"""The raw baselines' framing: moonpool's ``[u64 LE id][u32 LE len][payload]`` frames.

``RequestResponseEnvelope`` puts exactly these bytes on the wire, so every raw
baseline of the suite (loopback TCP, the simulated echo, detangle, the
1,000-connection run) parses and builds the same frames as moonpool does, with
the obvious competent code: a ``bytearray``, an offset and one precompiled
``struct`` per frame.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Final

__all__ = [
    "HEADER",
    "HEADER_SIZE",
    "RECEIVE_SIZE",
    "FrameBuffer",
    "asyncio_echo_handler",
    "frame",
    "frames",
    "payload",
]

HEADER: Final = struct.Struct("<QI")
HEADER_SIZE: Final = HEADER.size
#: What every raw reader asks for at once.
RECEIVE_SIZE: Final = 65536


class FrameBuffer:
    """A competent hand-written frame parser: bytearray, offset, one unpack per frame."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buffer = self._buffer
        buffer += data
        found: list[tuple[int, bytes]] = []
        offset = 0
        available = len(buffer)
        unpack_from = HEADER.unpack_from
        while available - offset >= HEADER_SIZE:
            cid, length = unpack_from(buffer, offset)
            end = offset + HEADER_SIZE + length
            if end > available:
                break
            found.append((cid, bytes(buffer[offset + HEADER_SIZE : end])))
            offset = end
        if offset:
            del buffer[:offset]
        return found

    def take_in_order(self, data: bytes, first: int) -> int:
        """Feed received bytes; how many replies completed, checked to carry the ids
        ``first``, ``first + 1``, ... (empty ``data`` means the server hung up)."""
        if not data:
            raise ConnectionError("server closed the connection")
        got = 0
        for cid, _ in self.feed(data):
            if cid != first + got:
                raise AssertionError(f"reply {cid} out of order")
            got += 1
        return got

    def echo(self, data: bytes) -> bytes:
        """Reply frames (same id, same payload) for every complete request in ``data``."""
        pack = HEADER.pack
        return b"".join([pack(cid, len(body)) + body for cid, body in self.feed(data)])


def frame(cid: int, body: bytes) -> bytes:
    return HEADER.pack(cid, len(body)) + body


def frames(first_id: int, count: int, body: bytes) -> bytes:
    pack, size = HEADER.pack, len(body)
    return b"".join([pack(first_id + i, size) + body for i in range(count)])


def payload(size: int) -> bytes:
    """``size`` bytes of a recognisable pattern (every benchmark echoes the same)."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


async def asyncio_echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The raw asyncio echo server of every asyncio baseline: each frame sent back."""
    buffer = FrameBuffer()
    try:
        while data := await reader.read(RECEIVE_SIZE):
            replies = buffer.echo(data)
            if replies:
                writer.write(replies)
                await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
