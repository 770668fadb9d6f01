"""Parsing of ``host:port`` addresses, shared by every network provider.

Addresses are plain strings so that a simulated program and a real one look the
same: ``"server:4500"`` in simulation, ``"127.0.0.1:4500"`` or ``"[::1]:4500"`` on
real TCP.  Parsing is strict because a typo in an address should fail at the call
that made it, not as a confusing connect error later.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple, final

__all__ = ["Address", "InvalidAddress", "parse_address"]


@final
class InvalidAddress(ValueError):
    """An address string is not of the form ``host:port``."""


class Address(NamedTuple):
    """A parsed ``host:port`` (:func:`parse_address`); ``str()`` gives it back."""

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_address(address: str) -> Address:
    """Split ``"host:port"`` (or ``"[v6host]:port"``) into an :class:`Address`.

    Raises :class:`InvalidAddress` (a :class:`ValueError`) naming the offending
    string and what is wrong with it: a URL (``"http://host:80"``), whitespace or
    unprintable characters (a host name with a space would otherwise go to the
    resolver, or name a simulated host nobody listens on), no host, no port, a
    port that is not ASCII digits or is above 65535, or an IPv6 host without its
    brackets.
    """
    if not isinstance(address, str):
        raise InvalidAddress(f"address must be a 'host:port' string, got {address!r}")
    _check_characters(address)
    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        if not sep:
            raise InvalidAddress(f"bad IPv6 address {address!r}: no ']': expected '[host]:port'")
        if not rest:
            raise InvalidAddress(f"address {address!r} has no port: expected '[{host}]:port'")
        if not rest.startswith(":"):
            raise InvalidAddress(
                f"bad IPv6 address {address!r}: expected ':port' right after ']', got {rest!r}"
            )
        port_text = rest[1:]
    else:
        host, sep, port_text = address.rpartition(":")
        if not sep:
            raise InvalidAddress(f"address {address!r} has no port: expected 'host:port'")
        if ":" in host:
            raise InvalidAddress(_colons_message(address, host, port_text))
    if not host:
        raise InvalidAddress(f"address {address!r} has no host: expected 'host:port'")
    if not port_text:
        raise InvalidAddress(f"address {address!r} has no port after the ':'")
    # isdigit() alone takes any script's digits ("\uff18\uff10" is 80 to int()).
    if not (port_text.isascii() and port_text.isdigit()):
        raise InvalidAddress(
            f"address {address!r} has a non-numeric port {port_text!r}: "
            "expected a number in 0..65535"
        )
    port = int(port_text)
    if port > 65535:
        raise InvalidAddress(f"address {address!r} has port {port} outside 0..65535")
    return Address(host, port)


def _check_characters(address: str) -> None:
    """Refuse a URL, whitespace and unprintable characters, each with its own message.

    All three used to get through, or fail confusingly: ``"http://host:80"`` split
    at its last ``':'`` looked like a bare IPv6 host, and ``" host:80"`` was
    accepted and then sent to the resolver as the host name ``" host"``.
    """
    if not address:
        raise InvalidAddress("address is empty: expected 'host:port'")
    scheme, sep, rest = address.partition("://")
    if sep:
        bare = rest.split("/", 1)[0]
        if ":" not in bare:
            fix = f" and add the port: '{bare or 'host'}:port'"
        elif bare != rest:
            fix = f" and the path: write {bare!r}"
        else:
            fix = f": write {bare!r}"
        raise InvalidAddress(
            f"address {address!r}: addresses are host:port, not URLs: drop '{scheme}://'{fix}"
        )
    if " " in address or not address.isprintable():  # every other space is unprintable
        _refuse_characters(address)


def _refuse_characters(address: str) -> None:
    """Raise for the first whitespace or unprintable character in ``address``."""
    for position, char in enumerate(address):
        if char.isspace():
            stripped = address.strip()
            fix = (
                f"strip it: {stripped!r}"
                if stripped and not any(c.isspace() for c in stripped)
                else "host names and ports cannot contain any"
            )
            raise InvalidAddress(
                f"address {address!r} contains whitespace ({char!r} at position {position}): {fix}"
            )
        if not char.isprintable():
            raise InvalidAddress(
                f"address {address!r} contains an unprintable character "
                f"({char!r} at position {position})"
            )


def _colons_message(address: str, host: str, port_text: str) -> str:
    """The error for an unbracketed address with more than one ``':'``."""
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        pass
    else:
        # "::1:80" is itself a valid IPv6 address, so it cannot be read either way
        # for sure; brackets say where the host ends.
        return (
            f"address {address!r} is ambiguous: an IPv6 host goes in brackets -- if you "
            f"mean host {host} port {port_text}, write '[{host}]:{port_text}'"
        )
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        return (
            f"address {address!r} has more than one ':': expected 'host:port' "
            "(an IPv6 host goes in brackets: '[::1]:80')"
        )
    return f"address {address!r} looks like an IPv6 host without a port: write '[{address}]:port'"
