"""Envelope encode/decode and stream framing vs bare ``struct`` on the same wire format.

The wire form of ``RequestResponseEnvelope`` is ``[u64 LE id][u32 LE len][payload]``;
the baseline builds and parses exactly that frame with one precompiled
``struct.Struct``, which is the least any Python implementation has to do.
``CheckedEnvelope`` (msgpack body + CRC32) is measured for information only.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import Final

from benchmarks._core import Figure, Outcome, Settings, compare_calibrated, rate
from moonpool.transport import (
    CheckedEnvelope,
    FrameDecoder,
    RequestResponseEnvelope,
    RequestResponseSerializer,
)

NAME: Final = "envelope"
DESCRIPTION: Final = "RequestResponseEnvelope encode/decode and FrameDecoder vs bare struct"

_HEADER: Final = struct.Struct("<QI")
PAYLOAD_SIZES: Final = (16, 1024)
CHUNK_SIZE: Final = 65536  # how the framing benchmark chops the stream, like a socket read
STREAM_FRAMES: Final = 4096  # frames in the prebuilt stream; a sample decodes it n times over
SAMPLE_SECONDS: Final = 0.04  # per side and sample, at scale 1.0

Sample = Callable[[int], float]


def _payload(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def encode_pair(payload: bytes) -> tuple[Sample, Sample]:
    serializer: RequestResponseSerializer = RequestResponseEnvelope.serializer()
    create = RequestResponseEnvelope.create_request
    serialize = serializer.serialize
    pack = _HEADER.pack
    size = len(payload)

    def moonpool(n: int) -> float:
        started = time.perf_counter()
        for cid in range(n):
            serialize(create(cid, payload))
        return rate(n, started)

    def bare(n: int) -> float:
        started = time.perf_counter()
        for cid in range(n):
            pack(cid, size) + payload
        return rate(n, started)

    return moonpool, bare


def decode_pair(payload: bytes) -> tuple[Sample, Sample]:
    serializer: RequestResponseSerializer = RequestResponseEnvelope.serializer()
    frames = [
        serializer.serialize(RequestResponseEnvelope(correlation_id=i, payload=payload))
        for i in range(64)
    ]
    deserialize = serializer.deserialize
    unpack_from = _HEADER.unpack_from
    header = _HEADER.size

    def moonpool(n: int) -> float:
        started = time.perf_counter()
        for i in range(n):
            _ = deserialize(frames[i & 63]).payload
        return rate(n, started)

    def bare(n: int) -> float:
        started = time.perf_counter()
        for i in range(n):
            frame = frames[i & 63]
            _cid, length = unpack_from(frame)
            if len(frame) - header != length:
                raise ValueError("bad frame")
            _ = frame[header:]
        return rate(n, started)

    return moonpool, bare


def stream_pair(payload: bytes) -> tuple[Sample, Sample]:
    serializer: RequestResponseSerializer = RequestResponseEnvelope.serializer()
    stream = b"".join(
        serializer.serialize(RequestResponseEnvelope(correlation_id=i, payload=payload))
        for i in range(STREAM_FRAMES)
    )
    chunks = [stream[i : i + CHUNK_SIZE] for i in range(0, len(stream), CHUNK_SIZE)]
    unpack_from = _HEADER.unpack_from
    header = _HEADER.size

    def moonpool(n: int) -> float:
        passes = max(1, n // STREAM_FRAMES)
        decoder = FrameDecoder(serializer)
        decoded = 0
        started = time.perf_counter()
        for _ in range(passes):
            for chunk in chunks:
                decoded += len(decoder.feed(chunk))
        result = rate(decoded, started)
        if decoded != passes * STREAM_FRAMES:
            raise AssertionError(f"FrameDecoder produced {decoded} frames")
        return result

    def bare(n: int) -> float:
        # A competent hand-written decoder: one bytearray buffer, an offset, one
        # unpack per frame, consumed prefix dropped once per chunk.
        passes = max(1, n // STREAM_FRAMES)
        buffer = bytearray()
        decoded = 0
        started = time.perf_counter()
        for _ in range(passes):
            for chunk in chunks:
                buffer += chunk
                offset = 0
                available = len(buffer)
                frames: list[tuple[int, bytes]] = []
                while available - offset >= header:
                    cid, length = unpack_from(buffer, offset)
                    end = offset + header + length
                    if end > available:
                        break
                    frames.append((cid, bytes(buffer[offset + header : end])))
                    offset = end
                if offset:
                    del buffer[:offset]
                decoded += len(frames)
        result = rate(decoded, started)
        if decoded != passes * STREAM_FRAMES:
            raise AssertionError(f"bare decoder produced {decoded} frames")
        return result

    return moonpool, bare


def checked_pairs(payload: bytes) -> tuple[tuple[Sample, Sample], tuple[Sample, Sample]]:
    serializer = CheckedEnvelope.serializer()
    create, serialize, deserialize = (
        CheckedEnvelope.create_request,
        serializer.serialize,
        serializer.deserialize,
    )
    frame = serialize(create(7, payload))
    _, bare_encode = encode_pair(payload)
    _, bare_decode = decode_pair(payload)

    def checked_encode(n: int) -> float:
        started = time.perf_counter()
        for cid in range(n):
            serialize(create(cid, payload))
        return rate(n, started)

    def checked_decode(n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            _ = deserialize(frame).payload
        return rate(n, started)

    return (checked_encode, bare_encode), (checked_decode, bare_decode)


def _figure(
    name: str,
    unit: str,
    pair: tuple[Sample, Sample],
    baseline_name: str,
    settings: Settings,
    **details: object,
) -> Figure:
    cand, base, counts = compare_calibrated(pair[0], pair[1], settings, SAMPLE_SECONDS)
    return Figure(name, unit, cand, base, baseline_name, details={**counts, **details})


def run(settings: Settings) -> Outcome:
    outcome = Outcome(
        notes=[
            "single thread, no event loop; baseline is the same [u64][u32][payload] frame "
            "built/parsed with a precompiled struct.Struct",
            f"stream: a {STREAM_FRAMES}-frame stream fed in {CHUNK_SIZE}-byte chunks (frames "
            "straddle chunks); bare decoder = bytearray + offset + unpack_from",
            "each side's operation count is sized to ~40 ms per sample and 2x the usual "
            "samples are taken (micro-benchmarks are the most sensitive to a busy machine)",
            "CheckedEnvelope figures are for information (no target)",
        ]
    )
    settings = settings.more_samples(2)
    figures = outcome.figures
    for size in PAYLOAD_SIZES:
        payload = _payload(size)
        figures.append(
            _figure(
                f"encode {size} B: create_request + serialize",
                "ops/s",
                encode_pair(payload),
                "struct.pack + concat",
                settings,
            )
        )
        figures.append(
            _figure(
                f"decode {size} B: deserialize",
                "ops/s",
                decode_pair(payload),
                "unpack_from + check + slice",
                settings,
            )
        )
        figures.append(
            _figure(
                f"stream of {size} B frames: FrameDecoder.feed",
                "frames/s",
                stream_pair(payload),
                "bytearray + unpack_from loop",
                settings,
                chunk_size=CHUNK_SIZE,
            )
        )
    for size in PAYLOAD_SIZES:
        encode, decode = checked_pairs(_payload(size))
        figures.append(
            _figure(
                f"CheckedEnvelope encode {size} B (info)",
                "ops/s",
                encode,
                "struct.pack + concat",
                settings,
                info_only=True,
            )
        )
        figures.append(
            _figure(
                f"CheckedEnvelope decode {size} B (info)",
                "ops/s",
                decode,
                "unpack_from + check + slice",
                settings,
                info_only=True,
            )
        )
    return outcome
