"""moonpool: deterministic simulation testing and a Sans-I/O transport for trio.

The package is split in three parts, imported on their own:

* :mod:`moonpool.sim` -- the simulation runtime (seeds, buggify, assertions, reports);
* :mod:`moonpool.net` -- network providers (in-memory ``SimNetwork``, TCP ``RealNetwork``);
* :mod:`moonpool.transport` -- the request/response transport built on either network.
"""

__version__ = "0.1.0.dev0"
