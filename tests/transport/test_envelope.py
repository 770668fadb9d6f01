"""RequestResponseEnvelope: exact wire bytes, round trips, and rejection of bad frames."""

from __future__ import annotations

import struct

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from moonpool.transport import (
    Envelope,
    ErrorReply,
    RequestResponseEnvelope,
    RequestResponseSerializer,
    SerializationError,
)

U64_MAX = 2**64 - 1
SER = RequestResponseEnvelope.serializer()


def test_serializer_is_shared_instance_with_12_byte_header() -> None:
    assert RequestResponseEnvelope.serializer() is SER
    assert isinstance(SER, RequestResponseSerializer)
    assert SER.header_size == 12


def test_exact_wire_bytes() -> None:
    envelope = RequestResponseEnvelope(correlation_id=0x0102030405060708, payload=b"PING")
    expected = (
        b"\x08\x07\x06\x05\x04\x03\x02\x01"  # correlation id, u64 little-endian
        b"\x04\x00\x00\x00"  # payload length, u32 little-endian
        b"PING"
    )
    assert SER.serialize(envelope) == expected
    assert SER.deserialize(expected) == envelope


def test_exact_wire_bytes_empty_payload_and_max_id() -> None:
    envelope = RequestResponseEnvelope(correlation_id=U64_MAX, payload=b"")
    assert SER.serialize(envelope) == b"\xff" * 8 + b"\x00\x00\x00\x00"


def test_frame_size_reads_header_only() -> None:
    header = struct.pack("<QI", 7, 300)
    assert SER.frame_size(header) == 312
    assert SER.frame_size(memoryview(header + b"ignored")) == 312


def test_frame_size_short_header_is_serialization_error() -> None:
    with pytest.raises(SerializationError, match="needs 12 bytes, got 5 bytes"):
        SER.frame_size(b"\x00" * 5)


@given(cid=st.integers(0, U64_MAX), payload=st.binary(max_size=2048))
def test_round_trip(cid: int, payload: bytes) -> None:
    envelope = RequestResponseEnvelope(correlation_id=cid, payload=payload)
    frame = SER.serialize(envelope)
    assert len(frame) == 12 + len(payload) == SER.frame_size(frame[:12])
    assert frame == struct.pack("<QI", cid, len(payload)) + payload
    decoded = SER.deserialize(frame)
    assert decoded == envelope
    assert type(decoded.payload) is bytes
    assert SER.deserialize(memoryview(frame)) == envelope


def test_deserialize_from_memoryview_copies_payload() -> None:
    buffer = bytearray(SER.serialize(RequestResponseEnvelope(correlation_id=1, payload=b"abc")))
    with memoryview(buffer) as view:
        decoded = SER.deserialize(view)
    buffer[-1] = ord("z")  # must not leak into the decoded envelope
    assert decoded.payload == b"abc"


@pytest.mark.parametrize("length", [0, 1, 11])
def test_deserialize_short_frame(length: int) -> None:
    with pytest.raises(SerializationError, match=f"frame is {length} bytes"):
        SER.deserialize(b"\x01" * length)


@pytest.mark.parametrize(("declared", "actual"), [(5, 4), (5, 6), (0, 1), (2**32 - 1, 3)])
def test_deserialize_length_mismatch(declared: int, actual: int) -> None:
    frame = struct.pack("<QI", 9, declared) + b"x" * actual
    with pytest.raises(SerializationError, match=f"declares a {declared}-byte payload") as info:
        SER.deserialize(frame)
    assert f"carries {actual} bytes" in str(info.value)
    assert "correlation id 9" in str(info.value)


@given(data=st.binary(max_size=64))
def test_deserialize_garbage_raises_only_serialization_error(data: bytes) -> None:
    try:
        envelope = SER.deserialize(data)
    except SerializationError:
        return
    # Only a self-consistent frame may be accepted.
    assert len(data) >= 12
    assert SER.serialize(envelope) == data


@pytest.mark.parametrize("cid", [-1, 2**64, 2**70])
def test_serialize_rejects_correlation_id_out_of_u64(cid: int) -> None:
    with pytest.raises(SerializationError, match=rf"correlation id {cid} does not fit"):
        SER.serialize(RequestResponseEnvelope(correlation_id=cid, payload=b""))


def test_serialize_rejects_payload_over_u32() -> None:
    class Huge(bytes):
        def __len__(self) -> int:
            return 2**32

    envelope = RequestResponseEnvelope(correlation_id=3, payload=Huge(b""))
    with pytest.raises(SerializationError, match=r"4294967296 bytes exceeds the u32 length"):
        SER.serialize(envelope)


def test_serialize_rejects_non_bytes_payload() -> None:
    envelope = RequestResponseEnvelope(correlation_id=3, payload="text")  # type: ignore[arg-type]
    with pytest.raises(SerializationError, match="payload must be bytes, got str"):
        SER.serialize(envelope)


def test_serialize_rejects_wrong_type() -> None:
    with pytest.raises(SerializationError, match="expected a RequestResponseEnvelope"):
        SER.serialize(object())  # type: ignore[arg-type]


def test_envelope_protocol_methods() -> None:
    request = RequestResponseEnvelope.create_request(42, b"q")
    assert request == RequestResponseEnvelope(correlation_id=42, payload=b"q")
    reply = request.create_reply(b"a")
    assert reply.correlation_id == 42
    assert reply.extract_payload() == b"a"
    assert reply.is_reply_to(42)
    assert not reply.is_reply_to(43)
    assert isinstance(request, Envelope)
    # The minimal format cannot carry errors.
    assert not issubclass(RequestResponseEnvelope, ErrorReply)


def test_envelope_is_frozen_kw_only_struct() -> None:
    envelope = RequestResponseEnvelope(correlation_id=1, payload=b"")
    assert isinstance(envelope, msgspec.Struct)
    with pytest.raises(AttributeError):
        envelope.payload = b"x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        RequestResponseEnvelope(1, b"")  # type: ignore[call-arg]
