"""What a mistyped address says: each mistake new users make gets its own message.

Before: ``"http://host:80"`` was reported as "looks like a bare IPv6 host", an
address with a space (``" host:80"``, ``"ho st:80"``) was accepted and its host
then resolved (or, simulated, connected to) with the space in it, and a port in
full-width digits was taken as 80.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from moonpool.net import Address, InvalidAddress, SimNetwork, parse_address


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("host:80", Address("host", 80)),
        ("127.0.0.1:0", Address("127.0.0.1", 0)),
        ("[::1]:80", Address("::1", 80)),
        ("localhost:65535", Address("localhost", 65535)),
        ("server-1.example:4500", Address("server-1.example", 4500)),
        ("host_1:080", Address("host_1", 80)),
    ],
)
def test_valid_addresses_still_parse(address: str, expected: Address) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize(
    ("address", "message"),
    [
        (
            "http://host:80",
            "addresses are host:port, not URLs: drop 'http://': write 'host:80'",
        ),
        ("https://host:443/api", "drop 'https://' and the path: write 'host:443'"),
        ("tcp://127.0.0.1:80", "drop 'tcp://': write '127.0.0.1:80'"),
        ("http://host", "drop 'http://' and add the port: 'host:port'"),
        (" host:80", "contains whitespace (' ' at position 0): strip it: 'host:80'"),
        ("host:80\n", r"contains whitespace ('\n' at position 7): strip it: 'host:80'"),
        ("ho st:80", "contains whitespace (' ' at position 2): host names and ports cannot"),
        ("host :80", "contains whitespace (' ' at position 4)"),
        ("host: 80", "contains whitespace (' ' at position 5)"),
        ("[ ::1]:80", "contains whitespace (' ' at position 1)"),
        ("ho\x00st:80", r"contains an unprintable character ('\x00' at position 2)"),
        ("", "address is empty: expected 'host:port'"),
        (":80", "address ':80' has no host"),
        ("[]:80", "address '[]:80' has no host"),
        ("host:", "address 'host:' has no port after the ':'"),
        ("host", "address 'host' has no port: expected 'host:port'"),
        ("[::1]", "address '[::1]' has no port: expected '[::1]:port'"),
        ("[::1]80", "expected ':port' right after ']', got '80'"),
        ("[::1", "no ']'"),
        ("host:70000", "has port 70000 outside 0..65535"),
        ("[::1]:99999", "has port 99999 outside 0..65535"),
        ("host:-1", "non-numeric port '-1': expected a number in 0..65535"),
        ("host:http", "non-numeric port 'http'"),
        ("host:\uff18\uff10", "non-numeric port"),  # full-width "80": int() would take it
        ("::1:80", "is ambiguous: an IPv6 host goes in brackets -- if you mean host ::1 port 80, "),
        ("::1", "looks like an IPv6 host without a port: write '[::1]:port'"),
        ("a:b:80", "has more than one ':': expected 'host:port'"),
    ],
)
def test_invalid_addresses_say_what_is_wrong(address: str, message: str) -> None:
    with pytest.raises(InvalidAddress) as info:
        parse_address(address)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_the_ambiguous_ipv6_address_suggests_brackets() -> None:
    with pytest.raises(InvalidAddress, match=r"write '\[::1\]:80'"):
        parse_address("::1:80")


@pytest.mark.trio
@pytest.mark.parametrize("address", ["http://server:4500", " server:4500", "server :4500"])
async def test_the_simulated_network_refuses_them_before_connecting(
    address: str, autojump_clock: trio.testing.MockClock
) -> None:
    # Before, " server:4500" was refused as "nothing listens there" (a host named
    # " server"), however long the user stared at the listener on "server:4500".
    network = SimNetwork(host="client")
    async with await network.for_host("server").listen("server:4500"):
        with pytest.raises(InvalidAddress, match=r"not URLs|whitespace"):
            await network.connect(address)
        with pytest.raises(InvalidAddress):
            await network.listen(address)
