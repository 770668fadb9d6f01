"""FrameDecoder: arbitrary chunking, oversize frames, poisoning."""

from __future__ import annotations

import itertools
import struct
import tracemalloc
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moonpool.transport import (
    DEFAULT_MAX_FRAME_SIZE,
    CheckedEnvelope,
    EnvelopeKind,
    FrameDecoder,
    FrameTooLarge,
    RequestResponseEnvelope,
    SerializationError,
    TransportError,
)
from moonpool.transport._framing import LARGE_FRAME_SIZE

RR = RequestResponseEnvelope.serializer()
CK = CheckedEnvelope.serializer()

rr_envelopes = st.builds(
    RequestResponseEnvelope,
    correlation_id=st.integers(0, 2**64 - 1),
    payload=st.binary(max_size=300),
)
checked_envelopes = st.builds(
    CheckedEnvelope,
    kind=st.sampled_from(EnvelopeKind),
    correlation_id=st.integers(0, 2**64 - 1),
    payload=st.binary(max_size=300),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@given(frames=st.lists(rr_envelopes, max_size=20), cuts=st.lists(st.integers(0, 10**6)))
def test_arbitrary_chunking_yields_exactly_the_frames_in_order(
    frames: list[RequestResponseEnvelope], cuts: list[int]
) -> None:
    stream = b"".join(RR.serialize(f) for f in frames)
    decoder = FrameDecoder(RR)
    out: list[RequestResponseEnvelope] = []
    for chunk in split(stream, cuts):
        out.extend(decoder.feed(chunk))
    assert out == frames
    assert decoder.buffered == 0


# Around the size where the decoder switches to collecting chunks, and well above.
_SIZES = [0, 5, LARGE_FRAME_SIZE - 13, LARGE_FRAME_SIZE - 12, LARGE_FRAME_SIZE, 200_000]


@given(
    sizes=st.lists(st.sampled_from(_SIZES), min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 10**7), max_size=30),
)
def test_large_frames_mixed_with_small_ones_under_any_chunking(
    sizes: list[int], cuts: list[int]
) -> None:
    frames = [
        RequestResponseEnvelope(correlation_id=i, payload=bytes([i % 251]) * size)
        for i, size in enumerate(sizes)
    ]
    stream = b"".join(RR.serialize(f) for f in frames)
    decoder = FrameDecoder(RR)
    out: list[RequestResponseEnvelope] = []
    received = 0
    for chunk in split(stream, cuts):
        out.extend(decoder.feed(chunk))
        received += len(chunk)
        consumed = sum(len(RR.serialize(f)) for f in out)
        assert decoder.buffered == received - consumed  # nothing lost or counted twice
    assert out == frames
    assert decoder.buffered == 0


def test_large_frame_body_is_checked_like_any_other() -> None:
    frame = bytearray(CK.serialize(CheckedEnvelope.create_request(7, bytes(LARGE_FRAME_SIZE))))
    frame[-1] ^= 0x01  # a flipped bit in the body, far past the first chunk
    decoder = FrameDecoder(CK)
    assert decoder.feed(bytes(frame[:1000])) == []
    with pytest.raises(SerializationError, match="checksum"):
        decoder.feed(bytes(frame[1000:]))
    assert decoder.poisoned and decoder.buffered == 0


@given(
    frames=st.lists(checked_envelopes, min_size=1, max_size=10),
    cuts=st.lists(st.integers(0, 10**6)),
)
def test_chunking_is_envelope_agnostic(frames: list[CheckedEnvelope], cuts: list[int]) -> None:
    stream = b"".join(CK.serialize(f) for f in frames)
    decoder = FrameDecoder(CK)
    out = [env for chunk in split(stream, cuts) for env in decoder.feed(chunk)]
    assert out == frames


def test_one_byte_at_a_time() -> None:
    frames = [RequestResponseEnvelope(correlation_id=i, payload=bytes([i]) * i) for i in range(5)]
    stream = b"".join(RR.serialize(f) for f in frames)
    decoder = FrameDecoder(RR)
    out = []
    for i in range(len(stream)):
        out.extend(decoder.feed(stream[i : i + 1]))
        assert decoder.buffered == len(stream[: i + 1]) - sum(12 + len(f.payload) for f in out)
    assert out == frames


def test_truncated_header_waits_for_more() -> None:
    frame = RR.serialize(RequestResponseEnvelope(correlation_id=1, payload=b"abc"))
    decoder = FrameDecoder(RR)
    assert decoder.feed(frame[:11]) == []
    assert decoder.buffered == 11
    assert decoder.feed(frame[11:14]) == []
    assert decoder.feed(frame[14:]) == [RequestResponseEnvelope(correlation_id=1, payload=b"abc")]
    assert decoder.buffered == 0


def test_several_frames_and_a_partial_in_one_chunk() -> None:
    a, b, c = (RequestResponseEnvelope(correlation_id=i, payload=b"p%d" % i) for i in range(3))
    stream = RR.serialize(a) + RR.serialize(b) + RR.serialize(c)
    decoder = FrameDecoder(RR)
    assert decoder.feed(stream[:-2]) == [a, b]
    assert decoder.buffered == len(RR.serialize(c)) - 2
    assert decoder.feed(stream[-2:]) == [c]


def test_empty_feed_is_harmless() -> None:
    decoder = FrameDecoder(RR)
    assert decoder.feed(b"") == []
    assert decoder.buffered == 0


def test_accepts_memoryview_and_bytearray() -> None:
    frame = RR.serialize(RequestResponseEnvelope(correlation_id=2, payload=b"xy"))
    decoder = FrameDecoder(RR)
    assert decoder.feed(bytearray(frame[:5])) == []
    assert decoder.feed(memoryview(frame)[5:]) == [
        RequestResponseEnvelope(correlation_id=2, payload=b"xy")
    ]


def test_default_max_frame_size_is_one_mebibyte() -> None:
    assert DEFAULT_MAX_FRAME_SIZE == 1024 * 1024
    assert FrameDecoder(RR).max_frame_size == DEFAULT_MAX_FRAME_SIZE


def test_frame_at_exact_limit_is_accepted() -> None:
    envelope = RequestResponseEnvelope(correlation_id=1, payload=b"x" * 88)
    decoder = FrameDecoder(RR, max_frame_size=100)
    assert decoder.feed(RR.serialize(envelope)) == [envelope]


def test_frame_one_byte_over_limit_is_rejected_from_header() -> None:
    header = struct.pack("<QI", 1, 89)  # 12 + 89 = 101 > 100
    decoder = FrameDecoder(RR, max_frame_size=100)
    expected = "declares 101 bytes, above the maximum frame size of 100"
    with pytest.raises(FrameTooLarge, match=expected):
        decoder.feed(header)  # the body has not arrived yet: rejected from the header alone


def test_four_gib_length_is_rejected_without_allocating() -> None:
    header = struct.pack("<QI", 1, 2**32 - 1)
    decoder = FrameDecoder(RR)
    tracemalloc.start()
    try:
        with pytest.raises(FrameTooLarge) as info:
            decoder.feed(header + b"some body bytes")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(2**32 - 1 + 12) in str(info.value)
    assert isinstance(info.value, SerializationError)
    assert peak < 1024 * 1024, f"decoder allocated {peak} bytes for a rejected frame"
    assert decoder.buffered == 0


def test_oversize_header_rejected_even_when_split() -> None:
    header = struct.pack("<QI", 1, 2**31)
    decoder = FrameDecoder(RR)
    assert decoder.feed(header[:6]) == []
    with pytest.raises(FrameTooLarge):
        decoder.feed(header[6:])


def test_decoder_is_poisoned_after_error() -> None:
    length_and_sum = struct.pack("<II", 3, 0)  # a sound header announcing a bad body checksum
    bad = length_and_sum + struct.pack("<I", zlib.crc32(length_and_sum)) + b"abc"
    good = CK.serialize(CheckedEnvelope.create_request(1, b"ok"))
    decoder = FrameDecoder(CK)
    with pytest.raises(SerializationError, match="checksum mismatch"):
        decoder.feed(bad)
    assert decoder.poisoned
    assert decoder.buffered == 0
    for _ in range(2):
        with pytest.raises(SerializationError, match="unusable after an earlier error") as info:
            decoder.feed(good)
        assert "checksum mismatch" in str(info.value)
        assert isinstance(info.value, TransportError)
    with pytest.raises(SerializationError, match="unusable"):
        decoder.next_frame()


def test_poisoned_after_frame_too_large() -> None:
    decoder = FrameDecoder(RR, max_frame_size=64)
    with pytest.raises(FrameTooLarge):
        decoder.feed(struct.pack("<QI", 1, 1000))
    with pytest.raises(SerializationError, match=r"unusable.*FrameTooLarge"):
        decoder.feed(b"")


def test_push_next_frame_keeps_frames_before_a_corrupt_one() -> None:
    first = CheckedEnvelope.create_request(1, b"a")
    second = CheckedEnvelope.create_request(2, b"b")
    corrupt = bytearray(CK.serialize(CheckedEnvelope.create_request(3, b"c")))
    corrupt[-1] ^= 0x01
    decoder = FrameDecoder(CK)
    decoder.push(CK.serialize(first) + CK.serialize(second) + bytes(corrupt))
    assert decoder.next_frame() == first
    assert decoder.next_frame() == second
    with pytest.raises(SerializationError, match="checksum"):
        decoder.next_frame()


class _BuggySerializer:
    """A serializer that breaks its contract by raising the wrong exception type."""

    header_size = 1

    def frame_size(self, header: bytes | memoryview, /) -> int:
        return 1 + header[0]

    def serialize(self, envelope: bytes, /) -> bytes:
        return bytes([len(envelope)]) + envelope

    def deserialize(self, frame: bytes | memoryview, /) -> bytes:
        if bytes(frame[1:]) == b"boom":
            raise KeyError("boom")
        return bytes(frame[1:])


def test_contract_breaking_serializer_still_yields_serialization_error() -> None:
    decoder: FrameDecoder[bytes] = FrameDecoder(_BuggySerializer())
    assert decoder.feed(b"\x02hi\x01") == [b"hi"]
    with pytest.raises(SerializationError, match="raised KeyError on a 5-byte frame"):
        decoder.feed(b"!\x04boom")
    assert decoder.poisoned


def test_header_declaring_less_than_header_is_rejected() -> None:
    class Shrinking(_BuggySerializer):
        header_size = 4

        def frame_size(self, header: bytes | memoryview, /) -> int:
            return 2

    decoder: FrameDecoder[bytes] = FrameDecoder(Shrinking())
    with pytest.raises(SerializationError, match="declares 2 bytes, less than the 4-byte header"):
        decoder.feed(b"abcd")


def test_contract_breaking_frame_size_still_yields_serialization_error() -> None:
    class BadHeader(_BuggySerializer):
        def frame_size(self, header: bytes | memoryview, /) -> int:
            if header == b"?":
                raise IndexError("no such size")
            return super().frame_size(header)

    decoder: FrameDecoder[bytes] = FrameDecoder(BadHeader())
    assert decoder.feed(b"\x02ok") == [b"ok"]
    with pytest.raises(SerializationError, match="frame_size raised IndexError") as info:
        decoder.feed(b"?")
    assert isinstance(info.value.__cause__, IndexError)
    assert decoder.poisoned and decoder.buffered == 0
    with pytest.raises(SerializationError, match="unusable after an earlier error"):
        decoder.feed(b"\x02ok")


def test_serialization_error_from_frame_size_is_raised_as_is() -> None:
    refusal = SerializationError("header refused")

    class Refusing(_BuggySerializer):
        def frame_size(self, header: bytes | memoryview, /) -> int:
            raise refusal

    decoder: FrameDecoder[bytes] = FrameDecoder(Refusing())
    with pytest.raises(SerializationError) as info:
        decoder.feed(b"x")
    assert info.value is refusal and info.value.__cause__ is None
    assert decoder.poisoned


def test_invalid_configuration() -> None:
    with pytest.raises(ValueError, match="smaller than the serializer's 12-byte header"):
        FrameDecoder(RR, max_frame_size=11)


def test_linear_time_for_a_large_frame_in_small_chunks() -> None:
    """A 1 MiB frame fed in 64-byte chunks must not re-copy the whole buffer each time."""
    envelope = RequestResponseEnvelope(correlation_id=1, payload=b"z" * (1024 * 1024 - 12))
    frame = RR.serialize(envelope)
    decoder = FrameDecoder(RR)
    out = []
    view = memoryview(frame)
    for i in range(0, len(frame), 64):
        out.extend(decoder.feed(view[i : i + 64]))
    assert out == [envelope]
