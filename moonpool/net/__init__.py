"""Network providers: the in-memory simulated network and real TCP."""

from moonpool._ground._public import publish
from moonpool.net._address import Address, InvalidAddress, parse_address
from moonpool.net._chaos import FAULT_FAMILIES, ChaosConfig, LatencyConfig
from moonpool.net._provider import AddressInUse, Listener, NetworkProvider
from moonpool.net._real import RealNetwork
from moonpool.net._sim_network import SimListener, SimNetwork, SimStream

__all__ = [
    "FAULT_FAMILIES",
    "Address",
    "AddressInUse",
    "ChaosConfig",
    "InvalidAddress",
    "LatencyConfig",
    "Listener",
    "NetworkProvider",
    "RealNetwork",
    "SimListener",
    "SimNetwork",
    "SimStream",
    "parse_address",
]

# Tracebacks, reprs and the API reference show the public names
# (moonpool.net.X), not the private modules the objects happen to live in.
publish(__name__, globals(), __all__)
