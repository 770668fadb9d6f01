"""The request/response transport: envelopes, the Sans-I/O protocol, peers, clients, servers."""

from moonpool._ground._public import publish
from moonpool.transport._checked_envelope import (
    CheckedEnvelope,
    CheckedEnvelopeSerializer,
    EnvelopeKind,
)
from moonpool.transport._circuit import CircuitState
from moonpool.transport._client import ClientTransport
from moonpool.transport._dead_letters import DeadLetter, DeadLetters
from moonpool.transport._driver import TransportDriver
from moonpool.transport._envelope import (
    Envelope,
    EnvelopeSerializer,
    ErrorReply,
    KindedEnvelope,
    RequestResponseEnvelope,
    RequestResponseSerializer,
)
from moonpool.transport._errors import (
    BindFailed,
    CircuitOpen,
    ConnectionFailed,
    FrameTooLarge,
    MaybeDelivered,
    NoServerAvailable,
    PeerFailed,
    RemoteError,
    SendQueueFull,
    SerializationError,
    TransportClosed,
    TransportError,
    TransportTimeout,
)
from moonpool.transport._failure_monitor import FailureMonitor
from moonpool.transport._framing import DEFAULT_MAX_FRAME_SIZE, FrameDecoder
from moonpool.transport._peer import Peer, PeerConfig, PeerStats
from moonpool.transport._protocol import (
    ONE_WAY_ID,
    PING_ID,
    Completion,
    RetryPolicy,
    Transmit,
    TransportProtocol,
    TransportStats,
)
from moonpool.transport._server import ReceivedEnvelope, ServerStats, ServerTransport
from moonpool.transport._server_group import ServerGroup

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "ONE_WAY_ID",
    "PING_ID",
    "BindFailed",
    "CheckedEnvelope",
    "CheckedEnvelopeSerializer",
    "CircuitOpen",
    "CircuitState",
    "ClientTransport",
    "Completion",
    "ConnectionFailed",
    "DeadLetter",
    "DeadLetters",
    "Envelope",
    "EnvelopeKind",
    "EnvelopeSerializer",
    "ErrorReply",
    "FailureMonitor",
    "FrameDecoder",
    "FrameTooLarge",
    "KindedEnvelope",
    "MaybeDelivered",
    "NoServerAvailable",
    "Peer",
    "PeerConfig",
    "PeerFailed",
    "PeerStats",
    "ReceivedEnvelope",
    "RemoteError",
    "RequestResponseEnvelope",
    "RequestResponseSerializer",
    "RetryPolicy",
    "SendQueueFull",
    "SerializationError",
    "ServerGroup",
    "ServerStats",
    "ServerTransport",
    "Transmit",
    "TransportClosed",
    "TransportDriver",
    "TransportError",
    "TransportProtocol",
    "TransportStats",
    "TransportTimeout",
]

# Tracebacks, reprs and the API reference show the public names
# (moonpool.transport.X), not the private modules the objects happen to live in.
publish(__name__, globals(), __all__)
