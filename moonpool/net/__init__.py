"""Network providers: the in-memory simulated network and real TCP."""

from moonpool.net._address import Address, InvalidAddress, parse_address
from moonpool.net._provider import AddressInUse, Listener, NetworkProvider

__all__ = [
    "Address",
    "AddressInUse",
    "InvalidAddress",
    "Listener",
    "NetworkProvider",
    "parse_address",
]
