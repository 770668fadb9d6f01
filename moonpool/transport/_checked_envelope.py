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
from typing import Annotated, ClassVar, Final, Self, final

import msgspec

from moonpool.transport._envelope import U32_MAX, U64_MAX, describe_length
from moonpool.transport._errors import SerializationError

__all__ = ["CheckedEnvelope", "CheckedEnvelopeSerializer", "EnvelopeKind"]

# Checked by the decoder before it builds anything: a dict entry costs about 20 times
# its wire size, so without a bound a 1 MiB frame of tiny headers decoded into 20 MB.
_MAX_HEADERS: Final = 64
_MAX_HEADER_BYTES: Final = 16 * 1024


class EnvelopeKind(enum.IntEnum):
    """What an envelope is for; only REPLY and ERROR can answer a request."""

    REQUEST = 0
    REPLY = 1
    ERROR = 2
    ONE_WAY = 3


# msgpack integers stop at u64, so only the lower bound needs checking on decode.
_CorrelationId = Annotated[int, msgspec.Meta(ge=0)]
# A string longer than every header together could be is rejected while decoding.
_HeaderText = Annotated[str, msgspec.Meta(max_length=_MAX_HEADER_BYTES)]
_Headers = Annotated[dict[_HeaderText, _HeaderText], msgspec.Meta(max_length=_MAX_HEADERS)]


@final
class CheckedEnvelope(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """An envelope with a kind, string headers and a checksummed msgpack body.

    Wire form: ``[body_len: u32 LE][crc32(body): u32 LE][crc32(header[0:8]): u32 LE][body]``
    where ``body`` is the msgpack encoding of the struct (as an array, in field
    order).  Any flipped bit is detected: in the header as soon as it arrives, in
    the body when the frame completes.

    ``headers`` are bounded -- at most :attr:`MAX_HEADERS` of them, their names and
    values :attr:`MAX_HEADER_BYTES` characters in all -- so that what a received
    envelope holds in memory stays proportional to its frame (at most a few
    kilobytes more).  A larger set raises :class:`SerializationError` when sent, and
    closes the connection it arrives on.
    """

    kind: EnvelopeKind
    correlation_id: _CorrelationId
    payload: bytes
    headers: _Headers = {}

    #: Most headers one envelope may carry.
    MAX_HEADERS: ClassVar[int] = _MAX_HEADERS
    #: Most characters one envelope's header names and values may add up to.
    MAX_HEADER_BYTES: ClassVar[int] = _MAX_HEADER_BYTES

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
        if envelope.headers and (problem := _header_problem(envelope.headers)) is not None:
            raise SerializationError(
                f"cannot encode CheckedEnvelope with correlation id {cid}: {problem}"
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
                envelope = self._decoder.decode(body)
            except msgspec.DecodeError as exc:
                # Field 3 is ``headers``: say which limit a refused map broke.
                limits = (
                    f" (headers: at most CheckedEnvelope.MAX_HEADERS={_MAX_HEADERS}, "
                    f"MAX_HEADER_BYTES={_MAX_HEADER_BYTES} characters in all)"
                    if "$[3]" in str(exc)
                    else ""
                )
                raise SerializationError(
                    f"CheckedEnvelope body ({body_len} bytes, checksum ok) is not a valid "
                    f"envelope: {exc}{limits}"
                ) from exc
        if envelope.headers and (problem := _header_problem(envelope.headers)) is not None:
            raise SerializationError(
                f"CheckedEnvelope with correlation id {envelope.correlation_id} carries {problem}"
            )
        return envelope


def _header_problem(headers: object) -> str | None:
    """What is wrong with ``headers`` (types, or one of the two bounds), or ``None``."""
    if not isinstance(headers, dict):
        return f"headers must be a dict of str to str, not {type(headers).__name__}"
    if len(headers) > _MAX_HEADERS:
        return f"{len(headers)} headers, more than CheckedEnvelope.MAX_HEADERS={_MAX_HEADERS}"
    total = 0
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            return f"header {name!r}: header names and values must be str"
        total += len(name) + len(value)
    if total > _MAX_HEADER_BYTES:
        return (
            f"headers of {total} characters, more than "
            f"CheckedEnvelope.MAX_HEADER_BYTES={_MAX_HEADER_BYTES}"
        )
    return None


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
