"""A second, richer envelope type: typed kinds, headers and a CRC32 checksum.

It exists to keep the transport honest about being envelope-agnostic (nothing in
the protocol may assume :class:`~moonpool.transport.RequestResponseEnvelope`), and
for links where silent corruption matters: the simulation flips bits, and this
format turns every flipped bit into a :class:`SerializationError` instead of a
wrong payload. Pure: no I/O, no clock, no async library.
"""

from __future__ import annotations

import enum
import struct
import zlib
from typing import Annotated, Final, Self, final

import msgspec

from moonpool.transport._envelope import U32_MAX, U64_MAX, describe_length
from moonpool.transport._errors import SerializationError

__all__ = ["CheckedEnvelope", "CheckedEnvelopeSerializer", "EnvelopeKind"]


class EnvelopeKind(enum.IntEnum):
    """What an envelope is for; only REPLY and ERROR can answer a request."""

    REQUEST = 0
    REPLY = 1
    ERROR = 2
    ONE_WAY = 3


# msgpack integers stop at u64, so only the lower bound needs checking on decode.
_CorrelationId = Annotated[int, msgspec.Meta(ge=0)]


@final
class CheckedEnvelope(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """An envelope with a kind, string headers and a checksummed msgpack body.

    Wire form: ``[body_len: u32 LE][crc32(body): u32 LE][crc32(header[0:8]): u32 LE][body]``
    where ``body`` is the msgpack encoding of the struct (as an array, in field
    order).  Any flipped bit is detected: in the header as soon as it arrives, in
    the body when the frame completes.
    """

    kind: EnvelopeKind
    correlation_id: _CorrelationId
    payload: bytes
    headers: dict[str, str] = {}

    @classmethod
    def create_request(cls, correlation_id: int, payload: bytes) -> Self:
        return cls(kind=EnvelopeKind.REQUEST, correlation_id=correlation_id, payload=payload)

    @classmethod
    def create_one_way(cls, payload: bytes, *, headers: dict[str, str] | None = None) -> Self:
        """A message that expects no reply (correlation id 0, never matches a request)."""
        return cls(
            kind=EnvelopeKind.ONE_WAY, correlation_id=0, payload=payload, headers=headers or {}
        )

    def create_reply(self, payload: bytes) -> Self:
        return type(self)(
            kind=EnvelopeKind.REPLY, correlation_id=self.correlation_id, payload=payload
        )

    def create_error(self, message: str) -> Self:
        """An error reply to this request; the requester sees it as ``RemoteError``."""
        return type(self)(
            kind=EnvelopeKind.ERROR,
            correlation_id=self.correlation_id,
            payload=message.encode("utf-8"),
        )

    def extract_payload(self) -> bytes:
        return self.payload

    def is_reply_to(self, correlation_id: int) -> bool:
        return (
            self.kind is EnvelopeKind.REPLY or self.kind is EnvelopeKind.ERROR
        ) and self.correlation_id == correlation_id

    def is_request(self) -> bool:
        """A REQUEST or a ONE_WAY message (implements ``KindedEnvelope``)."""
        return self.kind is EnvelopeKind.REQUEST or self.kind is EnvelopeKind.ONE_WAY

    def expects_reply(self) -> bool:
        return self.kind is EnvelopeKind.REQUEST

    def remote_error(self) -> str | None:
        """The error message of an ERROR envelope (implements ``ErrorReply``)."""
        if self.kind is not EnvelopeKind.ERROR:
            return None
        return self.payload.decode("utf-8", errors="replace")

    @classmethod
    def serializer(cls) -> CheckedEnvelopeSerializer:
        return _SERIALIZER


# [body_len u32][crc32(body) u32][crc32(the first 8 header bytes) u32], little endian.
# The header carries its own checksum so that a corrupted length is rejected the
# moment the header arrives; checked only with the body, a flipped length bit
# would make the receiver wait for bytes that never come and stall the connection.
_HEADER: Final = struct.Struct("<III")
_LENGTH_AND_SUM: Final = struct.Struct("<II")


@final
class CheckedEnvelopeSerializer:
    """Wire format of :class:`CheckedEnvelope`; reuses one msgspec encoder and decoder."""

    __slots__ = ("_decoder", "_encoder")

    header_size: Final = _HEADER.size

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(CheckedEnvelope)

    def frame_size(self, header: bytes | memoryview, /) -> int:
        body_len, _ = _read_header(header)
        return _HEADER.size + body_len

    def serialize(self, envelope: CheckedEnvelope, /) -> bytes:
        if not isinstance(envelope, CheckedEnvelope):
            raise SerializationError(f"expected a CheckedEnvelope, got {type(envelope).__name__}")
        cid = envelope.correlation_id
        if not isinstance(cid, int) or not 0 <= cid <= U64_MAX:
            raise SerializationError(
                f"correlation id {cid!r} does not fit in an unsigned 64-bit integer"
            )
        if not isinstance(envelope.kind, EnvelopeKind):
            raise SerializationError(
                f"kind must be an EnvelopeKind, got {envelope.kind!r} (correlation id {cid})"
            )
        try:
            body = self._encoder.encode(envelope)
        except (msgspec.EncodeError, TypeError, OverflowError) as exc:
            raise SerializationError(
                f"cannot encode CheckedEnvelope with correlation id {cid}: {exc}"
            ) from exc
        if len(body) > U32_MAX:
            raise SerializationError(
                f"CheckedEnvelope body of {len(body)} bytes exceeds the u32 length field "
                f"(max {U32_MAX}; correlation id {cid})"
            )
        length_and_sum = _LENGTH_AND_SUM.pack(len(body), zlib.crc32(body))
        return length_and_sum + zlib.crc32(length_and_sum).to_bytes(4, "little") + body

    def deserialize(self, frame: bytes | memoryview, /) -> CheckedEnvelope:
        body_len, checksum = _read_header(frame)
        if len(frame) - _HEADER.size != body_len:
            raise SerializationError(
                f"CheckedEnvelope header declares a {body_len}-byte body but the frame "
                f"carries {len(frame) - _HEADER.size} bytes after the header"
            )
        with memoryview(frame) as view, view[_HEADER.size :] as body:
            actual = zlib.crc32(body)
            if actual != checksum:
                raise SerializationError(
                    f"CheckedEnvelope checksum mismatch: header says {checksum:#010x}, "
                    f"the {body_len}-byte body hashes to {actual:#010x} (corrupted frame)"
                )
            try:
                return self._decoder.decode(body)
            except msgspec.DecodeError as exc:
                raise SerializationError(
                    f"CheckedEnvelope body ({body_len} bytes, checksum ok) is not a valid "
                    f"envelope: {exc}"
                ) from exc


def _read_header(header: bytes | memoryview) -> tuple[int, int]:
    """``(body length, body checksum)`` of a header whose own checksum is verified."""
    try:
        body_len, body_sum, header_sum = _HEADER.unpack_from(header)
    except (struct.error, TypeError) as exc:
        raise SerializationError(
            f"CheckedEnvelope header needs {_HEADER.size} bytes, got {describe_length(header)}"
        ) from exc
    with memoryview(header) as view, view[: _LENGTH_AND_SUM.size] as checked:
        actual = zlib.crc32(checked)
    if actual != header_sum:
        raise SerializationError(
            f"CheckedEnvelope header checksum mismatch: header says {header_sum:#010x}, "
            f"its length and body-checksum fields hash to {actual:#010x} (corrupted header; "
            f"declared body length {body_len} is not trusted)"
        )
    return int(body_len), int(body_sum)


_SERIALIZER: Final = CheckedEnvelopeSerializer()
