"""The transport's exception hierarchy.

Every failure that leaves the public transport API is a :class:`TransportError`
subclass, so ``except TransportError`` is enough for a caller that wants to retry.
The subclasses also inherit from the closest builtin (``TimeoutError``,
``ConnectionError``, ``ValueError``) so generic handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "BindFailed",
    "CircuitOpen",
    "ConnectionFailed",
    "FrameTooLarge",
    "MaybeDelivered",
    "NoServerAvailable",
    "PeerFailed",
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


class MaybeDelivered(ConnectionFailed):
    """The connection broke after an at-most-once request may have been written.

    The server may or may not have executed it: a caller that must not apply it
    twice checks (reads back) before trying again.  ``try_get_reply`` raises plain
    :class:`ConnectionFailed` instead when the request provably never left this
    process.
    """


class PeerFailed(ConnectionFailed):
    """The failure monitor has seen the destination failed for longer than the
    call allowed (``get_reply_unless_failed_for``'s ``failed_for``)."""


class NoServerAvailable(ConnectionFailed):
    """Every server of a :class:`~moonpool.transport.ServerGroup` has been failed for
    the group's ``failed_for`` seconds (or the group is empty): failing at once beats
    waiting out the timeout."""


class CircuitOpen(TransportError):
    """The destination's circuit breaker is open: recent calls to it kept failing,
    so this one failed at once, without touching the network.

    One probe call is let through after the breaker's cool-down; its success
    closes the circuit again (see ``PeerConfig.circuit_threshold``).
    """


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
