"""Envelopes: how a request or reply and its correlation id travel as one frame.

The transport never looks inside a payload. It only needs to (1) wrap payload bytes
in an envelope carrying a correlation id, (2) turn envelopes into frames and back,
and (3) learn a frame's total length from a fixed-size header so it can cut a byte
stream into frames. :class:`Envelope` and :class:`EnvelopeSerializer` are those
three needs as protocols, so the wire format is a parameter of the transport rather
than baked into it (the plan's ``get_reply::<E>`` becomes ``envelope=SomeClass``).

:class:`RequestResponseEnvelope` is the default, minimal format. This module is
pure: no I/O, no clock, no async library.
"""

from __future__ import annotations

import struct
from typing import Final, Protocol, Self, TypeVar, final, runtime_checkable

import msgspec

from moonpool.transport._errors import SerializationError

__all__ = [
    "U32_MAX",
    "U64_MAX",
    "Envelope",
    "EnvelopeSerializer",
    "ErrorReply",
    "KindedEnvelope",
    "RequestResponseEnvelope",
    "RequestResponseSerializer",
]

U64_MAX: Final = 2**64 - 1
U32_MAX: Final = 2**32 - 1

E = TypeVar("E")


class EnvelopeSerializer(Protocol[E]):
    """The wire format of one envelope type.

    Framing is split from decoding on purpose: :meth:`frame_size` lets a stream
    decoder reject an oversize frame from its header alone, before it buffers (or
    allocates) the bytes the header claims are coming.
    """

    @property
    def header_size(self) -> int:
        """Bytes needed from the start of a frame before :meth:`frame_size` can answer."""
        ...

    def frame_size(self, header: bytes | memoryview, /) -> int:
        """Total length of the frame (header included) that starts with ``header``.

        Reads only the first :attr:`header_size` bytes. Raises
        :class:`SerializationError` if they cannot start a valid frame.
        """
        ...

    def serialize(self, envelope: E, /) -> bytes:
        """One complete frame for ``envelope``; :class:`SerializationError` if unencodable."""
        ...

    def deserialize(self, frame: bytes | memoryview, /) -> E:
        """Decode exactly one whole frame.

        Any problem -- wrong length, bad checksum, undecodable body -- raises
        :class:`SerializationError` and nothing else, so the I/O layer can close the
        offending connection with a single ``except``.
        """
        ...


@runtime_checkable
class Envelope(Protocol):
    """What the transport needs from an envelope type.

    Callers pass the envelope *class* (``envelope=RequestResponseEnvelope``); the
    transport builds requests with :meth:`create_request`, matches replies with
    :meth:`is_reply_to` and finds the wire format through :meth:`serializer`.
    """

    @property
    def correlation_id(self) -> int:
        """Pairs a reply with its request; unique per requesting transport."""
        ...

    @classmethod
    def create_request(cls, correlation_id: int, payload: bytes) -> Self:
        """A request envelope carrying ``payload`` under ``correlation_id``."""
        ...

    def create_reply(self, payload: bytes) -> Self:
        """A reply to this request: same correlation id, new payload."""
        ...

    def extract_payload(self) -> bytes:
        """The application bytes, without any envelope metadata."""
        ...

    def is_reply_to(self, correlation_id: int) -> bool:
        """True if this envelope answers the request with ``correlation_id``."""
        ...

    @classmethod
    def serializer(cls) -> EnvelopeSerializer[Self]:
        """The wire format of this envelope type (a shared, reusable instance)."""
        ...


@runtime_checkable
class ErrorReply(Protocol):
    """Optional capability: an envelope type that can carry a remote failure.

    Envelope types that implement it let the protocol turn an error reply into
    :class:`~moonpool.transport.RemoteError` instead of handing the caller an error
    message disguised as a successful payload.
    """

    def remote_error(self) -> str | None:
        """The remote's error message if this is an error reply, else ``None``."""
        ...


@runtime_checkable
class KindedEnvelope(Protocol):
    """Optional capability: an envelope type that says what each envelope is for.

    A server hands only requests and one-way messages to the application, and
    counts a reply as owed only for requests; replies and error replies arriving
    at a server are dropped and counted.  Envelope types without it (such as
    :class:`RequestResponseEnvelope`, whose wire form cannot tell) are taken as
    requests.
    """

    def is_request(self) -> bool:
        """True for a request or a one-way message: something for the application."""
        ...

    def expects_reply(self) -> bool:
        """True only for a request: its sender waits for a reply."""
        ...


_RR_HEADER: Final = struct.Struct("<QI")
_RR_HEADER_SIZE: Final = _RR_HEADER.size
# Bound methods as module constants: the hot paths skip two attribute lookups each.
_rr_pack: Final = _RR_HEADER.pack
_rr_unpack_from: Final = _RR_HEADER.unpack_from


@final
class RequestResponseEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    """The default envelope: a correlation id and raw payload bytes, nothing else.

    Wire form, exactly: ``[correlation_id: u64 LE][len: u32 LE][payload: len bytes]``.
    The format cannot tell a request from a reply; a client treats every envelope
    it receives as a candidate reply, a server every envelope as a request.
    """

    correlation_id: int
    payload: bytes

    @classmethod
    def create_request(cls, correlation_id: int, payload: bytes) -> Self:
        return cls(correlation_id=correlation_id, payload=payload)

    def create_reply(self, payload: bytes) -> Self:
        return type(self)(correlation_id=self.correlation_id, payload=payload)

    def extract_payload(self) -> bytes:
        return self.payload

    def is_reply_to(self, correlation_id: int) -> bool:
        return self.correlation_id == correlation_id

    @classmethod
    def serializer(cls) -> RequestResponseSerializer:
        return _RR_SERIALIZER


@final
class RequestResponseSerializer:
    """Wire format of :class:`RequestResponseEnvelope`.

    Stateless and shareable. Encoding is one precompiled ``struct`` pack plus one
    concatenation (a single copy of the payload); decoding copies the payload once.
    """

    __slots__ = ()

    header_size: Final = _RR_HEADER_SIZE

    def frame_size(self, header: bytes | memoryview, /) -> int:
        try:
            _, length = _rr_unpack_from(header)
        except (struct.error, TypeError) as exc:
            raise SerializationError(
                f"RequestResponseEnvelope header needs {_RR_HEADER_SIZE} bytes, "
                f"got {describe_length(header)}"
            ) from exc
        return int(_RR_HEADER_SIZE + length)

    def serialize(self, envelope: RequestResponseEnvelope, /) -> bytes:
        try:
            payload = envelope.payload
            return _rr_pack(envelope.correlation_id, len(payload)) + payload
        except (struct.error, TypeError, AttributeError) as exc:
            raise SerializationError(_explain_rr_encode_failure(envelope)) from exc

    def deserialize(self, frame: bytes | memoryview, /) -> RequestResponseEnvelope:
        try:
            correlation_id, length = _rr_unpack_from(frame)
            total = len(frame)
        except (struct.error, TypeError) as exc:
            raise SerializationError(
                f"RequestResponseEnvelope frame is {describe_length(frame)}, shorter than "
                f"its {_RR_HEADER_SIZE}-byte header"
            ) from exc
        if total - _RR_HEADER_SIZE != length:
            raise SerializationError(
                f"RequestResponseEnvelope header declares a {length}-byte payload but the "
                f"frame carries {total - _RR_HEADER_SIZE} bytes after the header "
                f"(correlation id {correlation_id})"
            )
        payload = frame[_RR_HEADER_SIZE:]
        if type(payload) is not bytes:  # a memoryview slice: copy out of the caller's buffer
            payload = bytes(payload)
        return RequestResponseEnvelope(correlation_id=correlation_id, payload=payload)


_RR_SERIALIZER: Final = RequestResponseSerializer()


def describe_length(data: object) -> str:
    """``"N bytes"`` for error messages, or the type name if ``data`` has no length."""
    try:
        return f"{len(data)} bytes"  # type: ignore[arg-type]
    except TypeError:
        return f"a {type(data).__name__}, not bytes"


def _explain_rr_encode_failure(envelope: object) -> str:
    """Why an envelope could not be packed, in terms the caller can fix."""
    if not isinstance(envelope, RequestResponseEnvelope):
        return f"expected a RequestResponseEnvelope, got {type(envelope).__name__}"
    cid = envelope.correlation_id
    if not isinstance(cid, int):
        return f"correlation id must be an int, got {type(cid).__name__}"
    if not 0 <= cid <= U64_MAX:
        return f"correlation id {cid} does not fit in an unsigned 64-bit field (0..{U64_MAX})"
    payload = envelope.payload
    if not isinstance(payload, bytes | bytearray | memoryview):
        return f"payload must be bytes, got {type(payload).__name__} (correlation id {cid})"
    return (
        f"payload of {len(payload)} bytes exceeds the u32 length field "
        f"(max {U32_MAX} bytes; correlation id {cid})"
    )
