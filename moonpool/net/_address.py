"""Parsing of ``host:port`` addresses, shared by every network provider.

Addresses are plain strings so that a simulated program and a real one look the
same: ``"server:4500"`` in simulation, ``"127.0.0.1:4500"`` or ``"[::1]:4500"`` on
real TCP.  Parsing is strict because a typo in an address should fail at the call
that made it, not as a confusing connect error later.
"""

from __future__ import annotations

from typing import NamedTuple, final

__all__ = ["Address", "InvalidAddress", "parse_address"]


@final
class InvalidAddress(ValueError):
    """An address string is not of the form ``host:port``."""


class Address(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_address(address: str) -> Address:
    """Split ``"host:port"`` (or ``"[v6host]:port"``) into an :class:`Address`.

    Raises :class:`InvalidAddress` (a :class:`ValueError`) with the offending string
    when the address has no port, a non-numeric or out-of-range port, or no host.
    """
    if not isinstance(address, str):
        raise InvalidAddress(f"address must be a 'host:port' string, got {address!r}")
    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise InvalidAddress(f"bad IPv6 address {address!r}: expected '[host]:port'")
        port_text = rest[1:]
    else:
        host, sep, port_text = address.rpartition(":")
        if not sep:
            raise InvalidAddress(f"address {address!r} has no port: expected 'host:port'")
        if ":" in host:
            raise InvalidAddress(
                f"address {address!r} looks like a bare IPv6 host: write it as '[host]:port'"
            )
    if not host:
        raise InvalidAddress(f"address {address!r} has no host: expected 'host:port'")
    if not port_text.isdigit():
        raise InvalidAddress(f"address {address!r} has a non-numeric port {port_text!r}")
    port = int(port_text)
    if port > 65535:
        raise InvalidAddress(f"address {address!r} has port {port} outside 0..65535")
    return Address(host, port)
