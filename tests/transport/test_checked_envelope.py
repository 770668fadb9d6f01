"""CheckedEnvelope: a second wire format whose corruption is always detected."""

from __future__ import annotations

import struct
import tracemalloc
import zlib

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from moonpool.transport import (
    CheckedEnvelope,
    CheckedEnvelopeSerializer,
    Envelope,
    EnvelopeKind,
    ErrorReply,
    SerializationError,
)

SER = CheckedEnvelope.serializer()

envelopes = st.builds(
    CheckedEnvelope,
    kind=st.sampled_from(EnvelopeKind),
    correlation_id=st.integers(0, 2**64 - 1),
    payload=st.binary(max_size=512),
    headers=st.dictionaries(st.text(max_size=8), st.text(max_size=16), max_size=4),
)


def _frame(body: bytes) -> bytes:
    """The documented wire form, written out independently of the serializer."""
    length_and_sum = struct.pack("<II", len(body), zlib.crc32(body))
    return length_and_sum + struct.pack("<I", zlib.crc32(length_and_sum)) + body


def test_shared_serializer_and_header() -> None:
    assert CheckedEnvelope.serializer() is SER
    assert isinstance(SER, CheckedEnvelopeSerializer)
    assert SER.header_size == 12


def test_wire_layout_is_length_crc_body() -> None:
    envelope = CheckedEnvelope(
        kind=EnvelopeKind.REPLY, correlation_id=7, payload=b"ok", headers={"a": "b"}
    )
    frame = SER.serialize(envelope)
    body = msgspec.msgpack.encode([1, 7, b"ok", {"a": "b"}])
    assert frame == _frame(body)
    assert SER.frame_size(frame[:12]) == len(frame)


@given(envelope=envelopes)
def test_round_trip(envelope: CheckedEnvelope) -> None:
    frame = SER.serialize(envelope)
    assert SER.frame_size(frame[:12]) == len(frame)
    assert SER.deserialize(frame) == envelope
    assert SER.deserialize(memoryview(frame)) == envelope


@given(envelope=envelopes, data=st.data())
def test_envelope_survives_corruption_any_single_bit_flip_is_detected(
    envelope: CheckedEnvelope, data: st.DataObject
) -> None:
    """Corruption anywhere in the frame -- header or body -- is never silently accepted."""
    frame = bytearray(SER.serialize(envelope))
    bit = data.draw(st.integers(0, len(frame) * 8 - 1), label="bit")
    frame[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(SerializationError):
        SER.deserialize(bytes(frame))


@given(envelope=envelopes, data=st.data())
def test_body_corruption_names_the_checksum(envelope: CheckedEnvelope, data: st.DataObject) -> None:
    frame = bytearray(SER.serialize(envelope))
    index = data.draw(st.integers(8, len(frame) - 1), label="byte")
    frame[index] ^= data.draw(st.integers(1, 255), label="xor")
    with pytest.raises(SerializationError, match="checksum mismatch"):
        SER.deserialize(bytes(frame))


def test_valid_checksum_but_undecodable_body() -> None:
    body = b"\xc1"  # msgpack's "never used" byte
    frame = _frame(body)
    with pytest.raises(SerializationError, match=r"checksum ok\) is not a valid envelope"):
        SER.deserialize(frame)


def test_valid_checksum_but_wrong_shape() -> None:
    body = msgspec.msgpack.encode([9, 1, b"x", {}])  # 9 is not an EnvelopeKind
    frame = _frame(body)
    with pytest.raises(SerializationError, match="not a valid envelope"):
        SER.deserialize(frame)


def test_negative_correlation_id_on_wire_rejected() -> None:
    body = msgspec.msgpack.encode([0, -5, b"x", {}])
    frame = _frame(body)
    with pytest.raises(SerializationError, match="not a valid envelope"):
        SER.deserialize(frame)


def test_length_mismatch_and_short_frame() -> None:
    frame = SER.serialize(CheckedEnvelope.create_request(1, b"abc"))
    with pytest.raises(SerializationError, match=r"declares a \d+-byte body but the frame carries"):
        SER.deserialize(frame[:-1])
    with pytest.raises(SerializationError, match="header needs 12 bytes, got 3 bytes"):
        SER.deserialize(frame[:3])
    with pytest.raises(SerializationError, match="needs 12 bytes"):
        SER.frame_size(frame[:7])


@pytest.mark.parametrize("cid", [-1, 2**64])
def test_serialize_rejects_out_of_range_id(cid: int) -> None:
    with pytest.raises(SerializationError, match="does not fit in an unsigned 64-bit"):
        SER.serialize(CheckedEnvelope.create_request(cid, b""))


def test_serialize_rejects_unencodable_fields() -> None:
    bad = CheckedEnvelope(
        kind=EnvelopeKind.REQUEST,
        correlation_id=1,
        payload=b"",
        headers={"k": object()},  # type: ignore[dict-item]
    )
    with pytest.raises(SerializationError, match="cannot encode CheckedEnvelope"):
        SER.serialize(bad)
    with pytest.raises(SerializationError, match="kind must be an EnvelopeKind"):
        SER.serialize(CheckedEnvelope(kind=1, correlation_id=1, payload=b""))  # type: ignore[arg-type]


def test_reply_matching_only_for_reply_and_error_kinds() -> None:
    request = CheckedEnvelope.create_request(5, b"q")
    assert isinstance(request, Envelope)
    assert request.kind is EnvelopeKind.REQUEST
    assert not request.is_reply_to(5)  # a request with the same id is not a reply

    reply = request.create_reply(b"a")
    assert (reply.kind, reply.correlation_id, reply.extract_payload()) == (
        EnvelopeKind.REPLY,
        5,
        b"a",
    )
    assert reply.is_reply_to(5)
    assert not reply.is_reply_to(6)

    error = request.create_error("disk on fire")
    assert error.kind is EnvelopeKind.ERROR
    assert error.is_reply_to(5)
    assert not error.is_reply_to(4)

    one_way = CheckedEnvelope.create_one_way(b"note", headers={"x": "y"})
    assert one_way.kind is EnvelopeKind.ONE_WAY
    assert one_way.headers == {"x": "y"}
    assert not one_way.is_reply_to(one_way.correlation_id)


def test_error_reply_capability() -> None:
    request = CheckedEnvelope.create_request(5, b"q")
    assert issubclass(CheckedEnvelope, ErrorReply)
    assert request.remote_error() is None
    assert request.create_reply(b"fine").remote_error() is None
    assert request.create_error("disk on fire").remote_error() == "disk on fire"
    # A non-UTF-8 message must not crash the receiver.
    raw = CheckedEnvelope(kind=EnvelopeKind.ERROR, correlation_id=5, payload=b"\xff")
    assert raw.remote_error() == "\ufffd"


def test_headers_default_is_not_shared() -> None:
    first = CheckedEnvelope.create_request(1, b"")
    second = CheckedEnvelope.create_request(2, b"")
    assert first.headers == {} == second.headers
    assert first.headers is not second.headers


@given(bit=st.integers(min_value=0, max_value=8 * 8 - 1))
def test_corrupted_length_is_rejected_from_the_header_alone(bit: int) -> None:
    """A flipped bit in the length or checksum fields is caught before any body byte.

    Without a header check, the receiver would wait for a body length that is
    wrong and stall the connection until that many bytes happened to arrive.
    """
    frame = bytearray(SER.serialize(CheckedEnvelope.create_request(5, b"payload")))
    frame[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(SerializationError, match="header checksum mismatch"):
        SER.frame_size(bytes(frame[:12]))


# -- bounded headers -------------------------------------------------------------------


def _bomb(count: int) -> bytes:
    """A frame whose body holds ``count`` tiny headers (written without the serializer)."""
    headers = {f"{i:x}": "" for i in range(count)}
    return _frame(msgspec.msgpack.encode([0, 1, b"", headers]))


def test_header_bomb_is_refused_before_it_is_built() -> None:
    """A 1 MiB frame of ~200,000 tiny headers used to decode into ~20 MB of dict; the
    decoder now refuses it on the map's length, before building any entry."""
    bomb = _bomb(200_000)
    assert len(bomb) > 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(
            SerializationError, match=r"not a valid envelope.*<= 64.*MAX_HEADERS=64"
        ):
            SER.deserialize(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, peak


def test_the_header_limits_are_exact() -> None:
    limit = CheckedEnvelope.MAX_HEADERS
    assert limit == 64
    assert len(SER.deserialize(_bomb(limit)).headers) == limit
    with pytest.raises(SerializationError):
        SER.deserialize(_bomb(limit + 1))

    room = CheckedEnvelope.MAX_HEADER_BYTES
    assert room == 16 * 1024
    fits = CheckedEnvelope(
        kind=EnvelopeKind.REQUEST, correlation_id=1, payload=b"", headers={"k": "v" * (room - 1)}
    )
    assert SER.deserialize(SER.serialize(fits)) == fits
    # Two headers, each within the limit, that add up to one character too many.
    half = "v" * (room // 2)
    body = msgspec.msgpack.encode([0, 1, b"", {"a": half, "b": half[1:]}])
    with pytest.raises(SerializationError, match=f"{room + 1} characters.*MAX_HEADER_BYTES"):
        SER.deserialize(_frame(body))


def test_sending_too_many_headers_fails_at_the_sender() -> None:
    too_many = CheckedEnvelope.create_one_way(b"", headers={str(i): "" for i in range(65)})
    with pytest.raises(SerializationError, match=r"cannot encode.*: 65 headers.*MAX_HEADERS=64"):
        SER.serialize(too_many)
    too_long = CheckedEnvelope.create_one_way(b"", headers={"k": "v" * (16 * 1024)})
    with pytest.raises(SerializationError, match="headers of 16385 characters"):
        SER.serialize(too_long)
    not_text = CheckedEnvelope.create_one_way(b"", headers={"k": 1})  # type: ignore[dict-item]
    with pytest.raises(SerializationError, match="must be str"):
        SER.serialize(not_text)


@given(count=st.integers(0, 64), size=st.integers(0, 200))
def test_decoded_memory_is_proportional_to_the_frame(count: int, size: int) -> None:
    """Whatever the headers, what a decoded envelope holds is its frame plus a small
    constant (a few kilobytes), never a multiple of it."""
    headers = {f"{i:x}": "v" * size for i in range(count)}
    frame = _frame(msgspec.msgpack.encode([0, 1, b"", headers]))
    tracemalloc.start()
    try:
        envelope = SER.deserialize(frame)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(envelope.headers) == count
    assert held < 2 * len(frame) + 8 * 1024, (held, len(frame))
