"""``RealNetwork``: the :class:`~moonpool.net.NetworkProvider` over real TCP.

Written against anyio only, so the same transport code runs on trio and on
asyncio.  Its job beyond opening sockets is to make real TCP fail the way the
provider contract says (see :mod:`moonpool.net._provider`), because the transport
above must not care whether it talks to ``SimNetwork`` or the kernel:

* anyio's ``connect_tcp`` reports failures as ``OSError("All connection attempts
  failed")`` chained to one error or to an ``ExceptionGroup`` of them (one per
  address tried by happy eyeballs).  We unwrap that into a single builtin
  exception that names the address the caller asked for.
* Listening sockets are created here rather than through ``create_tcp_listener``
  so that ``accept`` on a host with several addresses (``localhost`` is both
  ``127.0.0.1`` and ``::1``) can wait on all of them without ever cancelling an
  ``accept`` that had already taken a connection off the queue: we only wait for
  readability, which consumes nothing, and then accept synchronously.
* Servers bind only to loopback unless the user opts in, so a test or an example
  never exposes a port to the network by accident.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
import sys
from collections.abc import Iterable
from types import TracebackType
from typing import Final, Self, final

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.abc import SocketAttribute

from moonpool.net._address import Address, InvalidAddress, parse_address
from moonpool.net._asyncio_stream import AsyncioSocketStream
from moonpool.net._provider import AddressInUse

__all__ = ["RealNetwork"]

DEFAULT_CONNECT_TIMEOUT: Final = 10.0

# Errors from accept() that concern only the one connection being accepted (the
# client gave up, or a firewall rule refused it); the listener itself is fine.
_TRANSIENT_ACCEPT_ERRNOS: Final = frozenset(
    code
    for code in (
        getattr(errno, "ECONNABORTED", None),
        getattr(errno, "EPROTO", None),
        getattr(errno, "EPERM", None),
        getattr(errno, "ECONNRESET", None),
    )
    if code is not None
)

# Windows reports bind() failures with its WSA codes.
_ADDRINUSE_ERRNOS: Final = frozenset(
    code for code in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", None)) if code is not None
)

# bind() errors meaning "this machine has no such address (family)".
_UNAVAILABLE_ERRNOS: Final = frozenset(
    code
    for code in (getattr(errno, "EADDRNOTAVAIL", None), getattr(errno, "EAFNOSUPPORT", None))
    if code is not None
)

_SockAddr = tuple[str, int] | tuple[str, int, int, int]


@final
class RealNetwork:
    """Opens real TCP connections and listeners.

    ``connect_timeout`` bounds name resolution plus the TCP handshake; a peer
    that never answers costs at most that long, then ``TimeoutError``.

    ``allow_non_loopback`` must be set to listen on anything but a loopback
    address.  The default refuses, because a development server reachable from
    the whole network is a mistake that is easy to make and hard to notice.
    ``connect`` has no such limit: reaching out exposes nothing.
    """

    __slots__ = ("_allow_non_loopback", "_connect_timeout")

    def __init__(
        self,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        allow_non_loopback: bool = False,
    ) -> None:
        if not connect_timeout > 0:
            raise ValueError(
                f"connect_timeout must be a positive number of seconds, got {connect_timeout!r}"
            )
        self._connect_timeout = float(connect_timeout)
        self._allow_non_loopback = allow_non_loopback

    @property
    def connect_timeout(self) -> float:
        return self._connect_timeout

    @property
    def allow_non_loopback(self) -> bool:
        return self._allow_non_loopback

    def __repr__(self) -> str:
        return (
            f"RealNetwork(connect_timeout={self._connect_timeout!r}, "
            f"allow_non_loopback={self._allow_non_loopback!r})"
        )

    async def connect(self, address: str) -> anyio.abc.ByteStream:
        """Open a TCP connection to ``address`` with ``TCP_NODELAY`` on.

        Raises ``InvalidAddress`` for a malformed address (before any I/O),
        ``ConnectionRefusedError`` when nothing listens there, ``TimeoutError``
        after ``connect_timeout`` seconds, and ``ConnectionError`` for anything
        else (unknown host, unreachable network); each names ``address``.
        """
        host, port = parse_address(address)
        if port == 0:
            raise InvalidAddress(f"cannot connect to {address!r}: port 0 is not a real port")
        stream: anyio.abc.SocketStream | None = None
        with anyio.move_on_after(self._connect_timeout) as scope:
            try:
                if _running_asyncio() is None:
                    stream = await anyio.connect_tcp(host, port)
                else:
                    stream = await _asyncio_connect(host, port)
            except OSError as exc:
                raise _connect_error(address, exc) from exc
        if scope.cancelled_caught:
            raise TimeoutError(
                f"connecting to {address} timed out after {self._connect_timeout:g}s "
                "(no answer: is the host up, or is the port firewalled?)"
            )
        assert stream is not None
        try:
            _set_nodelay(stream.extra(SocketAttribute.raw_socket))
        except OSError as exc:
            await anyio.aclose_forcefully(stream)
            raise ConnectionError(
                exc.errno, f"connection to {address} failed right after connecting: {exc}"
            ) from exc
        return stream

    async def listen(self, address: str) -> RealListener:
        """Listen on ``address``; port 0 picks a free port (see ``Listener.address``).

        A host name binds every address it resolves to, all on one port, so
        ``localhost:0`` serves ``::1`` too where ``localhost`` resolves to it.  Raises
        ``InvalidAddress`` for a malformed address, ``ValueError`` for a
        non-loopback host unless ``allow_non_loopback`` is set, and
        :class:`AddressInUse` when the port is taken.
        """
        requested = parse_address(address)
        literal = _ip_literal(requested.host)
        if literal is not None:
            self._check_loopback(address, [literal])
            family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
            sockaddr: _SockAddr = (
                (literal.compressed, requested.port, 0, 0)
                if family == socket.AF_INET6
                else (literal.compressed, requested.port)
            )
            targets: list[tuple[socket.AddressFamily, _SockAddr]] = [(family, sockaddr)]
        else:
            targets = await _resolve_for_listen(address, requested)
            self._check_loopback(address, [_ip_literal_or_raise(sa[0]) for _, sa in targets])
        sockets = _bind_all(address, requested.port, targets)
        bound_port = sockets[0].getsockname()[1]
        return RealListener(sockets, Address(requested.host, bound_port))

    def _check_loopback(
        self, address: str, ips: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address]
    ) -> None:
        if self._allow_non_loopback:
            return
        exposed = sorted({ip.compressed for ip in ips if not ip.is_loopback})
        if exposed:
            raise ValueError(
                f"refusing to listen on {address}: not a loopback address "
                f"({', '.join(exposed)}), so other machines could connect; listen on "
                "127.0.0.1, [::1] or localhost, or pass RealNetwork(allow_non_loopback=True) "
                "if you mean it"
            )


@final
class RealListener:
    """A listening TCP endpoint, possibly one socket per address family.

    ``accept`` never cancels a kernel ``accept`` in flight: it waits for any
    socket to become readable (which takes nothing off the queue), then accepts
    synchronously.  That makes it safe to cancel and to wait on several sockets
    at once, on both anyio backends.
    """

    __slots__ = ("_accepting", "_address", "_closed", "_sockets")

    def __init__(self, sockets: list[socket.socket], address: Address) -> None:
        self._sockets = sockets
        self._address = address
        self._closed = False
        self._accepting = False

    @property
    def address(self) -> str:
        """The address as requested, with the port actually bound."""
        return str(self._address)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "listening"
        return f"<RealListener {self.address} {state}>"

    async def accept(self) -> anyio.abc.SocketStream:
        """Wait for the next connection; its stream has ``TCP_NODELAY`` on.

        Raises ``anyio.ClosedResourceError`` if the listener is or gets closed,
        ``anyio.BusyResourceError`` if another task is already accepting, and
        ``OSError`` if the process runs out of resources (e.g. file descriptors):
        the listener stays usable, so an accept loop should pause and retry.
        Connections the client abandoned before we took them are skipped.
        """
        if self._closed:
            raise anyio.ClosedResourceError(f"listener on {self.address} is closed")
        if self._accepting:
            raise anyio.BusyResourceError("accepting connections from")
        self._accepting = True
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()
            while True:
                conn = self._accept_nowait()
                if conn is not None:
                    # From here the connection is ours: finish without being
                    # cancelled, or it would be dropped silently.
                    with anyio.CancelScope(shield=True):
                        stream = await _wrap_accepted(conn)
                    if stream is not None:
                        # accept() always yields to the scheduler, even when a
                        # connection was already waiting.
                        await anyio.lowlevel.cancel_shielded_checkpoint()
                        return stream
                    continue
                await self._wait_readable()
        finally:
            self._accepting = False

    def _accept_nowait(self) -> socket.socket | None:
        for sock in self._sockets:
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                if exc.errno in _TRANSIENT_ACCEPT_ERRNOS:
                    continue
                if self._closed:
                    raise anyio.ClosedResourceError(
                        f"listener on {self.address} is closed"
                    ) from None
                raise OSError(
                    exc.errno, f"accepting a connection on {self.address} failed: {exc.strerror}"
                ) from exc
            return conn
        return None

    async def _wait_readable(self) -> None:
        # ClosedResourceError here means aclose() woke us; reported below with
        # the listener's address.
        with contextlib.suppress(anyio.ClosedResourceError):
            if len(self._sockets) == 1:
                await anyio.wait_readable(self._sockets[0])
            else:
                async with anyio.create_task_group() as tg:
                    for sock in self._sockets:
                        tg.start_soon(_wait_readable_then_cancel, sock, tg.cancel_scope)
        if self._closed:
            raise anyio.ClosedResourceError(f"listener on {self.address} is closed")

    async def aclose(self) -> None:
        """Stop listening; a pending ``accept`` raises ``ClosedResourceError``.

        Connections already accepted are unaffected.  Idempotent.
        """
        if not self._closed:
            self._closed = True
            for sock in self._sockets:
                anyio.notify_closing(sock)
                sock.close()
        await anyio.lowlevel.checkpoint()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def _wait_readable_then_cancel(sock: socket.socket, scope: anyio.CancelScope) -> None:
    # A socket closed under us also ends the wait; accept() then sees _closed.
    with contextlib.suppress(anyio.ClosedResourceError):
        await anyio.wait_readable(sock)
    scope.cancel()


async def _wrap_accepted(conn: socket.socket) -> anyio.abc.SocketStream | None:
    """Hand an accepted socket to anyio; ``None`` if it died before we could."""
    try:
        conn.setblocking(False)
        _set_nodelay(conn)
        if _running_asyncio() is not None:
            return await AsyncioSocketStream.wrap(conn)
        return await anyio.abc.SocketStream.from_socket(conn)
    except (OSError, ValueError):
        # ValueError: anyio found it no longer connected (reset by the client).
        conn.close()
        return None


def _running_asyncio() -> asyncio.AbstractEventLoop | None:
    """The asyncio loop we run on, or ``None`` (on trio there is none)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _asyncio_connect(host: str, port: int) -> AsyncioSocketStream:
    """Connect to each address ``host`` resolves to in turn; the first that works wins.

    The asyncio counterpart of ``anyio.connect_tcp``, making our own stream
    type.  Failures are reported the way anyio reports them (a generic
    ``OSError`` caused by a group of one error per address), so that
    ``_connect_error`` turns both into the same precise exception.  No happy
    eyeballs: attempts are sequential, all within the caller's connect timeout.
    """
    loop = asyncio.get_running_loop()
    literal = _ip_literal(host)
    targets: list[tuple[socket.AddressFamily, tuple[object, ...]]]
    if literal is not None:
        ipv6 = literal.version == 6
        targets = [(socket.AF_INET6 if ipv6 else socket.AF_INET, (literal.compressed, port))]
    else:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        targets = [(family, sockaddr) for family, _kind, _proto, _name, sockaddr in infos]
    errors: list[OSError] = []
    for family, sockaddr in targets:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, sockaddr)
            return await AsyncioSocketStream.wrap(sock)
        except OSError as exc:
            sock.close()
            errors.append(exc)
        except BaseException:
            sock.close()
            raise
    raise OSError("All connection attempts failed") from ExceptionGroup(
        f"connecting to {host}:{port}", errors
    )


def _set_nodelay(sock: socket.socket) -> None:
    # The transport writes whole frames and waits for replies; Nagle's algorithm
    # would hold small frames back for up to a round trip.  anyio sets this too
    # today, but the latency of every request depends on it, so we do not rely on it.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _ip_literal_or_raise(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    # getaddrinfo may append a scope ("fe80::1%eth0"); the scope does not change
    # whether the address is loopback.
    return ipaddress.ip_address(host.partition("%")[0])


async def _resolve_for_listen(
    address: str, requested: Address
) -> list[tuple[socket.AddressFamily, _SockAddr]]:
    try:
        infos = await anyio.getaddrinfo(
            requested.host,
            requested.port,
            type=socket.SOCK_STREAM,
            # No AI_ADDRCONFIG: it hides ::1 on hosts without a global IPv6
            # address, and loopback is exactly what we serve by default.
            flags=socket.AI_PASSIVE,
        )
    except OSError as exc:
        raise OSError(
            exc.errno, f"cannot listen on {address}: host {requested.host!r} did not resolve: {exc}"
        ) from exc
    targets: list[tuple[socket.AddressFamily, _SockAddr]] = []
    seen: set[tuple[socket.AddressFamily, str]] = set()
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        key = (family, sockaddr[0])
        if key not in seen:  # resolvers sometimes repeat an address
            seen.add(key)
            targets.append((family, sockaddr))
    if not targets:
        raise OSError(
            errno.EADDRNOTAVAIL,
            f"cannot listen on {address}: host {requested.host!r} has no IPv4 or IPv6 address",
        )
    return targets


def _bind_all(
    address: str, port: int, targets: list[tuple[socket.AddressFamily, _SockAddr]]
) -> list[socket.socket]:
    """Bind one socket per target, all on the same port.

    With port 0 the kernel picks the port for the first socket; the others must
    then get the same one, which can collide with another program, so we retry
    a few times with a fresh port before giving up.  A host name may resolve to
    an address this machine cannot bind (``localhost`` lists ``::1`` even where
    IPv6 is off): such addresses are skipped as long as one of them binds.
    """
    attempts = 1 if port != 0 or len(targets) == 1 else 10
    last_error: OSError | None = None
    for _ in range(attempts):
        sockets: list[socket.socket] = []
        unavailable: OSError | None = None
        try:
            chosen = port
            for family, sockaddr in targets:
                try:
                    sock = _bind_one(family, (sockaddr[0], chosen, *sockaddr[2:]))
                except OSError as exc:
                    if len(targets) > 1 and exc.errno in _UNAVAILABLE_ERRNOS:
                        unavailable = exc
                        continue
                    raise
                sockets.append(sock)
                chosen = sock.getsockname()[1]
        except OSError as exc:
            for sock in sockets:
                sock.close()
            if exc.errno in _ADDRINUSE_ERRNOS and port == 0 and sockets:
                last_error = exc
                continue
            raise _listen_error(address, exc) from exc
        if not sockets:
            assert unavailable is not None
            raise _listen_error(address, unavailable) from unavailable
        return sockets
    assert last_error is not None
    raise AddressInUse(
        errno.EADDRINUSE,
        f"cannot listen on {address}: could not find one free port for all of "
        f"{', '.join(str(sa[0]) for _, sa in targets)} after {attempts} attempts",
    ) from last_error


def _bind_one(family: socket.AddressFamily, sockaddr: tuple[object, ...]) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if family == socket.AF_INET6:
            # "[::]:port" means IPv6 only; IPv4 is its own explicit listener.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if sys.platform == "win32":
            # Windows' SO_REUSEADDR would let another program steal the port.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
        else:
            # Lets a restarted server reuse a port whose old connections sit in
            # TIME_WAIT; it never allows two live listeners on one port.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return sock


def _leaf_errors(exc: BaseException | None) -> list[OSError]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaf_errors(sub)]
    if isinstance(exc, OSError):
        return [exc]
    return []


def _connect_error(address: str, exc: OSError) -> OSError:
    """Turn what ``anyio.connect_tcp`` raised into one exception naming ``address``.

    anyio chains the real causes (one per address it tried) under a generic
    ``OSError``; a caller needs the kind of failure, not the group.
    """
    if isinstance(exc, socket.gaierror):
        return ConnectionError(
            exc.errno, f"cannot connect to {address}: host name did not resolve: {exc.strerror}"
        )
    causes = _leaf_errors(exc.__cause__) or [exc]
    details = "; ".join(dict.fromkeys(str(cause) for cause in causes))
    if all(isinstance(cause, ConnectionRefusedError) for cause in causes):
        return ConnectionRefusedError(
            errno.ECONNREFUSED, f"connection to {address} refused: nothing is listening there"
        )
    if all(isinstance(cause, TimeoutError) for cause in causes):
        return TimeoutError(errno.ETIMEDOUT, f"connecting to {address} timed out: {details}")
    message = f"cannot connect to {address}: {details}"
    code = next((cause.errno for cause in causes if cause.errno is not None), None)
    return ConnectionError(message) if code is None else ConnectionError(code, message)


def _listen_error(address: str, exc: OSError) -> OSError:
    if exc.errno in _ADDRINUSE_ERRNOS:
        return AddressInUse(
            errno.EADDRINUSE,
            f"cannot listen on {address}: address already in use (another listener holds "
            "this port; pick another or use port 0 for a free one)",
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return OSError(
            exc.errno, f"cannot listen on {address}: that address does not belong to this machine"
        )
    return OSError(exc.errno, f"cannot listen on {address}: {exc.strerror or exc}")
