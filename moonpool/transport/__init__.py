"""The request/response transport: envelopes, the Sans-I/O protocol, peers, clients, servers."""

from moonpool.transport._errors import (
    ConnectionFailed,
    FrameTooLarge,
    RemoteError,
    SendQueueFull,
    SerializationError,
    TransportClosed,
    TransportError,
    TransportTimeout,
)

__all__ = [
    "ConnectionFailed",
    "FrameTooLarge",
    "RemoteError",
    "SendQueueFull",
    "SerializationError",
    "TransportClosed",
    "TransportError",
    "TransportTimeout",
]
