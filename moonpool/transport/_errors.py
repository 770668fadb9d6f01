"""The transport's exception hierarchy.

Every failure that leaves the public transport API is a :class:`TransportError`
subclass, so ``except TransportError`` is enough for a caller that wants to retry.
The subclasses also inherit from the closest builtin (``TimeoutError``,
``ConnectionError``, ``ValueError``) so generic handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "BindFailed",
    "ConnectionFailed",
    "FrameTooLarge",
    "RemoteError",
    "SendQueueFull",
    "SerializationError",
    "TransportClosed",
    "TransportError",
    "TransportTimeout",
]


class TransportError(Exception):
    """Base class of every error raised by :mod:`moonpool.transport`."""


class TransportTimeout(TransportError, TimeoutError):
    """No reply arrived before the request's timeout."""


class ConnectionFailed(TransportError, ConnectionError):
    """The peer could not be reached, or the connection broke under a request."""


class TransportClosed(TransportError):
    """The transport (or the request's connection) was closed.

    Raised by any call on a closed transport, and by requests still pending when
    the transport closes.
    """


class SendQueueFull(TransportError):
    """A peer's bounded send queue is full: the remote is not keeping up."""


class SerializationError(TransportError, ValueError):
    """Bytes could not be decoded into an envelope, or an envelope into bytes."""


class FrameTooLarge(SerializationError):
    """A frame's declared length is above the configured maximum frame size."""


class RemoteError(TransportError):
    """The remote side answered a request with an error envelope."""


class BindFailed(TransportError, OSError):
    """A server could not listen on its address (in use, not permitted, …)."""
